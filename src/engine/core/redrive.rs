//! Re-drives: a range already below the cursor exported and imported again, for versions missing at the
//! destination that the failure ledger does not hold (an operator deleted them there, say).
//!
//! A re-drive is recorded as ordinary window rows, flagged with the request ([`Redrive`]), at the next sequence
//! numbers: the engine then exports and imports them as any window (one export at a time, sized to
//! `AZURE_ChunkLimit` when claimed, ended on an empty millisecond, split when refused as too large, every refused
//! line recorded in the ledger, import attempts named by their tokens). When such a row is processed it commits
//! in its turn, but only the count of committed rows moves: the cursor's instant, its counts and the retry latch
//! stay as they were.
//!
//! Recording is a sequence of idempotent steps decided from the stored state alone ([`record`]): insert the
//! next row, bring the cursor's count past it, answer. Running the same request again while it is in progress
//! finds its rows and records nothing new; a crash between two steps is finished by the next run (or by the
//! engine's own cursor repair).

use chrono::{DateTime, Utc};

use super::plan::{self, Missing};
use super::{Action, Context, Facts, Notes, Snapshot, Write};
use crate::config::MigrationSettings;
use crate::fhir::format_instant;
use crate::state::rows::{ExportStatus, ImportStatus, Redrive};
use crate::state::{Cursor, Job};

/// What an operator asks to re-drive: `[since, till)` of lastUpdated, of `types` (empty: every type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub since: DateTime<Utc>,
    pub till: DateTime<Utc>,
    pub types: Vec<String>,
}

impl Request {
    /// The request with its types sorted and without repeats (how rows record and compare it).
    pub fn normalized(mut self) -> Request {
        self.types.sort();
        self.types.dedup();
        self
    }
}

/// Why a re-drive is not recorded. [`Refusal::fix`] says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the range is empty: --since {since} is not before --till {till}")]
    EmptyRange { since: String, till: String },
    #[error("nothing is migrated yet, so there is nothing to re-drive")]
    NotStarted,
    #[error("--till {till} is past what is migrated (through {migrated}): that part is still to be migrated")]
    AboveCursor { till: String, migrated: String },
    #[error("--since {since} is before AZURE_StartDate {start}: outside what this configuration migrates")]
    BeforeStart { since: String, start: String },
    #[error("{0} is not a FHIR R4 resource type")]
    UnknownType(String),
    #[error("{0} is not in AZURE_ResourceTypes, and per-type mode migrates only those")]
    OutOfScope(String),
    #[error("no re-drive {0} is recorded")]
    Unknown(i64),
    #[error("SearchParameter resources travel through the REST API, not $import, so a re-drive cannot carry them")]
    SearchParameter,
    #[error("re-drive {id} ({since} to {till}, {types}) overlaps this range and has not finished")]
    Overlaps {
        id: i64,
        since: String,
        till: String,
        types: String,
    },
}

impl Refusal {
    pub fn fix(&self) -> String {
        match self {
            Refusal::EmptyRange { .. } => "give a --since earlier than --till (RFC 3339 instants)".into(),
            Refusal::NotStarted => {
                "start the migration (the Function App, or `run`); a re-drive repeats part of what it has migrated"
                    .into()
            }
            Refusal::AboveCursor { migrated, .. } => format!(
                "give a --till at or before {migrated} (`status` shows `migrated through`); the timers migrate the rest by themselves"
            ),
            Refusal::BeforeStart { start, .. } => format!("give a --since at or after {start}"),
            Refusal::UnknownType(_) => "name resource types as FHIR spells them (Patient,Observation)".into(),
            Refusal::OutOfScope(_) => {
                "name only types listed in AZURE_ResourceTypes, or leave --types out for all of them".into()
            }
            Refusal::Unknown(_) => "give the number `status` shows on its re-drive line".into(),
            Refusal::SearchParameter => {
                "leave SearchParameter out of --types; the tool's SearchParameter sync copies changed ones (`verify` compares them)"
                    .into()
            }
            Refusal::Overlaps { id, .. } => format!(
                "wait until re-drive {id} has finished (`status` shows it), then run this one; or run the same command as re-drive {id} to see it"
            ),
        }
    }
}

/// The next step of recording a re-drive.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Make this write, then decide again from what is stored.
    Write(Box<Write>),
    /// Recorded and not yet finished: its number, and its rows still in flight.
    Recorded { id: i64, rows: Vec<i64> },
}

/// The types a request's rows carry, one row each, in order: the types asked for; in per-type mode without
/// types, every configured type (an export of every type would carry types outside the configuration); in
/// parallel mode without types, one row of every type (`""`).
fn row_types(settings: &MigrationSettings, request: &Request) -> Vec<String> {
    if !request.types.is_empty() {
        return request.types.clone();
    }
    if settings.is_parallel {
        return vec![String::new()];
    }
    let mut types = settings.resource_types.clone();
    types.sort();
    types.dedup();
    types
}

fn check(settings: &MigrationSettings, cursor: &Cursor, request: &Request) -> Result<(), Refusal> {
    if request.since >= request.till {
        return Err(Refusal::EmptyRange {
            since: format_instant(request.since),
            till: format_instant(request.till),
        });
    }
    let Some(migrated) = cursor.since else {
        return Err(Refusal::NotStarted);
    };
    if request.till > migrated {
        return Err(Refusal::AboveCursor {
            till: format_instant(request.till),
            migrated: format_instant(migrated),
        });
    }
    if let Some(start) = settings.start_date.filter(|s| request.since < *s) {
        return Err(Refusal::BeforeStart {
            since: format_instant(request.since),
            start: format_instant(start),
        });
    }
    for t in &request.types {
        if t == "SearchParameter" {
            return Err(Refusal::SearchParameter);
        }
        if !fhir_r4_types::is_resource_type(t) {
            return Err(Refusal::UnknownType(t.clone()));
        }
        if !settings.is_parallel && !settings.resource_types.contains(t) {
            return Err(Refusal::OutOfScope(t.clone()));
        }
    }
    Ok(())
}

