use chrono::{TimeDelta, TimeZone};

use super::*;
use crate::engine::Timing;
use crate::engine::core::{Timer, step};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap()
}

fn day(n: i64) -> DateTime<Utc> {
    t0() - TimeDelta::days(10 - n)
}

/// A migration committed through day 8, with windows 0..5 committed.
fn migrated() -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.cursor.since = Some(day(8));
    snapshot.cursor.first_since = Some(day(0));
    snapshot.cursor.committed_job = 5;
    snapshot.cursor.next_job = 5;
    snapshot.cursor.migrated_versions = 500;
    snapshot.cursor.search_parameters_copied = true;
    snapshot.cursor.search_parameters_synced_at = Some(t0());
    snapshot
}

fn request(since: i64, till: i64, types: &[&str]) -> Request {
    Request {
        since: day(since),
        till: day(till),
        types: types.iter().map(|t| t.to_string()).collect(),
    }
    .normalized()
}

/// Records `request` as the CLI does: step after step, each write applied to the snapshot, until recorded.
fn record_all(settings: &MigrationSettings, snapshot: &mut Snapshot, request: &Request) -> (i64, Vec<i64>) {
    for _ in 0..20 {
        match record(settings, snapshot, request).unwrap() {
            Step::Write(w) => match *w {
                Write::InsertJob(j) => snapshot.put_job(j),
                Write::Cursor(c) => snapshot.cursor = c,
                other => panic!("unexpected {other:?}"),
            },
            Step::Recorded { id, rows } => return (id, rows),
        }
    }
    panic!("recording never ends");
}

#[test]
fn a_redrive_is_recorded_once_as_rows_after_the_last_window() {
    let settings = crate::engine::sim::settings(&[]);
    let mut snapshot = migrated();
    let asked = request(2, 3, &[]);
    let (id, rows) = record_all(&settings, &mut snapshot, &asked);
    assert_eq!((id, rows.clone()), (5, vec![5]));
    let row = snapshot.job(5).unwrap();
    assert_eq!((row.since, row.till, row.resource_type.as_str()), (day(2), day(3), ""));
    assert_eq!(row.redrive.as_ref().unwrap().id, 5);
    assert_eq!(snapshot.cursor.next_job, 6);
    assert_eq!(snapshot.cursor.last_redrive, Some(5));
    assert_eq!(snapshot.cursor.since, Some(day(8)), "the cursor's instant stays");
    // The same command again while it is in flight: the same re-drive, nothing new written.
    assert_eq!(
        record(&settings, &snapshot, &asked).unwrap(),
        Step::Recorded { id: 5, rows: vec![5] }
    );
    // Another range overlapping it waits for it; one beside it is a re-drive of its own.
    let refused = record(&settings, &snapshot, &request(1, 3, &["Patient"])).unwrap_err();
    assert!(matches!(refused, Refusal::Overlaps { id: 5, .. }), "{refused}");
    assert!(refused.fix().contains("wait until re-drive 5 has finished"));
    assert_eq!(record_all(&settings, &mut snapshot, &request(3, 4, &[])).0, 6);
}

#[test]
fn a_redrive_is_refused_with_what_to_do_instead() {
    let settings = crate::engine::sim::settings(&[]);
    let snapshot = migrated();
    let refusal = |r: Request| record(&settings, &snapshot, &r).unwrap_err();
    assert!(matches!(refusal(request(3, 3, &[])), Refusal::EmptyRange { .. }));
    let above = refusal(request(7, 9, &[]));
    assert_eq!(
        above.to_string(),
        "--till 2026-01-09T00:00:00.000Z is past what is migrated (through 2026-01-08T00:00:00.000Z): that part is still to be migrated"
    );
    assert!(above.fix().contains("at or before 2026-01-08T00:00:00.000Z"));
    assert_eq!(
        refusal(request(1, 2, &["Patiant"])),
        Refusal::UnknownType("Patiant".into())
    );
    let fresh = Snapshot::default();
    assert_eq!(
        record(&settings, &fresh, &request(1, 2, &[])).unwrap_err(),
        Refusal::NotStarted
    );
    // Parallel windows export every type, so any type may be re-driven, listed or not.
    let listed = crate::engine::sim::settings(&[("AZURE_ResourceTypes", "Patient,Observation")]);
    assert!(record(&listed, &snapshot, &request(1, 2, &["Encounter"])).is_ok());
    let per_type = crate::engine::sim::settings(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceTypes", "Patient,Observation"),
    ]);
    assert_eq!(
        record(&per_type, &snapshot, &request(1, 2, &["Encounter"])).unwrap_err(),
        Refusal::OutOfScope("Encounter".into())
    );
}

