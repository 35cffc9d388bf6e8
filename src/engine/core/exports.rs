//! A window's export: its kick-off (claimed, called, answered), its polls, the payloads persisted from its
//! manifest, its failures (retried, or halted when they repeat) and its parts when it was split.

use super::flow::{payload_container, write_job};
use super::plan;
use super::rules::{self, IDENTICAL_FAILURES_TO_HALT, Verdict, WindowPhase, window_phase};
use super::{Action, Claim, Context, ExportPoll, Facts, Mark, Notes, Snapshot, Write};
use crate::fhir::format_instant;
use crate::fhir::wire::{ExportFile, import_parameters};
use crate::state::rows::{ExportStatus, ImportStatus};
use crate::state::{Job, Payload};
use crate::telemetry::{Event, id_of};

/// The kick-off due now, if any: `Some(None)` when an export is already under way (one at a time).
pub fn kick_offs(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Option<Action>> {
    // A kick-off this tick claimed: call the server, then record its answer.
    for job in snapshot.jobs.iter().filter(|j| window_phase(j) == WindowPhase::Planned) {
        let claim = Claim::Export {
            seq: job.seq,
            attempt: job.attempt,
        };
        if !facts.claimed.contains(&claim) {
            continue;
        }
        let handled = Mark::KickOffHandled {
            seq: job.seq,
            attempt: job.attempt,
        };
        match facts.kickoffs.get(&(job.seq, job.attempt)) {
            None => {
                return Some(Some(Action::KickOff {
                    job: job.clone(),
                    query: export_query(ctx, job),
                }));
            }
            Some(answer) if !facts.marks.contains(&handled) => {
                return Some(Some(kick_off_answered(ctx, job, answer, handled)));
            }
            Some(_) => {}
        }
    }
    let planned_or_exporting = |j: &&Job| matches!(window_phase(j), WindowPhase::Planned | WindowPhase::Exporting);
    // One export at a time: the oldest planned window whose claim is free (never claimed, expired after a
    // crash, or a requested wait that has passed) is kicked off; anything else under way waits.
    if let Some(job) = snapshot.jobs.iter().find(planned_or_exporting) {
        let free = window_phase(job) == WindowPhase::Planned && job.lease_until.is_none_or(|l| l < ctx.now);
        if !free {
            return Some(None);
        }
        return Some(Some(claim_counted(
            ctx,
            facts,
            job,
            job.attempt > 0 && job.lease_until.is_some(),
        )));
    }
    // A failed window is exported again before anything new.
    snapshot
        .jobs
        .iter()
        .find(|j| window_phase(j) == WindowPhase::Failed)
        .map(|job| Some(claim_counted(ctx, facts, job, false)))
}

/// Claims a kick-off once the part's counts are known: a part made by a split, or one whose count must be
/// taken again, is counted first (what it holds, and what lies on its end millisecond), so its manifest can be
/// checked.
fn claim_counted(ctx: &Context, facts: &Facts, job: &Job, repair: bool) -> Action {
    if job.redrive.is_some() && job.planned_versions.is_none() {
        return match super::redrive::sized_part(ctx, facts, job) {
            Ok(super::redrive::Part::Export(part)) => claim_export(ctx, &part, repair),
            Ok(super::redrive::Part::Empty(done)) => {
                let line = format!(
                    "Re-drive window {}: nothing at the source from {} to {}; done without an export",
                    job.seq,
                    format_instant(job.since),
                    format_instant(job.till)
                );
                write_job(done, Notes::line(line))
            }
            Err(missing) => missing.into(),
        };
    }
    if job.planned_versions.is_some() && job.boundary_versions.is_some() {
        return claim_export(ctx, job, repair);
    }
    let scope = (!job.resource_type.is_empty()).then_some(job.resource_type.as_str());
    let one_ms = chrono::TimeDelta::milliseconds(1);
    let counted = plan::count(facts, scope, job.since, job.till)
        .and_then(|n| Ok((n, plan::count(facts, scope, job.till, job.till + one_ms)?)));
    match counted {
        Ok((n, on_end)) => {
            let mut counted = job.clone();
            counted.planned_versions = Some(n as i64);
            counted.boundary_versions = Some(on_end as i64);
            claim_export(ctx, &counted, repair)
        }
        Err(missing) => missing.into(),
    }
}

/// A window row as it is before a kick-off: no export, no payloads, nothing imported.
fn ready_to_export(job: &mut Job) {
    job.export_status = ExportStatus::Starting;
    job.lease_until = None;
    job.export_url.clear();
    job.export_id.clear();
    job.payloads = 0;
    job.processed = false;
    job.import_status = ImportStatus::NotStarted;
    job.import_request.clear();
}

/// Claims a window's kick-off: a new attempt, with a lease that marks it as ours until the call is answered.
fn claim_export(ctx: &Context, job: &Job, repair: bool) -> Action {
    let mut claimed = job.clone();
    claimed.attempt += 1;
    ready_to_export(&mut claimed);
    claimed.lease_until = Some(ctx.now + ctx.timing.lease);
    let line = if job.export_status == ExportStatus::Failed {
        format!(
            "Exporting window {} to {} again (attempt {})",
            format_instant(job.since),
            format_instant(job.till),
            claimed.attempt
        )
    } else if repair {
        format!(
            "Kicking off window {} again: its last kick-off was deferred or never confirmed",
            job.seq
        )
    } else {
        format!("Kicking off window {}", job.seq)
    };
    Action::Write {
        notes: Notes::line(line)
            .claim(Claim::Export {
                seq: claimed.seq,
                attempt: claimed.attempt,
            })
            .fail_point("export-claimed"),
        write: Write::Job(claimed),
    }
}

/// The `$export` query for a window.
pub fn export_query(ctx: &Context, job: &Job) -> String {
    let enc = crate::storage::encode_component;
    let mut q = vec![if job.resource_type.is_empty() {
        "_isParallel=true".to_string()
    } else {
        format!("_type={}", enc(&job.resource_type))
    }];
    if let Some(config) = &ctx.settings.deidentify_config {
        q.push(format!("_container=anonymization&_anonymizationConfig={}", enc(config)));
    }
    if let Some(assoc) = ctx.settings.associated_data() {
        q.push(format!("includeAssociatedData={assoc}"));
    }
    q.push(format!("_since={}", enc(&format_instant(job.since))));
    // Exactly [since, till). An empty end millisecond makes both readings of `_till` agree, so it is sent as it
    // is; on an occupied one, a source that reads `_till` inclusively (to the end of that millisecond,
    // reference §11.9) is sent the millisecond before.
    let till = if job.boundary_versions != Some(0) && super::boundaries::till_early(ctx, job) {
        job.till - chrono::TimeDelta::milliseconds(1)
    } else {
        job.till
    };
    q.push(format!("_till={}", enc(&format_instant(till))));
    if let Some(n) = ctx.settings.max_count {
        q.push(format!("_maxCount={n}"));
    }
    q.join("&")
}

fn kick_off_answered(ctx: &Context, job: &Job, answer: &super::Answer, handled: Mark) -> Action {
    let (since, till) = (format_instant(job.since), format_instant(job.till));
    let mut updated = job.clone();
    match rules::classify(answer, "$export", job.deferrals, ctx.now) {
        Verdict::Accepted { status_url } => {
            updated.export_id = id_of(&status_url);
            updated.export_url = status_url;
            updated.export_status = ExportStatus::Started;
            updated.start_time = Some(ctx.now);
            updated.lease_until = None;
            updated.deferrals = 0;
            let notes = Notes::line(format!("Export {} started for {since} to {till}", updated.export_id)).event(
                Event::new("Export")
                    .with("ExportId", &updated.export_id)
                    .with("StatusUrl", &updated.export_url)
                    .with("ExportStatus", "Started")
                    .with("Since", &since)
                    .with("Till", &till),
            );
            write_job(updated, notes.mark(handled))
        }
        Verdict::Retry { at, reason, report } => {
            updated.lease_until = Some(at);
            updated.deferrals = if report { 0 } else { job.deferrals + 1 };
            updated.failure_reason = reason.clone();
            let mut notes = Notes::line(format!("Export kick-off for {since} to {till} deferred: {reason}"));
            if report {
                notes = export_failed_notes(notes.failure(), &updated, &reason);
            }
            write_job(updated, notes.mark(handled))
        }
        Verdict::Refused { status: 413, reason } => split_too_large(job, reason, handled),
        Verdict::Refused { status, reason } => fail_window(job, reason, Failure::of_status(status), handled),
    }
}

/// The server found the window too large (413, at kick-off or as the job's failure, reference §2.1): it is
/// exported in two halves, the second following in the same row (a plan change, not a failure). A window of
/// the shortest length that is still too large halts with the reason.
fn split_too_large(job: &Job, reason: String, handled: Mark) -> Action {
    let Some(mid) = crate::planner::halve(job.since, job.till) else {
        let reason =
            format!("{reason}; the window cannot be split further (lower AZURE_MaxCount or the server's load)");
        return fail_window(job, reason, Failure::Permanent, handled);
    };
    let mut split = job.clone();
    split.remainder_till = Some(job.remainder_till.unwrap_or(job.till));
    split.till = mid;
    split.planned_versions = None;
    split.boundary_versions = None;
    split.export_status = ExportStatus::Starting;
    split.lease_until = None;
    split.failure_reason = reason.clone();
    let line = format!(
        "Window {} to {} is too large for the server ({reason}); exporting it in parts, first to {}",
        format_instant(job.since),
        format_instant(job.till),
        format_instant(mid)
    );
    write_job(split, Notes::line(line).mark(handled))
}

fn export_failed_notes(notes: Notes, job: &Job, reason: &str) -> Notes {
    notes.failed_event(
        Event::new("Export")
            .with("ExportId", &job.export_id)
            .with("StatusUrl", &job.export_url)
            .with("ExportStatus", "Failed")
            .with("Since", format_instant(job.since))
            .with("Till", format_instant(job.till))
            .with("TotalResources", "")
            .with("FailureReason", reason),
        job.since,
        job.till,
    )
}

/// What kind of failure a window met, which decides whether a repeat of it halts the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// May well succeed next time (a server error, a lost or slow job): retried; the retry latch, when on,
    /// bounds how long.
    Transient,
    /// The server refused the request itself (4xx): the same request would be refused again, so three
    /// identical refusals in a row halt the window.
    Refused,
    /// Cannot be retried at all.
    Permanent,
}

