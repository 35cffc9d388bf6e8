//! A window's way through the servers: its kick-off (claimed, called, answered), its export polls and the
//! payloads persisted from the manifest, each payload's POST and polls, the window's verdict over its payloads,
//! and the cancels of jobs nobody waits for any more (superseded, or past `AZURE_JobTimeoutHours`).

use super::rules::{self, IDENTICAL_FAILURES_TO_HALT, PayloadPhase, Verdict, WindowPhase, payload_phase, window_phase};
use super::{Action, Claim, Context, ExportPoll, Facts, ImportPoll, Mark, Notes, PostAnswer, PostKey, Snapshot, Write};
use crate::config::ImportErrorPolicy;
use crate::fhir::format_instant;
use crate::fhir::wire::{ExportFile, import_parameters};
use crate::state::rows::{ExportStatus, ImportStatus};
use crate::state::{Job, Payload};
use crate::telemetry::{Event, id_of};

/// The blob container holding an export's `$import` payloads.
pub fn payload_container(export_id: &str) -> String {
    let id: String = export_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    format!("import-{}", if id.is_empty() { "unknown" } else { &id })
}

/// The explicit halt message and `ExportRetries` event when the retry latch has tripped.
pub fn halt_notes(ctx: &Context, snapshot: &Snapshot) -> Notes {
    let max = ctx.settings.max_export_retries.unwrap_or_default();
    let failed = snapshot.jobs.iter().rev().find(|j| !j.failure_reason.is_empty());
    let window = failed.map_or_else(String::new, |j| {
        format!(
            " The failing window is {} to {} (row {}): {}",
            format_instant(j.since),
            format_instant(j.till),
            crate::state::rows::job_key(&ctx.settings.row_key, j.seq),
            j.failure_reason
        )
    });
    Notes::line(format!(
        "MIGRATION HALTED: Maximum export retries limit ({max}) has been reached. The export or import process has failed {} times.{window} ACTION REQUIRED: check the 'FailureReason' column of the export table, resolve the cause, then clear the latch (ClearMaxExportRetries_Http, or `fhir-migration-tool clear-retries`) to resume.",
        snapshot.cursor.failures
    ))
    .event(
        Event::new("ExportRetries")
            .with("Status", "MaxRetriesReached")
            .with("MaxExportRetries", snapshot.cursor.failures)
            .with("ConfiguredLimit", max)
            .with("ExportTableName", ctx.export_table)
            .with("PartitionKey", &ctx.settings.partition_key)
            .with("Time", ctx.now.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .with(
                "ActionRequired",
                "Check export table for failure details and resolve issues before resuming",
            ),
    )
}

/// Payloads of a replaced export attempt whose import may still run: cancel the job, then record them as
/// superseded, so they neither hold an import slot nor leave a job running that nobody polls.
pub fn cancel_superseded(snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    for p in &snapshot.payloads {
        let Some(job) = snapshot.job(p.seq) else { continue };
        if p.export_attempt == job.attempt || !rules::may_be_running(p) {
            continue;
        }
        if !p.import_url.is_empty() && !facts.marks.contains(&Mark::Cancelled(p.import_url.clone())) {
            return Some(Action::Cancel {
                url: p.import_url.clone(),
                destination: true,
            });
        }
        let mut superseded = p.clone();
        superseded.status = ImportStatus::Superseded;
        superseded.lease_until = None;
        superseded.failure_reason = format!(
            "superseded by export attempt {} of the window; its import job was cancelled",
            job.attempt
        );
        return Some(Action::Write {
            write: Write::Payload(superseded),
            notes: Notes::default(),
        });
    }
    None
}

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
        return Some(free.then(|| claim_export(ctx, job, job.attempt > 0 && job.lease_until.is_some())));
    }
    // A failed window is exported again before anything new.
    snapshot
        .jobs
        .iter()
        .find(|j| window_phase(j) == WindowPhase::Failed)
        .map(|job| Some(claim_export(ctx, job, false)))
}

/// Claims a window's kick-off: a new attempt, with a lease that marks it as ours until the call is answered.
fn claim_export(ctx: &Context, job: &Job, repair: bool) -> Action {
    let mut claimed = job.clone();
    claimed.attempt += 1;
    claimed.export_status = ExportStatus::Starting;
    claimed.lease_until = Some(ctx.now + ctx.timing.lease);
    claimed.export_url.clear();
    claimed.export_id.clear();
    claimed.payloads = 0;
    claimed.processed = false;
    claimed.import_status = ImportStatus::NotStarted;
    claimed.import_request.clear();
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
    q.push(format!("_till={}", enc(&format_instant(job.till))));
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
        // The server refuses the window as too large: export it in two halves (a plan change, not a failure).
        Verdict::Refused { status: 413, reason } => match crate::planner::halve(job.since, job.till) {
            Some(mid) => {
                updated.remainder_till = Some(job.remainder_till.unwrap_or(job.till));
                updated.till = mid;
                updated.lease_until = None;
                updated.failure_reason = reason.clone();
                let line = format!(
                    "Window {since} to {till} is too large for the server ({reason}); exporting it in parts, first to {}",
                    format_instant(mid)
                );
                write_job(updated, Notes::line(line).mark(handled))
            }
            None => fail_window(
                ctx,
                job,
                format!("{reason}; the window cannot be split further"),
                true,
                handled,
            ),
        },
        Verdict::Refused { reason, .. } => fail_window(ctx, job, reason, false, handled),
    }
}