/// A re-drive may reach exactly what is migrated and begin exactly at the migration's start date; a moment more
/// either way is refused.
#[test]
fn a_redrive_may_span_exactly_from_the_start_date_to_the_cursor() {
    let settings = crate::engine::sim::settings(&[("AZURE_StartDate", "2026-01-01")]);
    assert_eq!(settings.start_date, Some(day(1)));
    let snapshot = migrated();
    let asked = |since: i64, till: i64| record(&settings, &snapshot, &request(since, till, &[]));
    assert!(asked(1, 8).is_ok(), "{:?}", asked(1, 8));
    assert!(matches!(asked(0, 8), Err(Refusal::BeforeStart { .. })));
    assert!(matches!(asked(1, 9), Err(Refusal::AboveCursor { .. })));
}

/// Per-type mode: one row per configured type; a run that stopped after the first row finishes the rest, and
/// a row a planner inserted meanwhile is counted first, as the engine would.
#[test]
fn a_stopped_recording_is_finished_by_the_next_run() {
    let settings = crate::engine::sim::settings(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceTypes", "Patient,Observation"),
    ]);
    let mut snapshot = migrated();
    let asked = request(2, 3, &[]);
    let Step::Write(w) = record(&settings, &snapshot, &asked).unwrap() else {
        panic!()
    };
    let Write::InsertJob(first) = *w else { panic!() };
    assert_eq!(first.resource_type, "Observation");
    snapshot.put_job(first);
    // The run stops here. The engine's planner repairs the cursor and plans a window after it.
    let Action::Write {
        write: Write::Cursor(repaired),
        ..
    } = plan_step(&settings, &snapshot)
    else {
        panic!()
    };
    assert_eq!((repaired.next_job, repaired.since), (6, Some(day(8))));
    assert_eq!(repaired.planned_till, None, "a re-drive row plans nothing");
    snapshot.cursor = repaired;
    snapshot.put_job(Job::planned(6, day(8), day(9), "Patient"));
    let (id, rows) = record_all(&settings, &mut snapshot, &asked);
    assert_eq!((id, rows), (5, vec![5, 7]));
    let second = snapshot.job(7).unwrap();
    assert_eq!(second.resource_type, "Patient");
    assert_eq!(second.redrive.as_ref().unwrap().id, 5);
    assert_eq!(snapshot.cursor.next_job, 8);
}

fn plan_step(settings: &MigrationSettings, snapshot: &Snapshot) -> Action {
    let timing = Timing::default();
    let ctx = Context::for_test(settings, &timing, Timer::Starter, t0());
    step(&ctx, snapshot, &Facts::default())
}

fn processed(mut job: Job) -> Job {
    job.export_status = ExportStatus::Completed;
    job.import_status = ImportStatus::Completed;
    job.processed = true;
    job.exported = 40;
    job
}

/// The core's decision: a processed re-drive row commits in its turn, moving only the count of committed rows
/// (no new instant, no counts, no latch reset, no `ImportTill`); the normal window after it commits as ever.
#[test]
fn a_finished_redrive_never_moves_the_cursor() {
    let settings = crate::engine::sim::settings(&[]);
    let mut snapshot = migrated();
    let (_, rows) = record_all(&settings, &mut snapshot, &request(2, 3, &[]));
    snapshot.cursor.failures = 2;
    snapshot.put_job(processed(snapshot.job(rows[0]).unwrap().clone()));
    snapshot.put_job(processed(Job::planned(6, day(8), day(9), "")));
    snapshot.cursor.next_job = 7;
    let Action::Write {
        write: Write::Cursor(after),
        notes,
    } = plan_step(&settings, &snapshot)
    else {
        panic!()
    };
    let mut expected = snapshot.cursor.clone();
    expected.committed_job = 6;
    assert_eq!(after, expected, "only the count of committed rows moves");
    assert!(notes.events.is_empty(), "no ImportTill: {:?}", notes.events);
    assert_eq!(
        notes.lines,
        [
            "Re-drive 5 of 2026-01-02T00:00:00.000Z to 2026-01-03T00:00:00.000Z done (row 5); the cursor stays at 2026-01-08T00:00:00.000Z"
        ]
    );
    snapshot.cursor = after;
    let Action::Write {
        write: Write::Cursor(after),
        notes,
    } = plan_step(&settings, &snapshot)
    else {
        panic!()
    };
    assert_eq!((after.since, after.committed_job, after.failures), (Some(day(9)), 7, 0));
    assert_eq!(after.migrated_versions, 540);
    assert_eq!(notes.events[0].name, "ImportTill");
    // Done: the same request may be made again (a new re-drive).
    snapshot.cursor = after;
    snapshot.jobs.clear();
    assert!(matches!(
        record(&settings, &snapshot, &request(2, 3, &[])).unwrap(),
        Step::Write(w) if matches!(&*w, Write::InsertJob(j) if j.redrive.as_ref().unwrap().id == 7)
    ));
}

