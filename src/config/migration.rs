//! The migration settings: every `AZURE_*` setting of the original tool (same name, default and meaning), the
//! spellings its deployment template used, and the settings this tool adds. Parsed into real types and
//! validated in one pass by [`MigrationSettings::from_source`].

use chrono::{DateTime, TimeDelta, Utc};
use url::Url;

use super::server_url::{is_azure_api_for_fhir, is_loopback};

use super::SettingsSource;
use crate::secret::Secret;

/// The R4 resource types the tool migrates in per-type mode and checks after migration: all 146 but
/// `SearchParameter` (copied through the REST API). The original's list also lacked `SubstanceNucleicAcid`.
/// The largest deep-check sample (each sampled resource is two reads and a row in the report).
pub const MAX_DEEP_CHECK_COUNT: u32 = 1000;

pub fn default_resource_types() -> Vec<&'static str> {
    fhir_r4_types::R4_TYPES
        .iter()
        .copied()
        .filter(|t| *t != "SearchParameter")
        .collect()
}

/// The unit of `AZURE_ExportChunkTime` (`AZURE_ExportChunkDuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkUnit {
    Days,
    Hours,
    Minutes,
}

impl ChunkUnit {
    pub fn span(self, n: u32) -> TimeDelta {
        let n = i64::from(n);
        match self {
            ChunkUnit::Days => TimeDelta::days(n),
            ChunkUnit::Hours => TimeDelta::hours(n),
            ChunkUnit::Minutes => TimeDelta::minutes(n),
        }
    }
}

/// The business-hours pause (`AZURE_PauseDm`/`AZURE_StopDm`, `AZURE_StartTime`, `AZURE_EndTime`): UTC hours,
/// start inclusive, end exclusive, wrapping past midnight when start > end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseWindow {
    pub start_hour: u32,
    pub end_hour: u32,
}

/// What to do when an import finishes with per-line errors (`AZURE_ImportErrorPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportErrorPolicy {
    /// Record the failed lines (row, telemetry, status) and move on.
    Continue,
    /// Stop the migration at that window until an operator clears it.
    Halt,
}

/// The source's client-secret credential (`AZURE_ClientCredential`), for a source in another tenant.
#[derive(Clone)]
pub struct ClientSecretSettings {
    pub tenant_id: String,
    pub client_id: String,
    pub secret: Secret<String>,
}

impl std::fmt::Debug for ClientSecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientSecret {{ tenant_id: {}, client_id: {}, secret: <redacted> }}",
            self.tenant_id, self.client_id
        )
    }
}

