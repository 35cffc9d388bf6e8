//! Imports refused for the destination's same-millisecond capacity. The server numbers rows
//! `ms * 80000 + sequence` per resource type (fhir-server `MergeResourcesBeginTransaction.sql`, `IdHelper.cs`;
//! reference §11.1), so at most 80,000 versions of one type can share one millisecond there, counting the rows it
//! already holds, whatever the processing unit. Posting the same versions again cannot help, so the shell counts
//! the payload's versions per (type, millisecond) against the destination, leaves out the ones that cannot fit
//! (each named in the failure ledger) and the payload is posted again with the rest; each such trim grants one
//! more attempt, and each leaves out at least one version, so this ends. When nothing is over (the server uses
//! the same 400 text after repeated SQL conflicts), the failure takes the ordinary path: retried, the window
//! exported again, then halted with its reason.

use super::flow::payload_container;
use super::rules::{WindowPhase, window_phase};
use super::{Action, Context, Facts, Mark, Notes, PostKey, Snapshot, Write};
use crate::state::Payload;
use crate::state::rows::ImportStatus;

/// What the server's 400 says when a unit cannot get row ids (reference §5.4).
pub const CAPACITY_TEXT: &str = "Unable to generate internal IDs";

/// What the shell found when it examined a payload refused for the same-millisecond capacity.
#[derive(Debug, Clone, PartialEq)]
pub enum CapacityTrim {
    /// Versions that cannot fit were left out and named in the ledger; the payload's new body is `blob`, with
    /// `kept_lines` lines in its files.
    Trimmed {
        excluded: u64,
        kept_lines: i64,
        blob: String,
        /// "Observation at 2026-…: 81,000 in the payload, 0 at the destination", for the log.
        groups: Vec<String>,
    },
    /// No (type, millisecond) of the payload is over the capacity as counted (the largest one, for the log).
    NothingOver(String),
    /// The export files could not be read or written with the tool's access (why).
    CannotTrim(String),
}

/// Whether a payload's failure is the same-millisecond refusal.
pub fn is_capacity_failure(reason: &str) -> bool {
    reason.contains(CAPACITY_TEXT)
}

/// Whether a failed payload's same-millisecond refusal waits to be examined (once per attempt).
pub fn awaits_check(p: &Payload) -> bool {
    p.status == ImportStatus::Failed && p.capacity_checked < p.attempt && is_capacity_failure(&p.failure_reason)
}

/// The import attempts a payload may make: the setting, plus one for each trim (the next POST is a new plan).
pub fn attempts_allowed(ctx: &Context, p: &Payload) -> i64 {
    i64::from(ctx.settings.max_import_retries) + p.capacity_trims.max(0)
}