/// The next step of recording `request` (normalized) against the stored state: a refusal, a write, or the
/// re-drive as recorded.
pub fn record(settings: &MigrationSettings, snapshot: &Snapshot, request: &Request) -> Result<Step, Refusal> {
    let cursor = &snapshot.cursor;
    // A row the cursor does not count yet (this request's, from a run that stopped, or a planner's): the
    // cursor is brought past it first, as the engine itself would.
    if let Some(row) = snapshot.job(cursor.next_job) {
        return Ok(Step::Write(Box::new(Write::Cursor(plan::repaired_cursor(
            settings, cursor, row,
        )))));
    }
    let flagged = snapshot.jobs.iter().filter_map(|j| j.redrive.as_ref().map(|r| (j, r)));
    let (ours, others): (Vec<_>, Vec<_>) =
        flagged.partition(|(_, r)| r.same_request(request.since, request.till, &request.types));
    // Only a request not in flight yet is checked against the cursor: once recorded, it stands.
    if ours.is_empty() {
        check(settings, cursor, request)?;
    }
    if let Some((_, r)) = others
        .iter()
        .find(|(_, r)| r.overlaps(request.since, request.till, &request.types))
    {
        return Err(Refusal::Overlaps {
            id: r.id,
            since: format_instant(r.since),
            till: format_instant(r.till),
            types: r.types_text(),
        });
    }
    // Rows are written in type order at consecutive numbers and commit in order, so a run that stopped part
    // way left the types after the last one in flight to write.
    let types = row_types(settings, request);
    let last = ours
        .iter()
        .filter_map(|(j, _)| types.iter().position(|t| *t == j.resource_type))
        .max();
    let next = last.map_or(0, |i| i + 1);
    let id = ours.first().map_or(cursor.next_job, |(_, r)| r.id);
    if let Some(resource_type) = types.get(next) {
        let mut row = Job::planned(cursor.next_job, request.since, request.till, resource_type);
        row.redrive = Some(Redrive {
            id,
            since: request.since,
            till: request.till,
            types: request.types.clone(),
        });
        return Ok(Step::Write(Box::new(Write::InsertJob(row))));
    }
    Ok(Step::Recorded {
        id,
        rows: ours.iter().map(|(j, _)| j.seq).collect(),
    })
}

/// The cursor after a re-drive's row that the cursor does not count yet: only the count moves (and the
/// latest re-drive's number); the instant and the per-type planning position belong to the normal windows.
pub fn repaired(cursor: &Cursor, row: &Job) -> Option<Cursor> {
    let r = row.redrive.as_ref()?;
    let mut repaired = cursor.clone();
    repaired.next_job = repaired.next_job.max(row.seq + 1);
    repaired.last_redrive = Some(cursor.last_redrive.map_or(r.id, |l| l.max(r.id)));
    Some(repaired)
}

/// A processed re-drive row commits in its turn: the count of committed rows moves past it, nothing else.
pub fn finished(cursor: &Cursor, job: &Job, r: &Redrive) -> Action {
    let mut updated = cursor.clone();
    updated.committed_job += 1;
    let part = if job.resource_type.is_empty() {
        String::new()
    } else {
        format!(" ({})", job.resource_type)
    };
    let stays = cursor.since.map(format_instant).unwrap_or_default();
    Action::Write {
        write: Write::Cursor(updated),
        notes: Notes::line(format!(
            "Re-drive {} of {} to {}{part} done (row {}); the cursor stays at {stays}",
            r.id,
            format_instant(r.since),
            format_instant(r.till),
            job.seq
        ))
        .fail_point("committed"),
    }
}

/// A re-drive part about to be claimed, not yet counted: sized to `AZURE_ChunkLimit` from where it starts (the
/// rest follows in the same row), ended on an empty millisecond, or found empty and done without an export.
pub(super) enum Part {
    Export(Job),
    Empty(Job),
}

pub(super) fn sized_part(ctx: &Context, facts: &Facts, job: &Job) -> Result<Part, Missing> {
    let scope = (!job.resource_type.is_empty()).then_some(job.resource_type.as_str());
    let end = job.till;
    let (c, n) = plan::sized(ctx, facts, scope, job.since, end)?;
    if n == 0 {
        let mut done = job.clone();
        done.export_status = ExportStatus::Completed;
        done.import_status = ImportStatus::Completed;
        done.import_request = "No".into();
        done.exported = 0;
        done.payloads = 0;
        done.lease_until = None;
        return Ok(Part::Empty(super::exports::next_part_or_done(ctx, done)));
    }
    let (till, on_end) = plan::boundary(facts, scope, job.since, c)?;
    let planned = if till == c {
        n
    } else {
        plan::count(facts, scope, job.since, till)?
    };
    let mut part = job.clone();
    if till < end {
        part.remainder_till = Some(job.remainder_till.unwrap_or(end));
    }
    part.till = till;
    part.planned_versions = Some(planned as i64);
    part.boundary_versions = Some(on_end);
    part.till_early = ctx.settings.export_till_inclusive;
    Ok(Part::Export(part))
}

#[cfg(test)]
mod tests;
