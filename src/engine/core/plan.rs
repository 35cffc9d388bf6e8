//! Committing finished windows in order, and choosing what to export next: repair a cursor a planner left
//! behind, kick off a planned or failed window, or plan a new one (sized by counts, halved to fit
//! `AZURE_ChunkLimit`, empty ranges skipped; per resource type in per-type mode).

use chrono::{DateTime, Utc};

use super::rules::{WindowPhase, window_phase};
use super::{Action, Context, CountKey, Facts, Mark, Notes, Snapshot, Write};
use crate::fhir::format_instant;
use crate::planner;
use crate::state::{Cursor, Job};
use crate::telemetry::Event;

/// Progress samples are kept this far apart, and this far back: enough to measure the rate over the last hour.
const SAMPLE_EVERY: chrono::TimeDelta = chrono::TimeDelta::minutes(2);
const SAMPLES_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(3);

/// Records a (now, migrated) sample. Samples stay at least [`SAMPLE_EVERY`] apart except the newest, which
/// moves forward with each commit (so the rate includes the latest one) until it is that far past the one
/// before it; those older than [`SAMPLES_KEPT`] are dropped.
pub fn record_progress(cursor: &mut Cursor, now: DateTime<Utc>) {
    let sample = (now, cursor.migrated_versions);
    let samples = &mut cursor.progress_samples;
    match samples.len() {
        n if n >= 2 && samples[n - 1].0 - samples[n - 2].0 < SAMPLE_EVERY => samples[n - 1] = sample,
        _ => samples.push(sample),
    }
    samples.retain(|(t, _)| now - *t <= SAMPLES_KEPT);
}

/// Moves the cursor past the oldest uncommitted window when it is processed, or over an empty range planned
/// after the last window. `ImportTill` reports the cursor's new position and nothing beyond it.
pub fn commit(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let cursor = &snapshot.cursor;
    let mut updated = cursor.clone();
    if cursor.committed_job < cursor.next_job {
        let Some(job) = snapshot.job(cursor.committed_job) else {
            let mark = Mark::Reported(format!("missing-{}", cursor.committed_job));
            return (!facts.marks.contains(&mark)).then(|| {
                Action::Note(
                    Notes::line(format!(
                        "The row of window {} is missing or unreadable, so the cursor cannot move past it: inspect row {} of the export table",
                        cursor.committed_job,
                        crate::state::rows::job_key(&ctx.settings.row_key, cursor.committed_job)
                    ))
                    .mark(mark),
                )
            });
        };
        if window_phase(job) != WindowPhase::Processed {
            return None;
        }
        // A re-drive's row moves the count of committed rows, never the cursor's instant.
        if let Some(r) = &job.redrive {
            return Some(super::redrive::finished(cursor, job, r));
        }
        // Custom SearchParameters travel through the REST API (the sync), not in the window's import: a window
        // commits only once a sync has covered its end, so the range it reports migrated includes them.
        if cursor.search_parameters_synced_at.is_none_or(|s| s < job.till) {
            if !facts.search_parameters_tried {
                return Some(Action::CopySearchParameters);
            }
            return note_once(
                facts,
                &format!("search-parameters-{}", job.seq),
                &format!(
                    "Window {} to {} waits for the SearchParameter sync to cover its end (the sync did not complete; it is tried again next tick)",
                    format_instant(job.since),
                    format_instant(job.till)
                ),
            );
        }
        // A per-type window's parts commit one by one; `since` moves to the window's end once its last part
        // commits.
        if job.resource_type.is_empty() {
            updated.since = Some(job.till);
        } else if let Some(window_till) = per_type_window_complete(snapshot, job) {
            updated.since = Some(window_till);
        }
        updated.committed_job += 1;
        updated.first_since = cursor.first_since.or(cursor.since).or(Some(job.since));
        updated.migrated_versions += job.exported.max(0);
        record_progress(&mut updated, ctx.now);
        // Success resets the latch, unless the next window is failing right now.
        let next_failing = snapshot
            .job(updated.committed_job)
            .is_some_and(|j| window_phase(j) == WindowPhase::Failed);
        if !next_failing {
            updated.failures = 0;
        }
        let mut notes = Notes::line(format!(
            "Window {} to {} migrated; cursor advanced",
            format_instant(job.since),
            format_instant(job.till)
        ))
        .fail_point("committed");
        if updated.since != cursor.since
            && let Some(since) = updated.since
        {
            notes = notes.event(Event::new("ImportTill").with("Till", format_instant(since)));
        }
        return Some(Action::Write {
            write: Write::Cursor(updated),
            notes,
        });
    }
    match (cursor.planned_till, cursor.since) {
        (Some(planned), Some(since)) if planned > since && cursor.global_till.is_none() => {
            updated.since = Some(planned);
            Some(Action::Write {
                write: Write::Cursor(updated),
                notes: Notes::default().event(Event::new("ImportTill").with("Till", format_instant(planned))),
            })
        }
        _ => None,
    }
}

