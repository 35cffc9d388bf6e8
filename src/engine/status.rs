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
    /// The re-drive this row belongs to (it never moves the cursor), or null for a window of the migration.
    pub redrive: Option<i64>,
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
    /// The first few versions not at the destination that block cut-over (open permanent failures), each
    /// `key: description: message`; `failures` lists them all.
    pub open_failures: Vec<String>,
    /// This machine's clock minus the source server's (seconds), as the timers last measured it (or this
    /// process, when it has heard from the source); windows end by the earlier of the two.
    pub source_clock_skew_seconds: Option<i64>,
    /// When the timers measured that skew.
    pub source_clock_skew_measured_at: Option<String>,
    /// When a timer tick last ran, in any process (`null` before the first, or for a migration whose ticks
    /// ran under a version that did not record them).
    pub last_tick_at: Option<String>,
    /// How long ago that was (seconds).
    pub last_tick_seconds_ago: Option<i64>,
    /// While ticks fail, or calls are deferred, on a server that does not answer usefully.
    pub waiting: Option<Waiting>,
    /// The latest re-drive (`redrive`), in flight or finished; null when none was ever recorded.
    pub redrive: Option<super::redrives::RedriveStatus>,
}

/// Why calls are being deferred.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// `source`, `destination`, `storage (blobs)`, `identity (token)`.
    pub server: String,
    /// Its last answer: `HTTP 503`, `no answer: …`.
    pub answer: String,
    pub since: Option<String>,
    /// Failed ticks (or deferred calls) in a row.
    pub times: i64,
}

/// How many open failures the status names.
const NAMED_FAILURES: usize = 5;

/// What is deferred: failing ticks (recorded by the timers), else kick-offs or POSTs the core defers.
fn waiting(cursor: &crate::state::Cursor, active: &crate::state::Active) -> Option<Waiting> {
    if cursor.deferred_ticks > 0 {
        return Some(Waiting {
            server: cursor.deferred_server.clone(),
            answer: cursor.deferred_answer.clone(),
            since: cursor.deferred_since.map(format_instant),
            times: cursor.deferred_ticks,
        });
    }
    let export = active.jobs.iter().find(|j| j.deferrals > 0).map(|j| Waiting {
        server: "source".into(),
        answer: j.failure_reason.clone(),
        since: None,
        times: j.deferrals,
    });
    export.or_else(|| {
        active.payloads.iter().find(|p| p.deferrals > 0).map(|p| Waiting {
            server: "destination".into(),
            answer: p.failure_reason.clone(),
            since: None,
            times: p.deferrals,
        })
    })
}

impl Waiting {
    /// `the source answers HTTP 503 since …Z (4 min ago), 22 times in a row`.
    pub fn describe(&self, now: DateTime<Utc>) -> String {
        let since = self
            .since
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| {
                format!(
                    " since {} ({} ago)",
                    format_instant(t.with_timezone(&Utc)),
                    super::progress::duration_text((now - t.with_timezone(&Utc)).num_seconds())
                )
            })
            .unwrap_or_default();
        format!(
            "the {} answers {}{since}, {} time(s) in a row",
            self.server, self.answer, self.times
        )
    }
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
                redrive: j.redrive.as_ref().map(|r| r.id),
            })
            .collect();
        let entries = self.ledger.list(None).await?;
        let import_failures = crate::ledger::Summary::of(&entries);
        // Versions of committed windows that are not at the destination (migrated counts what is there).
        let not_at_destination = entries
            .iter()
            .filter(|e| e.window < cursor.committed_job)
            .filter(|e| e.state.unresolved() || e.state == crate::ledger::State::Accepted)
            .filter(|e| e.class != crate::ledger::Class::Benign)
            .count() as i64;
        let open_failures = entries
            .iter()
            .filter(|e| e.state.unresolved() && e.class == crate::ledger::Class::Permanent)
            .take(NAMED_FAILURES)
            .map(|e| {
                format!(
                    "{}: {}: {}",
                    e.key,
                    e.describe(),
                    e.message.lines().next().unwrap_or_default()
                )
            })
            .collect();
        let waiting = waiting(&cursor, &active);
        let redrive = self.latest_redrive(&cursor).await?;
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
                last_tick_at: cursor.last_tick_at,
                waiting: waiting.as_ref().map(|w| w.describe(now)),
                not_at_destination,
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
            open_failures,
            source_clock_skew_seconds: self
                .source
                .server_now()
                .map(|s| (now - s).num_seconds())
                .or(cursor.source_skew_seconds),
            source_clock_skew_measured_at: cursor.skew_measured_at.map(format_instant),
            last_tick_at: cursor.last_tick_at.map(format_instant),
            last_tick_seconds_ago: cursor.last_tick_at.map(|t| (now - t).num_seconds().max(0)),
            waiting,
            redrive,
        })
    }
}

/// One window `plan` would export next.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedWindow {
    /// Per-type mode: the type this export carries (`_type=`); absent in parallel mode (every type at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
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
        if !self.settings.is_parallel {
            return self.preview_per_type(&cursor, since, now, n).await;
        }
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
                resource_type: None,
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

/// Counts a per-type preview makes at most (each type of each window is one count).
const PREVIEW_COUNTS: usize = 400;

impl Engine {
    /// Per-type mode, as the starter plans it: each window's types in `AZURE_ResourceTypes` order, a type with
    /// nothing in the window skipped, a type over `AZURE_ChunkLimit` split into halves; the window in progress
    /// continues where the cursor says (types done, the split type's next part).
    async fn preview_per_type(
        &self,
        cursor: &crate::state::Cursor,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<PlannedWindow>, EngineError> {
        let mut out = Vec::new();
        let mut counts = 0;
        let in_progress = cursor.global_since.zip(cursor.global_till);
        let mut since = in_progress.map_or(start, |(s, _)| s);
        let mut first = true;
        while out.len() < n && counts < PREVIEW_COUNTS {
            let till = match (first, in_progress) {
                (true, Some((_, t))) => t,
                _ => match crate::planner::window_end(&self.settings, since, now) {
                    Some(t) => t,
                    None => break,
                },
            };
            for t in &self.settings.resource_types {
                if first && in_progress.is_some() && cursor.types_done.contains(t) {
                    continue;
                }
                let mut from = match cursor.sub_since {
                    Some(sub) if first && *t == cursor.type_name => sub,
                    _ => since,
                };
                while from < till && out.len() < n && counts < PREVIEW_COUNTS {
                    let mut end = till;
                    let mut count = self.window_count(Some(t), from, end).await?;
                    counts += 1;
                    let mut halvings = 0;
                    while count > self.settings.chunk_limit {
                        let Some(shorter) = crate::planner::halve(from, end) else {
                            break;
                        };
                        end = shorter;
                        halvings += 1;
                        count = self.window_count(Some(t), from, end).await?;
                        counts += 1;
                    }
                    if count == 0 && halvings == 0 {
                        break;
                    }
                    out.push(PlannedWindow {
                        resource_type: Some(t.clone()),
                        since: format_instant(from),
                        till: format_instant(end),
                        resources: count,
                        halvings,
                    });
                    from = end;
                }
            }
            first = false;
            since = till;
        }
        Ok(out)
    }
}
