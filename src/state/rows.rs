//! The typed rows of the two state tables, mapped to and from Table entities. Column names and status strings
//! are the original tool's, so its runbooks and queries keep working; columns it lacked are added.

use chrono::{DateTime, Utc};

use crate::storage::tables::{ETag, Entity, TableError};

mod payload;
mod redrive;
mod status;
pub use redrive::Redrive;
pub use status::{ExportStatus, ImportStatus};

/// The cursor row (`chunk` table): how far the migration has committed, and its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// `since`: everything with lastUpdated before this is migrated.
    pub since: Option<DateTime<Utc>>,
    /// `JobId`: the sequence number the next window gets.
    pub next_job: i64,
    /// `CommittedJobId`: the oldest window not yet committed (windows commit in order).
    pub committed_job: i64,
    /// `PlannedTill`: the end of the last window planned (or found empty); the next window starts here.
    pub planned_till: Option<DateTime<Utc>>,
    /// `maxExportRetries`: failures since the last success (the retry latch).
    pub failures: i64,
    /// `SearchParameterMigration`
    pub search_parameters_copied: bool,
    /// `SearchParameterCount`: custom SearchParameters copied (for the `$reindex` reminder).
    pub search_parameter_count: i64,
    /// Per-type mode: the window whose types are being planned (`globalSinceExportType`,
    /// `globalTillExportType`), the next type to look at (`resourceTypeIndex`) and, when one type's share of
    /// the window is split, where its next part starts (`subSinceExportType`).
    pub global_since: Option<DateTime<Utc>>,
    pub global_till: Option<DateTime<Utc>>,
    pub type_index: i64,
    /// `resourceTypeName`: the type whose share of the window is split and continues at `sub_since`.
    pub type_name: String,
    /// `resourceTypesDone`: the types already planned for the current window, by name, so a reordered or
    /// edited `AZURE_ResourceTypes` can neither skip nor repeat a type.
    pub types_done: Vec<String>,
    pub sub_since: Option<DateTime<Utc>>,
    /// `TotalsAt`, `SourceTotal`, `DestinationTotal`: the last whole-server counts, reused by the `Import`
    /// events until `AZURE_CountIntervalMinutes` has passed (counting a large server costs request units).
    pub totals_at: Option<DateTime<Utc>>,
    pub source_total: String,
    pub destination_total: String,
    /// `SearchParametersSyncedAt`: the (source) instant the last SearchParameter sync looked from; the next one
    /// asks for what changed since then. `SearchParametersChangedAt`: when a sync last carried a change (the
    /// `$reindex` reminder repeats after it).
    pub search_parameters_synced_at: Option<DateTime<Utc>>,
    pub search_parameters_changed_at: Option<DateTime<Utc>>,
    /// `MigratedVersions`: versions exported by the windows committed so far (what `status` counts progress
    /// in); `FirstSince`: where the first window started; `ProgressSamples`: (time, migrated) pairs of the
    /// last hours, a few minutes apart, from which the rate is measured.
    pub migrated_versions: i64,
    pub first_since: Option<DateTime<Utc>>,
    pub progress_samples: Vec<(DateTime<Utc>, i64)>,
    /// `LastTickAt`: when a timer tick last ran to its end (or failed) in any process; `status` calls the
    /// migration stalled when none has run for a while.
    pub last_tick_at: Option<DateTime<Utc>>,
    /// `DeferredServer`, `DeferredAnswer`, `DeferredSince`, `DeferredTicks`: while ticks fail on a server
    /// that does not answer usefully (throttling, 5xx, unreachable), which server, its last answer, since when,
    /// and how many ticks in a row; empty once a tick succeeds.
    pub deferred_server: String,
    pub deferred_answer: String,
    pub deferred_since: Option<DateTime<Utc>>,
    pub deferred_ticks: i64,
    /// `SourceClockSkewSeconds`, `SkewMeasuredAt`: this machine's clock minus the source server's, as the
    /// timers last measured it.
    pub source_skew_seconds: Option<i64>,
    pub skew_measured_at: Option<DateTime<Utc>>,
    /// `LastRedrive`: the number of the latest re-drive recorded (what `status` reports on).
    pub last_redrive: Option<i64>,
    pub etag: Option<ETag>,
}

