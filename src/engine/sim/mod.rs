//! A deterministic simulator of the real shell and core: in-memory state tables (compare-and-swap on ETags),
//! simulated servers ([`world`]) and a simulated clock. Two shells run interleaved at every port call; a crash
//! can stop a shell before or after any call takes effect; servers answer with throttling, 5xx, unreachable,
//! failed, vanished and hanging jobs, 413 and same-millisecond unit failures. Invariants are checked after every
//! write and at the end; a failing seed is printed and replays exactly (`FHIRMIG_SIM_SEED=<seed>`).

mod destination;
mod faults;
mod ledger;
mod ports;
mod rewrites;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ledger;
#[cfg(test)]
mod tests_recording;
#[cfg(test)]
mod tests_shell;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};

use super::core::Timer;
use super::shell::Shell;
use super::{FailPoints, Timing};
use crate::config::{MigrationSettings, SettingsSource};
use world::{Faults, Rng, Version, World};

pub use ports::SimPorts;

/// An operator's request run in a round (see [`Sim::round_with`]).
pub type Request = Box<dyn for<'p> FnOnce(&'p SimPorts) -> Pin<Box<dyn Future<Output = ()> + 'p>>>;

/// How a shell's tick ends early: before or after the effect of its n-th port call.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashPlan {
    pub at_call: Option<u32>,
    pub after_effect: bool,
    pub calls: u32,
    pub crashed: bool,
}

/// A simulation run: settings, the world, and the schedule's knobs.
pub struct Sim {
    pub seed: u64,
    pub settings: MigrationSettings,
    pub timing: Timing,
    pub world: Arc<Mutex<World>>,
    pub rng: Rng,
    /// Percent of ticks that crash somewhere.
    pub crash_rate: u64,
    /// Whether two shells run at once.
    pub two_shells: bool,
    pub violations: Arc<Mutex<Vec<String>>>,
    pub ticks: u64,
}

pub fn settings(pairs: &[(&str, &str)]) -> MigrationSettings {
    let mut s = SettingsSource::default();
    s.extend([
        ("AZURE_SourceUri", "https://source"),
        ("AZURE_DestinationUri", "https://destination"),
        ("AZURE_ExportWithHistory", "true"),
        ("AZURE_ExportWithDelete", "true"),
        ("AZURE_ExportChunkTime", "1"),
        ("AZURE_ChunkLimit", "60"),
        ("AZURE_PayloadCount", "2"),
        ("AZURE_FileCount", "1"),
        ("AZURE_JobTimeoutHours", "1"),
    ]);
    s.extend(pairs.iter().copied());
    let mut problems = Vec::new();
    let m = MigrationSettings::from_source(&s, &mut problems).expect("simulator settings");
    assert!(problems.is_empty(), "{problems:?}");
    m
}

/// Versions over the four days before `t0`: resources updated a few times, some sharing a millisecond, and a
/// crowd of `crowd` versions on one millisecond.
pub fn dataset(rng: &mut Rng, resources: u32, crowd: u32, t0: DateTime<Utc>) -> Vec<Version> {
    let start = (t0 - TimeDelta::days(4)).timestamp_millis();
    let span = TimeDelta::days(4).num_milliseconds() - 600_000;
    let mut versions = Vec::new();
    for r in 0..resources {
        let mut at = start + rng.below(span as u64) as i64;
        for v in 1..=1 + rng.below(3) as u32 {
            versions.push(Version {
                resource: r,
                version: v,
                at_ms: at,
            });
            at += 1 + rng.below(3_600_000) as i64;
        }
    }
    let crowd_at = start + span / 3;
    for k in 0..crowd {
        versions.push(Version {
            resource: resources + k,
            version: 1,
            at_ms: crowd_at,
        });
    }
    versions.retain(|v| v.at_ms < t0.timestamp_millis());
    versions.sort();
    versions
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap()
}