impl Failure {
    /// A 4xx other than a lost job (404), a timeout (408) or throttling (429) is the server refusing the request.
    pub(super) fn of_status(status: u16) -> Failure {
        if (400..500).contains(&status) && !matches!(status, 404 | 408 | 429) {
            Failure::Refused
        } else {
            Failure::Transient
        }
    }

    /// From a failure reason the tool wrote ("… HTTP 400: …").
    pub(super) fn of_reason(reason: &str) -> Failure {
        reason
            .split("HTTP ")
            .nth(1)
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .map_or(Failure::Transient, Failure::of_status)
    }
}

/// A window failed: exported again later, unless the same refusal repeated [`IDENTICAL_FAILURES_TO_HALT`]
/// times (or cannot be retried at all), when it halts with its reason for an operator.
pub(super) fn fail_window(job: &Job, reason: String, failure: Failure, mark: Mark) -> Action {
    let mut failed = job.clone();
    failed.failure_streak = match failure {
        Failure::Transient => 0,
        Failure::Refused | Failure::Permanent => rules::next_streak(&job.failure_reason, job.failure_streak, &reason),
    };
    let halt = failure == Failure::Permanent || failed.failure_streak >= IDENTICAL_FAILURES_TO_HALT;
    failed.export_status = if halt {
        ExportStatus::Halted
    } else {
        ExportStatus::Failed
    };
    failed.lease_until = None;
    failed.failure_reason = reason.clone();
    // Exported again later: counted afresh then, not from counts that may be hours old.
    failed.planned_versions = None;
    failed.boundary_versions = None;
    let line = if halt {
        format!(
            "Window {} to {} HALTED after {} identical failure(s): {reason}. ACTION REQUIRED: resolve the cause, then clear the halt (ClearMaxExportRetries_Http or `fhir-migration-tool clear-retries`); the window is then exported in smaller parts",
            format_instant(job.since),
            format_instant(job.till),
            failed.failure_streak
        )
    } else {
        format!("Export {} of window {} failed: {reason}", job.export_id, job.seq)
    };
    let notes = export_failed_notes(Notes::line(line).failure(), &failed, &reason).mark(mark);
    write_job(failed, notes)
}