/// One window (`export` table, RowKey `{RowKey}{seq:010}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub seq: i64,
    pub since: DateTime<Utc>,
    pub till: DateTime<Utc>,
    /// `IsExportRunning`
    pub export_status: ExportStatus,
    /// `exportContentLocation`
    pub export_url: String,
    /// `ExportId`: last segment of the status URL.
    pub export_id: String,
    /// `ExportAttempt`: how many times this window has been kicked off.
    pub attempt: i64,
    /// `LeaseUntil`: while `Starting`, when an unfinished kick-off may be presumed crashed.
    pub lease_until: Option<DateTime<Utc>>,
    pub start_time: Option<DateTime<Utc>>,
    pub export_end_time: Option<DateTime<Utc>>,
    /// `TotalExportResourceCount`
    pub exported: i64,
    pub search_parameter_count: i64,
    /// `PayloadCount`
    pub payloads: i64,
    /// `IsImportRunning` (summary over payloads)
    pub import_status: ImportStatus,
    /// `ImportRequest`: Yes / No / "".
    pub import_request: String,
    /// `IsProcessed`: every payload imported successfully (the window may commit).
    pub processed: bool,
    pub failure_reason: String,
    /// `resourceTypeValue` (per-type mode).
    pub resource_type: String,
    /// Per-type rows: the whole window this type's part belongs to (`GlobalSince`, `GlobalTill`) and the type's
    /// position in the list (`TypeIndex`), so the cursor can be rebuilt from the row alone.
    pub window_since: Option<DateTime<Utc>>,
    pub window_till: Option<DateTime<Utc>>,
    pub type_index: i64,
    pub end_time: Option<DateTime<Utc>>,
    /// `RemainderTill`: when the window was split (the server refused it as too large, or an operator cleared a
    /// halt), the end of the part still to export after this one; the window commits only when it is empty.
    pub remainder_till: Option<DateTime<Utc>>,
    /// `FailureStreak`: identical refusals in a row (the window halts at the limit; see the engine core).
    pub failure_streak: i64,
    /// `Deferrals`: transient answers to the kick-off in a row.
    pub deferrals: i64,
    /// `SplitLevel`: how many times an operator's clear asked for a smaller plan; each level halves the
    /// window's parts and its payloads' processing units.
    pub split_level: i64,
    /// `PlannedVersions`: what the source held in `[since, till)` when this part was counted (`None`: not yet;
    /// counted before the kick-off). The export's manifest is checked against it.
    pub planned_versions: Option<i64>,
    /// `BoundaryVersions`: versions on the millisecond `till` itself. `Some(0)`, an empty boundary, exports the
    /// same set under either reading of `_till` (reference §11.9); `None`: not counted yet.
    pub boundary_versions: Option<i64>,
    /// `TillEarly`: `_till` is sent one millisecond early, because the source reads it inclusively (only used
    /// when the boundary holds versions).
    pub till_early: bool,
    /// `Redrive`, …: set on a row an operator's re-drive wrote (a range below the cursor exported and imported
    /// again); such a row never moves the cursor.
    pub redrive: Option<Redrive>,
    pub etag: Option<ETag>,
}

/// One `$import` of a window's files (`export` table, RowKey `{RowKey}{seq:010}-{k:04}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub seq: i64,
    /// The window's export attempt these files came from.
    pub export_attempt: i64,
    pub index: i64,
    /// `ImportNo`: the payload blob name.
    pub blob: String,
    /// `importContentLocation`
    pub import_url: String,
    /// `IsImportRunning`
    pub status: ImportStatus,
    /// `ImportAttempt`
    pub attempt: i64,
    pub lease_until: Option<DateTime<Utc>>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// `TotalImportResourceCount`
    pub imported: i64,
    /// `TotalFailedImportCount`
    pub failed_lines: i64,
    /// `FailedImportResources`: "Type:count, …"
    pub failed_resources: String,
    /// `ImportErrorFiles`: error-file URLs, one per line.
    pub error_files: String,
    /// Failed lines by kind, from reading the error files (`ConflictLines`, `DuplicateLines`, `InvalidLines`);
    /// `None` when the files could not be read.
    pub error_kinds: Option<(i64, i64, i64)>,
    /// `ImportErrorSamples`: the first few error messages, for the operator.
    pub error_samples: String,
    pub failure_reason: String,
    /// `Deferrals`: transient answers to the POST in a row.
    pub deferrals: i64,
    /// `ProcessingUnitBytes`: the processing unit asked for on the last POST (none: the server's default).
    pub unit_bytes: Option<i64>,
    /// `ExpectedLines`: the lines of the payload's files, from the export manifest (none: unknown).
    pub expected_lines: Option<i64>,
    /// `PostToken`: names the current import attempt in its definition (recorded before the POST), so the
    /// destination can only answer with this attempt's own job; empty on rows from before tokens.
    pub post_token: String,
    /// `CapacityChecked`: the import attempt whose same-millisecond failure was examined (0: none), so each
    /// such failure is examined once.
    pub capacity_checked: i64,
    /// `CapacityTrims`: how many times versions over the destination's same-millisecond capacity were left
    /// out of this payload (each grants one more attempt: the next POST carries fewer versions).
    pub capacity_trims: i64,
    /// `ScannedFiles`, `ScanDone`: how far the scan of the payload's files for versions of one resource on one
    /// millisecond has come (done before the first POST; see `engine::core::scan`).
    pub scanned_files: i64,
    pub scan_done: bool,
    /// `LeftOutVersions`: versions the scan or a capacity trim left out of this payload (each named in the
    /// ledger); the import-error policy counts them with the import's own permanent failures.
    pub left_out: i64,
    pub etag: Option<ETag>,
}