/// The end of the per-type window this part belongs to, when it is the window's last part.
fn per_type_window_complete(snapshot: &Snapshot, job: &Job) -> Option<DateTime<Utc>> {
    let window_till = job.window_till?;
    // Re-drive rows recorded between two parts of a window are no part of it.
    let next = snapshot.jobs.iter().find(|j| j.seq > job.seq && j.redrive.is_none());
    match next {
        Some(next) => (next.resource_type.is_empty() || next.window_till != Some(window_till)).then_some(window_till),
        // Nothing planned after this part: complete only if planning has finished the window.
        None => (snapshot.cursor.global_till != Some(window_till)).then_some(window_till),
    }
}

/// Repairs the cursor, kicks off what is due, or plans the next window when the pipeline has room.
pub fn advance(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let cursor = &snapshot.cursor;
    // A row the cursor does not know about: its planner stopped between inserting it and moving the cursor
    // (or this tick inserted it a step ago). The cursor is rebuilt from the row itself.
    if let Some(row) = snapshot.job(cursor.next_job) {
        return Some(Action::Write {
            write: Write::Cursor(repaired_cursor(ctx.settings, cursor, row)),
            notes: Notes::default().fail_point("planned-cursor"),
        });
    }
    if let Some(j) = snapshot.jobs.iter().find(|j| window_phase(j) == WindowPhase::Halted) {
        return Some(Action::Finish(Notes::line(format!(
            "Migration halted at window {} to {}: {}",
            format_instant(j.since),
            format_instant(j.till),
            j.failure_reason
        ))));
    }
    if let Some(action) = super::exports::kick_offs(ctx, snapshot, facts) {
        return action;
    }
    let uncommitted = (cursor.next_job - cursor.committed_job).max(0) as usize;
    // Windows in flight at most: with overlap several export while earlier ones import (they commit in order).
    if uncommitted >= ctx.settings.windows_in_flight || facts.skips > ctx.timing.max_empty_skips {
        return None;
    }
    if !ctx.settings.is_parallel || cursor.global_till.is_some() {
        plan_per_type(ctx, snapshot, facts)
    } else {
        plan_window(ctx, snapshot, facts)
    }
}

/// The cursor rebuilt from a row it does not count yet (a re-drive's row moves only the count).
pub fn repaired_cursor(settings: &crate::config::MigrationSettings, cursor: &Cursor, row: &Job) -> Cursor {
    if let Some(repaired) = super::redrive::repaired(cursor, row) {
        return repaired;
    }
    let mut repaired = cursor.clone();
    repaired.next_job = row.seq + 1;
    if repaired.since.is_none() {
        repaired.since = Some(row.window_since.unwrap_or(row.since));
    }
    let end = row.remainder_till.unwrap_or(row.till);
    match (row.resource_type.is_empty(), row.window_since, row.window_till) {
        (false, Some(ws), Some(wt)) => {
            per_type_position(&mut repaired, &settings.resource_types, ws, wt, &row.resource_type, end)
        }
        _ => repaired.planned_till = Some(repaired.planned_till.map_or(end, |p| p.max(end))),
    }
    repaired
}

/// A fact planning needs and this tick does not have yet.
pub(super) enum Missing {
    Count(CountKey),
    Oldest,
}

impl From<Missing> for Action {
    fn from(missing: Missing) -> Action {
        match missing {
            Missing::Count((resource_type, since, till)) => Action::Count {
                resource_type,
                since,
                till,
            },
            Missing::Oldest => Action::Oldest { from: None },
        }
    }
}

/// Where the next window starts: after the last one planned, else `AZURE_StartDate`, else the source's oldest
/// resource.
fn next_window_start(ctx: &Context, cursor: &Cursor, facts: &Facts) -> Result<Option<DateTime<Utc>>, Missing> {
    if let Some(s) = cursor.next_since().or(ctx.settings.start_date) {
        return Ok(Some(s));
    }
    facts.oldest.get(&None).copied().ok_or(Missing::Oldest)
}

