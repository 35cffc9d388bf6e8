//! A finished import's record: counts, error files and their summary, the import-error policy's verdict, and the
//! `Import` (and `ImportErrors`) events the dashboard reads.

use super::{Action, Context, Mark, Notes, Totals, Write};
use crate::engine::error_files::ErrorSummary;
use crate::fhir::format_instant;
use crate::fhir::wire::ImportResult;
use crate::state::rows::ImportStatus;
use crate::state::{Job, Payload};
use crate::telemetry::{Event, id_of};

/// Why a finished import is not the job this payload posted, if it is not. The server registers imports
/// idempotently on their definition, including jobs that finished long ago (reference §4.3): a payload that
/// names the same blob URLs as an older import (another source sharing the export account, an export id
/// reused) is handed that old job and its old result. Such a result reports more lines than the payload's
/// files hold, or a transaction time before the POST.
pub fn foreign_job(p: &Payload, result: &ImportResult) -> Option<String> {
    let lines = (result.imported() + result.failed()) as i64;
    if let Some(expected) = p.expected_lines
        && lines > expected
    {
        return Some(format!(
            "the server answered with another import job ({lines} lines for a payload of {expected}): it de-duplicated this definition to an older import"
        ));
    }
    let created = result
        .transaction_time
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&chrono::Utc));
    if let (Some(created), Some(posted)) = (created, p.start_time)
        && created < posted - chrono::TimeDelta::minutes(10)
    {
        return Some(format!(
            "the server answered with another import job (created {}, before this POST at {}): it de-duplicated this definition to an older import",
            format_instant(created),
            format_instant(posted)
        ));
    }
    None
}