/// Examines each same-millisecond refusal of the windows' current payloads, and records what was found.
pub fn trim_payloads(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Option<Action> {
    let (job, p) = snapshot
        .jobs
        .iter()
        .filter(|j| window_phase(j) == WindowPhase::Exported)
        .flat_map(|job| snapshot.payloads_of(job).map(move |p| (job, p)))
        .find(|(_, p)| awaits_check(p))?;
    // The failed job's other units may still be importing (the server reports a failure as soon as one unit
    // failed): cancel it first, so the destination's counts stop moving (a refused cancel: it has ended).
    let cancelled = Mark::Cancelled(p.import_url.clone());
    if !p.import_url.is_empty() && !facts.marks.contains(&cancelled) {
        return Some(Action::Cancel {
            url: p.import_url.clone(),
            destination: true,
        });
    }
    Some(match facts.capacity_trims.get(&PostKey::of(p)) {
        None => Action::TrimForCapacity {
            payload: p.clone(),
            container: payload_container(&job.export_id),
        },
        Some(trim) => checked(ctx, job.seq, p, trim),
    })
}

fn checked(ctx: &Context, seq: i64, p: &Payload, trim: &CapacityTrim) -> Action {
    let mut row = p.clone();
    row.capacity_checked = p.attempt;
    let line = match trim {
        CapacityTrim::Trimmed {
            excluded,
            kept_lines,
            blob,
            groups,
        } => {
            row.capacity_trims += 1;
            row.left_out += *excluded as i64;
            row.blob = blob.clone();
            row.expected_lines = Some(*kept_lines);
            row.failure_reason = format!(
                "{}; {excluded} version(s) over the destination's same-millisecond capacity ({}) left out and named in the failure ledger (kind SameMillisecond); the rest is posted again",
                p.failure_reason, ctx.settings.same_ms_capacity
            );
            format!(
                "Import of window {seq} payload {}: {excluded} version(s) cannot be imported with their lastUpdated, because the destination holds at most {} versions of one type on one millisecond ({}); they are named in the failure ledger (`failures`), and the other {kept_lines} line(s) are posted again",
                p.index,
                ctx.settings.same_ms_capacity,
                groups.join("; ")
            )
        }
        CapacityTrim::NothingOver(largest) => {
            row.failure_reason = format!(
                "{}; no resource type of this payload is over the destination's same-millisecond capacity ({largest}), so the refusal has another cause and is retried as any failure",
                p.failure_reason
            );
            format!(
                "Import of window {seq} payload {}: refused for row ids, but no resource type is over the same-millisecond capacity ({largest}); retried as any failure",
                p.index
            )
        }
        CapacityTrim::CannotTrim(why) => {
            row.failure_reason = format!(
                "{}; the versions over the destination's same-millisecond capacity cannot be left out: {why}",
                p.failure_reason
            );
            format!(
                "Import of window {seq} payload {}: refused for the destination's same-millisecond capacity, and the tool cannot leave the versions over it out: {why}",
                p.index
            )
        }
    };
    Action::Write {
        write: Write::Payload(row),
        notes: Notes::line(line),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::engine::core::{Timer, step};
    use crate::state::Job;
    use crate::state::rows::ExportStatus;

    fn world(reason: &str, attempt: i64) -> (crate::config::MigrationSettings, Snapshot) {
        let settings = crate::engine::sim::settings(&[("AZURE_MaxImportRetries", "3")]);
        let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
        let mut job = Job::planned(
            1,
            now - chrono::TimeDelta::days(2),
            now - chrono::TimeDelta::days(1),
            "",
        );
        job.export_status = ExportStatus::Completed;
        job.export_id = "7".into();
        job.payloads = 1;
        let mut p = Payload::new(1, job.attempt, 0, "payload-0".into());
        p.status = ImportStatus::Failed;
        p.attempt = attempt;
        p.failure_reason = reason.into();
        let snapshot = Snapshot {
            jobs: vec![job],
            payloads: vec![p],
            ..Snapshot::default()
        };
        (settings, snapshot)
    }

    fn decide(settings: &crate::config::MigrationSettings, snapshot: &Snapshot, facts: &Facts) -> Action {
        let timing = crate::engine::Timing::default();
        let ctx = Context::for_test(
            settings,
            &timing,
            Timer::ImportStatus,
            chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap(),
        );
        step(&ctx, snapshot, facts)
    }

    const REFUSED: &str = "import failed with HTTP 400: import operation failed for reason: Unable to generate internal IDs. If the lastUpdated meta element is provided as input, reduce the number of resources with the same up to millisecond lastUpdated below 10,000.";

    /// Refused at its last attempt: examined first; the versions that cannot fit are left out, and the payload
    /// gets one more attempt with the rest (a new plan, not a repeat), never the window's failure.
    #[test]
    fn a_refusal_for_row_ids_is_examined_and_a_trim_grants_one_more_attempt() {
        let (settings, mut snapshot) = world(REFUSED, 3);
        snapshot.payloads[0].import_url = "https://dst/_operations/import/7".into();
        // The failed job is cancelled first: its other units may still be importing.
        let Action::Cancel { url, destination } = decide(&settings, &snapshot, &Facts::default()) else {
            panic!("cancelled before anything else")
        };
        assert_eq!((url.as_str(), destination), ("https://dst/_operations/import/7", true));
        let mut cancelled = Facts::default();
        cancelled.marks.insert(Mark::Cancelled(url));
        let Action::TrimForCapacity { payload, container } = decide(&settings, &snapshot, &cancelled) else {
            panic!("examined next")
        };
        assert_eq!(
            (payload.index, container.as_str()),
            (0, payload_container("7").as_str())
        );
        let mut facts = cancelled.clone();
        facts.capacity_trims.insert(
            PostKey::of(&payload),
            CapacityTrim::Trimmed {
                excluded: 7,
                kept_lines: 93,
                blob: "payload-0.capacity-3".into(),
                groups: vec!["Patient on …: 12 in the payload".into()],
            },
        );
        let Action::Write {
            write: Write::Payload(row),
            notes,
        } = decide(&settings, &snapshot, &facts)
        else {
            panic!("the examination is recorded")
        };
        assert_eq!(
            (
                row.capacity_checked,
                row.capacity_trims,
                row.blob.as_str(),
                row.expected_lines,
                row.left_out
            ),
            (3, 1, "payload-0.capacity-3", Some(93), 7)
        );
        assert!(notes.lines[0].contains("7 version(s)") && notes.lines[0].contains("Patient on"));
        assert!(!awaits_check(&row), "examined once per attempt");
        // The next decision posts it again (attempt 4 of 3 + 1), with the new body.
        let mut after = snapshot.clone();
        after.put_payload(row);
        let Action::Write {
            write: Write::Payload(claimed),
            ..
        } = decide(&settings, &after, &Facts::default())
        else {
            panic!("posted again")
        };
        assert_eq!((claimed.attempt, claimed.status), (4, ImportStatus::Posting));
        assert_eq!(claimed.unit_bytes, None, "never a smaller processing unit");
    }

    /// Nothing over the capacity: the refusal takes the ordinary path (at its last attempt, the window fails).
    #[test]
    fn a_refusal_with_nothing_over_the_capacity_is_an_ordinary_failure() {
        for trim in [
            CapacityTrim::NothingOver("the largest: 3 Patient".into()),
            CapacityTrim::CannotTrim("the export file cannot be read".into()),
        ] {
            let (settings, snapshot) = world(REFUSED, 3);
            let mut facts = Facts::default();
            facts.capacity_trims.insert(PostKey::of(&snapshot.payloads[0]), trim);
            let Action::Write {
                write: Write::Payload(row),
                ..
            } = decide(&settings, &snapshot, &facts)
            else {
                panic!("the examination is recorded")
            };
            assert_eq!(
                (row.capacity_checked, row.capacity_trims, row.blob.as_str()),
                (3, 0, "payload-0")
            );
            assert!(row.failure_reason.starts_with(REFUSED));
            let mut after = snapshot.clone();
            after.put_payload(row);
            let Action::Write {
                write: Write::Job(job), ..
            } = decide(&settings, &after, &Facts::default())
            else {
                panic!("the window fails")
            };
            assert_eq!(window_phase(&job), WindowPhase::Failed);
        }
    }

    #[test]
    fn only_the_row_id_refusal_is_examined() {
        let (_, snapshot) = world("import failed with HTTP 500: InternalServerError", 1);
        assert!(!awaits_check(&snapshot.payloads[0]));
        let (_, snapshot) = world(REFUSED, 1);
        assert!(awaits_check(&snapshot.payloads[0]));
        let mut p = snapshot.payloads[0].clone();
        p.status = ImportStatus::Completed;
        assert!(!awaits_check(&p), "only a failed payload");
    }
}