/// Where the next window starts, or what comes first: finding the source's oldest resource, or saying (once)
/// that it has none.
fn window_start(ctx: &Context, cursor: &Cursor, facts: &Facts) -> Result<DateTime<Utc>, Box<Option<Action>>> {
    match next_window_start(ctx, cursor, facts) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(Box::new(note_once(
            facts,
            "no-data",
            "The source server has no resources yet; nothing to export",
        ))),
        Err(missing) => Err(Box::new(Some(missing.into()))),
    }
}

/// The count of `[since, till)` from the facts.
pub(super) fn count(
    facts: &Facts,
    resource_type: Option<&str>,
    since: DateTime<Utc>,
    till: DateTime<Utc>,
) -> Result<u64, Missing> {
    let key = (resource_type.map(str::to_string), since, till);
    facts.counts.get(&key).copied().ok_or(Missing::Count(key))
}

/// The longest part of `[since, till)` within the chunk limit (halved until it fits, or cannot shrink).
pub(super) fn sized(
    ctx: &Context,
    facts: &Facts,
    resource_type: Option<&str>,
    since: DateTime<Utc>,
    mut till: DateTime<Utc>,
) -> Result<(DateTime<Utc>, u64), Missing> {
    loop {
        let n = count(facts, resource_type, since, till)?;
        match planner::halve(since, till) {
            Some(shorter) if n > ctx.settings.chunk_limit => till = shorter,
            _ => return Ok((till, n)),
        }
    }
}

/// How far before a planned window end the tool looks for an empty millisecond, nearest first: up to ten
/// counts, reaching a second back.
const BOUNDARY_STEPS_MS: [i64; 10] = [0, 1, 2, 5, 10, 50, 100, 250, 500, 1_000];

/// Where a window from `since` planned to end at `till` ends instead, and how many versions lie on that end
/// millisecond. A window that ends on a millisecond holding no version exports the same set whether the source
/// reads `_till` as exclusive (AHDS's parallel path) or as inclusive to the end of that millisecond (Azure API
/// for FHIR, and AHDS's fallback path: reference §11.9), so the first empty millisecond at or up to a second
/// before `till` (and after `since`) is taken, each checked with a count of `[ms, ms + 1 ms)`. When every one
/// holds versions, `till` stays and the export's count decides the reading (see `exports`).
pub(super) fn boundary(
    facts: &Facts,
    resource_type: Option<&str>,
    since: DateTime<Utc>,
    till: DateTime<Utc>,
) -> Result<(DateTime<Utc>, i64), Missing> {
    let ms = chrono::TimeDelta::milliseconds;
    for step in BOUNDARY_STEPS_MS {
        let at = till - ms(step);
        if at <= since {
            break;
        }
        // A count over every type that found it empty answers for each type too.
        let empty_for_all = facts.counts.get(&(None, at, at + ms(1))) == Some(&0);
        if empty_for_all || count(facts, resource_type, at, at + ms(1))? == 0 {
            return Ok((at, 0));
        }
    }
    Ok((till, count(facts, resource_type, till, till + ms(1))? as i64))
}

/// A planned window `[since, c)` holding `n`, moved to an exact boundary: the row to insert.
fn planned_job(
    ctx: &Context,
    facts: &Facts,
    seq: i64,
    resource_type: &str,
    since: DateTime<Utc>,
    (c, n): (DateTime<Utc>, u64),
) -> Result<Job, Missing> {
    let scope = (!resource_type.is_empty()).then_some(resource_type);
    let (till, on_end) = boundary(facts, scope, since, c)?;
    let planned = if till == c {
        n
    } else {
        count(facts, scope, since, till)?
    };
    let mut job = Job::planned(seq, since, till, resource_type);
    job.planned_versions = Some(planned as i64);
    job.boundary_versions = Some(on_end);
    job.till_early = ctx.settings.export_till_inclusive;
    Ok(job)
}

