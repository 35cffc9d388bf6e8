//! The CLI's operations beyond `serve`: run the timers without a Functions host, show progress, preview the
//! plan. They call the same engine the Functions call.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::app::App;
use crate::engine::{MigrationStatus, TickReport, progress};

pub mod args;
pub mod outcome;
pub mod redrive;

/// How `run` paces the three timers.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The starter (`MigrationOrchestrator`) interval.
    pub starter_every: Duration,
    /// The `ExportStatus` and `ImportStatus` interval.
    pub poll_every: Duration,
    /// Stop once everything up to the frontier is migrated and nothing is in flight.
    pub until_caught_up: bool,
    /// Stop after this long in any case.
    pub max_duration: Option<Duration>,
}

/// One timer's tick, logged inside a span naming the function: the engine logs each line of its report once
/// (printing the report again made every message appear twice). A conflict is another invocation's turn.
async fn tick<F>(function: &'static str, work: F)
where
    F: std::future::Future<Output = Result<TickReport, crate::engine::EngineError>>,
{
    use tracing::Instrument as _;
    let span = tracing::info_span!("function", name = function);
    async {
        match work.await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => tracing::warn!("failed (the next tick tries again): {e}"),
        }
    }
    .instrument(span)
    .await
}

/// How often `run` logs a progress line (the ticks' own lines say what each step did).
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// The status's first line without its label: `running — 61.7% done, caught up in about 6 h 22 min`.
fn headline(s: &MigrationStatus) -> String {
    format_status(s)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("state:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Drives the three timers like the Functions host would, until stopped (Ctrl-C), caught up, or timed out.
/// Returns the final status. Like the timers under the host, it rides out outages of storage or of a server:
/// a failed tick or status read is logged and tried again on the next round; only the deadline, a stop, or
/// (with `until_caught_up`) a halted migration end it.
pub async fn run(
    app: &App,
    options: &RunOptions,
    mut stop: impl std::future::Future<Output = ()> + Unpin,
) -> Result<MigrationStatus, String> {
    let engine = app.engine();
    let started = Instant::now();
    let deadline = options.max_duration.map(|d| started + d);
    let mut next_starter = Instant::now();
    let mut last_status = None;
    let mut first_migrated: Option<i64> = None;
    let mut next_progress = Instant::now() + PROGRESS_EVERY;
    loop {
        let now = Utc::now();
        if Instant::now() >= next_starter {
            tick("MigrationOrchestrator", engine.starter_tick(now)).await;
            next_starter = Instant::now() + options.starter_every;
        }
        tick("ExportStatus", engine.export_status_tick(now)).await;
        tick("ImportStatus", engine.import_status_tick(now)).await;
        match engine.status(Utc::now()).await {
            Ok(status) => {
                let migrated = status.progress.migrated_versions;
                let since_start = migrated - *first_migrated.get_or_insert(migrated);
                if Instant::now() >= next_progress {
                    next_progress = Instant::now() + PROGRESS_EVERY;
                    tracing::info!("progress: {} ({since_start} versions this run)", headline(&status));
                }
                if options.until_caught_up && caught_up(app, &status) {
                    tracing::info!(
                        "run: caught up after {}; {since_start} versions migrated this run",
                        progress::duration_text(started.elapsed().as_secs() as i64)
                    );
                    return Ok(status);
                }
                if status.halted && options.until_caught_up {
                    return Err("the migration is halted; see `status` for the failing window, fix the cause, then run `clear-retries`".into());
                }
                last_status = Some(status);
            }
            Err(e) => tracing::warn!("could not read the migration's status (tried again next round): {e}"),
        }
        let pause = match deadline {
            Some(d) if Instant::now() >= d => {
                return last_status.ok_or_else(|| {
                    "stopped at --max-seconds without ever reading the migration's status (storage unreachable?)"
                        .to_string()
                });
            }
            Some(d) => options.poll_every.min(d - Instant::now()),
            None => options.poll_every,
        };
        tokio::select! {
            _ = &mut stop => {
                return last_status.ok_or_else(|| "stopped before the migration's status could be read".to_string());
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Nothing in flight and migrated through at least where the next window would end.
fn caught_up(app: &App, status: &MigrationStatus) -> bool {
    let engine = app.engine();
    let frontier = crate::planner::frontier(engine.settings(), engine.clock(Utc::now())) - crate::planner::MIN_TAIL;
    status.windows_in_flight.is_empty()
        && status
            .migrated_through
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t >= frontier)
}

/// A human-readable status.
pub fn format_status(s: &MigrationStatus) -> String {
    let p = &s.progress;
    let mut headline = p.state.as_str().to_string();
    if !p.state_detail.is_empty() {
        headline.push_str(&format!(" ({})", p.state_detail));
    }
    if let Some(pct) = p.percent_versions.or(p.percent_time) {
        headline.push_str(&format!(" — {}% done", percent(pct)));
    }
    if let (Some(eta), crate::engine::progress::State::Running | crate::engine::progress::State::Paused) =
        (p.eta_seconds, p.state)
    {
        headline.push_str(&format!(", caught up in about {}", progress::duration_text(eta)));
    }
    let mut out = vec![format!("state:             {headline}")];
    let rate = p
        .versions_per_hour
        .map(|r| format!(", {} versions/h over the last hour", thousands(r.round() as i64)))
        .unwrap_or_default();
    out.push(match p.source_versions {
        Some(total) => format!(
            "migrated:          {} of {} versions at the destination{rate} (source counted {})",
            thousands(p.migrated_versions),
            thousands(total),
            p.source_counted_at.as_deref().unwrap_or("-")
        ),
        None => format!(
            "migrated:          {} versions at the destination{rate}",
            thousands(p.migrated_versions)
        ),
    });
    if p.exported_versions != p.migrated_versions {
        out.push(format!(
            "                   {} exported, {} of them not at the destination (see `failures`)",
            thousands(p.exported_versions),
            thousands(p.exported_versions - p.migrated_versions)
        ));
    }
    out.push(format!(
        "migrated through:  {}{}",
        s.migrated_through.as_deref().unwrap_or("(not started)"),
        p.percent_time
            .map(|pct| format!(" ({pct:.1}% of the time range)"))
            .unwrap_or_default()
    ));
    // A finished specific run is not "behind": it stopped where it was asked to.
    if let Some(lag) = s
        .lag_seconds
        .filter(|_| p.state != crate::engine::progress::State::Finished)
    {
        out.push(format!("behind now by:     {}", progress::duration_text(lag)));
    }
    if let (Some(at), Some(ago)) = (&s.last_tick_at, s.last_tick_seconds_ago) {
        out.push(format!(
            "last timer tick:   {at} ({} ago)",
            progress::duration_text(ago)
        ));
    }
    out.push(format!("source:            {}", s.source));
    out.push(format!("destination:       {}", s.destination));
    out.push(format!("windows committed: {}", s.windows_committed));
    out.push(format!(
        "failures:          {}{}",
        s.failures,
        s.max_failures
            .map(|m| format!(" counted (halts at {m})"))
            .unwrap_or_else(|| " counted".into())
    ));
    let f = &s.import_failures;
    if f.total > 0 {
        out.push(format!(
            "import failures:   {}{}",
            f.line(),
            if f.permanent_unresolved > 0 {
                " — see `failures`"
            } else {
                ""
            }
        ));
    }
    for named in &s.open_failures {
        out.push(format!("  not at the destination: {named}"));
    }
    if s.open_failures.len() < f.permanent_unresolved {
        out.push(format!(
            "  … and {} more (`failures` lists them all)",
            f.permanent_unresolved - s.open_failures.len()
        ));
    }
    if let Some(r) = &s.redrive {
        out.push(format!("re-drive:          {}", redrive::line(r)));
    }
    if s.windows_in_flight.is_empty() {
        out.push("in flight:         nothing".into());
    }
    for w in &s.windows_in_flight {
        out.push(format!(
            "window {:>5}  {} .. {}  export {} ({}){}  import {}{}",
            w.sequence,
            w.since,
            w.till,
            w.export_status,
            if w.export_id.is_empty() { "-" } else { &w.export_id },
            if w.export_attempt > 1 {
                format!(" attempt {}", w.export_attempt)
            } else {
                String::new()
            },
            w.import_status,
            w.redrive.map(|id| format!("  (re-drive {id})")).unwrap_or_default()
        ));
        if !w.failure_reason.is_empty() {
            out.push(format!("              failure: {}", w.failure_reason));
        }
        for p in &w.payloads {
            out.push(format!(
                "              payload {} {} (attempt {}): {} imported, {} failed lines",
                p.index, p.status, p.attempt, p.imported, p.failed_lines
            ));
        }
    }
    if let Some(skew) = s.source_clock_skew_seconds.filter(|k| k.abs() >= 5) {
        out.push(format!(
            "clock:             the timers' machine is {} s {} the source server{}",
            skew.abs(),
            if skew > 0 { "ahead of" } else { "behind" },
            s.source_clock_skew_measured_at
                .as_deref()
                .map(|t| format!(" (measured {t})"))
                .unwrap_or_default()
        ));
    }
    if let Some(r) = &s.reminder {
        out.push(format!("reminder:          {r}"));
    }
    out.join("\n")
}

/// `plan` as text: the mode first (what one export carries), then the exports `run` would start next.
pub fn format_plan(parallel: bool, plan: &[crate::engine::PlannedWindow]) -> String {
    let mut out = vec![if parallel {
        "parallel mode: one export per window carries every type (AZURE_ExportChunkTime)".to_string()
    } else {
        "per-type mode: one export per type and window, in AZURE_ResourceTypes order; types with nothing in a window are skipped (AZURE_ResourceExportChunkTime)".to_string()
    }];
    if plan.is_empty() {
        out.push("nothing to export now (caught up, or the source is empty)".into());
        return out.join("\n");
    }
    let head = |t: &str, s: &str, e: &str, r: &str, h: &str| {
        if parallel {
            format!("{s:<26} {e:<26} {r:>12} {h:>9}")
        } else {
            format!("{t:<28} {s:<26} {e:<26} {r:>12} {h:>9}")
        }
    };
    out.push(head("type", "since", "till", "resources", "halvings"));
    for w in plan {
        out.push(head(
            w.resource_type.as_deref().unwrap_or("*"),
            &w.since,
            &w.till,
            &thousands(w.resources as i64),
            &w.halvings.to_string(),
        ));
    }
    out.join("\n")
}

/// A percentage to one decimal, rounded down: 100.0 only when everything is done (99.98 is `99.9`).
pub fn percent(pct: f64) -> String {
    if pct >= 100.0 {
        "100.0".into()
    } else {
        format!("{:.1}", ((pct.max(0.0) * 10.0).floor() / 10.0).min(99.9))
    }
}

/// `1,234,567` (kept with the progress output, which the CLI's reports use too).
pub use crate::terminal::thousands;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::progress::{Progress, State};

    fn status(progress: Progress) -> MigrationStatus {
        MigrationStatus {
            progress,
            source: "https://src.azurehealthcareapis.com/".into(),
            destination: "https://ws-dst.fhir.azurehealthcareapis.com/".into(),
            migrated_through: Some("2026-11-01T00:00:00.000Z".into()),
            lag_seconds: Some(29 * 86_400),
            windows_in_flight: Vec::new(),
            windows_committed: 120,
            failures: 0,
            max_failures: None,
            halted: false,
            paused: false,
            search_parameters_copied: true,
            search_parameter_count: 0,
            reminder: None,
            import_failures: Default::default(),
            open_failures: Vec::new(),
            source_clock_skew_seconds: Some(0),
            source_clock_skew_measured_at: None,
            last_tick_at: Some("2026-11-30T20:59:30.000Z".into()),
            last_tick_seconds_ago: Some(30),
            waiting: None,
            redrive: None,
        }
    }

    fn progress(state: State, detail: &str) -> Progress {
        Progress {
            state,
            state_detail: detail.into(),
            migrated_versions: 1_234_567,
            source_versions: Some(2_000_000),
            source_counted_at: Some("2026-11-30T20:00:00.000Z".into()),
            percent_versions: Some(61.72835),
            percent_time: Some(92.0),
            versions_per_hour: Some(120_000.4),
            eta_seconds: Some(6 * 3600 + 22 * 60),
            exported_versions: 1_234_567,
        }
    }

    /// The human status reads in five seconds: state, how much, how fast, when (golden text, time fixed).
    #[test]
    fn the_human_status_of_a_running_migration() {
        let text = format_status(&status(progress(State::Running, "")));
        let expected = "\
state:             running — 61.7% done, caught up in about 6 h 22 min
migrated:          1,234,567 of 2,000,000 versions at the destination, 120,000 versions/h over the last hour (source counted 2026-11-30T20:00:00.000Z)
migrated through:  2026-11-01T00:00:00.000Z (92.0% of the time range)
behind now by:     29 days 0 h
last timer tick:   2026-11-30T20:59:30.000Z (30 s ago)
source:            https://src.azurehealthcareapis.com/
destination:       https://ws-dst.fhir.azurehealthcareapis.com/
windows committed: 120
failures:          0 counted
in flight:         nothing";
        assert_eq!(text, expected);
    }

    /// Issue 25: a stopped Function App is not "running"; it says since when nothing has run.
    #[test]
    fn the_status_of_a_stalled_migration() {
        let mut s = status(progress(
            State::Stalled,
            "no timer tick since 2026-11-30T20:45:00.000Z, 14 min ago: start the Function App (or `run`) and check its log",
        ));
        s.progress.eta_seconds = None;
        s.last_tick_at = Some("2026-11-30T20:45:00.000Z".into());
        s.last_tick_seconds_ago = Some(14 * 60);
        let text = format_status(&s);
        let head: Vec<&str> = text.lines().take(5).collect();
        assert_eq!(
            head,
            [
                "state:             STALLED (no timer tick since 2026-11-30T20:45:00.000Z, 14 min ago: start the Function App (or `run`) and check its log) — 61.7% done",
                "migrated:          1,234,567 of 2,000,000 versions at the destination, 120,000 versions/h over the last hour (source counted 2026-11-30T20:00:00.000Z)",
                "migrated through:  2026-11-01T00:00:00.000Z (92.0% of the time range)",
                "behind now by:     29 days 0 h",
                "last timer tick:   2026-11-30T20:45:00.000Z (14 min ago)",
            ]
        );
    }

    /// Issue 25: an outage says which server, what it answers, since when and how many times, and the failures
    /// counted from it.
    #[test]
    fn the_status_of_a_migration_waiting_for_a_server() {
        let mut s = status(progress(
            State::Waiting,
            "the source answers HTTP 503 since 2026-11-30T20:57:00.000Z (2 min ago), 7 time(s) in a row",
        ));
        s.progress.eta_seconds = None;
        s.failures = 1;
        s.max_failures = Some(3);
        s.waiting = Some(crate::engine::Waiting {
            server: "source".into(),
            answer: "HTTP 503".into(),
            since: Some("2026-11-30T20:57:00.000Z".into()),
            times: 7,
        });
        let text = format_status(&s);
        assert_eq!(
            text.lines().next(),
            Some(
                "state:             waiting (the source answers HTTP 503 since 2026-11-30T20:57:00.000Z (2 min ago), 7 time(s) in a row) — 61.7% done"
            )
        );
        assert!(
            text.lines().any(|l| l == "failures:          1 counted (halts at 3)"),
            "{text}"
        );
    }

    /// Issue 25: "migrated" is what is at the destination; open failures are named with their keys; nothing
    /// short of everything reads 100.0%; the skew the timers measured shows.
    #[test]
    fn the_status_of_a_halted_migration_names_what_is_missing() {
        let mut p = progress(State::Halted, "window 7: import refused 1 line (Halt policy)");
        p.eta_seconds = None;
        p.migrated_versions = 5_516;
        p.exported_versions = 5_517;
        p.source_versions = Some(5_517);
        p.percent_versions = Some(5_516.0 * 100.0 / 5_517.0);
        p.versions_per_hour = None;
        let mut s = status(p);
        s.import_failures = crate::ledger::Summary {
            total: 1,
            permanent_unresolved: 1,
            ..Default::default()
        };
        s.open_failures = vec!["Patient|p1|3: Patient/p1 version 3 (2026-11-01T00:00:00.000Z): conflict".into()];
        s.source_clock_skew_seconds = Some(-42);
        s.source_clock_skew_measured_at = Some("2026-11-30T20:59:00.000Z".into());
        let text = format_status(&s);
        let expected = "\
state:             HALTED (window 7: import refused 1 line (Halt policy)) — 99.9% done
migrated:          5,516 of 5,517 versions at the destination (source counted 2026-11-30T20:00:00.000Z)
                   5,517 exported, 1 of them not at the destination (see `failures`)
migrated through:  2026-11-01T00:00:00.000Z (92.0% of the time range)
behind now by:     29 days 0 h
last timer tick:   2026-11-30T20:59:30.000Z (30 s ago)
source:            https://src.azurehealthcareapis.com/
destination:       https://ws-dst.fhir.azurehealthcareapis.com/
windows committed: 120
failures:          0 counted
import failures:   1 not at the destination (1 permanent, 0 retried automatically); 0 resolved, 0 benign, 0 accepted — see `failures`
  not at the destination: Patient|p1|3: Patient/p1 version 3 (2026-11-01T00:00:00.000Z): conflict
in flight:         nothing
clock:             the timers' machine is 42 s behind the source server (measured 2026-11-30T20:59:00.000Z)";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_percentage_never_rounds_up_to_done() {
        assert_eq!(percent(99.98), "99.9");
        assert_eq!(percent(100.0), "100.0");
        assert_eq!(percent(46.46), "46.4");
        assert_eq!(percent(0.0), "0.0");
    }

    #[test]
    fn every_state_has_its_headline() {
        for (state, detail, headline) in [
            (State::NotStarted, "", "state:             not started — 61.7% done"),
            (
                State::Paused,
                "until 06:00 UTC",
                "state:             paused (until 06:00 UTC) — 61.7% done, caught up in about 6 h 22 min",
            ),
            (
                State::Halted,
                "window 7: refused 3 times",
                "state:             HALTED (window 7: refused 3 times) — 61.7% done",
            ),
            (State::CaughtUp, "", "state:             caught up — 61.7% done"),
            (
                State::Finished,
                "the end date is reached",
                "state:             finished (the end date is reached) — 61.7% done",
            ),
        ] {
            let text = format_status(&status(progress(state, detail)));
            assert_eq!(text.lines().next(), Some(headline), "{state:?}");
            assert_eq!(text.contains("behind now by"), state != State::Finished, "{state:?}");
        }
    }

    #[test]
    fn the_progress_json_is_stable() {
        let v = serde_json::to_value(status(progress(State::CaughtUp, ""))).unwrap();
        let keys: Vec<&str> = v["progress"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "state",
                "stateDetail",
                "migratedVersions",
                "sourceVersions",
                "sourceCountedAt",
                "percentVersions",
                "percentTime",
                "versionsPerHour",
                "etaSeconds",
                "exportedVersions"
            ]
        );
        assert_eq!(v["progress"]["state"], "caughtUp");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
    }
}