pub fn imported(
    ctx: &Context,
    job: &Job,
    p: &Payload,
    result: &ImportResult,
    summary: Option<&Option<ErrorSummary>>,
    totals: &Totals,
    handled: Mark,
) -> Action {
    let mut payload = p.clone();
    payload.imported = result.imported() as i64;
    payload.failed_lines = result.failed() as i64;
    payload.failed_resources = result
        .error
        .iter()
        .map(|e| format!("{}:{}", e.resource_type.as_deref().unwrap_or(""), e.count))
        .collect::<Vec<_>>()
        .join(", ");
    payload.error_files = result
        .error
        .iter()
        .map(|e| e.url.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    // What the ledger made of the failed lines; without it (not recorded), every failed line counts as lost.
    let mut permanent = payload.failed_lines;
    let mut ledger_note = String::new();
    match summary {
        Some(Some(summary)) => {
            payload.error_kinds = Some((summary.conflicts, summary.duplicates, summary.invalid));
            payload.error_samples = summary.samples.join("\n");
            permanent = summary.permanent;
            ledger_note = format!(
                "; in the failure ledger: {} permanent, {} retried automatically, {} already at the destination",
                summary.permanent, summary.transient, summary.benign
            );
        }
        Some(None) => {
            payload.error_samples =
                "error files not readable with the tool's storage access (set AZURE_IntegrationStorageUri)".into()
        }
        None => {}
    }
    payload.end_time = Some(ctx.now);
    payload.status = ImportStatus::Completed;
    // Halt stops at a permanent failure only: benign lines are imported in effect, transient ones retried. The
    // versions the tool left out of this payload (named in the ledger) are permanent failures too.
    let permanent = permanent + p.left_out.max(0);
    if halts(ctx, permanent) {
        payload.status = ImportStatus::Halted;
        payload.failure_reason = format!(
            "{permanent} line(s) failed to import for good ({}); list them with `failures` (or ImportFailures_Http), fix the cause, then `failures retry` and `clear-retries`",
            payload.failed_resources
        );
    }
    let line = if payload.failed_lines > 0 {
        format!(
            "Import {} of window {} finished with {} failed line(s) ({}){ledger_note}; error files: {}",
            id_of(&payload.import_url),
            job.seq,
            payload.failed_lines,
            payload.failed_resources,
            payload.error_files.replace('\n', ", ")
        )
    } else {
        format!(
            "Import {} of window {} finished: {} resources",
            id_of(&payload.import_url),
            job.seq,
            payload.imported
        )
    };
    let event = totals
        .add_to(
            Event::new("Import")
                .with("ImportId", id_of(&payload.import_url))
                .with("StatusUrl", &payload.import_url)
                .with("ImportStatus", "Completed")
                .with("TotalImportResources", payload.imported)
                .with("TotalExportResources", job.exported),
        )
        .with("FailedImportCount", payload.failed_lines)
        .with("FailedResourceType", &payload.failed_resources)
        .with("SearchParameterCount", job.search_parameter_count)
        .with("FailedExportCount", 0)
        .with("FailedExportType", "");
    let mut notes = Notes::line(line)
        .event(event)
        .mark(handled)
        .fail_point("import-recorded");
    if payload.failed_lines > 0 {
        let (conflicts, duplicates, invalid) = payload.error_kinds.unwrap_or_default();
        let known = |n: i64| {
            if payload.error_kinds.is_some() {
                n.to_string()
            } else {
                String::new()
            }
        };
        notes = notes.event(
            Event::new("ImportErrors")
                .with("ImportId", id_of(&payload.import_url))
                .with("Since", format_instant(job.since))
                .with("Till", format_instant(job.till))
                .with("FailedImportCount", payload.failed_lines)
                .with("FailedResourceType", &payload.failed_resources)
                .with("Conflicts", known(conflicts))
                .with("Duplicates", known(duplicates))
                .with("Invalid", known(invalid)),
        );
    }
    Action::Write {
        write: Write::Payload(payload),
        notes,
    }
}

/// The import-error policy's decision on a finished import with failed lines.
pub fn halts(ctx: &Context, permanent_lines: i64) -> bool {
    permanent_lines > 0 && ctx.settings.import_error_policy == crate::config::ImportErrorPolicy::Halt
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::engine::core::{PostKey, Timer};
    use crate::fhir::wire::ImportOutput;

    /// Versions the tool left out of a payload (named in the ledger) are permanent failures for the import-error
    /// policy: under Halt an import that refused nothing itself still halts; under Continue it completes.
    #[test]
    fn versions_left_out_count_as_permanent_failures_for_the_halt_policy() {
        for (policy, expected) in [("Halt", ImportStatus::Halted), ("Continue", ImportStatus::Completed)] {
            let settings = crate::engine::sim::settings(&[("AZURE_ImportErrorPolicy", policy)]);
            let timing = crate::engine::Timing::default();
            let ctx = Context::for_test(
                &settings,
                &timing,
                Timer::ImportStatus,
                chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap(),
            );
            let now = ctx.now;
            let job = Job::planned(1, now - chrono::TimeDelta::days(1), now, "");
            let mut p = Payload::new(1, job.attempt, 0, "payload-0".into());
            p.left_out = 1;
            let result = ImportResult {
                transaction_time: None,
                output: vec![ImportOutput {
                    resource_type: Some("Patient".into()),
                    count: 9,
                    input_url: None,
                }],
                error: Vec::new(),
            };
            let handled = Mark::ImportPollHandled(PostKey::of(&p));
            let Action::Write {
                write: Write::Payload(row),
                ..
            } = imported(&ctx, &job, &p, &result, None, &Totals::default(), handled)
            else {
                panic!("the payload row is written")
            };
            assert_eq!(row.status, expected, "{policy}");
        }
    }

    /// A finished import's result: `imported` lines loaded, `failed` refused (in one error file), created at
    /// `created` (the server's transaction time) when given.
    fn result(imported: u64, failed: u64, created: Option<chrono::DateTime<chrono::Utc>>) -> ImportResult {
        ImportResult {
            transaction_time: created.map(crate::fhir::format_instant),
            output: vec![ImportOutput {
                resource_type: Some("Patient".into()),
                count: imported,
                input_url: None,
            }],
            error: (failed > 0)
                .then(|| crate::fhir::wire::ImportErrorFile {
                    resource_type: Some("Patient".into()),
                    count: failed,
                    input_url: None,
                    url: "https://errors/e1.ndjson".into(),
                })
                .into_iter()
                .collect(),
        }
    }

    /// A result is this payload's own only if it accounts for no more lines than the payload's files hold and the
    /// job was not created well before this POST (a job the server handed back for the same definition).
    #[test]
    fn a_result_with_more_lines_or_created_before_the_post_is_another_jobs() {
        let posted = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let mut p = Payload::new(1, 1, 1, "import_payload_1.json".into());
        p.expected_lines = Some(10);
        p.start_time = Some(posted);
        assert_eq!(foreign_job(&p, &result(8, 2, Some(posted))), None);
        assert_eq!(foreign_job(&p, &result(7, 0, None)), None);
        let more = foreign_job(&p, &result(9, 2, None)).expect("more lines than the payload holds");
        assert!(more.contains("11 lines for a payload of 10"), "{more}");
        assert_eq!(
            foreign_job(&p, &result(10, 0, Some(posted - chrono::TimeDelta::minutes(10)))),
            None,
            "within the clocks' tolerance"
        );
        let older = foreign_job(&p, &result(10, 0, Some(posted - chrono::TimeDelta::minutes(11))))
            .expect("created before the POST");
        assert!(older.contains("before this POST"), "{older}");
        // A row from before the expected count was kept: only the time can tell.
        p.expected_lines = None;
        assert_eq!(foreign_job(&p, &result(90, 0, Some(posted))), None);
    }

    /// The log line of a finished import says how many lines failed, and where their error files are, when any
    /// did; otherwise how many resources it imported.
    #[test]
    fn a_finished_imports_line_names_its_failed_lines_when_there_are_any() {
        let settings = crate::engine::sim::settings(&[]);
        let timing = crate::engine::Timing::default();
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let ctx = Context::for_test(&settings, &timing, Timer::ImportStatus, now);
        let job = Job::planned(1, now - chrono::TimeDelta::days(1), now, "");
        let p = Payload::new(1, job.attempt, 1, "import_payload_1.json".into());
        for failed in [0, 2] {
            let result = result(7, failed, None);
            let handled = Mark::ImportPollHandled(PostKey::of(&p));
            let Action::Write { notes, .. } = imported(&ctx, &job, &p, &result, None, &Totals::default(), handled)
            else {
                panic!("the payload row is written")
            };
            let line = &notes.lines[0];
            let errors = notes.events.iter().filter(|e| e.name == "ImportErrors").count();
            assert_eq!(
                errors,
                usize::from(failed > 0),
                "an ImportErrors event only for failed lines"
            );
            if failed > 0 {
                assert!(line.contains("finished with 2 failed line(s) (Patient:2)"), "{line}");
                assert!(line.contains("error files: https://errors/e1.ndjson"), "{line}");
            } else {
                assert!(line.ends_with("finished: 7 resources"), "{line}");
            }
        }
    }
}