/// Every migration setting, parsed.
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// `AZURE_SourceUri`
    pub source: Url,
    /// `AZURE_DestinationUri`
    pub destination: Url,
    /// `AZURE_SourceAudience`: the token audience the source is configured with, when it is not the source's URL
    /// (Azure API for FHIR often uses the shared `https://azurehealthcareapis.com`). Tokens are asked for
    /// `<audience>/.default`.
    pub source_audience: Option<Url>,
    /// `AZURE_DestinationAudience`: as `source_audience`, for the destination.
    pub destination_audience: Option<Url>,
    /// `AZURE_StartDate`: the first window's start when the cursor is empty (else the source's oldest resource).
    pub start_date: Option<DateTime<Utc>>,
    /// `AZURE_EndDate`, honoured with `AZURE_SpecificRun`.
    pub end_date: Option<DateTime<Utc>>,
    pub specific_run: bool,
    /// `AZURE_ImportMode` (the `$import` mode parameter).
    pub import_mode: String,
    pub user_agent: String,
    pub partition_key: String,
    pub row_key: String,
    pub surface_row_key: String,
    pub deep_row_key: String,
    pub is_parallel: bool,
    pub export_chunk_time: u32,
    pub resource_export_chunk_time: u32,
    pub chunk_unit: ChunkUnit,
    /// `AZURE_ChunkLimit`: most resources per window before it is halved (honoured, unlike the original).
    pub chunk_limit: u64,
    pub export_with_history: bool,
    pub export_with_delete: bool,
    /// `AZURE_IsExportDeidentified` (or the template's `AZURE_ExportDeidentified`) with `AZURE_ConfigFile`.
    pub deidentify_config: Option<String>,
    /// `AZURE_MaxCount` + `AZURE_MaxCountValue` (10,000 when the value is 0).
    pub max_count: Option<u32>,
    pub pause: Option<PauseWindow>,
    pub continue_last_import_during_pause: bool,
    /// `AZURE_MaxExportRetriesEnabled` + `AZURE_MaxExportRetries`.
    pub max_export_retries: Option<u32>,
    /// `AZURE_PayloadCount`: most imports running at once.
    pub payload_count: usize,
    /// `AZURE_FileCount`: most input files per `$import`.
    pub file_count: usize,
    /// `AZURE_ResourceTypes`: replaces the default list (comma-separated or `__0`, `__1`, …).
    pub resource_types: Vec<String>,
    pub query_surface: Vec<String>,
    pub history_delete_query_surface: Vec<String>,
    pub query_deep: Vec<String>,
    pub history_delete_query_deep: Vec<String>,
    /// `AZURE_DeepCheckCount`: resources the deep check samples across all types (0 or unset: 100; at most
    /// 1000 — the full check covers everything).
    pub deep_check_count: u32,
    /// `AZURE_DeepCheckIgnorePaths`: JSON paths (e.g. `meta.source`) a destination server adds on its own,
    /// which the deep check then ignores. Empty by default: every difference counts.
    pub deep_check_ignore_paths: Vec<String>,
    /// `AZURE_ScheduleInterval` (minutes): kept for compatibility; polling follows the timer schedules.
    pub schedule_interval_minutes: f64,
    pub client_secret: Option<ClientSecretSettings>,
    /// `AZURE_AuthorityHost`: Entra ID authority for the client-secret credential (sovereign clouds).
    pub authority_host: Option<Url>,
    /// `AZURE_ManagedIdentityClientId`: a user-assigned identity for FHIR and storage tokens.
    pub managed_identity_client_id: Option<String>,
    /// `AZURE_CredentialType`: `ManagedIdentity` (in Azure) or `DeveloperTools` (your Azure CLI / azd login,
    /// for running locally against real Azure).
    pub developer_credential: bool,
    /// `AZURE_SafetyLagSeconds`: windows never end later than now minus this (late commits are not missed).
    pub safety_lag: TimeDelta,
    /// `AZURE_ExportTillInclusive` (`auto`, `true`, `false`): how the source's `$export` reads `_till` on a
    /// window boundary whose millisecond holds versions. Windows end on an empty millisecond whenever one is
    /// near (then both readings export the same set and this is not used); otherwise `_till` is sent one
    /// millisecond early when inclusive. The same server can answer either way (reference §11.9: AHDS falls
    /// back to the inclusive search path), so under `auto` this is only the first guess (inclusive for an
    /// Azure API for FHIR host) and the export's count corrects it; `true`/`false` fix it (see
    /// [`MigrationSettings::export_till_fixed`]).
    pub export_till_inclusive: bool,
    /// The operator set `AZURE_ExportTillInclusive` explicitly: a manifest that disagrees with it fails the
    /// window (and halts it when it repeats) instead of the reading being corrected.
    pub export_till_fixed: bool,
    /// `AZURE_CountIntervalMinutes` (default 15, 0: every time): how long whole-server counts for the `Import`
    /// events are reused. They are counted afresh when an import completes.
    pub count_interval: TimeDelta,
    /// `AZURE_OverlapExports`: export window N+1 while window N imports.
    pub overlap_exports: bool,
    /// Windows exported or imported at once: `AZURE_MaxWindowsInFlight` (1-10, default 3) with overlap, else 1.
    /// Each window's imports run as their own jobs, so this also bounds the destination's parallel imports.
    pub windows_in_flight: usize,
    pub import_error_policy: ImportErrorPolicy,
    /// `AZURE_MaxImportRetries`: attempts per payload before the window counts as failed.
    pub max_import_retries: u32,
    /// `AZURE_SameMillisecondCapacity` (default 80,000, the server's): how many versions of one resource type
    /// the destination can hold on one millisecond. Its surrogate ids are `ms * 80000 + sequence`
    /// (fhir-server `MergeResourcesBeginTransaction.sql`, `IdHelper.cs`; reference §11.1), so versions beyond
    /// it can never be imported with their lastUpdated: the tool names them in the ledger and imports the rest.
    pub same_ms_capacity: u32,
    /// `AZURE_ScanExportFiles` (default true): read each payload's export files before its first import, so of
    /// several versions of one resource on one millisecond the destination gets the latest (its import would
    /// keep the one that sorts highest as text: reference §11.2), the others named in the ledger. Costs one
    /// read of every export file.
    pub scan_export_files: bool,
    /// `AZURE_JobTimeoutHours`: an export or import still running after this long is counted as failed (and
    /// retried), so a job the server never finishes cannot hold the migration forever.
    pub job_timeout: TimeDelta,
    /// `AZURE_ExportConfirmSeconds`: wait before re-polling an export that reported completion (servers can
    /// flap 200 → 202); the completion counts only if the re-poll agrees.
    pub export_confirm_delay: std::time::Duration,
    /// `AZURE_LeaseSeconds` (default 660): how long a kick-off or import POST whose answer was never recorded
    /// (the process died) is presumed still in flight before it is repaired. Keep it above host.json's
    /// functionTimeout (10 minutes), so a slow invocation is never taken for a dead one.
    pub lease: TimeDelta,
    /// `AZURE_IntegrationStorageUri`: blob endpoint of the export/import storage account, read (with the managed
    /// identity) to classify import error files. Unset: files on the tool's own account are read, others only
    /// counted.
    pub integration_storage: Option<Url>,
    /// `AZURE_SourceResourceId` / `AZURE_DestinationResourceId`: the FHIR servers' Azure resource ids (or full
    /// Resource Manager URLs, for sovereign clouds). With them, preflight reads both resources' export and import
    /// configuration (the identity needs Reader on them).
    pub source_resource: Option<String>,
    pub destination_resource: Option<String>,
    /// `AZURE_ResourceManagerUri` (default `https://management.azure.com`).
    pub resource_manager: Url,
    pub debug: bool,
    /// Values outside their range that were replaced by the nearest allowed one, said as warnings.
    pub adjusted: Vec<String>,
}

