//! The simulator's side of [`Ports`]: every call is a point where the other shell may run first and where a
//! crash may stop this one (before the call takes effect, or after it took effect but before its answer is
//! seen). Writes are compare-and-swap on ETags, as Table storage does them, and check the invariants that a
//! write can break.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{DateTime, Utc};

use super::CrashPlan;
use super::world::World;
use crate::config::MigrationSettings;
use crate::engine::EngineError;
use crate::engine::core::rules::{WindowPhase, window_phase};
use crate::engine::core::{Answer, ExportPoll, ImportPoll, Snapshot, Totals, Write};
use crate::engine::error_files::ErrorSummary;
use crate::engine::failures::ports::Work;
use crate::engine::ports::{Ports, Written};
use crate::state::Payload;
use crate::state::rows::ImportStatus;
use crate::storage::tables::TableError;
use crate::telemetry::{Event, Telemetry};

/// A poll the client gave up on after the server's Retry-After waits (what `FhirClient` reports).
pub(super) const THROTTLED: &str = "HTTP 429 Too Many Requests after 6 attempts (Retry-After honoured)";

pub struct SimPorts {
    pub world: Arc<Mutex<World>>,
    pub crash: Arc<Mutex<CrashPlan>>,
    pub violations: Arc<Mutex<Vec<String>>>,
    pub settings: MigrationSettings,
}

/// Pending once: lets the driver run the other shell between two calls.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            // Ready to go on at the next poll: combinators that poll only woken children (`buffered`, in the
            // ledger's recording) must see it.
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

pub(super) fn conflict() -> TableError {
    TableError::Conflict {
        table: "sim".into(),
        partition_key: String::new(),
        row_key: String::new(),
    }
}

pub(super) fn exists() -> TableError {
    TableError::AlreadyExists {
        table: "sim".into(),
        partition_key: String::new(),
        row_key: String::new(),
    }
}

/// A Table storage failure the schedule injected (a failed tick, never a violation by itself).
pub(super) fn injected(status: u16, code: &str) -> TableError {
    TableError::Service {
        operation: "sim",
        table: "sim".into(),
        status,
        code: code.into(),
        message: INJECTED.into(),
    }
}

/// Marks the storage failures the simulator injects.
pub const INJECTED: &str = "injected by the simulator";

impl SimPorts {
    /// Table storage answering 503 before a call takes effect.
    pub(super) fn storage_fault(&self, _what: &str) -> Result<(), TableError> {
        let mut w = self.world();
        let p = w.faults.table_unavailable;
        if w.rng.chance(p) {
            return Err(injected(503, "ServerBusy"));
        }
        Ok(())
    }

    /// A write's answer, or (by the schedule's fault rate) a timeout after it took effect: the caller cannot
    /// tell it happened.
    pub(super) fn maybe_timed_out<T>(&self, result: Result<T, TableError>) -> Result<T, TableError> {
        if result.is_ok() {
            let mut w = self.world();
            let p = w.faults.table_timeout;
            if w.rng.chance(p) {
                return Err(injected(500, "OperationTimedOut"));
            }
        }
        result
    }

    pub fn crashed(&self) -> bool {
        self.crash.lock().unwrap_or_else(|p| p.into_inner()).crashed
    }

    pub(super) fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn violate(&self, what: String) {
        self.violations.lock().unwrap_or_else(|p| p.into_inner()).push(what);
    }

    /// Before a call: yield to the other shell, then crash here if planned.
    pub(super) async fn enter(&self) {
        YieldOnce(false).await;
        let stop = {
            let mut c = self.crash.lock().unwrap_or_else(|p| p.into_inner());
            c.calls += 1;
            if c.at_call == Some(c.calls) && !c.after_effect {
                c.crashed = true;
            }
            c.crashed
        };
        if stop {
            std::future::pending::<()>().await;
        }
    }

