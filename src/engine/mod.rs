//! The migration engine: a state machine persisted in Table storage and driven by three timers.
//!
//! - `MigrationOrchestrator` ([`Engine::starter_tick`]): gates (retry latch, specific-run end, pause), the
//!   SearchParameter copy, commits, and the next export when one may start.
//! - `ExportStatus` ([`Engine::export_status_tick`]): polls running exports; a finished export's payloads are
//!   persisted and its imports started at once.
//! - `ImportStatus` ([`Engine::import_status_tick`]): polls every running import, commits finished windows in
//!   order, and starts the next export, so throughput never waits for the starter's schedule.
//!
//! Every decision is made by the pure [`core`] from the stored state, the tick's facts and `now`; the
//! [`shell`] performs it through [`ports::Ports`] (the real adapters here, in-memory ones in the simulator).
//!
//! Crash safety: every step records its intent before acting and is keyed by a persistent id (the window's
//! sequence number, the export attempt, the payload index). A kick-off whose result was never recorded is
//! re-kicked after its lease expires; an import POST is repeated with the same definition, which the server
//! de-duplicates; the cursor moves only through windows whose every payload imported successfully. Every
//! write is conditional on the ETag read, so overlapping invocations cannot act twice.

pub mod core;
pub(crate) mod error_files;
pub mod failures;
mod heartbeat;
pub mod ports;
pub mod progress;
pub mod redrives;
pub(crate) mod search_parameters;
pub mod shell;
#[cfg(test)]
mod sim;
mod status;

pub use status::{MigrationStatus, PlannedWindow, Waiting, WindowStatus};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::MigrationSettings;
use crate::fhir::{FhirClient, FhirError};
use crate::ledger::Ledger;
use crate::state::{Active, Cursor, StateStore};
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::tables::TableError;
use crate::telemetry::{Event, Telemetry};

/// Why a tick stopped early. Conflicts are not errors: another invocation got there first.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A blob the failure ledger needs could not be read yet (see `Work::record_failures`).
    #[error(transparent)]
    Read(#[from] failures::ports::ReadFailed),
    /// A fail point fired (crash-safety tests only: the variant exists only with the `fail-points` feature,
    /// which release builds never enable).
    #[cfg(feature = "fail-points")]
    #[error("injected crash at {0}")]
    Injected(&'static str),
}

impl EngineError {
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            EngineError::Table(TableError::Conflict { .. } | TableError::AlreadyExists { .. })
        )
    }
}

/// What a tick did, as lines for the host's log (App Insights `traces`).
#[derive(Debug, Default, Clone)]
pub struct TickReport {
    pub lines: Vec<String>,
}

impl TickReport {
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!("{line}");
        self.lines.push(line);
    }
}

/// Named points between two writes where tests make a tick stop dead, as a crash would. Only with the
/// `fail-points` feature (`./scripts/test` turns it on); otherwise passing a point costs nothing.
#[derive(Clone, Default, Debug)]
pub struct FailPoints {
    #[cfg(feature = "fail-points")]
    armed: Arc<std::sync::Mutex<std::collections::HashMap<&'static str, u32>>>,
}

#[cfg(not(feature = "fail-points"))]
impl FailPoints {
    #[inline]
    pub(crate) fn hit(&self, _point: &'static str) -> Result<(), EngineError> {
        Ok(())
    }
}

#[cfg(feature = "fail-points")]
impl FailPoints {
    /// Makes the `nth` next pass through `point` fail (1 = the very next one).
    pub fn arm(&self, point: &'static str, nth: u32) {
        self.armed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(point, nth.max(1));
    }