impl Sim {
    pub fn new(seed: u64, settings: MigrationSettings, resources: u32, crowd: u32, faults: Faults) -> Sim {
        let mut rng = Rng::new(seed);
        let versions = dataset(&mut rng, resources, crowd, t0());
        let mut world = World::new(seed.wrapping_mul(31), versions, t0());
        world.faults = faults;
        Sim {
            seed,
            settings,
            timing: Timing {
                confirm_delay: std::time::Duration::ZERO,
                lease: TimeDelta::minutes(2),
                // A simulated tick needs a few dozen actions; one that runs to this bound is a livelock.
                max_actions: 500,
                ..Timing::default()
            },
            world: Arc::new(Mutex::new(world)),
            rng,
            crash_rate: 0,
            two_shells: false,
            violations: Arc::new(Mutex::new(Vec::new())),
            ticks: 0,
        }
    }

    /// Makes the source behave like a live one: versions on the one-day window edges (on the edge millisecond
    /// and one either side: the edges of whole-day windows from the oldest version), a run of 1,210 consecutive
    /// occupied milliseconds up to the second edge (no empty one near enough, so the export's count must decide), `writes` versions written while the migration runs (new
    /// resources and new versions of old ones, some on one millisecond), a tenth of them visible only up to 200 s
    /// after their lastUpdated (late commits inside the safety lag, reference §11.10), each `_till` reading
    /// chosen by the seed per request kind, with AHDS's inclusive fallback on some parallel exports (§11.9), and
    /// the source's clock off the tool's by up to 15 minutes either way.
    pub fn live_source(&mut self, writes: u32) {
        let mut w = self.world.lock().unwrap_or_else(|p| p.into_inner());
        let day = TimeDelta::days(1).num_milliseconds();
        let first = w
            .source
            .iter()
            .map(|v| v.at_ms)
            .min()
            .unwrap_or(t0().timestamp_millis() - 3 * day);
        let mut next = 60_000u32;
        let mut add = |w: &mut World, at_ms: i64| {
            w.source.push(Version {
                resource: next,
                version: 1,
                at_ms,
            });
            next += 1;
        };
        for k in 1..=3 {
            for d in [-1, 0, 0, 1] {
                add(&mut w, first + k * day + d);
            }
        }
        for d in -1_200..10 {
            add(&mut w, first + 2 * day + d);
        }
        let start = t0().timestamp_millis();
        let mut last: HashMap<u32, (u32, i64)> = HashMap::new();
        for v in &w.source {
            let e = last.entry(v.resource).or_insert((v.version, v.at_ms));
            *e = (e.0.max(v.version), e.1.max(v.at_ms));
        }
        for i in 0..writes {
            let at_ms = start + self.rng.below(3 * 3_600_000) as i64;
            let existing = self.rng.chance(50).then(|| self.rng.below(40) as u32);
            let version = match existing.and_then(|r| last.get(&r).map(|l| (r, *l))) {
                Some((r, (n, at))) if at < at_ms => {
                    last.insert(r, (n + 1, at_ms));
                    Version {
                        resource: r,
                        version: n + 1,
                        at_ms,
                    }
                }
                _ => {
                    let r = 70_000 + i;
                    // Every fifth new resource shares the millisecond of the one before.
                    let at_ms = if i % 5 == 4 {
                        w.source.last().map_or(at_ms, |v| v.at_ms.max(start))
                    } else {
                        at_ms
                    };
                    Version {
                        resource: r,
                        version: 1,
                        at_ms,
                    }
                }
            };
            if self.rng.chance(10) {
                let delay = 1 + self.rng.below(200_000) as i64;
                w.late.insert(version, version.at_ms + delay);
            }
            w.source.push(version);
        }
        // A resource updated ten times while the migration runs, versions 9 and 10 on one millisecond (reference
        // §11.2: the destination's import keeps "9", which sorts higher as text).
        for v in 1..=10u32 {
            let at_ms = start + 3_600_000 + i64::from(v.min(9)) * 1_000;
            w.source.push(Version {
                resource: 80_000,
                version: v,
                at_ms,
            });
        }
        w.source.sort();
        w.source.dedup();
        // The source's clock off the tool's, either way, within and beyond the safety lag (300 s).
        w.source_skew = TimeDelta::seconds([-900, -120, 0, 0, 120, 900][self.rng.below(6) as usize]);
        // The destination's clock behind the others by more than the safety lag on some seeds: versions near the
        // frontier are refused as in the future, and the ledger retries them.
        w.destination_behind = TimeDelta::hours([0, 0, 0, 6][self.rng.below(4) as usize]);
        w.till_inclusive_parallel = self.rng.chance(30);
        w.till_inclusive_typed = self.rng.chance(50);
        w.inclusive_fallback = [0, 10, 50][self.rng.below(3) as usize];
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timer(&mut self) -> Timer {
        match self.rng.below(3) {
            0 => Timer::Starter,
            1 => Timer::ExportStatus,
            _ => Timer::ImportStatus,
        }
    }

    fn crash_plan(&mut self) -> CrashPlan {
        let crash = self.rng.chance(self.crash_rate);
        CrashPlan {
            at_call: crash.then(|| 1 + self.rng.below(40) as u32),
            after_effect: self.rng.chance(50),
            calls: 0,
            crashed: false,
        }
    }

    /// One round: one tick (or two interleaved), then the clock moves on.
    pub fn round(&mut self) {
        self.round_with(None);
    }

    /// A round with an operator's request interleaved with the ticks at every call, under its own crash plan
    /// (a command killed half way).
    pub fn round_with(&mut self, request: Option<Request>) {
        let shells = if self.two_shells { 2 } else { 1 };
        let mut ports = Vec::new();
        for _ in 0..shells + usize::from(request.is_some()) {
            ports.push(SimPorts {
                world: self.world.clone(),
                crash: Arc::new(Mutex::new(self.crash_plan())),
                violations: self.violations.clone(),
                settings: self.settings.clone(),
            });
        }
        let timers: Vec<Timer> = (0..shells).map(|_| self.timer()).collect();
        let now = self.world().now;
        let mut rng = Rng::new(self.rng.next());
        let failed = {
            let fail = FailPoints::default();
            let shells: Vec<Shell<SimPorts>> = ports[..shells]
                .iter()
                .map(|p| Shell {
                    ports: p,
                    settings: &self.settings,
                    timing: &self.timing,
                    telemetry: p,
                    fail: &fail,
                    export_table: "export",
                })
                .collect();
            type Tick<'t> =
                Pin<Box<dyn Future<Output = Result<crate::engine::TickReport, crate::engine::EngineError>> + 't>>;
            let mut ticks: Vec<Option<Tick>> = shells
                .iter()
                .zip(&timers)
                .map(|(s, t)| Some(Box::pin(Self::tick(s, *t, now)) as Tick))
                .collect();
            if let Some(request) = request {
                let p = &ports[ticks.len()];
                ticks.push(Some(Box::pin(async move {
                    request(p).await;
                    Ok(crate::engine::TickReport::default())
                })));
            }
            let waker = futures::task::noop_waker();
            let mut cx = TaskContext::from_waker(&waker);
            let mut failed = Vec::new();
            for _ in 0..1_000_000 {
                let live: Vec<usize> = (0..ticks.len()).filter(|i| ticks[*i].is_some()).collect();
                if live.is_empty() {
                    break;
                }
                let i = live[rng.below(live.len() as u64) as usize];
                if ports[i].crashed() {
                    ticks[i] = None;
                    continue;
                }
                if let Some(tick) = ticks[i].as_mut()
                    && let Poll::Ready(result) = tick.as_mut().poll(&mut cx)
                {
                    match result {
                        Err(e) if !e.is_conflict() && !e.to_string().contains(ports::INJECTED) => {
                            failed.push(format!("a tick failed: {e}"))
                        }
                        Ok(report) if report.lines.iter().any(|l| l.contains("This tick stopped after")) => failed
                            .push(format!(
                                "a tick ran to the action limit (a livelock): {:?}",
                                report.lines.iter().rev().take(3).collect::<Vec<_>>()
                            )),
                        _ => {}
                    }
                    ticks[i] = None;
                }
            }
            if ticks.iter().any(Option::is_some) {
                failed.push("a tick never finished".to_string());
            }
            failed
        };
        for f in failed {
            self.violate(f);
        }
        self.ticks += 1;
        let by = TimeDelta::seconds(20 + self.rng.below(60) as i64);
        self.world().advance(by);
    }

    /// Ports for an operator's request between rounds (no crash planned).
    pub fn operator(&self) -> SimPorts {
        SimPorts {
            world: self.world.clone(),
            crash: Arc::new(Mutex::new(CrashPlan::default())),
            violations: self.violations.clone(),
            settings: self.settings.clone(),
        }
    }

    /// One timer's tick as the engine runs it: the ImportStatus timer then runs the failure ledger's share
    /// with the ledger's own code (`Engine::import_status_tick`).
    async fn tick(
        shell: &Shell<'_, SimPorts>,
        timer: Timer,
        now: DateTime<Utc>,
    ) -> Result<crate::engine::TickReport, crate::engine::EngineError> {
        let mut report = shell.run(timer, now).await?;
        if timer == Timer::ImportStatus {
            for line in crate::engine::failures::ports::Work(shell.ports)
                .ledger_tick(now)
                .await?
            {
                report.say(line);
            }
        }
        Ok(report)
    }

    fn violate(&self, what: String) {
        self.violations.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the ledger has entries queued for a retry (the migration is not settled while it has).
    fn ledger_waiting(&self) -> bool {
        self.world()
            .ledger
            .values()
            .any(|(e, _)| e.state == crate::ledger::State::Retrying)
    }

    /// Whether every version the source had by the end of the run is committed: the cursor is past the last one.
    pub fn caught_up(&self) -> bool {
        let w = self.world();
        let last = w.source.iter().map(|v| v.at_ms).max().unwrap_or(0);
        w.cursor
            .as_ref()
            .and_then(|(c, _)| c.since)
            .is_some_and(|s| s.timestamp_millis() > last)
    }

    /// What the end state must satisfy: every source version at the destination, no job left running at a
    /// server, and no violation seen on the way.
    pub fn final_checks(&self) -> Vec<String> {
        let mut problems = self.violations();
        let w = self.world();
        // Versions the tool left out over the destination's capacity are named in the ledger: accounted for.
        let missing: Vec<&Version> = w
            .source
            .iter()
            .filter(|v| !w.destination.contains(v) && !w.named_in_ledger(v))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} source version(s) never reached the destination, first {:?}",
                missing.len(),
                missing[0]
            ));
        }
        // Left out only what could not fit: each millisecond a version was left out of is full at the destination.
        if let Some(cap) = w.faults.same_ms_capacity {
            for v in &w.named {
                let held = w
                    .destination
                    .iter()
                    .filter(|d| d.resource_type() == v.resource_type() && d.at_ms == v.at_ms)
                    .count();
                if held != cap {
                    problems.push(format!(
                        "{v:?} was left out over the capacity {cap}, but its millisecond holds {held} of its type"
                    ));
                }
            }
        } else if !w.named.is_empty() {
            problems.push(format!("{} version(s) left out with no capacity limit", w.named.len()));
        }
        // The destination's current version of each resource is the source's, or the source's is named.
        let mut current: BTreeMap<u32, u32> = BTreeMap::new();
        for v in &w.source {
            let c = current.entry(v.resource).or_default();
            *c = (*c).max(v.version);
        }
        for (r, version) in current {
            let there = w
                .destination
                .iter()
                .filter(|d| d.resource == r)
                .map(|d| d.version)
                .max();
            let named = w
                .source
                .iter()
                .any(|v| v.resource == r && v.version == version && w.named_in_ledger(v));
            if there != Some(version) && !named {
                problems.push(format!(
                    "resource {r}: the destination's current version is {there:?}, the source's {version}, and that is not named"
                ));
            }
        }
        problems.extend(ledger::problems(&w));
        let extra = w
            .destination
            .iter()
            .filter(|v| !w.source.contains(v) && !w.foreign.contains(v))
            .count();
        if extra > 0 {
            problems.push(format!("{extra} version(s) at the destination the source never had"));
        }
        let (exports, imports) = w.running_jobs();
        if imports > w.orphan_imports() {
            let running: Vec<String> = w
                .imports
                .iter()
                .enumerate()
                .filter(|(_, j)| j.result.is_none() && !j.cancelled && j.recorded)
                .map(|(i, j)| {
                    let url = format!("https://destination/_operations/import/{i}");
                    let row = w
                        .payloads
                        .values()
                        .find(|(p, _)| p.import_url == url)
                        .map(|(p, _)| (p.seq, p.export_attempt, p.index, p.attempt, p.status.to_string()));
                    format!("job {i} (hangs {}, row {row:?})", j.hangs)
                })
                .collect();
            problems.push(format!(
                "{imports} import job(s) left running at the destination ({} never recorded): {}",
                w.orphan_imports(),
                running.join(", ")
            ));
        }
        if exports > w.orphan_exports() {
            let running: Vec<String> = w
                .exports
                .iter()
                .enumerate()
                .filter(|(_, j)| !j.done && !j.cancelled && !j.vanished)
                .map(|(i, j)| {
                    let url = format!("https://source/_operations/export/{i}");
                    let row = w.jobs.values().find(|(r, _)| r.export_url == url).map(|(r, _)| r.seq);
                    format!("job {i} (hangs {}, recorded {}, window {row:?})", j.hangs, j.recorded)
                })
                .collect();
            problems.push(format!(
                "{exports} export job(s) left running at the source ({} never recorded): {}",
                w.orphan_exports(),
                running.join(", ")
            ));
        }
        problems
    }

    /// Runs `rounds` rounds with faults, then without faults or crashes until caught up (at most `settle`).
    pub fn run(&mut self, rounds: u32, settle: u32) -> Result<(), String> {
        // A schedule ends at its first violation: the seed and the violation are what matter, and a broken
        // engine (a mutant) is found in seconds instead of running every round.
        let failed = |sim: &Sim| {
            let v = sim.violations();
            (!v.is_empty()).then(|| format!("seed {}: {}", sim.seed, v.join("; ")))
        };
        for _ in 0..rounds {
            self.round();
            if let Some(e) = failed(self) {
                return Err(e);
            }
        }
        {
            // Limits that are the servers' nature stay; misbehaviour stops.
            let mut w = self.world();
            w.calm_since = Some(w.now);
            w.faults = Faults {
                export_max_versions: w.faults.export_max_versions,
                same_ms_capacity: w.faults.same_ms_capacity,
                id_refusals_over: w.faults.id_refusals_over,
                ..Faults::default()
            };
        }
        self.crash_rate = 0;
        for _ in 0..settle {
            if self.caught_up() && self.world().running_jobs().1 == 0 && !self.ledger_waiting() {
                break;
            }
            self.round();
            if let Some(e) = failed(self) {
                return Err(e);
            }
        }
        // A few more rounds so timers poll what is left.
        for _ in 0..6 {
            self.round();
        }
        let mut problems = self.final_checks();
        if !self.caught_up() {
            let w = self.world();
            problems.push(format!(
                "not caught up after {} rounds: cursor {:?}, windows {:?}",
                self.ticks,
                w.cursor
                    .as_ref()
                    .map(|(c, _)| (c.since, c.committed_job, c.next_job, c.failures)),
                w.jobs
                    .values()
                    .filter(|(j, _)| !j.processed)
                    .map(|(j, _)| (
                        j.seq,
                        j.export_status.to_string(),
                        j.import_status.to_string(),
                        j.failure_reason.clone()
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("seed {}: {}", self.seed, problems.join("; ")))
        }
    }
}