/// Polls each running export once a tick, persists a finished one's payloads, fails one that failed or ran
/// past `AZURE_JobTimeoutHours` (cancelling it first).
pub fn poll_exports(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    for job in snapshot
        .jobs
        .iter()
        .filter(|j| window_phase(j) == WindowPhase::Exporting)
    {
        let handled = Mark::ExportPollHandled {
            seq: job.seq,
            attempt: job.attempt,
        };
        if facts.marks.contains(&handled) {
            continue;
        }
        if job.start_time.is_some_and(|t| ctx.now - t > ctx.settings.job_timeout) {
            if !facts.marks.contains(&Mark::Cancelled(job.export_url.clone())) {
                return Some(Action::Cancel {
                    url: job.export_url.clone(),
                    destination: false,
                });
            }
            // Not cancelled (unreachable): the job may run on, so the window waits for the next tick's cancel.
            if facts.marks.contains(&Mark::CancelFailed(job.export_url.clone())) {
                continue;
            }
            let hours = ctx.settings.job_timeout.num_hours();
            let reason = format!("export failed: no result after {hours} hours (the job was cancelled)");
            return Some(fail_window(job, reason, Failure::Transient, handled));
        }
        let poll = match super::confirm::export_poll(job, facts) {
            Ok(poll) => poll,
            Err(action) => return Some(*action),
        };
        return Some(match &poll {
            ExportPoll::Running => {
                let event = Event::new("Export")
                    .with("ExportId", &job.export_id)
                    .with("StatusUrl", &job.export_url)
                    .with("ExportStatus", "Running")
                    .with("Since", "")
                    .with("Till", "");
                let notes = Notes::default().event(event).mark(handled);
                if job.export_status == ExportStatus::Running {
                    Action::Note(notes)
                } else {
                    let mut running = job.clone();
                    running.export_status = ExportStatus::Running;
                    write_job(running, notes)
                }
            }
            ExportPoll::Failed { status, diagnostics } => {
                let reason = format!("export failed with HTTP {status}: {diagnostics}");
                if *status == 413 {
                    split_too_large(job, reason, handled)
                } else {
                    fail_window(job, reason, Failure::of_status(*status), handled)
                }
            }
            ExportPoll::Unreachable(error) => Action::Note(
                Notes::line(format!(
                    "Export {} of window {} could not be polled: {error}",
                    job.export_id, job.seq
                ))
                .mark(handled),
            ),
            ExportPoll::Done(manifest) => exported(ctx, snapshot, facts, job, manifest, handled),
        });
    }
    None
}