    /// Whether every armed point has fired.
    pub fn all_fired(&self) -> bool {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    pub(crate) fn hit(&self, point: &'static str) -> Result<(), EngineError> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        match armed.get_mut(point) {
            Some(1) => {
                armed.remove(point);
                Err(EngineError::Injected(point))
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The fail points, in the order a window passes them.
pub const FAIL_POINTS: &[&str] = &[
    "planned-job",
    "planned-cursor",
    "export-claimed",
    "export-accepted",
    "payload-blobs",
    "payload-rows",
    "import-claimed",
    "import-accepted",
    "import-recorded",
    "window-processed",
    "committed",
];

/// Timings and bounds that tests shorten.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Wait before the confirming re-poll of an export that reported 200 (servers can flap 200 → 202).
    pub confirm_delay: Duration,
    /// How long an unconfirmed kick-off or POST is presumed still in flight before it is repaired.
    pub lease: TimeDelta,
    /// Empty windows skipped per tick at most (sparse data catches up quickly, but a tick stays bounded).
    pub max_empty_skips: u32,
    /// The shortest tail window exported once caught up ([`crate::planner::MIN_TAIL`]); the cut-over's final
    /// drive uses zero, to migrate right up to the last write.
    pub min_tail: chrono::TimeDelta,
    /// Actions one tick takes at most: a tick that would go on (a decision that never settles) stops there,
    /// says so, and the next tick continues.
    pub max_actions: usize,
    /// Export file bytes after which a same-millisecond scan action stops reading more files (it reads at least
    /// one, and the file that reaches the share is read whole).
    pub scan_bytes_per_action: usize,
    /// Export file bytes a capacity trim holds at once at most (a larger payload is said, not examined).
    pub capacity_bytes_examined: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            confirm_delay: Duration::from_secs(5),
            lease: TimeDelta::minutes(11),
            max_empty_skips: 100,
            min_tail: crate::planner::MIN_TAIL,
            max_actions: 20_000,
            scan_bytes_per_action: failures::scan::BYTES_PER_ACTION,
            capacity_bytes_examined: failures::capacity::BYTES_EXAMINED,
        }
    }
}

#[derive(Clone)]
pub struct Engine {
    pub(crate) settings: Arc<MigrationSettings>,
    pub(crate) state: StateStore,
    pub(crate) source: FhirClient,
    pub(crate) destination: FhirClient,
    pub(crate) blobs: BlobStore,
    pub(crate) telemetry: Arc<dyn Telemetry>,
    pub(crate) timing: Timing,
    pub(crate) fail: FailPoints,
    /// Where import error files may be read: the tool's own account and, if configured, the export/import
    /// account.
    pub(crate) error_stores: Vec<BlobStore>,
    /// Every resource version an import refused (issue 16).
    pub(crate) ledger: Ledger,
}

impl Engine {
    pub fn new(
        settings: Arc<MigrationSettings>,
        state: StateStore,
        source: FhirClient,
        destination: FhirClient,
        blobs: BlobStore,
        ledger: Ledger,
        telemetry: Arc<dyn Telemetry>,
    ) -> Engine {
        let timing = Timing {
            confirm_delay: settings.export_confirm_delay,
            lease: settings.lease,
            ..Timing::default()
        };
        Engine {
            settings,
            state,
            source,
            destination,
            blobs: blobs.clone(),
            telemetry,
            timing,
            fail: FailPoints::default(),
            error_stores: vec![blobs.clone()],
            ledger,
        }
    }

    /// The instant the frontier is measured from: the earlier of `now` and the source server's clock (once this
    /// process has heard from the source).
    pub fn clock(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.source.server_now().map_or(now, |s| s.min(now))
    }

    /// The failure ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The engine's timings (tests and the cut-over adjust a copy).
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    pub fn with_timing(mut self, timing: Timing) -> Engine {
        self.timing = timing;
        self
    }

    /// Blob accounts import error files may be read from (the tool's own by default).
    pub fn with_error_stores(mut self, stores: Vec<BlobStore>) -> Engine {
        self.error_stores = stores;
        self
    }

    /// The store (of those the tool knows) holding the blob at `url`, with its container and name; `None` for a
    /// URL on another account.
    pub(crate) fn locate_blob(&self, url: &url::Url) -> Option<(&BlobStore, String, String)> {
        self.error_stores
            .iter()
            .find_map(|s| s.locate(url).map(|(container, name)| (s, container, name)))
    }

    /// The engine's fail points (tests arm them to simulate crashes).
    #[cfg(feature = "fail-points")]
    pub fn fail_points(&self) -> &FailPoints {
        &self.fail
    }