    /// After a call took effect: crash here if planned (its answer is lost). True when it crashed.
    fn crashes_after(&self) -> bool {
        let mut c = self.crash.lock().unwrap_or_else(|p| p.into_inner());
        if c.at_call == Some(c.calls) && c.after_effect {
            c.crashed = true;
        }
        c.crashed
    }

    pub(super) async fn leave(&self) {
        if self.crashes_after() {
            std::future::pending::<()>().await;
        }
    }

    /// What a load would read now.
    pub fn snapshot_of(w: &mut World) -> Snapshot {
        Self::snapshot(w)
    }

    fn snapshot(w: &mut World) -> Snapshot {
        let cursor = Self::cursor_of(w);
        Self::rows_of(w, cursor)
    }

    /// The cursor as stored (created when missing): the first of a load's two reads.
    fn cursor_of(w: &mut World) -> crate::state::Cursor {
        if w.cursor.is_none() {
            let n = w.next_etag();
            w.cursor = Some((crate::state::Cursor::new(), n));
        }
        let (mut cursor, n) = w.cursor.clone().expect("created");
        cursor.etag = World::etag(n);
        cursor
    }

    /// The rows the cursor names, as stored now: the second read, which another writer may have changed since
    /// the first (Table storage reads no two tables, or two queries, atomically).
    fn rows_of(w: &mut World, cursor: crate::state::Cursor) -> Snapshot {
        let range = cursor.committed_job..=cursor.next_job;
        let jobs = w
            .jobs
            .range(range.clone())
            .map(|(_, (j, n))| crate::state::Job {
                etag: World::etag(*n),
                ..j.clone()
            })
            .collect();
        let payloads = w
            .payloads
            .values()
            .filter(|(p, _)| range.contains(&p.seq))
            .map(|(p, n)| crate::state::Payload {
                etag: World::etag(*n),
                ..p.clone()
            })
            .collect();
        Snapshot { cursor, jobs, payloads }
    }

    /// Whether this poll is answered 429 past the client's retries.
    fn throttled(&self) -> bool {
        let mut w = self.world();
        let p = w.faults.poll_throttled;
        w.rng.chance(p)
    }

    /// The invariants a cursor write can break: the cursor never moves back, and a window commits only when it
    /// is processed with every payload of its current attempt imported.
    fn check_cursor(&self, w: &World, old: &crate::state::Cursor, new: &crate::state::Cursor) {
        if let (Some(a), Some(b)) = (old.since, new.since)
            && b < a
        {
            self.violate(format!("the cursor moved back from {a} to {b}"));
        }
        if new.committed_job < old.committed_job {
            self.violate("the committed window count went down".into());
        }
        // What lies below the cursor is at the destination: every version with a lastUpdated before it (late
        // commits included: they become visible within the safety lag, before a window can end after them).
        if let Some(since) = new.since
            && old.since != new.since
        {
            let below = since.timestamp_millis();
            let from = new.first_since.map_or(i64::MIN, |f| f.timestamp_millis());
            if let Some(v) = w.source.iter().find(|v| {
                (from..below).contains(&v.at_ms)
                    && !w.destination.contains(v)
                    && !w.named_in_ledger(v)
                    && !w.removed_by_operator.contains(v)
            }) {
                self.violate(format!(
                    "the cursor moved to {since} while version {v:?} below it is not at the destination"
                ));
            }
        }
        // A committed window's end is covered by a SearchParameter sync.
        if new.committed_job > old.committed_job
            && let Some((job, _)) = w.jobs.get(&(new.committed_job - 1))
            && new.search_parameters_synced_at.is_none_or(|s| s < job.till)
        {
            self.violate(format!(
                "window {} committed before a SearchParameter sync covered its end {}",
                job.seq, job.till
            ));
        }
        for seq in old.committed_job..new.committed_job {
            let Some((job, _)) = w.jobs.get(&seq) else {
                self.violate(format!("window {seq} committed without a row"));
                continue;
            };
            if window_phase(job) != WindowPhase::Processed {
                self.violate(format!("window {seq} committed while {:?}", window_phase(job)));
            }
            let payloads: Vec<_> = w
                .payloads
                .values()
                .filter(|(p, _)| p.seq == seq && p.export_attempt == job.attempt)
                .collect();
            if payloads.len() as i64 != job.payloads
                || payloads.iter().any(|(p, _)| p.status != ImportStatus::Completed)
            {
                self.violate(format!("window {seq} committed with a payload not imported"));
            }
        }
    }

