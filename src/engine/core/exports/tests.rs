//! A window's kick-off, case by case: claims and their leases, deferrals counted, and which refusals halt.
use chrono::{TimeDelta, TimeZone};

use super::{Failure, kick_offs};
use crate::engine::core::{Action, Context, Facts, Snapshot, Timer};
use crate::state::Job;

/// The kick-off `kick_offs` decides for one planned window claimed `attempts` times, whose lease ends at
/// `lease` from now: its log line, or `None` when the window must wait.
fn kick_off(attempts: i64, lease: Option<TimeDelta>) -> Option<String> {
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
    let mut job = Job::planned(3, now - TimeDelta::days(2), now - TimeDelta::days(1), "");
    job.attempt = attempts;
    job.lease_until = lease.map(|l| now + l);
    job.planned_versions = Some(10);
    job.boundary_versions = Some(0);
    let snapshot = Snapshot {
        jobs: vec![job],
        ..Snapshot::default()
    };
    let ctx = Context::for_test(&settings, &timing, Timer::Starter, now);
    match kick_offs(&ctx, &snapshot, &Facts::default()).expect("a window is under way") {
        Some(Action::Write { notes, .. }) => Some(notes.lines.join(" ")),
        Some(other) => panic!("{other:?}"),
        None => None,
    }
}

fn decide(job: Job, facts: &Facts) -> Action {
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
    let snapshot = Snapshot {
        jobs: vec![job],
        ..Snapshot::default()
    };
    let ctx = Context::for_test(&settings, &timing, Timer::Starter, now);
    kick_offs(&ctx, &snapshot, facts)
        .expect("a window is under way")
        .expect("an action")
}

fn planned(attempt: i64) -> Job {
    let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
    let mut job = Job::planned(3, now - TimeDelta::days(2), now - TimeDelta::days(1), "");
    job.attempt = attempt;
    job.planned_versions = Some(10);
    job.boundary_versions = Some(0);
    job
}

/// A claim is a new attempt, with the lease that marks it as this tick's for `Timing::lease`; a failed
/// window's claim says it is exported again; a window whose counts are not both known is counted first (an
/// older release's row may lack the count on its end millisecond, which the manifest check needs).
#[test]
fn a_claim_is_a_new_attempt_with_a_lease_and_a_window_without_both_counts_is_counted_first() {
    let now = chrono::Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
    let Action::Write {
        write: crate::engine::core::Write::Job(claimed),
        ..
    } = decide(planned(0), &Facts::default())
    else {
        panic!("a claim")
    };
    assert_eq!(claimed.attempt, 1);
    assert_eq!(claimed.lease_until, Some(now + crate::engine::Timing::default().lease));
    let mut failed = planned(2);
    failed.export_status = crate::state::rows::ExportStatus::Failed;
    let Action::Write { notes, write } = decide(failed, &Facts::default()) else {
        panic!("a claim")
    };
    assert!(notes.lines[0].starts_with("Exporting window "), "{notes:?}");
    assert!(notes.lines[0].ends_with("again (attempt 3)"), "{notes:?}");
    assert!(matches!(write, crate::engine::core::Write::Job(j) if j.attempt == 3));
    let mut half = planned(0);
    half.boundary_versions = None;
    assert!(
        !matches!(decide(half, &Facts::default()), Action::Write { .. }),
        "counted first"
    );
}

/// A kick-off deferred by the server (429, 503, no answer) counts its deferrals, and every sixth in a row is
/// reported as a failure (counted for the retry latch), so a window the server keeps refusing never waits
/// unseen.
#[test]
fn every_sixth_deferral_in_a_row_is_reported_as_a_failure() {
    for (before, after, reported) in [(0, 1, false), (2, 3, false), (4, 5, false), (5, 0, true)] {
        let mut job = planned(1);
        job.deferrals = before;
        let mut facts = Facts::default();
        facts
            .claimed
            .insert(crate::engine::core::Claim::Export { seq: 3, attempt: 1 });
        facts.kickoffs.insert(
            (3, 1),
            crate::engine::core::rules::Answer::Refused {
                status: 429,
                diagnostics: "busy".into(),
                retry_after: None,
            },
        );
        let Action::Write {
            write: crate::engine::core::Write::Job(j),
            notes,
        } = decide(job, &facts)
        else {
            panic!("the answer recorded")
        };
        assert_eq!(j.deferrals, after, "after {before}");
        assert_eq!(notes.count_failure, reported, "after {before}");
    }
}

/// A window is kicked off when planned, again once its claim's lease has run out (saying so: the last
/// kick-off was deferred or never confirmed), and not while the lease runs, up to its last instant.
#[test]
fn a_planned_window_is_kicked_off_and_again_only_after_its_lease() {
    assert_eq!(kick_off(0, None).as_deref(), Some("Kicking off window 3"));
    let again = kick_off(1, Some(TimeDelta::seconds(-1))).expect("the lease ran out");
    assert!(
        again.contains("Kicking off window 3 again: its last kick-off was deferred or never confirmed"),
        "{again}"
    );
    assert_eq!(
        kick_off(1, Some(TimeDelta::zero())),
        None,
        "the lease's last instant is still the claimant's"
    );
    assert_eq!(kick_off(1, Some(TimeDelta::seconds(1))), None);
    // A window never claimed but given a wait (a deferred kick-off asks for one) is a first kick-off once due.
    assert_eq!(
        kick_off(0, Some(TimeDelta::seconds(-1))).as_deref(),
        Some("Kicking off window 3")
    );
}

#[test]
fn only_a_refusal_of_the_request_itself_can_halt_a_window() {
    assert_eq!(Failure::of_status(400), Failure::Refused);
    assert_eq!(Failure::of_status(422), Failure::Refused);
    for transient in [404, 408, 429, 500, 503] {
        assert_eq!(Failure::of_status(transient), Failure::Transient, "{transient}");
    }
    assert_eq!(
        Failure::of_reason("import failed with HTTP 400: Unable to generate internal IDs"),
        Failure::Refused
    );
    assert_eq!(
        Failure::of_reason("import failed: no result after 1 hours"),
        Failure::Transient
    );
    assert_eq!(
        Failure::of_reason("export failed with HTTP 500: Unknown Error."),
        Failure::Transient
    );
}