    /// The source server's client (verification reads through it).
    pub fn source(&self) -> &FhirClient {
        &self.source
    }

    /// The destination server's client.
    pub fn destination(&self) -> &FhirClient {
        &self.destination
    }

    pub fn settings(&self) -> &MigrationSettings {
        &self.settings
    }

    pub(crate) fn emit(&self, event: Event) {
        self.telemetry.event(event);
    }

    /// Sends an event through the engine's telemetry sink (verification reports its results this way).
    pub fn telemetry_event(&self, event: Event) {
        self.emit(event);
    }

    async fn load(&self) -> Result<(Cursor, Active), EngineError> {
        let cursor = self.state.cursor().await?;
        let active = self.state.active(&cursor).await?;
        Ok((cursor, active))
    }

    /// Whether the retry latch has tripped (new work is refused until an operator clears it).
    fn latched(&self, cursor: &Cursor) -> bool {
        self.settings
            .max_export_retries
            .is_some_and(|max| cursor.failures >= i64::from(max))
    }

    async fn tick(&self, timer: core::Timer, now: DateTime<Utc>) -> Result<TickReport, EngineError> {
        let outcome = async {
            self.state.ensure_tables().await?;
            shell::Shell {
                ports: self,
                settings: &self.settings,
                timing: &self.timing,
                telemetry: self.telemetry.as_ref(),
                fail: &self.fail,
                export_table: self.state.export_table_name(),
            }
            .run(timer, now)
            .await
        }
        .await;
        // For `status`, another process: when a tick last ran, why ticks fail, the clock skew measured.
        heartbeat::record(self, now, &outcome).await;
        outcome
    }

    /// The starter timer: gates, SearchParameters, commits, repairs, and the next export.
    pub async fn starter_tick(&self, now: DateTime<Utc>) -> Result<TickReport, EngineError> {
        self.tick(core::Timer::Starter, now).await
    }

    /// The export-status timer: poll exports, persist finished ones' payloads, start their imports.
    pub async fn export_status_tick(&self, now: DateTime<Utc>) -> Result<TickReport, EngineError> {
        self.tick(core::Timer::ExportStatus, now).await
    }

    /// The import-status timer: poll imports, commit finished windows, keep the pipeline moving; then the
    /// failure ledger's retries (a failure there is reported and tried again next tick, never fatal).
    pub async fn import_status_tick(&self, now: DateTime<Utc>) -> Result<TickReport, EngineError> {
        let mut report = self.tick(core::Timer::ImportStatus, now).await?;
        match self.ledger_tick(now).await {
            Ok(lines) => lines.into_iter().for_each(|l| report.say(l)),
            Err(e) => report.say(format!("Failure ledger retries failed (tried again next tick): {e}")),
        }
        Ok(report)
    }

    /// `ClearMaxExportRetries_Http`: resets the latch, accepts imports halted by the error policy, and lets
    /// windows halted by a repeating failure go on with a smaller plan ([`core::plan::clear_halts`]).
    pub async fn clear_failures(&self) -> Result<i64, EngineError> {
        self.state.ensure_tables().await?;
        let now = Utc::now();
        loop {
            let mut cursor = self.state.cursor().await?;
            let before = cursor.failures;
            cursor.failures = 0;
            match self.state.save_cursor(&cursor).await {
                Ok(saved) => {
                    let active = self.state.active(&saved).await?;
                    let snapshot = core::Snapshot {
                        cursor: saved,
                        jobs: active.jobs,
                        payloads: active.payloads,
                    };
                    for (write, line) in core::plan::clear_halts(&snapshot) {
                        match ports::Ports::write(self, &write).await {
                            Ok(_) => tracing::info!("{line}"),
                            // Changed meanwhile by a tick: the next clear (or tick) sees it as it is now.
                            Err(TableError::Conflict { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    self.emit(
                        Event::new("MaxExportRetriesCleared")
                            .with("PartitionKey", &self.settings.partition_key)
                            .with("RowKey", &self.settings.row_key)
                            .with("ClearedAt", now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                    );
                    return Ok(before);
                }
                Err(TableError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}