/// A per-type window whose parts have a re-drive row between them commits only after its last part.
#[test]
fn a_redrive_between_the_parts_of_a_window_does_not_end_it() {
    let settings = crate::engine::sim::settings(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceTypes", "Patient,Observation"),
    ]);
    let mut snapshot = migrated();
    let part = |seq: i64, t: &str| {
        let mut j = processed(Job::planned(seq, day(8), day(9), t));
        j.window_since = Some(day(8));
        j.window_till = Some(day(9));
        j
    };
    let (first, last) = (part(5, "Patient"), part(7, "Observation"));
    snapshot.put_job(first);
    let mut redrive = Job::planned(6, day(2), day(3), "Patient");
    redrive.redrive = Some(Redrive {
        id: 6,
        since: day(2),
        till: day(3),
        types: vec!["Patient".into()],
    });
    snapshot.put_job(redrive);
    snapshot.put_job(last);
    snapshot.cursor.next_job = 8;
    let Action::Write {
        write: Write::Cursor(after),
        ..
    } = plan_step(&settings, &snapshot)
    else {
        panic!()
    };
    assert_eq!(
        (after.committed_job, after.since),
        (6, Some(day(8))),
        "the window is not over"
    );
}

/// A re-drive part is sized when claimed: halved to fit `AZURE_ChunkLimit` (the rest follows in its row), and
/// a part with nothing at the source is done without an export.
#[test]
fn a_redrive_part_is_sized_to_the_chunk_limit_when_claimed() {
    let settings = crate::engine::sim::settings(&[("AZURE_ChunkLimit", "60")]);
    let mut snapshot = migrated();
    let (_, rows) = record_all(&settings, &mut snapshot, &request(2, 4, &[]));
    let timing = Timing::default();
    let ctx = Context::for_test(&settings, &timing, Timer::Starter, t0());
    let mut facts = Facts::default();
    facts.counts.insert((None, day(2), day(4)), 100);
    facts.counts.insert((None, day(2), day(3)), 50);
    let one_ms = TimeDelta::milliseconds(1);
    facts.counts.insert((None, day(3), day(3) + one_ms), 0);
    let row = snapshot.job(rows[0]).unwrap().clone();
    let Ok(Part::Export(part)) = sized_part(&ctx, &facts, &row) else {
        panic!()
    };
    assert_eq!(
        (part.since, part.till, part.remainder_till),
        (day(2), day(3), Some(day(4)))
    );
    assert_eq!((part.planned_versions, part.boundary_versions), (Some(50), Some(0)));
    // Versions on the chunk's end millisecond: the part ends on the empty millisecond before it, planned with
    // what lies before that.
    facts.counts.insert((None, day(3), day(3) + one_ms), 3);
    facts.counts.insert((None, day(3) - one_ms, day(3)), 0);
    facts.counts.insert((None, day(2), day(3) - one_ms), 47);
    let Ok(Part::Export(part)) = sized_part(&ctx, &facts, &row) else {
        panic!()
    };
    assert_eq!(
        (part.till, part.planned_versions, part.boundary_versions),
        (day(3) - one_ms, Some(47), Some(0))
    );

    // A row whose part was already cut (a 413 split: its till halved, the rest kept as its remainder) is sized
    // within its part and keeps the remainder: the tail of the range is never dropped.
    let mut cut = row.clone();
    cut.till = day(3);
    cut.remainder_till = Some(day(4));
    facts.counts.insert((None, day(2), day(3)), 70);
    facts.counts.insert((None, day(2), day(2) + TimeDelta::hours(12)), 30);
    facts.counts.insert(
        (
            None,
            day(2) + TimeDelta::hours(12),
            day(2) + TimeDelta::hours(12) + one_ms,
        ),
        0,
    );
    let Ok(Part::Export(part)) = sized_part(&ctx, &facts, &cut) else {
        panic!()
    };
    assert_eq!(
        (part.since, part.till, part.remainder_till),
        (day(2), day(2) + TimeDelta::hours(12), Some(day(4)))
    );

    facts.counts.insert((None, day(2), day(4)), 0);
    let Ok(Part::Empty(done)) = sized_part(&ctx, &facts, &row) else {
        panic!()
    };
    assert!(done.processed, "{done:?}");
    assert_eq!(done.import_request, "No");
}
