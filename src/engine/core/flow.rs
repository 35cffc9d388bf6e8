//! What both sides of a window's way share: where its payloads live, the halt message, and the cancels of
//! superseded imports. The export side is in [`super::exports`], the import side in [`super::imports`].

use super::rules;
use super::{Action, Context, Facts, Mark, Notes, Snapshot, Write};
use crate::fhir::format_instant;
use crate::state::Job;
use crate::state::rows::ImportStatus;
use crate::telemetry::Event;

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
        // A cancel that could not be made leaves the payload as it is: the job may still run, and the next tick
        // cancels it again (a job already finished or gone answers 409 or 404, which counts as cancelled).
        if facts.marks.contains(&Mark::CancelFailed(p.import_url.clone())) {
            continue;
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

pub(super) fn write_job(job: Job, notes: Notes) -> Action {
    Action::Write {
        write: Write::Job(job),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::engine::core::Timer;

    /// The halt names the window that failed last (not an earlier healthy one) with its reason and row, says
    /// how to resume, and sends the `ExportRetries` event the alert keys on.
    #[test]
    fn the_halt_names_the_failing_window_and_how_to_resume() {
        let settings = crate::engine::sim::settings(&[
            ("AZURE_MaxExportRetriesEnabled", "true"),
            ("AZURE_MaxExportRetries", "3"),
        ]);
        let timing = crate::engine::Timing::default();
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let ctx = Context::for_test(&settings, &timing, Timer::Starter, now);
        let mut snapshot = Snapshot::default();
        snapshot.cursor.failures = 3;
        let mut failing = Job::planned(
            4,
            now - chrono::TimeDelta::days(2),
            now - chrono::TimeDelta::days(1),
            "",
        );
        failing.failure_reason = "export failed with HTTP 500: Unknown Error.".into();
        snapshot.jobs = vec![Job::planned(5, now - chrono::TimeDelta::days(1), now, ""), failing];
        snapshot.jobs.sort_by_key(|j| j.seq);
        let notes = halt_notes(&ctx, &snapshot);
        let line = &notes.lines[0];
        assert!(
            line.starts_with("MIGRATION HALTED: Maximum export retries limit (3)"),
            "{line}"
        );
        assert!(line.contains("failed 3 times"), "{line}");
        assert!(line.contains("HTTP 500: Unknown Error."), "{line}");
        assert!(line.contains("clear-retries"), "{line}");
        let event = &notes.events[0];
        assert_eq!(event.name, "ExportRetries");
        assert_eq!(event.get("Status"), Some("MaxRetriesReached"));
        assert_eq!(event.get("ConfiguredLimit"), Some("3"));
    }
}
