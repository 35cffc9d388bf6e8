//! A finished export checked against the count of its window before anything is imported. Windows end on an
//! empty millisecond where one is near, and then the two readings of `_till` agree; where the end millisecond
//! holds versions, the source may read `_till` either way (reference §11.9: Azure API for FHIR and AHDS's
//! fallback path read it inclusively, to the end of the millisecond; AHDS's parallel path exclusively), and
//! which way it read it shows in the manifest's total.

use super::exports::{Failure, fail_window};
use super::flow::write_job;
use super::rules;

/// How many times in a row the reading may change before the window halts: a real server changes it only
/// when its export path changes (§11.9), so a few times is plenty; a reading that keeps changing needs an
/// operator to fix it with `AZURE_ExportTillInclusive`.
pub const READING_FLIPS_TO_HALT: i64 = 6;
use super::{Action, Context, Mark, Notes};
use crate::fhir::format_instant;
use crate::state::Job;
use crate::state::rows::ExportStatus;
use crate::telemetry::Event;

/// Whether `_till` goes one millisecond early for this window: the operator's explicit setting, else what the
/// window learned (a row from before the reading was recorded falls back to the setting's first guess).
pub fn till_early(ctx: &Context, job: &Job) -> bool {
    if ctx.settings.export_till_fixed {
        ctx.settings.export_till_inclusive
    } else {
        job.till_early
    }
}

/// What a manifest of `total` versions says about the export of `job`, as the action to take instead of
/// importing it; `None` when it may be imported. Only a window whose end millisecond holds versions can have
/// been read two ways; the manifest's total differs from the count for other reasons too (AHDS's parallel
/// export returns the version current at `_till` where the count sees today's, a version became visible late,
/// history and delete markers are counted but not all exported), so a difference alone proves nothing:
///
/// * an empty end millisecond: imported, whatever the total (both readings export the same set);
/// * `_till` sent as is and exactly the end millisecond's versions more than counted: the source read it
///   inclusively, so the window is exported again one millisecond early (nothing imported twice); with
///   `AZURE_ExportTillInclusive` set explicitly the window fails instead, naming the setting (and halts when
///   it repeats);
/// * `_till` sent early and fewer than counted: the source may have read it exclusively and left out the
///   millisecond before the end, so the window is exported again with `_till` as it is (which at worst imports
///   the end millisecond's versions once more, never loses any);
/// * anything else: imported.
///
/// A reading that flips back and forth halts the window after [`READING_FLIPS_TO_HALT`] times, naming
/// `AZURE_ExportTillInclusive`.
pub fn check_manifest(ctx: &Context, job: &Job, total: i64, handled: &Mark) -> Option<Action> {
    let (Some(planned), Some(on_end)) = (job.planned_versions, job.boundary_versions) else {
        return None;
    };
    if total == planned || on_end == 0 {
        return None;
    }
    let window = format!(
        "{} to {}{}",
        format_instant(job.since),
        format_instant(job.till),
        if job.resource_type.is_empty() {
            String::new()
        } else {
            format!(" ({})", job.resource_type)
        }
    );
    let fixed = ctx.settings.export_till_fixed;
    let early = till_early(ctx, job);
    if !early && total == planned + on_end {
        if fixed {
            let reason = format!(
                "the source exported {total} versions for window {window}, exactly the {on_end} on its end millisecond more than it holds before the end: it read `_till` inclusively, but AZURE_ExportTillInclusive is set to false; nothing was imported. Set it to auto (or true)"
            );
            return Some(fail_window(job, reason, Failure::Refused, handled.clone()));
        }
        let reason = format!(
            "the source exported {total} versions for window {window}, {on_end} more than it holds before the end: it read `_till` inclusively, so the window is exported again with `_till` one millisecond earlier"
        );
        return Some(read_again(job, true, reason, handled));
    }
    if early && !fixed && total < planned {
        let reason = format!(
            "the source exported {total} of the {planned} versions of window {window}: it may have read the early `_till` exclusively, so the window is exported again with `_till` as it is"
        );
        return Some(read_again(job, false, reason, handled));
    }
    None
}

