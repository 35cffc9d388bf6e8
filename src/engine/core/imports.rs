//! A window's imports: each payload's POST (claimed within `AZURE_PayloadCount`, answered, retried with a new
//! definition), its polls and result, and the window's verdict over its payloads.

use super::capacity::{self, attempts_allowed};
use super::exports::{Failure, fail_window, next_part_or_done};
use super::flow::{payload_container, write_job};
use super::rules::{self, PayloadPhase, Verdict, WindowPhase, payload_phase, window_phase};
use super::{Action, Claim, Context, Facts, ImportPoll, Mark, Notes, PostAnswer, PostKey, Snapshot, Write};
use crate::fhir::format_instant;
use crate::state::rows::ImportStatus;
use crate::state::{Job, Payload};
use crate::telemetry::{Event, id_of};

/// A window's verdict over its current payloads: processed when all imported, failed (exported again) when one
/// ran out of attempts, halted under the Halt policy, running while any runs.
pub fn settle_windows(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    for job in snapshot
        .jobs
        .iter()
        .filter(|j| window_phase(j) == WindowPhase::Exported)
    {
        let payloads: Vec<&Payload> = snapshot.payloads_of(job).collect();
        if payloads.is_empty() || (payloads.len() as i64) < job.payloads {
            continue;
        }
        if let Some(p) = payloads.iter().find(|p| {
            p.status == ImportStatus::Failed && p.attempt >= attempts_allowed(ctx, p) && !capacity::awaits_check(p)
        }) {
            let reason = format!("payload {} failed {} time(s): {}", p.index, p.attempt, p.failure_reason);
            let mark = Mark::Reported(format!("settled-{}-{}", job.seq, job.attempt));
            if facts.marks.contains(&mark) {
                continue;
            }
            let failure = Failure::of_reason(&p.failure_reason);
            let Action::Write { write, mut notes } = fail_window(job, reason, failure, mark) else {
                unreachable!("fail_window writes")
            };
            // Each failed import already counted itself.
            notes.count_failure = false;
            notes.events.clear();
            notes.exceptions.clear();
            return Some(Action::Write { write, notes });
        }
        if let Some(p) = payloads.iter().find(|p| p.status == ImportStatus::Halted) {
            if job.import_status == ImportStatus::Halted {
                continue;
            }
            let mut halted = job.clone();
            halted.import_status = ImportStatus::Halted;
            halted.failure_reason = p.failure_reason.clone();
            return Some(write_job(halted, Notes::default()));
        }
        if payloads.iter().all(|p| p.status == ImportStatus::Completed) {
            let done = next_part_or_done(ctx, job.clone());
            let line = if done.processed {
                String::new()
            } else {
                format!(
                    "Window part {} to {} imported; exporting the next part, to {}",
                    format_instant(job.since),
                    format_instant(job.till),
                    format_instant(done.till)
                )
            };
            let mut notes = Notes::default().fail_point("window-processed");
            if !line.is_empty() {
                notes = notes.and_line(line);
            }
            return Some(write_job(done, notes));
        }
        let running = payloads
            .iter()
            .any(|p| matches!(p.status, ImportStatus::Started | ImportStatus::Running));
        if running && job.import_status != ImportStatus::Running {
            let mut j = job.clone();
            j.import_status = ImportStatus::Running;
            return Some(write_job(j, Notes::default()));
        }
    }
    None
}