    /// Imports in flight (rows that hold a running import of a current attempt) never exceed the cap.
    fn check_cap(&self, w: &World) {
        let running = w
            .payloads
            .values()
            .filter(|(p, _)| {
                matches!(p.status, ImportStatus::Started | ImportStatus::Running)
                    && w.jobs.get(&p.seq).is_some_and(|(j, _)| j.attempt == p.export_attempt)
            })
            .count();
        if running > self.settings.payload_count {
            self.violate(format!(
                "{running} imports in flight, over the cap of {}",
                self.settings.payload_count
            ));
        }
    }
}

impl Telemetry for SimPorts {
    fn event(&self, event: Event) {
        let mut w = self.world();
        if event.name == "ImportTill" {
            let till = event.get("Till").and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            let since = w.cursor.as_ref().and_then(|(c, _)| c.since);
            if till.is_none_or(|t| since.is_none_or(|s| t > s)) {
                drop(w);
                self.violate(format!(
                    "ImportTill {:?} ahead of the cursor {since:?}",
                    event.get("Till")
                ));
                return;
            }
        }
        w.events.push(event);
    }
}

impl Ports for SimPorts {
    fn nonce(&self) -> u64 {
        self.world().rng.next()
    }

    async fn load(&self) -> Result<Snapshot, EngineError> {
        self.enter().await;
        self.storage_fault("load")?;
        let cursor = Self::cursor_of(&mut self.world());
        // The other shell may write between the two reads.
        YieldOnce(false).await;
        let snapshot = Self::rows_of(&mut self.world(), cursor);
        Ok(snapshot)
    }