/// Exports the window again with the other reading of `_till` (a plan change, not a failure), unless the
/// reading has flipped too often, when the window halts for an operator.
fn read_again(job: &Job, till_early: bool, reason: String, handled: &Mark) -> Action {
    // One signature for both directions, so a source that keeps changing its reading halts.
    let signature = format!(
        "the source's reading of `_till` at {} changed",
        format_instant(job.till)
    );
    let streak = rules::next_streak(&job.failure_reason, job.failure_streak, &signature);
    if streak >= READING_FLIPS_TO_HALT {
        let reason = format!(
            "{signature} {streak} times: {reason}. Set AZURE_ExportTillInclusive to how this source reads `_till`"
        );
        return fail_window(job, reason, Failure::Permanent, handled.clone());
    }
    let mut again = job.clone();
    again.till_early = till_early;
    again.export_status = ExportStatus::Starting;
    again.lease_until = None;
    again.failure_reason = signature;
    again.failure_streak = streak;
    let event = Event::new("ExportBoundary")
        .with("ExportId", &job.export_id)
        .with("Since", format_instant(job.since))
        .with("Till", format_instant(job.till))
        .with("TillEarly", till_early)
        .with("Reason", &reason);
    write_job(
        again,
        Notes::line(format!("Window {}: {reason}", job.seq))
            .event(event)
            .mark(handled.clone()),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::engine::core::{Action, Timer};

    fn ctx<'a>(settings: &'a crate::config::MigrationSettings, timing: &'a crate::engine::Timing) -> Context<'a> {
        Context::for_test(
            settings,
            timing,
            Timer::ExportStatus,
            chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap(),
        )
    }

    fn job(planned: i64, on_end: i64, early: bool) -> Job {
        let since = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut j = Job::planned(3, since, since + chrono::TimeDelta::days(1), "");
        j.planned_versions = Some(planned);
        j.boundary_versions = Some(on_end);
        j.till_early = early;
        j
    }

    /// What the check decides: imported (`None`), exported again early or as is, or failed.
    fn decide(pairs: &[(&str, &str)], j: &Job, total: i64) -> &'static str {
        let settings = crate::engine::sim::settings(pairs);
        let timing = crate::engine::Timing::default();
        let mark = Mark::EmptySkip;
        match check_manifest(&ctx(&settings, &timing), j, total, &mark) {
            None => "import",
            Some(Action::Write {
                write: crate::engine::core::Write::Job(w),
                ..
            }) if w.export_status == ExportStatus::Starting => {
                if w.till_early {
                    "again early"
                } else {
                    "again as is"
                }
            }
            Some(Action::Write {
                write: crate::engine::core::Write::Job(w),
                ..
            }) if w.export_status == ExportStatus::Failed => "failed",
            Some(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_empty_end_millisecond_is_imported_whatever_the_total() {
        // AHDS's snapshot export returns versions current at `_till` that a count of today's misses: a surplus
        // on an exact boundary is no reason to hold the window (it used to fail it until it halted).
        for total in [10, 12, 40, 3] {
            assert_eq!(decide(&[], &job(10, 0, false), total), "import", "{total}");
            assert_eq!(decide(&[], &job(10, 0, true), total), "import", "{total}");
        }
    }

    #[test]
    fn exactly_the_end_millisecond_more_is_read_again_early() {
        assert_eq!(decide(&[], &job(10, 3, false), 13), "again early");
        // Any other surplus is not that reading: imported.
        assert_eq!(decide(&[], &job(10, 3, false), 12), "import");
        assert_eq!(decide(&[], &job(10, 3, false), 14), "import");
        // With the reading set explicitly, the same evidence fails the window, naming the setting.
        assert_eq!(
            decide(&[("AZURE_ExportTillInclusive", "false")], &job(10, 3, false), 13),
            "failed"
        );
    }

    #[test]
    fn a_shortfall_after_an_early_till_is_read_again_as_is_never_imported_short() {
        assert_eq!(decide(&[], &job(10, 3, true), 9), "again as is");
        assert_eq!(decide(&[], &job(10, 3, true), 10), "import");
        assert_eq!(decide(&[], &job(10, 3, true), 12), "import");
        // An explicit inclusive reading is used as it is.
        assert_eq!(
            decide(&[("AZURE_ExportTillInclusive", "true")], &job(10, 3, false), 9),
            "import"
        );
    }

    #[test]
    fn an_explicit_reading_overrides_what_a_row_learned() {
        let settings = crate::engine::sim::settings(&[("AZURE_ExportTillInclusive", "true")]);
        let timing = crate::engine::Timing::default();
        // A row from before the reading was recorded (till_early false) still goes early when the operator
        // set the reading: an upgrade never changes what is sent.
        assert!(till_early(&ctx(&settings, &timing), &job(10, 3, false)));
        let auto = crate::engine::sim::settings(&[]);
        assert!(!till_early(&ctx(&auto, &timing), &job(10, 3, false)));
        assert!(till_early(&ctx(&auto, &timing), &job(10, 3, true)));
    }
}