fn plan_window(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let cursor = &snapshot.cursor;
    let since = match window_start(ctx, cursor, facts) {
        Ok(s) => s,
        Err(first) => return *first,
    };
    let till = planner::window_end_with(ctx.settings, since, ctx.clock(), ctx.timing.min_tail)?;
    let (till, n) = match sized(ctx, facts, None, since, till) {
        Ok(sized) => sized,
        Err(missing) => return Some(missing.into()),
    };
    if n == 0 {
        // Skip straight to the next resource (or the frontier) without an export.
        let next = match facts.oldest.get(&Some(till)) {
            Some(next) => *next,
            None => return Some(Action::Oldest { from: Some(till) }),
        };
        let frontier = planner::frontier(ctx.settings, ctx.clock());
        let skip_to = next.map_or(frontier, |n| n.min(frontier)).max(till);
        if skip_to <= since {
            return None;
        }
        let mut updated = cursor.clone();
        updated.planned_till = Some(skip_to);
        if updated.since.is_none() {
            updated.since = Some(since);
        }
        let notes = Notes::line(format!(
            "No data from {} to {}; skipped without an export",
            format_instant(since),
            format_instant(skip_to)
        ))
        .event(
            Event::new("WindowSkipped")
                .with("Since", format_instant(since))
                .with("Till", format_instant(skip_to))
                .with("Reason", "the source has no resources in this range"),
        )
        .mark(Mark::EmptySkip);
        return Some(Action::Write {
            write: Write::Cursor(updated),
            notes,
        });
    }
    let job = match planned_job(ctx, facts, cursor.next_job, "", since, (till, n)) {
        Ok(job) => job,
        Err(missing) => return Some(missing.into()),
    };
    Some(Action::Write {
        notes: Notes::line(format!(
            "Planned window {}: {} to {} ({} resources)",
            job.seq,
            format_instant(since),
            format_instant(job.till),
            job.planned_versions.unwrap_or_default()
        ))
        .fail_point("planned-job"),
        write: Write::InsertJob(job),
    })
}

/// Per-type mode (`AZURE_IsParallel=false`): each window is exported one resource type at a time, in the order
/// of `AZURE_ResourceTypes`; types with no data in the window are recorded as done without an export; a type
/// over the chunk limit is split into parts. Progress is kept on the cursor, so planning resumes mid-list.
fn plan_per_type(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let cursor = &snapshot.cursor;
    let (window_since, window_till) = match (cursor.global_since, cursor.global_till) {
        (Some(s), Some(t)) => (s, t),
        _ => {
            let since = match window_start(ctx, cursor, facts) {
                Ok(s) => s,
                Err(first) => return *first,
            };
            let span = ctx.settings.chunk_unit.span(ctx.settings.resource_export_chunk_time);
            let till = (since + span).min(planner::frontier(ctx.settings, ctx.clock()));
            planner::window_end_with(ctx.settings, since, ctx.clock(), ctx.timing.min_tail)?;
            if till <= since {
                return None;
            }
            // The window's end serves every type: an empty millisecond for all of them when one is near.
            match boundary(facts, None, since, till) {
                Ok((till, _)) => (since, till),
                Err(missing) => return Some(missing.into()),
            }
        }
    };
    let types = &ctx.settings.resource_types;
    let fresh = cursor.global_till.is_none();
    // A split type continues first; then every listed type not yet planned for this window, in list order.
    let mut candidates: Vec<(String, Option<DateTime<Utc>>)> = Vec::new();
    if !fresh && !cursor.type_name.is_empty() && cursor.sub_since.is_some() && types.contains(&cursor.type_name) {
        candidates.push((cursor.type_name.clone(), cursor.sub_since));
    }
    candidates.extend(
        types
            .iter()
            .filter(|t| (fresh || !cursor.types_done.contains(t)) && **t != cursor.type_name)
            .map(|t| (t.clone(), None)),
    );
    // Types with nothing left in the window are recorded as done in one write before the next type is planned,
    // so neither a restart nor the next part can export them again.
    let mut empty = Vec::new();
    for (resource_type, part_since) in &candidates {
        let start = part_since.unwrap_or(window_since);
        let n = match count(facts, Some(resource_type), start, window_till) {
            Ok(n) => n,
            Err(missing) => return Some(missing.into()),
        };
        if n == 0 {
            empty.push(resource_type.clone());
            continue;
        }
        if !empty.is_empty() {
            return Some(record_empty_types(cursor, window_since, window_till, &empty));
        }
        let sized = match sized(ctx, facts, Some(resource_type), start, window_till) {
            Ok(sized) => sized,
            Err(missing) => return Some(missing.into()),
        };
        let mut job = match planned_job(ctx, facts, cursor.next_job, resource_type, start, sized) {
            Ok(job) => job,
            Err(missing) => return Some(missing.into()),
        };
        let (end, n) = (job.till, job.planned_versions.unwrap_or_default());
        job.window_since = Some(window_since);
        job.window_till = Some(window_till);
        job.type_index = types.iter().position(|t| t == resource_type).unwrap_or(0) as i64;
        return Some(Action::Write {
            notes: Notes::line(format!(
                "Planned window {}: {resource_type} from {} to {} ({n} resources)",
                job.seq,
                format_instant(start),
                format_instant(end)
            ))
            .fail_point("planned-job"),
            write: Write::InsertJob(job),
        });
    }
    // Every type of this window is planned: the window ends here, and commits once its parts are imported.
    let mut updated = cursor.clone();
    updated.global_since = None;
    updated.global_till = None;
    updated.type_index = 0;
    updated.sub_since = None;
    updated.type_name.clear();
    updated.types_done.clear();
    updated.planned_till = Some(window_till);
    if updated.since.is_none() {
        updated.since = Some(window_since);
    }
    Some(Action::Write {
        write: Write::Cursor(updated),
        notes: Notes::line(format!(
            "All resource types planned for {} to {}",
            format_instant(window_since),
            format_instant(window_till)
        )),
    })
}