pub fn job_key(row_key: &str, seq: i64) -> String {
    format!("{row_key}{seq:010}")
}

/// Payload rows sort right after their window's row; the export attempt is part of the key, so a re-exported
/// window gets fresh payload rows while the old attempt's rows stay as history.
pub fn payload_key(row_key: &str, seq: i64, attempt: i64, index: i64) -> String {
    format!("{row_key}{seq:010}-{attempt:03}-{index:04}")
}

fn opt_time(e: &mut Entity, name: &str, t: Option<DateTime<Utc>>) {
    match t {
        Some(t) => e.set_datetime(name, t),
        None => e.remove(name),
    };
}

fn time_str(e: &mut Entity, name: &str, t: Option<DateTime<Utc>>) {
    // The original stored window bounds as text in its own format; keep that for Since/Till.
    match t {
        Some(t) => e.set_str(name, crate::instant::format_instant(t)),
        None => e.set_str(name, ""),
    };
}

fn read_time_str(e: &Entity, name: &str) -> Option<DateTime<Utc>> {
    e.get_str(name)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

impl Cursor {
    pub fn new() -> Cursor {
        Cursor {
            since: None,
            next_job: 0,
            committed_job: 0,
            planned_till: None,
            failures: 0,
            search_parameters_copied: false,
            search_parameter_count: 0,
            global_since: None,
            global_till: None,
            type_index: 0,
            type_name: String::new(),
            types_done: Vec::new(),
            sub_since: None,
            totals_at: None,
            source_total: String::new(),
            destination_total: String::new(),
            search_parameters_synced_at: None,
            search_parameters_changed_at: None,
            migrated_versions: 0,
            first_since: None,
            progress_samples: Vec::new(),
            last_tick_at: None,
            deferred_server: String::new(),
            deferred_answer: String::new(),
            deferred_since: None,
            deferred_ticks: 0,
            source_skew_seconds: None,
            skew_measured_at: None,
            last_redrive: None,
            etag: None,
        }
    }

    pub fn to_entity(&self, pk: &str, rk: &str) -> Result<Entity, TableError> {
        let mut e = Entity::new(pk, rk)?;
        time_str(&mut e, "since", self.since);
        time_str(&mut e, "SearchParametersSyncedAt", self.search_parameters_synced_at);
        time_str(&mut e, "SearchParametersChangedAt", self.search_parameters_changed_at);
        time_str(&mut e, "FirstSince", self.first_since);
        e.set_i64("MigratedVersions", self.migrated_versions).set_str(
            "ProgressSamples",
            self.progress_samples
                .iter()
                .map(|(t, n)| format!("{}:{n}", t.timestamp()))
                .collect::<Vec<_>>()
                .join(";"),
        );
        e.set_i64("JobId", self.next_job)
            .set_i64("CommittedJobId", self.committed_job)
            .set_i64("maxExportRetries", self.failures)
            .set_bool("SearchParameterMigration", self.search_parameters_copied)
            .set_i64("SearchParameterCount", self.search_parameter_count);
        time_str(&mut e, "PlannedTill", self.planned_till);
        time_str(&mut e, "globalSinceExportType", self.global_since);
        time_str(&mut e, "globalTillExportType", self.global_till);
        time_str(&mut e, "subSinceExportType", self.sub_since);
        e.set_str("resourceTypeName", &self.type_name);
        e.set_str("resourceTypesDone", self.types_done.join(","));
        e.set_i64("resourceTypeIndex", self.type_index)
            .set_str("multiExport", if self.sub_since.is_some() { "Running" } else { "" });
        time_str(&mut e, "TotalsAt", self.totals_at);
        time_str(&mut e, "LastTickAt", self.last_tick_at);
        time_str(&mut e, "DeferredSince", self.deferred_since);
        time_str(&mut e, "SkewMeasuredAt", self.skew_measured_at);
        e.set_str("DeferredServer", &self.deferred_server)
            .set_str("DeferredAnswer", &self.deferred_answer)
            .set_i64("DeferredTicks", self.deferred_ticks);
        match self.last_redrive {
            Some(n) => e.set_i64("LastRedrive", n),
            None => e.remove("LastRedrive"),
        };
        match self.source_skew_seconds {
            Some(s) => e.set_i64("SourceClockSkewSeconds", s),
            None => e.remove("SourceClockSkewSeconds"),
        };
        e.set_str("SourceTotal", &self.source_total)
            .set_str("DestinationTotal", &self.destination_total);
        Ok(e)
    }

    pub fn from_entity(e: &Entity) -> Cursor {
        Cursor {
            since: read_time_str(e, "since"),
            next_job: e.get_i64("JobId").unwrap_or(0),
            committed_job: e.get_i64("CommittedJobId").unwrap_or(0),
            planned_till: read_time_str(e, "PlannedTill"),
            failures: e.get_i64("maxExportRetries").unwrap_or(0),
            search_parameters_copied: e.get_bool("SearchParameterMigration").unwrap_or(false),
            search_parameter_count: e.get_i64("SearchParameterCount").unwrap_or(0),
            global_since: read_time_str(e, "globalSinceExportType"),
            global_till: read_time_str(e, "globalTillExportType"),
            type_index: e.get_i64("resourceTypeIndex").unwrap_or(0),
            type_name: e.get_str("resourceTypeName").unwrap_or_default().into(),
            types_done: e
                .get_str("resourceTypesDone")
                .unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            sub_since: read_time_str(e, "subSinceExportType"),
            totals_at: read_time_str(e, "TotalsAt"),
            source_total: e.get_str("SourceTotal").unwrap_or_default().into(),
            destination_total: e.get_str("DestinationTotal").unwrap_or_default().into(),
            search_parameters_synced_at: read_time_str(e, "SearchParametersSyncedAt"),
            search_parameters_changed_at: read_time_str(e, "SearchParametersChangedAt"),
            migrated_versions: e.get_i64("MigratedVersions").unwrap_or(0),
            first_since: read_time_str(e, "FirstSince"),
            progress_samples: e
                .get_str("ProgressSamples")
                .unwrap_or_default()
                .split(';')
                .filter_map(|s| {
                    let (t, n) = s.split_once(':')?;
                    Some((DateTime::from_timestamp(t.parse().ok()?, 0)?, n.parse().ok()?))
                })
                .collect(),
            last_tick_at: read_time_str(e, "LastTickAt"),
            deferred_server: e.get_str("DeferredServer").unwrap_or_default().into(),
            deferred_answer: e.get_str("DeferredAnswer").unwrap_or_default().into(),
            deferred_since: read_time_str(e, "DeferredSince"),
            deferred_ticks: e.get_i64("DeferredTicks").unwrap_or(0),
            source_skew_seconds: e.get_i64("SourceClockSkewSeconds"),
            skew_measured_at: read_time_str(e, "SkewMeasuredAt"),
            last_redrive: e.get_i64("LastRedrive"),
            etag: e.etag().cloned(),
        }
    }

    /// Where the next window starts: after the last planned one, else the committed frontier.
    pub fn next_since(&self) -> Option<DateTime<Utc>> {
        self.planned_till.or(self.since)
    }
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::new()
    }
}