/// Starts imports for payloads that wait, failed with attempts left, or whose POST was interrupted or
/// deferred, within `AZURE_PayloadCount`; records each claimed POST's answer.
pub fn post_payloads(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    // A POST this tick claimed: call, then record the answer (even when latched: the claim is ours).
    for p in &snapshot.payloads {
        let key = PostKey::of(p);
        if p.status != ImportStatus::Posting || !facts.claimed.contains(&Claim::Post(key)) {
            continue;
        }
        let Some(job) = snapshot.job(p.seq) else { continue };
        let handled = Mark::PostHandled(key);
        // Handled this tick (answered, or given back over the cap): never decided again in the same tick.
        if facts.marks.contains(&handled) {
            continue;
        }
        match facts.posts.get(&key) {
            // Two invocations may claim different payloads at once: after its claim each one reads the state
            // again, and the claims beyond `AZURE_PayloadCount` (in key order, after the running imports) are
            // given back, so the destination never runs more imports than allowed.
            None if !facts.marks.contains(&Mark::Reloaded(key)) => {
                return Some(Action::Reload {
                    mark: Mark::Reloaded(key),
                });
            }
            None if over_cap(ctx, snapshot, key) => {
                let mut released = p.clone();
                released.lease_until = Some(ctx.now - chrono::TimeDelta::milliseconds(1));
                return Some(Action::Write {
                    write: Write::Payload(released),
                    notes: Notes::default().mark(handled),
                });
            }
            None => {
                return Some(Action::Post {
                    payload: p.clone(),
                    container: payload_container(&job.export_id),
                    unit_bytes: p.unit_bytes,
                });
            }
            // Not handled yet (see above): recorded once.
            Some(answer) => return Some(post_answered(ctx, job, p, answer, handled)),
        }
    }
    if ctx.latched(&snapshot.cursor) || (ctx.paused() && !ctx.settings.continue_last_import_during_pause) {
        return None;
    }
    let running = snapshot
        .payloads
        .iter()
        .filter(|p| {
            snapshot
                .job(p.seq)
                .is_some_and(|j| rules::occupies_slot(payload_phase(p, j.attempt, ctx.now)))
        })
        .count();
    for job in snapshot
        .jobs
        .iter()
        .filter(|j| window_phase(j) == WindowPhase::Exported)
    {
        for p in snapshot.payloads_of(job) {
            let phase = payload_phase(p, job.attempt, ctx.now);
            let due = match phase {
                PayloadPhase::Waiting => super::scan::ready(ctx, p),
                PayloadPhase::PostDue => true,
                PayloadPhase::Failed => p.attempt < attempts_allowed(ctx, p) && !capacity::awaits_check(p),
                _ => false,
            };
            if !due {
                continue;
            }
            if running >= ctx.settings.payload_count {
                return None;
            }
            let mut claimed = p.clone();
            // An interrupted or deferred POST is repeated with the same definition (the server de-duplicates
            // it); a failed one is retried with a new one.
            if phase != PayloadPhase::PostDue {
                claimed.attempt += 1;
                // The server's default processing unit always: a smaller one cannot get past the same-millisecond
                // capacity (reference §11.1; see `capacity`), and the token below already makes the definition new.
                claimed.unit_bytes = None;
                // A new definition for a new attempt, recorded before the POST (see `shell::attempt_source`). A
                // repeated POST keeps its token; one from a row written before tokens is repeated as first sent.
                claimed.post_token = format!(
                    "{:016x}-{}-{}-{}-{}",
                    ctx.nonce, claimed.seq, claimed.export_attempt, claimed.index, claimed.attempt
                );
            }
            claimed.status = ImportStatus::Posting;
            claimed.lease_until = Some(ctx.now + ctx.timing.lease);
            return Some(Action::Write {
                notes: Notes::default()
                    .claim(Claim::Post(PostKey::of(&claimed)))
                    .fail_point("import-claimed"),
                write: Write::Payload(claimed),
            });
        }
    }
    None
}

/// Whether a claimed POST falls beyond the import cap: running imports first, then live claims in key order.
fn over_cap(ctx: &Context, snapshot: &Snapshot, key: PostKey) -> bool {
    let mut running = 0;
    let mut claims = Vec::new();
    for p in &snapshot.payloads {
        let Some(job) = snapshot.job(p.seq) else { continue };
        match payload_phase(p, job.attempt, ctx.now) {
            PayloadPhase::Running => running += 1,
            PayloadPhase::Posting => claims.push(PostKey::of(p).payload),
            _ => {}
        }
    }
    claims.sort();
    let rank = claims.iter().position(|k| *k == key.payload).unwrap_or(claims.len());
    running + rank >= ctx.settings.payload_count
}

