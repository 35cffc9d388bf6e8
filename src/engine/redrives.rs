//! Re-drives through the store: recording one (the CLI's `redrive`), step by step as the core decides
//! ([`core::redrive::record`]), and what the latest one is doing (`status`). The timers carry the rows out like
//! any window.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::core::redrive::{Step, record};
use super::core::{self, Snapshot, Write};
use super::{Engine, EngineError, ports};
use crate::fhir::format_instant;
use crate::state::{Cursor, Job};
use crate::storage::tables::TableError;

pub use super::core::redrive::{Refusal, Request};

/// Steps one recording takes at most (a row per type and a cursor write each, and conflicts with the timers).
const MAX_STEPS: usize = 400;

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the state kept changing while the re-drive was being recorded ({MAX_STEPS} tries)")]
    Busy,
}

impl From<TableError> for RedriveError {
    fn from(e: TableError) -> RedriveError {
        RedriveError::Engine(e.into())
    }
}

/// A re-drive, as `status` and `redrive` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveStatus {
    pub id: i64,
    pub since: String,
    pub till: String,
    /// The types asked for; empty: every type.
    pub types: Vec<String>,
    /// `running`, `halted` (a row waits for an operator, as any window: `clear-retries`) or `finished`.
    pub state: String,
    /// Its window rows, and how many of them are done.
    pub rows: Vec<i64>,
    pub rows_done: usize,
    /// Why a row that is not done failed last (it is retried like any window), or empty.
    pub failure_reason: String,
    /// When its last row finished, once every row is done.
    pub finished_at: Option<String>,
}

/// What `redrive` did: whether this run recorded anything (false: the same request was already in flight).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recorded {
    pub created: bool,
    pub redrive: RedriveStatus,
}

/// The report on a re-drive from its rows and the cursor (a row below the committed count is done).
pub fn summary(cursor: &Cursor, rows: &[Job]) -> Option<RedriveStatus> {
    let r = rows.iter().find_map(|j| j.redrive.clone())?;
    let done = |j: &&Job| j.seq < cursor.committed_job;
    let rows_done = rows.iter().filter(done).count();
    let open: Vec<&Job> = rows.iter().filter(|j| !done(j)).collect();
    let halted = open
        .iter()
        .any(|j| core::rules::window_phase(j) == core::rules::WindowPhase::Halted);
    let state = match (open.is_empty(), halted) {
        (true, _) => "finished",
        (false, true) => "halted",
        (false, false) => "running",
    };
    Some(RedriveStatus {
        id: r.id,
        since: format_instant(r.since),
        till: format_instant(r.till),
        types: r.types.clone(),
        state: state.into(),
        rows: rows.iter().map(|j| j.seq).collect(),
        rows_done,
        failure_reason: open
            .iter()
            .map(|j| j.failure_reason.clone())
            .find(|f| !f.is_empty())
            .unwrap_or_default(),
        finished_at: open
            .is_empty()
            .then(|| rows.iter().filter_map(|j| j.end_time).max().map(format_instant))
            .flatten(),
    })
}

impl Engine {
    /// Records a re-drive of `request` (or finds the same one in flight). Each step is one ETag-guarded write
    /// decided from what is stored, so a run stopped anywhere is finished by the next one, and two runs at once
    /// record one re-drive.
    pub async fn redrive(&self, request: Request) -> Result<Recorded, RedriveError> {
        self.state.ensure_tables().await?;
        let request = Request {
            since: super::shell::to_millis(request.since),
            till: super::shell::to_millis(request.till),
            ..request
        }
        .normalized();
        let mut created = false;
        for _ in 0..MAX_STEPS {
            let (cursor, active) = self.load().await?;
            let snapshot = Snapshot {
                cursor,
                jobs: active.jobs,
                payloads: active.payloads,
            };
            match record(&self.settings, &snapshot, &request)? {
                Step::Recorded { id, .. } => {
                    let cursor = self.state.cursor().await?;
                    let rows = self.state.redrive_rows(id, cursor.next_job).await?;
                    let redrive = summary(&cursor, &rows).ok_or(RedriveError::Busy)?;
                    if created {
                        tracing::info!(
                            "Re-drive {id} recorded: {} to {} ({} row(s))",
                            redrive.since,
                            redrive.till,
                            redrive.rows.len()
                        );
                    }
                    return Ok(Recorded { created, redrive });
                }
                Step::Write(write) => match ports::Ports::write(self, &write).await {
                    Ok(_) => created |= matches!(*write, Write::InsertJob(_)),
                    // A timer (or another run) wrote first: decide again from what is stored now.
                    Err(TableError::Conflict { .. } | TableError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
        Err(RedriveError::Busy)
    }

    /// The latest re-drive recorded, for `status`.
    pub(crate) async fn latest_redrive(&self, cursor: &Cursor) -> Result<Option<RedriveStatus>, EngineError> {
        let Some(id) = cursor.last_redrive else {
            return Ok(None);
        };
        let rows = self.state.redrive_rows(id, cursor.next_job).await?;
        Ok(summary(cursor, &rows))
    }

    /// Gives up re-drive `id`: each of its rows not yet done is marked processed (with the reason), so the
    /// windows after it commit again in their turn (committing a re-drive row never moves the cursor's
    /// instant). Jobs it started at the servers are left to finish: they carry versions already migrated.
    /// Each write is conditional on the row as read; a conflict reads again, so a repeat changes nothing.
    pub async fn cancel_redrive(&self, id: i64, now: DateTime<Utc>) -> Result<Recorded, RedriveError> {
        let mut changed = false;
        for _ in 0..MAX_STEPS {
            let cursor = self.state.cursor().await?;
            let rows = self.state.redrive_rows(id, cursor.next_job).await?;
            if rows.is_empty() {
                return Err(RedriveError::Refused(Refusal::Unknown(id)));
            }
            let Some(open) = rows.iter().find(|j| j.seq >= cursor.committed_job && !j.processed) else {
                let redrive = summary(&cursor, &rows).ok_or(RedriveError::Busy)?;
                return Ok(Recorded {
                    created: changed,
                    redrive,
                });
            };
            let mut done = open.clone();
            done.processed = true;
            done.end_time = Some(now);
            done.failure_reason = "cancelled by an operator (redrive --cancel)".into();
            match ports::Ports::write(self, &Write::Job(done)).await {
                Ok(_) => {
                    changed = true;
                    tracing::info!("Re-drive {id}: window {} cancelled by an operator", open.seq);
                }
                Err(TableError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(RedriveError::Busy)
    }
}

/// An instant given on the command line (RFC 3339, any offset).
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("'{text}' is not an RFC 3339 instant ({e}); write it as 2026-01-31T00:00:00Z"))
}
