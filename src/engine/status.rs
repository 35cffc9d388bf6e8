//! The migration's progress as data: what `MigrationStatus_Http` returns and `fhir-migration-tool status`
//! prints.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Engine, EngineError};
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
    pub failure_reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
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
}

impl Engine {
    pub async fn status(&self, now: DateTime<Utc>) -> Result<MigrationStatus, EngineError> {
        let (cursor, active) = self.load().await?;
        let windows = active
            .jobs
            .iter()
            .map(|j| WindowStatus {
                sequence: j.seq,
                since: format_instant(j.since),
                till: format_instant(j.till),
                export_status: j.export_status.clone(),
                export_id: j.export_id.clone(),
                export_attempt: j.attempt,
                import_status: j.import_status.clone(),
                exported: j.exported,
                payloads: active
                    .payloads_of(j)
                    .map(|p| PayloadStatus {
                        index: p.index,
                        status: p.status.clone(),
                        attempt: p.attempt,
                        import_id: crate::telemetry::id_of(&p.import_url),
                        imported: p.imported,
                        failed_lines: p.failed_lines,
                        error_files: p.error_files.lines().map(str::to_string).collect(),
                        failure_reason: p.failure_reason.clone(),
                    })
                    .collect(),
                failure_reason: j.failure_reason.clone(),
            })
            .collect();
        let halted = self.latched(&cursor) || active.jobs.iter().any(|j| j.import_status == "Halted");
        Ok(MigrationStatus {
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
            reminder: (cursor.search_parameter_count > 0).then(|| {
                format!(
                    "{} custom SearchParameter(s) were copied: run $reindex on the destination after the migration so they can be searched.",
                    cursor.search_parameter_count
                )
            }),
        })
    }
}