    async fn write(&self, write: &Write) -> Result<Written, TableError> {
        self.enter().await;
        self.storage_fault("write")?;
        let result = {
            let mut w = self.world();
            let n = w.next_etag();
            let stored = |mut row: Written| {
                match &mut row {
                    Written::Cursor(c) => c.etag = World::etag(n),
                    Written::Job(j) => j.etag = World::etag(n),
                    Written::Payload(p) => p.etag = World::etag(n),
                }
                row
            };
            match write {
                Write::Cursor(c) => match w.cursor.clone() {
                    Some((old, tag)) if World::etag_matches(&c.etag, tag) && c.etag.is_some() => {
                        self.check_cursor(&w, &old, c);
                        w.cursor = Some((c.clone(), n));
                        Ok(stored(Written::Cursor(c.clone())))
                    }
                    _ => Err(conflict()),
                },
                Write::InsertJob(j) => match w.jobs.entry(j.seq) {
                    std::collections::btree_map::Entry::Occupied(_) => Err(exists()),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert((j.clone(), n));
                        Ok(stored(Written::Job(j.clone())))
                    }
                },
                Write::Job(j) => match w.jobs.get(&j.seq) {
                    Some((_, tag)) if World::etag_matches(&j.etag, *tag) => {
                        if let Some(id) = j.export_url.rsplit('/').next().and_then(|n| n.parse::<usize>().ok()) {
                            w.exports[id].recorded = true;
                        }
                        w.jobs.insert(j.seq, (j.clone(), n));
                        Ok(stored(Written::Job(j.clone())))
                    }
                    _ => Err(conflict()),
                },
                Write::InsertPayload(p) => {
                    let key = (p.seq, p.export_attempt, p.index);
                    match w.payloads.get(&key) {
                        Some((existing, tag)) => Ok(Written::Payload(crate::state::Payload {
                            etag: World::etag(*tag),
                            ..existing.clone()
                        })),
                        None => {
                            w.payloads.insert(key, (p.clone(), n));
                            Ok(stored(Written::Payload(p.clone())))
                        }
                    }
                }
                Write::Payload(p) => {
                    let key = (p.seq, p.export_attempt, p.index);
                    match w.payloads.get(&key) {
                        Some((_, tag)) if World::etag_matches(&p.etag, *tag) => {
                            if let Some(id) = p.import_url.rsplit('/').next().and_then(|n| n.parse::<usize>().ok()) {
                                w.imports[id].recorded = true;
                            }
                            w.payloads.insert(key, (p.clone(), n));
                            self.check_cap(&w);
                            Ok(stored(Written::Payload(p.clone())))
                        }
                        _ => Err(conflict()),
                    }
                }
            }
        };
        self.leave().await;
        self.maybe_timed_out(result)
    }

    async fn count(&self, t: Option<&str>, since: DateTime<Utc>, till: DateTime<Utc>) -> Result<u64, EngineError> {
        self.enter().await;
        Ok(self.world().count(t, since, till))
    }

    async fn oldest(&self, from: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, EngineError> {
        self.enter().await;
        Ok(self.world().oldest(from))
    }

    async fn kick_off(&self, query: &str) -> Answer {
        self.enter().await;
        let answer = self.world().kick_off(query);
        self.leave().await;
        answer
    }

    async fn poll_export(&self, url: &str, _confirm: bool) -> ExportPoll {
        self.enter().await;
        if self.throttled() {
            return ExportPoll::Unreachable(THROTTLED.into());
        }
        let poll = self.world().poll_export(url);
        self.leave().await;
        poll
    }

    async fn export_file_etags(&self, urls: &[String]) -> Vec<crate::engine::core::confirm::EtagLookup> {
        use crate::engine::core::confirm::EtagLookup;
        self.enter().await;
        let mut w = self.world();
        let (fails, forbidden) = (w.faults.etag_lookup_fails, w.faults.etag_forbidden);
        let (outage, refused) = (w.rng.chance(fails), w.rng.chance(forbidden));
        urls.iter()
            .map(|url| {
                if outage && w.rng.chance(50) {
                    EtagLookup::Failed("503 Service Unavailable".into())
                } else if refused {
                    EtagLookup::Forbidden
                } else {
                    EtagLookup::Found(Some(World::etag_of(url)))
                }
            })
            .collect()
    }

    async fn post(&self, body: &serde_json::Value) -> Answer {
        self.enter().await;
        if let Some(problem) = self.world().outside_its_window(body) {
            self.violate(problem);
        }
        let answer = self.world().post(body);
        self.leave().await;
        answer
    }

    async fn poll_import(&self, url: &str) -> ImportPoll {
        self.enter().await;
        if self.throttled() {
            return ImportPoll::Unreachable(THROTTLED.into());
        }
        let poll = self.world().poll_import(url);
        self.leave().await;
        poll
    }

    async fn cancel(&self, url: &str, destination: bool) -> crate::engine::core::rules::CancelAnswer {
        self.enter().await;
        let answer = {
            let mut w = self.world();
            let unreachable = w.faults.cancel_unreachable;
            if w.rng.chance(unreachable) {
                crate::engine::core::rules::CancelAnswer::Unsent("could not connect".to_string())
            } else {
                w.cancel(url, destination)
            }
        };
        self.leave().await;
        answer
    }

    async fn totals(&self) -> Totals {
        self.enter().await;
        let w = self.world();
        Totals {
            source: w.source.len().to_string(),
            destination: w.destination.len().to_string(),
            ..Totals::default()
        }
    }

    async fn copy_search_parameters(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<crate::engine::search_parameters::SearchParameterSync, String> {
        self.enter().await;
        let mut w = self.world();
        let fails = w.faults.search_parameter_sync_fails;
        if w.rng.chance(fails) {
            return Err("the destination answered 503".into());
        }
        w.search_parameter_syncs += 1;
        w.search_parameter_since.push(since);
        Ok(w.search_parameter_answer.take().unwrap_or_default())
    }

    async fn put_blob(&self, container: &str, name: &str, body: Vec<u8>, _new: bool) -> Result<(), EngineError> {
        self.enter().await;
        self.world().blobs.insert((container.into(), name.into()), body);
        self.leave().await;
        Ok(())
    }

    async fn get_blob(&self, container: &str, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.enter().await;
        Ok(self
            .world()
            .blobs
            .get(&(container.to_string(), name.to_string()))
            .cloned())
    }

    /// The source's clock as its answers' `Date` header gives it: whole seconds (so up to a second behind).
    fn source_now(&self) -> Option<DateTime<Utc>> {
        let t = self.world().source_clock();
        DateTime::from_timestamp(t.timestamp(), 0)
    }

    async fn trim_for_capacity(
        &self,
        payload: &Payload,
        container: &str,
        _tag: &str,
        _now: DateTime<Utc>,
    ) -> Result<crate::engine::core::capacity::CapacityTrim, EngineError> {
        self.enter().await;
        let (trim, entries) = self.world().trim_for_capacity(payload, container);
        self.leave().await;
        self.record_left_out(entries).await?;
        Ok(trim)
    }

    async fn scan_payload(
        &self,
        payload: &Payload,
        container: &str,
        _tag: &str,
        _now: DateTime<Utc>,
    ) -> Result<crate::engine::core::scan::Scanned, EngineError> {
        self.enter().await;
        let (scanned, entries) = self.world().scan_payload(payload, container);
        self.leave().await;
        self.record_left_out(entries).await?;
        Ok(scanned)
    }

    async fn record_failures(
        &self,
        window: i64,
        errors: &[crate::fhir::wire::ImportErrorFile],
        now: DateTime<Utc>,
    ) -> Result<ErrorSummary, EngineError> {
        self.enter().await;
        {
            // The ledger's own reading of each error file (its line filter and its mapping of a unit's offset and
            // line number to the exported line) must name exactly the versions the destination refused.
            use crate::engine::failures::record::{exported_line, failed_lines};
            let w = self.world();
            for e in errors {
                let refused = w.error_files.get(&e.url).cloned().unwrap_or_default();
                let text = w.error_texts.get(&e.url).cloned().unwrap_or_default();
                let input = e
                    .input_url
                    .as_ref()
                    .and_then(|u| w.files.get(u))
                    .map(|vs| super::destination::render(vs))
                    .unwrap_or_default();
                let mut named = Vec::new();
                for (_, line) in failed_lines(&text) {
                    let said = crate::ledger::locate::error_line(line);
                    match exported_line(&said, Some(&input)).and_then(super::destination::version_of) {
                        Some(v) if refused.contains(&v) => named.push(v),
                        other => self.violate(format!(
                            "the ledger read {line} in {} as {other:?}, a version the destination did not refuse",
                            e.url
                        )),
                    }
                }
                if let Some(v) = refused.iter().find(|v| !named.contains(v)) {
                    self.violate(format!("{v:?}, refused in {}, is named by no ledger entry", e.url));
                }
            }
        }
        // Then the ledger's own recording, and every refused version has its row.
        let summary = Work(self).record_failures(window, errors, now).await?;
        let w = self.world();
        for e in errors {
            for v in w.error_files.get(&e.url).into_iter().flatten() {
                if w.ledger_entry(v).is_none() {
                    self.violate(format!(
                        "{v:?}, refused in {}, has no ledger row after recording",
                        e.url
                    ));
                }
            }
        }
        Ok(summary)
    }
}
