//! The migration's progress as data: what `MigrationStatus_Http` returns and `fhir-migration-tool status`
//! prints.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Engine, EngineError, core, ports};
use crate::fhir::format_instant;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowStatus {
    pub sequence: i64,
    pub since: String,
    pub till: String,
    pub export_status: String,
    pub export_id: String,
    pub export_attempt: i64,
    pub import_status: String,
    pub exported: i64,
    pub payloads: Vec<PayloadStatus>,
    pub failure_reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadStatus {
    pub index: i64,
    pub status: String,
    pub attempt: i64,
    pub import_id: String,
    pub imported: i64,
    pub failed_lines: i64,
    pub error_files: Vec<String>,
    /// Failed lines by kind, when the error files could be read.
    pub conflict_lines: Option<i64>,
    pub duplicate_lines: Option<i64>,
    pub invalid_lines: Option<i64>,
    pub error_samples: Vec<String>,
    pub failure_reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// The state, how much is done, the rate and the ETA (docs: "Status at a glance").
    pub progress: super::progress::Progress,
    pub source: String,
    pub destination: String,
    /// Everything with lastUpdated before this instant is migrated.
    pub migrated_through: Option<String>,
    /// How far the migration trails now (seconds), once it has started.
    pub lag_seconds: Option<i64>,
    pub windows_in_flight: Vec<WindowStatus>,
    pub windows_committed: i64,
    pub failures: i64,
    pub max_failures: Option<u32>,
    pub halted: bool,
    pub paused: bool,
    pub search_parameters_copied: bool,
    pub search_parameter_count: i64,
    pub reminder: Option<String>,
    /// The failure ledger at a glance (`failures` lists the entries).
    pub import_failures: crate::ledger::Summary,
    /// This machine's clock minus the source server's (seconds), when this process has heard from the source
    /// (the timers' process always has); windows end by the earlier of the two.
    pub source_clock_skew_seconds: Option<i64>,
}

impl Engine {
    pub async fn status(&self, now: DateTime<Utc>) -> Result<MigrationStatus, EngineError> {
        self.state.ensure_tables().await?;
        let (cursor, active) = self.load().await?;
        let windows: Vec<WindowStatus> = active
            .jobs
            .iter()
            .map(|j| WindowStatus {
                sequence: j.seq,
                since: format_instant(j.since),
                till: format_instant(j.till),
                export_status: j.export_status.to_string(),
                export_id: j.export_id.clone(),
                export_attempt: j.attempt,
                import_status: j.import_status.to_string(),
                exported: j.exported,
                payloads: active
                    .payloads_of(j)
                    .map(|p| PayloadStatus {
                        index: p.index,
                        status: p.status.to_string(),
                        attempt: p.attempt,
                        import_id: crate::telemetry::id_of(&p.import_url),
                        imported: p.imported,
                        failed_lines: p.failed_lines,
                        error_files: p.error_files.lines().map(str::to_string).collect(),
                        conflict_lines: p.error_kinds.map(|k| k.0),
                        duplicate_lines: p.error_kinds.map(|k| k.1),
                        invalid_lines: p.error_kinds.map(|k| k.2),
                        error_samples: p.error_samples.lines().map(str::to_string).collect(),
                        failure_reason: p.failure_reason.clone(),
                    })
                    .collect(),
                failure_reason: j.failure_reason.clone(),
            })
            .collect();
        let import_failures = self.ledger.summary().await?;
        let halted = self.latched(&cursor)
            || active
                .jobs
                .iter()
                .any(|j| core::rules::window_phase(j) == core::rules::WindowPhase::Halted);
        let halted_reason = halted.then(|| {
            active
                .jobs
                .iter()
                .find(|j| core::rules::window_phase(j) == core::rules::WindowPhase::Halted)
                .map(|j| format!("window {}: {}", j.seq, j.failure_reason))
                .unwrap_or_else(|| "the retry latch tripped: fix the cause, then clear-retries".into())
        });
        let progress = super::progress::progress(
            &cursor,
            &super::progress::Facts {
                settings: &self.settings,
                now,
                clock: self.clock(now),
                halted: halted_reason,
                windows_in_flight: windows.len(),
            },
        );
        Ok(MigrationStatus {
            progress,
            source: self.settings.source.to_string(),
            destination: self.settings.destination.to_string(),
            migrated_through: cursor.since.map(format_instant),
            lag_seconds: cursor.since.map(|s| (now - s).num_seconds()),
            windows_in_flight: windows,
            windows_committed: cursor.committed_job,
            failures: cursor.failures,
            max_failures: self.settings.max_export_retries,
            halted,
            paused: crate::planner::paused(self.settings.pause, now),
            search_parameters_copied: cursor.search_parameters_copied,
            search_parameter_count: cursor.search_parameter_count,
            reminder: match cursor.search_parameters_changed_at {
                Some(at) => Some(format!(
                    "custom SearchParameters changed at the source and were carried (last at {}): run $reindex on the destination (again) after the migration so they can be searched.",
                    format_instant(at)
                )),
                None => (cursor.search_parameter_count > 0).then(|| {
                    format!(
                        "{} custom SearchParameter(s) were copied: run $reindex on the destination after the migration so they can be searched.",
                        cursor.search_parameter_count
                    )
                }),
            },
            import_failures,
            source_clock_skew_seconds: self.source.server_now().map(|s| (now - s).num_seconds()),
        })
    }
}

/// One window `plan` would export next.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedWindow {
    pub since: String,
    pub till: String,
    /// Resources (versions, when history or deletes are exported) in the window.
    pub resources: u64,
    /// How many times the window was halved to fit `AZURE_ChunkLimit`.
    pub halvings: u32,
}

impl Engine {
    /// A dry run of the planner: the next `n` windows with their sizes, as the engine would choose them now.
    /// Reads the cursor and counts on the source; writes nothing and starts nothing.
    pub async fn preview(&self, now: DateTime<Utc>, n: usize) -> Result<Vec<PlannedWindow>, EngineError> {
        self.state.ensure_tables().await?;
        let cursor = self.state.cursor().await?;
        let start = match cursor.next_since().or(self.settings.start_date) {
            Some(s) => Some(s),
            None => ports::Ports::oldest(self, None).await?,
        };
        let Some(mut since) = start else {
            return Ok(Vec::new());
        };
        let mut windows = Vec::new();
        // After the first answer from the source, its clock bounds the windows as it does for the timers.
        let now = self.clock(now);
        while windows.len() < n {
            let Some(mut till) = crate::planner::window_end(&self.settings, since, now) else {
                break;
            };
            let mut count = self.window_count(None, since, till).await?;
            let mut halvings = 0;
            while count > self.settings.chunk_limit {
                match crate::planner::halve(since, till) {
                    Some(shorter) => {
                        till = shorter;
                        halvings += 1;
                        count = self.window_count(None, since, till).await?;
                    }
                    None => break,
                }
            }
            windows.push(PlannedWindow {
                since: format_instant(since),
                till: format_instant(till),
                resources: count,
                halvings,
            });
            since = till;
        }
        Ok(windows)
    }
}