fn post_answered(ctx: &Context, job: &Job, p: &Payload, answer: &PostAnswer, handled: Mark) -> Action {
    let mut updated = p.clone();
    let write = |payload: Payload, notes: Notes| Action::Write {
        write: Write::Payload(payload),
        notes: notes.mark(handled.clone()),
    };
    let answer = match answer {
        PostAnswer::BlobMissing => {
            // Nothing to retry with: exhaust the attempts so the window is exported again.
            updated.status = ImportStatus::Failed;
            updated.lease_until = None;
            updated.attempt = updated.attempt.max(attempts_allowed(ctx, p));
            updated.failure_reason = format!(
                "the payload blob {}/{} is missing",
                payload_container(&job.export_id),
                p.blob
            );
            return write(updated, Notes::default());
        }
        PostAnswer::Answer(answer) => answer,
    };
    match rules::classify(answer, "$import", p.deferrals, ctx.now) {
        Verdict::Accepted { status_url } => {
            updated.import_url = status_url;
            updated.status = ImportStatus::Started;
            updated.start_time = Some(ctx.now);
            updated.lease_until = None;
            updated.deferrals = 0;
            updated.failure_reason.clear();
            let notes = Notes::line(format!(
                "Import {} started for window {} (payload {}, attempt {})",
                id_of(&updated.import_url),
                job.seq,
                p.index,
                p.attempt
            ))
            .event(
                Event::new("Import")
                    .with("ImportId", id_of(&updated.import_url))
                    .with("StatusUrl", &updated.import_url)
                    .with("ImportStatus", "Started"),
            );
            write(updated, notes)
        }
        Verdict::Retry { at, reason, report } => {
            updated.lease_until = Some(at);
            updated.deferrals = if report { 0 } else { p.deferrals + 1 };
            updated.failure_reason = reason.clone();
            let mut notes = Notes::line(format!(
                "Import of window {} payload {} deferred: {reason}",
                job.seq, p.index
            ));
            if report {
                notes = import_failed_notes(notes.failure(), job, &updated, None);
            }
            write(updated, notes)
        }
        Verdict::Refused { reason, .. } => {
            updated.status = ImportStatus::Failed;
            updated.lease_until = None;
            updated.failure_reason = reason.clone();
            let notes = Notes::line(format!(
                "Import of window {} payload {} refused: {reason}",
                job.seq, p.index
            ))
            .failure();
            write(updated.clone(), import_failed_notes(notes, job, &updated, None))
        }
    }
}

fn import_failed_notes(notes: Notes, job: &Job, p: &Payload, totals: Option<&super::Totals>) -> Notes {
    let mut event = Event::new("Import")
        .with("ImportId", id_of(&p.import_url))
        .with("StatusUrl", &p.import_url)
        .with("ImportStatus", "Failed");
    if let Some(t) = totals {
        event = t.add_to(event);
    }
    notes.failed_event(event.with("FailureReason", &p.failure_reason), job.since, job.till)
}