impl MigrationSettings {
    /// Parses every migration setting, adding each problem found to `problems`. `None` when the source or
    /// destination URL is unusable (nothing can run without them).
    pub fn from_source(source: &SettingsSource, problems: &mut Vec<String>) -> Option<MigrationSettings> {
        let mut p = Parser { source, problems };
        let source_uri = p.url("AZURE_SourceUri");
        let destination_uri = p.url("AZURE_DestinationUri");
        let start_date = p.date("AZURE_StartDate");
        let end_date = p.date("AZURE_EndDate");
        let specific_run = p.flag(&["AZURE_SpecificRun"], false);
        let chunk_unit = match source.get_or("AZURE_ExportChunkDuration", "Days") {
            d if d.eq_ignore_ascii_case("days") => ChunkUnit::Days,
            d if d.eq_ignore_ascii_case("hours") => ChunkUnit::Hours,
            d if d.eq_ignore_ascii_case("minutes") => ChunkUnit::Minutes,
            other => {
                p.problem(format!(
                    "AZURE_ExportChunkDuration '{other}' is not Days, Hours or Minutes"
                ));
                ChunkUnit::Days
            }
        };
        let deidentified = p.flag(&["AZURE_IsExportDeidentified", "AZURE_ExportDeidentified"], false);
        let config_file = source.get("AZURE_ConfigFile").map(str::to_string);
        let is_parallel = p.flag(&["AZURE_IsParallel"], true);
        let paused = p.flag(&["AZURE_PauseDm", "AZURE_StopDm"], false);
        let start_hour = p.number("AZURE_StartTime", 8u32);
        let end_hour = p.number("AZURE_EndTime", 17u32);
        let max_count_on = p.flag(&["AZURE_MaxCount"], false);
        let max_count_value = p.number("AZURE_MaxCountValue", 0u32);
        let retries_on = p.flag(&["AZURE_MaxExportRetriesEnabled"], false);
        let retries = p.number("AZURE_MaxExportRetries", 5u32);
        let client_credential = p.flag(&["AZURE_ClientCredential"], false);
        let export_with_history = p.flag(&["AZURE_ExportWithHistory"], false);
        let export_with_delete = p.flag(&["AZURE_ExportWithDelete"], false);
        let import_error_policy = match source.get_or("AZURE_ImportErrorPolicy", "Continue") {
            v if v.eq_ignore_ascii_case("continue") => ImportErrorPolicy::Continue,
            v if v.eq_ignore_ascii_case("halt") => ImportErrorPolicy::Halt,
            other => {
                p.problem(format!("AZURE_ImportErrorPolicy '{other}' is not Continue or Halt"));
                ImportErrorPolicy::Continue
            }
        };
        let settings = MigrationSettings {
            start_date,
            end_date,
            specific_run,
            import_mode: source.get_or("AZURE_ImportMode", "IncrementalLoad").to_string(),
            user_agent: source
                .get("AZURE_UserAgent")
                .unwrap_or("fhir-migration-tool")
                .to_string(),
            partition_key: p.key("AZURE_PartitionKey", "mypartitionkey"),
            row_key: p.key("AZURE_RowKey", "myrowkey"),
            surface_row_key: p.key("AZURE_SurfaceRowKey", "surfacerowkey"),
            deep_row_key: p.key("AZURE_DeepRowKey", "deeprowkey"),
            is_parallel,
            export_chunk_time: p.positive("AZURE_ExportChunkTime", 30),
            resource_export_chunk_time: p.positive("AZURE_ResourceExportChunkTime", 30),
            chunk_unit,
            chunk_limit: p.number("AZURE_ChunkLimit", 100_000_000u64).max(1),
            export_with_history,
            export_with_delete,
            deidentify_config: None,
            max_count: max_count_on.then_some(if max_count_value == 0 { 10_000 } else { max_count_value }),
            pause: paused.then_some(PauseWindow { start_hour, end_hour }),
            continue_last_import_during_pause: p.flag(&["AZURE_ContinueLastImportDuringPause"], false),
            max_export_retries: retries_on.then_some(retries.max(1)),
            payload_count: p.positive("AZURE_PayloadCount", 5) as usize,
            file_count: p.positive("AZURE_FileCount", 10_000) as usize,
            resource_types: p.list("AZURE_ResourceTypes", &default_resource_types()),
            query_surface: p.list("AZURE_QuerySurface", &["?_summary=Count"]),
            history_delete_query_surface: p.list("AZURE_HistoryDeleteQuerySurface", &["_history?_summary=count"]),
            query_deep: p.list("AZURE_QueryDeep", &["Patient?_count="]),
            history_delete_query_deep: p.list("AZURE_HistoryDeleteQueryDeep", &["Patient/_history?_count="]),
            deep_check_count: match p.number("AZURE_DeepCheckCount", 100u32) {
                0 => 100,
                n => n.min(MAX_DEEP_CHECK_COUNT),
            },
            deep_check_ignore_paths: p.list("AZURE_DeepCheckIgnorePaths", &[]),
            schedule_interval_minutes: p.number("AZURE_ScheduleInterval", 2.0f64),
            client_secret: None,
            source_audience: source
                .get("AZURE_SourceAudience")
                .and_then(|v| p.parse_url("AZURE_SourceAudience", v)),
            destination_audience: source
                .get("AZURE_DestinationAudience")
                .and_then(|v| p.parse_url("AZURE_DestinationAudience", v)),
            authority_host: source
                .get("AZURE_AuthorityHost")
                .and_then(|v| p.parse_url("AZURE_AuthorityHost", v)),
            managed_identity_client_id: source.get("AZURE_ManagedIdentityClientId").map(str::to_string),
            developer_credential: match source.get_or("AZURE_CredentialType", "ManagedIdentity") {
                v if v.eq_ignore_ascii_case("ManagedIdentity") => false,
                v if v.eq_ignore_ascii_case("DeveloperTools") => true,
                other => {
                    p.problem(format!(
                        "AZURE_CredentialType '{other}' is not ManagedIdentity or DeveloperTools"
                    ));
                    false
                }
            },
            safety_lag: TimeDelta::seconds(p.number("AZURE_SafetyLagSeconds", 300i64)),
            count_interval: TimeDelta::minutes(p.number("AZURE_CountIntervalMinutes", 15i64)),
            export_till_inclusive: match source.get_or("AZURE_ExportTillInclusive", "auto") {
                v if v.eq_ignore_ascii_case("auto") => source_uri.as_ref().is_some_and(is_azure_api_for_fhir),
                v if v.eq_ignore_ascii_case("true") => true,
                v if v.eq_ignore_ascii_case("false") => false,
                other => {
                    p.problem(format!(
                        "AZURE_ExportTillInclusive '{other}' is not auto, true or false"
                    ));
                    false
                }
            },
            export_till_fixed: !source
                .get_or("AZURE_ExportTillInclusive", "auto")
                .eq_ignore_ascii_case("auto"),
            overlap_exports: p.flag(&["AZURE_OverlapExports"], true),
            windows_in_flight: 1,
            import_error_policy,
            max_import_retries: p.positive("AZURE_MaxImportRetries", 3),
            same_ms_capacity: p.positive("AZURE_SameMillisecondCapacity", 80_000),
            scan_export_files: p.flag(&["AZURE_ScanExportFiles"], true),
            job_timeout: TimeDelta::hours(p.positive("AZURE_JobTimeoutHours", 24).into()),
            export_confirm_delay: std::time::Duration::from_secs(p.number("AZURE_ExportConfirmSeconds", 5u64)),
            lease: TimeDelta::seconds(p.positive("AZURE_LeaseSeconds", 660).into()),
            source_resource: p.resource_id("AZURE_SourceResourceId"),
            destination_resource: p.resource_id("AZURE_DestinationResourceId"),
            resource_manager: source
                .get("AZURE_ResourceManagerUri")
                .and_then(|v| p.parse_url("AZURE_ResourceManagerUri", v))
                .unwrap_or_else(|| Url::parse("https://management.azure.com").expect("static")),
            integration_storage: source
                .get("AZURE_IntegrationStorageUri")
                .and_then(|v| p.parse_url("AZURE_IntegrationStorageUri", v)),
            debug: p.flag(&["AZURE_Debug"], false),
            adjusted: Vec::new(),
            source: source_uri
                .clone()
                .unwrap_or_else(|| Url::parse("https://invalid.invalid").expect("static")),
            destination: destination_uri
                .clone()
                .unwrap_or_else(|| Url::parse("https://invalid.invalid").expect("static")),
        };
        let mut settings = settings;
        let deep_asked = source
            .get("AZURE_DeepCheckCount")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if deep_asked > MAX_DEEP_CHECK_COUNT {
            settings.adjusted.push(format!(
                "AZURE_DeepCheckCount {deep_asked} is more than {MAX_DEEP_CHECK_COUNT}; {MAX_DEEP_CHECK_COUNT} is used"
            ));
        }
        // Tokens travel only over https: a plain-http FHIR server is refused here, where every command sees it,
        // not only when a token is first needed. Loopback stand-ins (the emulator) are the exception.
        for (name, url) in [
            ("AZURE_SourceUri", &source_uri),
            ("AZURE_DestinationUri", &destination_uri),
        ] {
            if let Some(u) = url
                && u.scheme() != "https"
                && !is_loopback(u)
            {
                p.problem(format!(
                    "{name} {u} is not https: tokens are only sent over https (loopback emulators excepted)"
                ));
            }
        }
        // Cross-field rules.
        if paused {
            for (name, hour) in [("AZURE_StartTime", start_hour), ("AZURE_EndTime", end_hour)] {
                if hour > 23 {
                    p.problem(format!("{name} {hour} is not an hour of the day (0 to 23, UTC)"));
                }
            }
            if start_hour == end_hour {
                p.problem("AZURE_StartTime and AZURE_EndTime are equal: the pause window would be empty".into());
            }
        }
        if let (Some(s), Some(e)) = (start_date, end_date)
            && e <= s
        {
            p.problem(format!("AZURE_EndDate {e} is not after AZURE_StartDate {s}"));
        }
        if specific_run && end_date.is_none() {
            p.problem("AZURE_SpecificRun is true but AZURE_EndDate is not set".into());
        }
        if settings.overlap_exports {
            let n = p.positive("AZURE_MaxWindowsInFlight", 3);
            if n > 10 {
                p.problem(format!(
                    "AZURE_MaxWindowsInFlight {n} is more than 10 (each window runs its own import jobs)"
                ));
            }
            settings.windows_in_flight = n.min(10) as usize;
        }
        if deidentified {
            match &config_file {
                None => p.problem("de-identified export (AZURE_IsExportDeidentified) needs AZURE_ConfigFile".into()),
                Some(f) => settings.deidentify_config = Some(config_file_name(f)),
            }
            if !is_parallel {
                p.problem(
                    "de-identified export needs AZURE_IsParallel=true (the servers de-identify system exports only)"
                        .into(),
                );
            }
        }
        if !["IncrementalLoad", "InitialLoad"]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(&settings.import_mode))
        {
            p.problem(format!(
                "AZURE_ImportMode '{}' is not IncrementalLoad or InitialLoad",
                settings.import_mode
            ));
        } else if settings.import_mode.eq_ignore_ascii_case("InitialLoad") {
            p.problem(
                "AZURE_ImportMode InitialLoad cannot migrate versions or run continuously; use IncrementalLoad".into(),
            );
        }
        if settings.safety_lag < TimeDelta::zero() {
            p.problem("AZURE_SafetyLagSeconds must not be negative".into());
        }
        if client_credential {
            let tenant = source.get("AZURE_TenantId");
            let client = source.get("AZURE_ClientId");
            let secret = source.get("AZURE_ClientSecret");
            match (tenant, client, secret) {
                (Some(t), Some(c), Some(s)) => {
                    settings.client_secret = Some(ClientSecretSettings {
                        tenant_id: t.to_string(),
                        client_id: c.to_string(),
                        secret: Secret::new(s.to_string()),
                    })
                }
                _ => p.problem("AZURE_ClientCredential is true: AZURE_TenantId, AZURE_ClientId and AZURE_ClientSecret are all required".into()),
            }
        }
        for t in &settings.resource_types {
            if t == "SearchParameter" {
                p.problem(
                    "AZURE_ResourceTypes must not list SearchParameter (it is copied through the REST API)".into(),
                );
            }
        }
        (source_uri.is_some() && destination_uri.is_some()).then_some(settings)
    }

    /// Warnings worth logging at start-up (valid, but probably not what the operator wants).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.adjusted.clone();
        if self.export_with_history && !self.export_with_delete {
            w.push("AZURE_ExportWithHistory is on without AZURE_ExportWithDelete: deleted resources will come back to life at the destination (their last live version becomes current). Turn on AZURE_ExportWithDelete for a faithful migration.".into());
        }
        if !self.export_with_history {
            w.push("AZURE_ExportWithHistory is off: only the current version of each resource is migrated.".into());
        }
        if self.source == self.destination {
            w.push("AZURE_SourceUri and AZURE_DestinationUri are the same server.".into());
        }
        w
    }

    /// The `includeAssociatedData` value for the export query, if any.
    pub fn associated_data(&self) -> Option<&'static str> {
        match (self.export_with_history, self.export_with_delete) {
            (true, true) => Some("_history,_deleted"),
            (true, false) => Some("_history"),
            (false, true) => Some("_deleted"),
            (false, false) => None,
        }
    }

    /// The window length in the current mode.
    pub fn chunk_span(&self) -> TimeDelta {
        let n = if self.is_parallel {
            self.export_chunk_time
        } else {
            self.resource_export_chunk_time
        };
        self.chunk_unit.span(n)
    }
}

/// The original kept only the name without extension and re-appended `.json`.
fn config_file_name(f: &str) -> String {
    let stem = f.rsplit(['/', '\\']).next().unwrap_or(f);
    let stem = stem.strip_suffix(".json").unwrap_or(stem);
    format!("{stem}.json")
}

mod parser;
use parser::Parser;

#[cfg(test)]
mod tests;