fn record_empty_types(cursor: &Cursor, since: DateTime<Utc>, till: DateTime<Utc>, empty: &[String]) -> Action {
    let mut updated = cursor.clone();
    if updated.global_till != Some(till) || updated.global_since != Some(since) {
        updated.types_done.clear();
    }
    updated.global_since = Some(since);
    updated.global_till = Some(till);
    if updated.since.is_none() {
        updated.since = Some(since);
    }
    for t in empty {
        if *t == updated.type_name {
            // A split type whose remainder is empty is finished.
            updated.type_name.clear();
            updated.sub_since = None;
        }
        if !updated.types_done.contains(t) {
            updated.types_done.push(t.clone());
        }
    }
    Action::Write {
        write: Write::Cursor(updated),
        notes: Notes::default(),
    }
}

/// Per-type position after planning `resource_type` up to `planned_to` in the window `[since, till)`: the same
/// type again from there if its share was split, else it joins the window's done types.
pub fn per_type_position(
    cursor: &mut Cursor,
    types: &[String],
    since: DateTime<Utc>,
    till: DateTime<Utc>,
    resource_type: &str,
    planned_to: DateTime<Utc>,
) {
    if cursor.global_till != Some(till) || cursor.global_since != Some(since) {
        cursor.types_done.clear();
    }
    cursor.global_since = Some(since);
    cursor.global_till = Some(till);
    if planned_to < till {
        cursor.type_name = resource_type.to_string();
        cursor.sub_since = Some(planned_to);
    } else {
        if !cursor.types_done.iter().any(|t| t == resource_type) {
            cursor.types_done.push(resource_type.to_string());
        }
        if cursor.type_name == resource_type {
            cursor.type_name.clear();
            cursor.sub_since = None;
        }
    }
    // The original's position column, kept for runbooks.
    cursor.type_index = types.iter().position(|t| t == resource_type).map_or(0, |i| i as i64);
}

fn note_once(facts: &Facts, key: &str, line: &str) -> Option<Action> {
    let mark = Mark::Reported(key.to_string());
    (!facts.marks.contains(&mark)).then(|| Action::Note(Notes::line(line).mark(mark)))
}

/// What an operator's clear changes besides the latch: imports halted by the Halt policy are accepted with
/// their failed lines (the window may commit), and a window halted by a repeating failure is exported again
/// with a smaller plan: its part halved in time (the rest follows in the same row) and one more halving of its
/// payloads' processing units. Each write with the line that says what it did.
pub fn clear_halts(snapshot: &Snapshot) -> Vec<(Write, String)> {
    use crate::state::rows::{ExportStatus, ImportStatus};
    let mut writes = Vec::new();
    for p in snapshot.payloads.iter().filter(|p| p.status == ImportStatus::Halted) {
        let mut accepted = p.clone();
        accepted.status = ImportStatus::Completed;
        accepted.failure_reason = format!("accepted by an operator with {} failed line(s)", p.failed_lines);
        writes.push((
            Write::Payload(accepted),
            format!("Import of window {} payload {} accepted by an operator", p.seq, p.index),
        ));
    }
    for job in &snapshot.jobs {
        let mut j = job.clone();
        if job.import_status == ImportStatus::Halted {
            j.import_status = ImportStatus::Running;
        }
        if job.export_status == ExportStatus::Halted {
            j.export_status = ExportStatus::Failed;
            j.failure_streak = 0;
            j.split_level += 1;
            if let Some(mid) = planner::halve(job.since, job.till) {
                j.remainder_till = Some(job.remainder_till.unwrap_or(job.till));
                j.till = mid;
                j.planned_versions = None;
                j.boundary_versions = None;
            }
        }
        if j != *job {
            let line = format!(
                "Window {} cleared: exported again from {} to {} (split level {})",
                j.seq,
                format_instant(j.since),
                format_instant(j.till),
                j.split_level
            );
            writes.push((Write::Job(j), line));
        }
    }
    writes
}

#[cfg(test)]
mod tests;