/// Polls each running import of each window's current attempt once a tick, and records the result.
pub fn poll_imports(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    for p in &snapshot.payloads {
        let Some(job) = snapshot.job(p.seq) else { continue };
        if payload_phase(p, job.attempt, ctx.now) != PayloadPhase::Running {
            continue;
        }
        let key = PostKey::of(p);
        let handled = Mark::ImportPollHandled(key);
        if facts.marks.contains(&handled) {
            continue;
        }
        let overdue = p.start_time.is_some_and(|t| ctx.now - t > ctx.settings.job_timeout);
        if overdue && !facts.marks.contains(&Mark::Cancelled(p.import_url.clone())) {
            return Some(Action::Cancel {
                url: p.import_url.clone(),
                destination: true,
            });
        }
        if overdue && facts.marks.contains(&Mark::CancelFailed(p.import_url.clone())) {
            continue;
        }
        let poll = if overdue {
            let hours = ctx.settings.job_timeout.num_hours();
            ImportPoll::Failed {
                status: 0,
                diagnostics: format!("no result after {hours} hours (the job was cancelled)"),
            }
        } else {
            match facts.import_polls.get(&key) {
                Some(poll) => poll.clone(),
                None => return Some(Action::PollImport { payload: p.clone() }),
            }
        };
        if let ImportPoll::Unreachable(error) = &poll {
            return Some(Action::Note(
                Notes::line(format!(
                    "Import {} of window {} could not be polled: {error}",
                    id_of(&p.import_url),
                    job.seq
                ))
                .mark(handled),
            ));
        }
        // Every Import event carries the whole-server totals (the original's contract). Counting a large server
        // costs request units, so counts are reused for AZURE_CountIntervalMinutes, and made afresh when an
        // import finishes.
        let cached = cached_totals(ctx, &snapshot.cursor);
        let totals = match (&facts.totals, &cached) {
            (Some(t), _) => t,
            (None, Some(t)) if matches!(poll, ImportPoll::Running) => t,
            _ => return Some(Action::CountTotals),
        };
        if facts.totals_counted && !facts.marks.contains(&Mark::TotalsSaved) {
            let mut cursor = snapshot.cursor.clone();
            cursor.totals_at = Some(ctx.now);
            cursor.source_total = totals.source.clone();
            cursor.destination_total = totals.destination.clone();
            return Some(Action::Write {
                write: Write::Cursor(cursor),
                notes: Notes::default().mark(Mark::TotalsSaved),
            });
        }
        return Some(match poll {
            ImportPoll::Running => {
                let event = totals.add_to(
                    Event::new("Import")
                        .with("ImportId", id_of(&p.import_url))
                        .with("StatusUrl", &p.import_url)
                        .with("ImportStatus", "Running"),
                );
                let notes = Notes::default().event(event).mark(handled);
                if p.status == ImportStatus::Running {
                    Action::Note(notes)
                } else {
                    let mut running = p.clone();
                    running.status = ImportStatus::Running;
                    Action::Write {
                        write: Write::Payload(running),
                        notes,
                    }
                }
            }
            ImportPoll::Failed { status, diagnostics } => {
                let mut failed = p.clone();
                failed.status = ImportStatus::Failed;
                failed.failure_reason = if status == 0 {
                    format!("import failed: {diagnostics}")
                } else {
                    format!("import failed with HTTP {status}: {diagnostics}")
                };
                failed.end_time = Some(ctx.now);
                let notes = Notes::line(format!(
                    "Import {} of window {} failed: {}",
                    id_of(&p.import_url),
                    job.seq,
                    failed.failure_reason
                ))
                .failure()
                .mark(handled);
                let notes = import_failed_notes(notes, job, &failed, Some(totals));
                Action::Write {
                    write: Write::Payload(failed),
                    notes,
                }
            }
            ImportPoll::Done(result) => {
                // Never record (or commit on) a job that is not the one this payload posted: post again with a
                // new definition (the next attempt's processing unit differs).
                if let Some(reason) = super::imported::foreign_job(p, &result) {
                    let mut failed = p.clone();
                    failed.status = ImportStatus::Failed;
                    failed.failure_reason = format!("{reason}; posting again with a new definition");
                    failed.end_time = Some(ctx.now);
                    let notes = Notes::line(format!(
                        "Import {} of window {} is not this payload's: {reason}",
                        id_of(&p.import_url),
                        job.seq
                    ))
                    .failure()
                    .mark(handled);
                    let notes = import_failed_notes(notes, job, &failed, Some(totals));
                    return Some(Action::Write {
                        write: Write::Payload(failed),
                        notes,
                    });
                }
                if !result.error.is_empty() && !facts.error_summaries.contains_key(&key) {
                    return Some(Action::RecordFailures {
                        payload: p.clone(),
                        errors: result.error.clone(),
                    });
                }
                super::imported::imported(ctx, job, p, &result, facts.error_summaries.get(&key), totals, handled)
            }
            ImportPoll::Unreachable(_) => unreachable!("handled above"),
        });
    }
    None
}

/// The counts a recent tick saved, while they are younger than `AZURE_CountIntervalMinutes`.
fn cached_totals(ctx: &Context, cursor: &crate::state::Cursor) -> Option<super::Totals> {
    let at = cursor.totals_at?;
    (ctx.now - at < ctx.settings.count_interval && !cursor.source_total.trim().is_empty()).then(|| super::Totals {
        source: cursor.source_total.clone(),
        destination: cursor.destination_total.clone(),
        ..super::Totals::default()
    })
}

#[cfg(test)]
mod tests;