impl Job {
    pub fn planned(seq: i64, since: DateTime<Utc>, till: DateTime<Utc>, resource_type: &str) -> Job {
        Job {
            seq,
            since,
            till,
            export_status: ExportStatus::Starting,
            export_url: String::new(),
            export_id: String::new(),
            attempt: 0,
            lease_until: None,
            start_time: None,
            export_end_time: None,
            exported: 0,
            search_parameter_count: 0,
            payloads: 0,
            import_status: ImportStatus::NotStarted,
            import_request: String::new(),
            processed: false,
            failure_reason: String::new(),
            resource_type: resource_type.into(),
            window_since: None,
            window_till: None,
            type_index: 0,
            end_time: None,
            remainder_till: None,
            failure_streak: 0,
            deferrals: 0,
            split_level: 0,
            planned_versions: None,
            boundary_versions: None,
            till_early: false,
            redrive: None,
            etag: None,
        }
    }

    pub fn to_entity(&self, pk: &str, rk: &str) -> Result<Entity, TableError> {
        let mut e = Entity::new(pk, job_key(rk, self.seq))?;
        time_str(&mut e, "Since", Some(self.since));
        time_str(&mut e, "Till", Some(self.till));
        let export_complete = matches!(self.export_status, ExportStatus::Completed | ExportStatus::Failed);
        let import_complete = self.import_status == ImportStatus::Completed;
        e.set_i64("JobSeq", self.seq)
            .set_str("IsExportRunning", self.export_status.as_str())
            .set_bool("IsExportComplete", export_complete)
            .set_str("exportContentLocation", &self.export_url)
            .set_str("ExportId", &self.export_id)
            .set_i64("ExportAttempt", self.attempt)
            .set_str("TotalExportResourceCount", self.exported.to_string())
            .set_i64("SearchParameterCount", self.search_parameter_count)
            .set_i32("PayloadCount", self.payloads as i32)
            .set_str("IsImportRunning", self.import_status.as_str())
            .set_bool("IsImportComplete", import_complete)
            .set_str("ImportRequest", &self.import_request)
            .set_bool("IsProcessed", self.processed)
            .set_bool("IsFirst", true)
            .set_str("FailureReason", &self.failure_reason)
            .set_str("resourceTypeValue", &self.resource_type)
            .set_i64("TypeIndex", self.type_index);
        opt_time(&mut e, "GlobalSince", self.window_since);
        opt_time(&mut e, "GlobalTill", self.window_till);
        opt_time(&mut e, "LeaseUntil", self.lease_until);
        opt_time(&mut e, "StartTime", self.start_time);
        opt_time(&mut e, "ExportEndTime", self.export_end_time);
        opt_time(&mut e, "EndTime", self.end_time);
        opt_time(&mut e, "RemainderTill", self.remainder_till);
        e.set_i64("FailureStreak", self.failure_streak)
            .set_i64("Deferrals", self.deferrals)
            .set_i64("SplitLevel", self.split_level)
            .set_bool("TillEarly", self.till_early);
        if let Some(n) = self.planned_versions {
            e.set_i64("PlannedVersions", n);
        }
        if let Some(n) = self.boundary_versions {
            e.set_i64("BoundaryVersions", n);
        }
        if let Some(r) = &self.redrive {
            r.write(&mut e);
        }
        Ok(e)
    }

