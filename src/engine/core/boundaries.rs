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

/// What a manifest of `total` versions says about the export of `job`, as the action to take instead of
/// importing it; `None` when it may be imported.
///
/// * the count as planned: imported;
/// * the plan plus exactly the end millisecond's versions, with `_till` sent as is: the source read it
///   inclusively, so the window is exported again with `_till` one millisecond early (nothing imported twice);
/// * fewer than planned with `_till` sent early onto an occupied millisecond: the source read it exclusively
///   this time, and the millisecond before the end was left out, so it is exported again with `_till` as is;
/// * any other surplus: not imported; the window is counted again and exported again (a version that became
///   visible late, reference §11.10, is then part of the count);
/// * any other shortfall: imported (versions deleted since the count, or not exported under the chosen options).
///
/// A reading that flips back and forth halts the window after [`READING_FLIPS_TO_HALT`] times, naming
/// `AZURE_ExportTillInclusive`; with that setting given explicitly the reading is never changed, and a manifest
/// that disagrees with it fails the window.
pub fn check_manifest(ctx: &Context, job: &Job, total: i64, handled: &Mark) -> Option<Action> {
    let (Some(planned), Some(on_end)) = (job.planned_versions, job.boundary_versions) else {
        return None;
    };
    if total == planned {
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
    let adjustable = on_end > 0 && !ctx.settings.export_till_fixed;
    if adjustable && !job.till_early && total == planned + on_end {
        let reason = format!(
            "the source exported {total} versions for window {window}, {on_end} more than it holds before the end: it read `_till` inclusively, so the window is exported again with `_till` one millisecond earlier"
        );
        return Some(read_again(job, true, reason, handled));
    }
    if adjustable && job.till_early && total < planned {
        let reason = format!(
            "the source exported {total} of the {planned} versions of window {window}: it read the early `_till` exclusively, so the window is exported again with `_till` as it is"
        );
        return Some(read_again(job, false, reason, handled));
    }
    if total > planned {
        let reason = format!(
            "export returned {total} versions where the source held {planned} in window {window} ({on_end} on its end millisecond); nothing was imported, the window is counted and exported again{}",
            if ctx.settings.export_till_fixed {
                ". AZURE_ExportTillInclusive is set explicitly and may be wrong for this source: set it to auto"
            } else {
                ""
            }
        );
        let mut recount = job.clone();
        recount.planned_versions = None;
        recount.boundary_versions = None;
        return Some(fail_window(&recount, reason, Failure::Refused, handled.clone()));
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