/// A finished export: its payload bodies, then their rows, then the window's own row (each step repeatable).
fn exported(
    ctx: &Context,
    snapshot: &Snapshot,
    facts: &Facts,
    job: &Job,
    manifest: &crate::fhir::wire::ExportManifest,
    handled: Mark,
) -> Action {
    if !manifest.error.is_empty() {
        let failed: Vec<String> = manifest
            .error
            .iter()
            .map(|e| format!("{}:{}", e.resource_type, e.count))
            .collect();
        let reason = format!(
            "export failed with HTTP 200: the manifest lists export errors ({})",
            failed.join(", ")
        );
        return fail_window(job, reason, Failure::Transient, handled);
    }
    let total: u64 = manifest.output.iter().map(|f| f.count).sum();
    if let Some(action) = super::boundaries::check_manifest(ctx, job, total as i64, &handled) {
        return action;
    }
    let (search_parameters, mut files): (Vec<ExportFile>, Vec<ExportFile>) = manifest
        .output
        .iter()
        .cloned()
        .partition(|f| f.resource_type == "SearchParameter");
    // The same split on every run: files of one type come in no set order, and a repeated run (after a crash)
    // must write the same payloads.
    files.sort_by(|a, b| a.url.cmp(&b.url));
    let chunks: Vec<&[ExportFile]> = files.chunks(ctx.settings.file_count.max(1)).collect();
    let container = payload_container(&job.export_id);
    for (k, chunk) in chunks.iter().enumerate() {
        let index = k as i64 + 1;
        let name = format!("import_payload_{index}.json");
        let blob = Mark::Blob {
            seq: job.seq,
            attempt: job.attempt,
            index,
        };
        let stored = snapshot
            .payloads
            .iter()
            .any(|p| p.seq == job.seq && p.export_attempt == job.attempt && p.index == index);
        if stored {
            continue;
        }
        if !facts.marks.contains(&blob) {
            return Action::PutBlob {
                container,
                name,
                body: import_parameters(&ctx.settings.import_mode, chunk, None),
                mark: blob,
            };
        }
        return Action::Write {
            write: Write::InsertPayload(Payload {
                expected_lines: Some(chunk.iter().map(|f| f.count as i64).sum()),
                ..Payload::new(job.seq, job.attempt, index, name)
            }),
            notes: Notes::default().fail_point("payload-rows"),
        };
    }
    let mut done = job.clone();
    done.search_parameter_count = search_parameters.iter().map(|f| f.count as i64).sum();
    done.exported = total as i64;
    done.export_end_time = Some(ctx.now);
    done.export_status = ExportStatus::Completed;
    done.payloads = chunks.len() as i64;
    let line = if files.is_empty() {
        done.import_request = "No".into();
        done.import_status = ImportStatus::Completed;
        done.processed = done.remainder_till.is_none();
        done.end_time = Some(ctx.now);
        format!("Export {} finished with nothing to import", job.export_id)
    } else {
        done.import_request = "Yes".into();
        format!(
            "Export {} finished: {total} resources in {} file(s), {} import payload(s){}",
            job.export_id,
            files.len(),
            chunks.len(),
            match job.planned_versions {
                // The window's boundary was exact; the count differs for reasons that lose nothing (versions
                // current at `_till` where the count saw today's, late commits, history counted but not exported).
                Some(planned) if planned != total as i64 => format!(" (the window was counted at {planned})"),
                _ => String::new(),
            }
        )
    };
    // As the original: an export with nothing to import reports an empty total.
    let reported_total = if files.is_empty() {
        String::new()
    } else {
        total.to_string()
    };
    let event = Event::new("Export")
        .with("ExportId", &job.export_id)
        .with("StatusUrl", &job.export_url)
        .with("ExportStatus", "Completed")
        .with("Since", "")
        .with("Till", "")
        .with("TotalResources", reported_total)
        .with("SearchParameterCount", done.search_parameter_count)
        .with("FailedExportCount", 0)
        .with("FailedExportType", "");
    if done.processed || files.is_empty() {
        done = next_part_or_done(ctx, done);
    }
    write_job(done, Notes::line(line).event(event).mark(handled))
}

/// A window part whose payloads all imported: the window is processed, or, when it was split, its next part is
/// planned in the same row (the window commits only when no part is left).
pub(super) fn next_part_or_done(ctx: &Context, mut job: Job) -> Job {
    let Some(end) = job.remainder_till else {
        job.processed = true;
        job.import_status = ImportStatus::Completed;
        job.end_time = Some(ctx.now);
        return job;
    };
    let mut till = end;
    for _ in 0..job.split_level.clamp(0, 20) {
        till = crate::planner::halve(job.till, till).unwrap_or(till);
    }
    job.since = job.till;
    job.till = till;
    job.remainder_till = (till < end).then_some(end);
    job.planned_versions = None;
    job.boundary_versions = None;
    ready_to_export(&mut job);
    job.failure_streak = 0;
    job.end_time = None;
    job
}

#[cfg(test)]
mod tests;