    pub fn from_entity(e: &Entity) -> Option<Job> {
        Some(Job {
            seq: e.get_i64("JobSeq")?,
            since: read_time_str(e, "Since")?,
            till: read_time_str(e, "Till")?,
            export_status: ExportStatus::parse(e.get_str("IsExportRunning").unwrap_or_default()),
            export_url: e.get_str("exportContentLocation").unwrap_or_default().into(),
            export_id: e.get_str("ExportId").unwrap_or_default().into(),
            attempt: e.get_i64("ExportAttempt").unwrap_or(0),
            lease_until: e.get_datetime("LeaseUntil"),
            start_time: e.get_datetime("StartTime"),
            export_end_time: e.get_datetime("ExportEndTime"),
            exported: e.get_i64("TotalExportResourceCount").unwrap_or(0),
            search_parameter_count: e.get_i64("SearchParameterCount").unwrap_or(0),
            payloads: e.get_i64("PayloadCount").unwrap_or(0),
            import_status: ImportStatus::parse(e.get_str("IsImportRunning").unwrap_or_default()),
            import_request: e.get_str("ImportRequest").unwrap_or_default().into(),
            processed: e.get_bool("IsProcessed").unwrap_or(false),
            failure_reason: e.get_str("FailureReason").unwrap_or_default().into(),
            resource_type: e.get_str("resourceTypeValue").unwrap_or_default().into(),
            window_since: e.get_datetime("GlobalSince"),
            window_till: e.get_datetime("GlobalTill"),
            type_index: e.get_i64("TypeIndex").unwrap_or(0),
            end_time: e.get_datetime("EndTime"),
            remainder_till: e.get_datetime("RemainderTill"),
            failure_streak: e.get_i64("FailureStreak").unwrap_or(0),
            deferrals: e.get_i64("Deferrals").unwrap_or(0),
            split_level: e.get_i64("SplitLevel").unwrap_or(0),
            planned_versions: e.get_i64("PlannedVersions"),
            boundary_versions: e.get_i64("BoundaryVersions"),
            till_early: e.get_bool("TillEarly").unwrap_or(false),
            redrive: Redrive::read(e),
            etag: e.etag().cloned(),
        })
    }
}

#[cfg(test)]
mod tests;
