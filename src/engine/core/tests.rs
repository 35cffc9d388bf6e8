//! The core's shared vocabulary: what a tick stopped on, and the telemetry a failed job leaves.
use chrono::{TimeDelta, TimeZone, Utc};

use super::*;
use crate::state::{Job, Payload};

/// A tick that stops at its action limit names its last action: which row it was writing, or what it counted.
#[test]
fn an_action_names_what_it_does() {
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let job = Job::planned(3, at, at + TimeDelta::hours(1), "");
    let payload = Payload::new(3, 1, 2, "import_payload_3_2.json".into());
    let write = |write| Action::Write {
        write,
        notes: Notes::default(),
    };
    let named = [
        (write(Write::Cursor(crate::state::Cursor::new())), "write cursor"),
        (write(Write::InsertJob(job.clone())), "write new window 3"),
        (write(Write::Job(job)), "write window 3"),
        (write(Write::InsertPayload(payload.clone())), "write new payload 3/2"),
        (write(Write::Payload(payload)), "write payload 3/2"),
        (Action::CountTotals, "CountTotals"),
        (
            Action::Reload {
                mark: Mark::TotalsSaved,
            },
            "Reload",
        ),
    ];
    for (action, name) in named {
        assert_eq!(action.kind(), name);
    }
    let count = Action::Count {
        resource_type: Some("Patient".into()),
        since: at,
        till: at + TimeDelta::hours(1),
    };
    assert_eq!(
        count.kind(),
        "count Some(\"Patient\") 2026-01-02T03:04:05.000Z to 2026-01-02T04:04:05.000Z"
    );
}

/// A failed job's event goes with an exception of the matching kind (the dashboard's tile and the alert key on
/// it) that carries the window and, when the job has one, its id; an empty id is left out.
#[test]
fn a_failed_event_carries_its_exception_with_the_window_and_the_jobs_id() {
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let event = |id: &str| {
        Event::new("Export")
            .with("ExportId", id)
            .with("FailureReason", "the job failed")
    };
    let notes = Notes::default().failed_event(event("e7"), at, at + TimeDelta::hours(1));
    assert_eq!(notes.events, [event("e7")]);
    let e = &notes.exceptions[0];
    assert_eq!(
        (e.type_name.as_str(), e.message.as_str()),
        ("ExportFailed", "the job failed")
    );
    let property = |e: &crate::telemetry::Exception, key: &str| {
        e.properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    assert_eq!(property(e, "ExportId").as_deref(), Some("e7"));
    assert_eq!(property(e, "Since").as_deref(), Some("2026-01-02T03:04:05.000Z"));
    assert_eq!(property(e, "Till").as_deref(), Some("2026-01-02T04:04:05.000Z"));
    let notes = Notes::default().failed_event(event(""), at, at + TimeDelta::hours(1));
    assert_eq!(property(&notes.exceptions[0], "ExportId"), None);
}

/// An ImportStatus tick with nothing to poll plans the next window (so a finished import is followed at once),
/// but not while the retry latch holds or within the pause window: those stop new work on every timer.
#[test]
fn an_import_status_tick_plans_only_when_neither_latched_nor_paused() {
    let timing = crate::engine::Timing::default();
    let now = crate::engine::sim::t0();
    let mut settings = crate::engine::sim::settings(&[
        ("AZURE_MaxExportRetriesEnabled", "true"),
        ("AZURE_MaxExportRetries", "1"),
    ]);
    let mut snapshot = Snapshot {
        cursor: crate::state::Cursor::new(),
        jobs: Vec::new(),
        payloads: Vec::new(),
    };
    let next = |settings: &crate::config::MigrationSettings, snapshot: &Snapshot| {
        step(
            &Context::for_test(settings, &timing, Timer::ImportStatus, now),
            snapshot,
            &Facts::default(),
        )
    };
    let planned = next(&settings, &snapshot);
    assert_ne!(planned, Action::Idle, "a fresh migration plans its first window");
    assert_eq!(
        planned,
        plan::advance(
            &Context::for_test(&settings, &timing, Timer::ImportStatus, now),
            &snapshot,
            &Facts::default()
        )
        .unwrap()
    );
    snapshot.cursor.failures = 1;
    assert_eq!(next(&settings, &snapshot), Action::Idle, "latched");
    snapshot.cursor.failures = 0;
    settings.pause = Some(crate::config::PauseWindow {
        start_hour: 0,
        end_hour: 24,
    });
    assert_eq!(next(&settings, &snapshot), Action::Idle, "paused");
}