fn write_job(job: Job, notes: Notes) -> Action {
    Action::Write {
        write: Write::Job(job),
        notes,
    }
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

/// A window failed: exported again later, unless the same failure repeated [`IDENTICAL_FAILURES_TO_HALT`]
/// times (or cannot be retried at all), when it halts with its reason for an operator.
fn fail_window(ctx: &Context, job: &Job, reason: String, permanent: bool, mark: Mark) -> Action {
    let mut failed = job.clone();
    failed.failure_streak = rules::next_streak(&job.failure_reason, job.failure_streak, &reason);
    let halt = permanent || failed.failure_streak >= IDENTICAL_FAILURES_TO_HALT;
    failed.export_status = if halt {
        ExportStatus::Halted
    } else {
        ExportStatus::Failed
    };
    failed.lease_until = None;
    failed.failure_reason = reason.clone();
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
    let _ = ctx;
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
        let key = (job.seq, job.attempt);
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
            let hours = ctx.settings.job_timeout.num_hours();
            let reason = format!("export failed: no result after {hours} hours (the job was cancelled)");
            return Some(fail_window(ctx, job, reason, false, handled));
        }
        let Some(poll) = facts.export_polls.get(&key) else {
            return Some(Action::PollExport { job: job.clone() });
        };
        return Some(match poll {
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
                fail_window(ctx, job, reason, false, handled)
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
        return fail_window(ctx, job, reason, false, handled);
    }
    let total: u64 = manifest.output.iter().map(|f| f.count).sum();
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
            write: Write::InsertPayload(Payload::new(job.seq, job.attempt, index, name)),
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
            "Export {} finished: {total} resources in {} file(s), {} import payload(s)",
            job.export_id,
            files.len(),
            chunks.len()
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
fn next_part_or_done(ctx: &Context, mut job: Job) -> Job {
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
    job.export_status = ExportStatus::Starting;
    job.lease_until = None;
    job.export_url.clear();
    job.export_id.clear();
    job.payloads = 0;
    job.processed = false;
    job.import_status = ImportStatus::NotStarted;
    job.import_request.clear();
    job.failure_streak = 0;
    job.end_time = None;
    job
}

/// A window's verdict over its current payloads: processed when all imported, failed (exported again) when one
/// ran out of attempts, halted under the Halt policy, running while any runs.
pub fn settle_windows(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let max = i64::from(ctx.settings.max_import_retries);
    for job in snapshot
        .jobs
        .iter()
        .filter(|j| window_phase(j) == WindowPhase::Exported)
    {
        let payloads: Vec<&Payload> = snapshot.payloads_of(job).collect();
        if payloads.is_empty() || (payloads.len() as i64) < job.payloads {
            continue;
        }
        if let Some(p) = payloads
            .iter()
            .find(|p| p.status == ImportStatus::Failed && p.attempt >= max)
        {
            let reason = format!("payload {} failed {} time(s): {}", p.index, p.attempt, p.failure_reason);
            let mark = Mark::Reported(format!("settled-{}-{}", job.seq, job.attempt));
            if facts.marks.contains(&mark) {
                continue;
            }
            let Action::Write { write, mut notes } = fail_window(ctx, job, reason, false, mark) else {
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

/// The processing unit for a payload's next POST: the server's default first; each retry and each operator
/// clear halves it, so a unit that failed (for example over 10,000 versions on one millisecond, reference §6)
/// is cut smaller, and every retry is a new definition the server does not de-duplicate.
fn unit_bytes(job: &Job, attempt: i64) -> Option<i64> {
    let halvings = (attempt - 1).max(0) + job.split_level.max(0);
    (halvings > 0).then(|| (rules::DEFAULT_UNIT_BYTES >> halvings.min(30)).max(rules::MIN_UNIT_BYTES))
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
            Some(answer) if !facts.marks.contains(&handled) => {
                return Some(post_answered(ctx, job, p, answer, handled));
            }
            Some(_) => {}
        }
    }
    if ctx.latched(&snapshot.cursor) || (ctx.paused() && !ctx.settings.continue_last_import_during_pause) {
        return None;
    }
    let max = i64::from(ctx.settings.max_import_retries);
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
                PayloadPhase::Waiting | PayloadPhase::PostDue => true,
                PayloadPhase::Failed => p.attempt < max,
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
                claimed.unit_bytes = unit_bytes(job, claimed.attempt);
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
            updated.attempt = updated.attempt.max(i64::from(ctx.settings.max_import_retries));
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
        // Every Import event carries the whole-server totals (the original's contract).
        let Some(totals) = &facts.totals else {
            return Some(Action::CountTotals);
        };
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
                if !result.error.is_empty() && !facts.error_summaries.contains_key(&key) {
                    return Some(Action::ReadErrorFiles {
                        payload: p.clone(),
                        urls: result.error.iter().map(|e| e.url.clone()).collect(),
                    });
                }
                super::imported::imported(ctx, job, p, &result, facts.error_summaries.get(&key), totals, handled)
            }
            ImportPoll::Unreachable(_) => unreachable!("handled above"),
        });
    }
    None
}

/// The import-error policy's decision on a finished import with failed lines.
pub fn halts(ctx: &Context, failed_lines: i64) -> bool {
    failed_lines > 0 && ctx.settings.import_error_policy == ImportErrorPolicy::Halt
}
