//! Planning and committing, case by case where the simulator's schedules pass too lightly to judge them (found
//! by mutation testing: docs/reliability.md).
use chrono::{TimeDelta, TimeZone, Utc};

use super::*;

/// The progress samples behind status's rate and ETA: at least two minutes apart (the newest moves forward with
/// each commit until it is), kept for three hours and no longer.
#[test]
fn progress_samples_stay_two_minutes_apart_and_three_hours_back() {
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap();
    let mut cursor = Cursor::new();
    let mut sample = |minutes: i64, ms: i64, migrated: i64| {
        cursor.migrated_versions = migrated;
        record_progress(
            &mut cursor,
            t0 + TimeDelta::minutes(minutes) + TimeDelta::milliseconds(ms),
        );
        cursor
            .progress_samples
            .iter()
            .map(|(t, n)| ((*t - t0).num_milliseconds(), *n))
            .collect::<Vec<_>>()
    };
    let m = 60_000;
    assert_eq!(sample(0, 0, 0), [(0, 0)]);
    // A second sample is kept however close: a rate needs two.
    assert_eq!(sample(1, 0, 10), [(0, 0), (m, 10)]);
    // The newest moves forward while it is less than two minutes past the one before it...
    assert_eq!(sample(2, 0, 20), [(0, 0), (2 * m, 20)]);
    // ... and stays once it is two minutes past: the next one is new.
    assert_eq!(sample(3, 0, 30), [(0, 0), (2 * m, 20), (3 * m, 30)]);
    // Exactly three hours old is kept.
    assert_eq!(sample(180, 0, 40), [(0, 0), (2 * m, 20), (180 * m, 40)]);
    // A millisecond more is not.
    assert_eq!(sample(182, 1, 50), [(180 * m, 40), (182 * m + 1, 50)]);
}

fn context<'a>(settings: &'a crate::config::MigrationSettings, timing: &'a crate::engine::Timing) -> Context<'a> {
    Context::for_test(
        settings,
        timing,
        super::super::Timer::ImportStatus,
        crate::engine::sim::t0(),
    )
}

/// A window row the cursor waits on that cannot be read holds the cursor (nothing past it is reported migrated)
/// and is said once, naming the row to inspect; not again on every tick.
#[test]
fn a_missing_window_row_holds_the_cursor_and_is_said_once() {
    let (settings, timing) = (crate::engine::sim::settings(&[]), crate::engine::Timing::default());
    let mut cursor = Cursor::new();
    cursor.committed_job = 3;
    cursor.next_job = 5;
    let at = crate::engine::sim::t0() - TimeDelta::hours(2);
    let snapshot = Snapshot {
        cursor,
        jobs: vec![Job::planned(4, at, at + TimeDelta::hours(1), "")],
        payloads: Vec::new(),
    };
    let mut facts = Facts::default();
    let Some(Action::Note(notes)) = commit(&context(&settings, &timing), &snapshot, &facts) else {
        panic!("the missing row is said")
    };
    let row = crate::state::rows::job_key(&settings.row_key, 3);
    assert!(notes.lines[0].contains("window 3 "), "{:?}", notes.lines);
    assert!(notes.lines[0].contains(&format!("row {row} ")), "{:?}", notes.lines);
    let mark = notes.mark.expect("said once");
    assert_eq!(mark, Mark::Reported("missing-3".into()));
    facts.marks.insert(mark);
    assert_eq!(commit(&context(&settings, &timing), &snapshot, &facts), None);
}

/// The cursor `action` writes; a test failure naming `expected` and the action otherwise.
fn cursor_written(action: Option<Action>, expected: &str) -> Cursor {
    match action {
        Some(Action::Write {
            write: Write::Cursor(cursor),
            ..
        }) => cursor,
        other => panic!("{expected}: {other:?}"),
    }
}

/// The window row `action` inserts; a test failure naming `expected` and the action otherwise.
fn job_inserted(action: Option<Action>, expected: &str) -> Job {
    match action {
        Some(Action::Write {
            write: Write::InsertJob(job),
            ..
        }) => job,
        other => panic!("{expected}: {other:?}"),
    }
}

/// A processed window `seq` of an hour ending at `till`.
fn processed(seq: i64, till: DateTime<Utc>) -> Job {
    let mut job = Job::planned(seq, till - TimeDelta::hours(1), till, "");
    job.processed = true;
    job.exported = 7;
    job
}

/// A window commits only once a SearchParameter sync has covered its end (custom SearchParameters travel through
/// the REST API, not the window's import): a sync up to exactly its end is enough; an earlier one is tried first,
/// then waited on with a note, and the cursor does not move meanwhile.
#[test]
fn a_window_commits_once_the_search_parameter_sync_covers_its_end() {
    let (settings, timing) = (crate::engine::sim::settings(&[]), crate::engine::Timing::default());
    let ctx = context(&settings, &timing);
    let till = crate::engine::sim::t0() - TimeDelta::hours(1);
    let mut snapshot = Snapshot {
        cursor: Cursor::new(),
        jobs: vec![processed(0, till)],
        payloads: Vec::new(),
    };
    snapshot.cursor.next_job = 1;
    snapshot.cursor.search_parameters_synced_at = Some(till - TimeDelta::milliseconds(1));
    let mut facts = Facts::default();
    assert_eq!(commit(&ctx, &snapshot, &facts), Some(Action::CopySearchParameters));
    facts.search_parameters_tried = true;
    let Some(Action::Note(notes)) = commit(&ctx, &snapshot, &facts) else {
        panic!("a sync that did not complete is waited on")
    };
    assert!(notes.lines[0].contains("SearchParameter sync"), "{:?}", notes.lines);
    snapshot.cursor.search_parameters_synced_at = Some(till);
    let cursor = cursor_written(
        commit(&ctx, &snapshot, &Facts::default()),
        "a sync up to the window's end lets it commit",
    );
    assert_eq!(
        (cursor.since, cursor.committed_job, cursor.migrated_versions),
        (Some(till), 1, 7)
    );
}

/// A commit resets the retry latch, unless the next window is failing right now (the latch counts its failures).
#[test]
fn a_commit_resets_the_retry_latch_unless_the_next_window_is_failing() {
    let (settings, timing) = (crate::engine::sim::settings(&[]), crate::engine::Timing::default());
    let ctx = context(&settings, &timing);
    let till = crate::engine::sim::t0() - TimeDelta::hours(2);
    let mut next = Job::planned(1, till, till + TimeDelta::hours(1), "");
    next.export_status = crate::state::rows::ExportStatus::Running;
    let mut snapshot = Snapshot {
        cursor: Cursor::new(),
        jobs: vec![processed(0, till), next],
        payloads: Vec::new(),
    };
    snapshot.cursor.next_job = 2;
    snapshot.cursor.failures = 2;
    snapshot.cursor.search_parameters_synced_at = Some(till);
    let failures_after =
        |snapshot: &Snapshot| cursor_written(commit(&ctx, snapshot, &Facts::default()), "window 0 commits").failures;
    assert_eq!(failures_after(&snapshot), 0);
    snapshot.jobs[1].export_status = crate::state::rows::ExportStatus::Failed;
    assert_eq!(failures_after(&snapshot), 2);
}

/// A per-type window's parts commit one by one, and the cursor's instant moves to the window's end with its last
/// part: not before (earlier types' parts leave later types unimported), and not when planning has not finished
/// the window; a re-drive row recorded between two parts is no part of it.
#[test]
fn a_per_type_window_moves_the_cursor_with_its_last_part() {
    let (settings, timing) = (crate::engine::sim::settings(&[]), crate::engine::Timing::default());
    let ctx = context(&settings, &timing);
    let till = crate::engine::sim::t0() - TimeDelta::hours(2);
    let since = till - TimeDelta::hours(1);
    let part = |seq: i64, resource_type: &str| {
        let mut job = processed(seq, till);
        job.resource_type = resource_type.into();
        job.window_since = Some(since);
        job.window_till = Some(till);
        job
    };
    let mut redrive = processed(1, since);
    redrive.redrive = Some(crate::state::rows::Redrive {
        id: 1,
        since: since - TimeDelta::hours(1),
        till: since,
        types: Vec::new(),
    });
    let mut snapshot = Snapshot {
        cursor: Cursor::new(),
        jobs: vec![part(0, "Patient"), redrive, part(2, "Observation")],
        payloads: Vec::new(),
    };
    snapshot.cursor.since = Some(since);
    snapshot.cursor.next_job = 3;
    snapshot.cursor.search_parameters_synced_at = Some(till);
    let committed = |snapshot: &Snapshot| match commit(&ctx, snapshot, &Facts::default()) {
        Some(Action::Write {
            write: Write::Cursor(c),
            notes,
        }) => (c.since, notes.events.iter().any(|e| e.name == "ImportTill")),
        other => panic!("a processed part commits: {other:?}"),
    };
    // The first part, with another part of the window after it (past the re-drive row): the instant stays.
    assert_eq!(committed(&snapshot), (Some(since), false));
    // The last part, the next window's first part planned after it: the window's end, reported.
    snapshot.cursor.committed_job = 2;
    let mut later = part(3, "Patient");
    (later.since, later.till) = (till, till + TimeDelta::hours(1));
    (later.window_since, later.window_till) = (Some(till), Some(till + TimeDelta::hours(1)));
    snapshot.jobs.push(later);
    snapshot.cursor.next_job = 4;
    assert_eq!(committed(&snapshot), (Some(till), true));
    // The last part with nothing after it, planning finished: the same.
    snapshot.jobs.pop();
    snapshot.cursor.next_job = 3;
    assert_eq!(committed(&snapshot), (Some(till), true));
    // The last part planned so far while planning is still inside the window: the instant stays.
    snapshot.cursor.global_since = Some(since);
    snapshot.cursor.global_till = Some(till);
    assert_eq!(committed(&snapshot), (Some(since), false));
}

/// Runs `advance` as a shell would, answering its counts from `count` (of a type or all, over `[since, till)`)
/// and the source's oldest resource (`oldest` from the start, nothing after anything), until it decides
/// something else: that decision.
fn plan_next(
    ctx: &Context,
    snapshot: &Snapshot,
    facts: &mut Facts,
    oldest: DateTime<Utc>,
    count: impl Fn(Option<&str>, DateTime<Utc>, DateTime<Utc>) -> u64,
) -> Option<Action> {
    for _ in 0..200 {
        match advance(ctx, snapshot, facts) {
            Some(Action::Count {
                resource_type,
                since,
                till,
            }) => {
                let n = count(resource_type.as_deref(), since, till);
                facts.counts.insert((resource_type, since, till), n);
            }
            Some(Action::Oldest { from }) => {
                facts.oldest.insert(from, from.is_none().then_some(oldest));
            }
            other => return other,
        }
    }
    panic!("planning asks for facts without end")
}

/// Ten versions in any range longer than a millisecond, none on one millisecond (every boundary is exact).
fn ten_per_range(_: Option<&str>, since: DateTime<Utc>, till: DateTime<Utc>) -> u64 {
    if till - since > TimeDelta::milliseconds(1) {
        10
    } else {
        0
    }
}

/// No new window is planned while `AZURE_MaxWindowsInFlight` windows are uncommitted, or once a tick has skipped
/// more empty ranges than its bound (the rest waits for the next tick).
#[test]
fn planning_stops_at_the_windows_in_flight_and_the_empty_skips_of_a_tick() {
    let settings = crate::engine::sim::settings(&[("AZURE_MaxWindowsInFlight", "2")]);
    let timing = crate::engine::Timing::default();
    let ctx = context(&settings, &timing);
    let oldest = crate::engine::sim::t0() - TimeDelta::days(3);
    let importing = |seq: i64| {
        let since = oldest + TimeDelta::hours(seq);
        let mut job = Job::planned(seq, since, since + TimeDelta::hours(1), "");
        job.export_status = crate::state::rows::ExportStatus::Completed;
        job
    };
    let mut snapshot = Snapshot {
        cursor: Cursor::new(),
        jobs: vec![importing(0)],
        payloads: Vec::new(),
    };
    snapshot.cursor.since = Some(oldest);
    snapshot.cursor.next_job = 1;
    snapshot.cursor.planned_till = Some(oldest + TimeDelta::hours(1));
    let planned = |snapshot: &Snapshot, skips: u32| {
        let mut facts = Facts {
            skips,
            ..Facts::default()
        };
        match plan_next(&ctx, snapshot, &mut facts, oldest, ten_per_range) {
            Some(Action::Write {
                write: Write::InsertJob(job),
                ..
            }) => Some(job.seq),
            None => None,
            other => panic!("a window or nothing: {other:?}"),
        }
    };
    assert_eq!(planned(&snapshot, 0), Some(1), "one window in flight of two");
    assert_eq!(
        planned(&snapshot, timing.max_empty_skips),
        Some(1),
        "skips up to the bound"
    );
    assert_eq!(
        planned(&snapshot, timing.max_empty_skips + 1),
        None,
        "skips past the bound"
    );
    snapshot.jobs.push(importing(1));
    snapshot.cursor.next_job = 2;
    snapshot.cursor.planned_till = Some(oldest + TimeDelta::hours(2));
    assert_eq!(planned(&snapshot, 0), None, "two windows in flight of two");
}

/// With `AZURE_IsParallel=false` each window is exported one resource type at a time, in the listed order, from
/// the first window on.
#[test]
fn per_type_mode_plans_its_first_window_by_type() {
    let settings = crate::engine::sim::settings(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceTypes", "Observation,Patient"),
    ]);
    let timing = crate::engine::Timing::default();
    let ctx = context(&settings, &timing);
    let oldest = crate::engine::sim::t0() - TimeDelta::days(3);
    let snapshot = Snapshot {
        cursor: Cursor::new(),
        jobs: Vec::new(),
        payloads: Vec::new(),
    };
    let job = job_inserted(
        plan_next(&ctx, &snapshot, &mut Facts::default(), oldest, ten_per_range),
        "the first window is planned",
    );
    assert_eq!(
        (job.seq, job.resource_type.as_str(), job.type_index, job.since),
        (0, "Observation", 0, oldest)
    );
    assert_eq!(job.window_since, Some(oldest));
    assert!(job.window_till.is_some_and(|t| t > oldest), "{job:?}");
}

/// A range is halved only while it holds more than `AZURE_ChunkLimit` versions: exactly the limit is one window.
#[test]
fn a_range_is_halved_only_while_it_holds_more_than_the_chunk_limit() {
    let settings = crate::engine::sim::settings(&[("AZURE_ChunkLimit", "60")]);
    let timing = crate::engine::Timing::default();
    let ctx = context(&settings, &timing);
    let since = crate::engine::sim::t0() - TimeDelta::days(1);
    let till = since + TimeDelta::hours(4);
    let mut facts = Facts::default();
    let half = planner::halve(since, till).unwrap();
    facts.counts.insert((None, since, till), 60);
    facts.counts.insert((None, since, half), 30);
    assert_eq!(sized(&ctx, &facts, None, since, till).ok(), Some((till, 60)));
    facts.counts.insert((None, since, till), 61);
    assert_eq!(sized(&ctx, &facts, None, since, till).ok(), Some((half, 30)));
}

/// A count over every type that found a millisecond empty answers for each type too: no count of the type is
/// asked for it.
#[test]
fn an_empty_millisecond_for_all_types_is_empty_for_each() {
    let since = crate::engine::sim::t0() - TimeDelta::days(1);
    let till = since + TimeDelta::hours(1);
    let mut facts = Facts::default();
    facts.counts.insert((None, till, till + TimeDelta::milliseconds(1)), 0);
    assert_eq!(boundary(&facts, Some("Patient"), since, till).ok(), Some((till, 0)));
    // Not empty for all: the type's own count decides.
    facts.counts.insert((None, till, till + TimeDelta::milliseconds(1)), 2);
    facts
        .counts
        .insert((Some("Patient".into()), till, till + TimeDelta::milliseconds(1)), 0);
    assert_eq!(boundary(&facts, Some("Patient"), since, till).ok(), Some((till, 0)));
}

/// A planned window moved back to an empty millisecond holds what lies before it (counted again), and one that
/// keeps its end holds what was counted for it (no count asked again).
#[test]
fn a_window_moved_to_an_exact_boundary_plans_what_lies_before_it() {
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let ctx = context(&settings, &timing);
    let ms = TimeDelta::milliseconds;
    let since = crate::engine::sim::t0() - TimeDelta::days(1);
    let end = since + TimeDelta::hours(1);
    let mut facts = Facts::default();
    facts.counts.insert((None, end, end + ms(1)), 0);
    let job = planned_job(&ctx, &facts, 4, "", since, (end, 45))
        .ok()
        .expect("no count needed");
    assert_eq!(
        (job.till, job.planned_versions, job.boundary_versions),
        (end, Some(45), Some(0))
    );
    facts.counts.insert((None, end, end + ms(1)), 3);
    facts.counts.insert((None, end - ms(1), end), 0);
    facts.counts.insert((None, since, end - ms(1)), 40);
    let job = planned_job(&ctx, &facts, 4, "", since, (end, 45))
        .ok()
        .expect("counted");
    assert_eq!(
        (job.seq, job.till, job.planned_versions, job.boundary_versions),
        (4, end - ms(1), Some(40), Some(0))
    );
}

/// Types found empty in a per-type window join the window's done types (a type planned before them stays done,
/// so it is not exported twice); the done types of another window (either bound differs) are cleared first.
#[test]
fn empty_types_join_the_done_types_of_their_own_window_only() {
    let since = crate::engine::sim::t0() - TimeDelta::days(1);
    let till = since + TimeDelta::hours(1);
    let mut cursor = Cursor::new();
    (cursor.global_since, cursor.global_till) = (Some(since), Some(till));
    cursor.types_done = vec!["Observation".into()];
    let done = |cursor: &Cursor, since, till| match record_empty_types(cursor, since, till, &["Patient".into()]) {
        Action::Write {
            write: Write::Cursor(c),
            ..
        } => {
            assert_eq!((c.global_since, c.global_till), (Some(since), Some(till)));
            c.types_done
        }
        other => panic!("a cursor write: {other:?}"),
    };
    assert_eq!(done(&cursor, since, till), ["Observation", "Patient"]);
    assert_eq!(done(&cursor, since, till + TimeDelta::hours(1)), ["Patient"]);
    assert_eq!(done(&cursor, since - TimeDelta::hours(1), till), ["Patient"]);
}

/// Per-type planning goes through the listed types in order, each row carrying its type's place in the list
/// (the original's position column): an empty type is recorded as done, and the next one is planned.
#[test]
fn per_type_rows_carry_their_types_place_in_the_list() {
    let settings = crate::engine::sim::settings(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceTypes", "Observation,Patient"),
    ]);
    let timing = crate::engine::Timing::default();
    let ctx = context(&settings, &timing);
    let oldest = crate::engine::sim::t0() - TimeDelta::days(3);
    let mut snapshot = Snapshot {
        cursor: Cursor::new(),
        jobs: Vec::new(),
        payloads: Vec::new(),
    };
    let no_observations = |t: Option<&str>, since, till| {
        if t == Some("Observation") {
            0
        } else {
            ten_per_range(t, since, till)
        }
    };
    let mut facts = Facts::default();
    let cursor = cursor_written(
        plan_next(&ctx, &snapshot, &mut facts, oldest, no_observations),
        "the empty type is recorded first",
    );
    assert_eq!(cursor.types_done, ["Observation"]);
    snapshot.cursor = cursor;
    let job = job_inserted(
        plan_next(&ctx, &snapshot, &mut facts, oldest, no_observations),
        "then the next type is planned",
    );
    assert_eq!((job.resource_type.as_str(), job.type_index), ("Patient", 1));
}

/// The cursor's per-type position after a part is planned (also how a cursor is repaired from a row): a part
/// short of the window's end leaves its type to continue from there; a part up to the end makes the type done
/// and ends its split; another window's done types are cleared first.
#[test]
fn a_part_up_to_the_windows_end_makes_its_type_done() {
    let types: Vec<String> = ["Observation", "Patient"].map(String::from).to_vec();
    let since = crate::engine::sim::t0() - TimeDelta::days(1);
    let till = since + TimeDelta::hours(1);
    let mid = since + TimeDelta::minutes(20);
    let mut cursor = Cursor::new();
    per_type_position(&mut cursor, &types, since, till, "Patient", mid);
    assert_eq!(
        (cursor.type_name.as_str(), cursor.sub_since, cursor.type_index),
        ("Patient", Some(mid), 1)
    );
    assert!(cursor.types_done.is_empty());
    per_type_position(&mut cursor, &types, since, till, "Patient", till);
    assert_eq!((cursor.type_name.as_str(), cursor.sub_since), ("", None));
    assert_eq!(cursor.types_done, ["Patient"]);
    for (s, t) in [(since, till + TimeDelta::hours(1)), (since - TimeDelta::hours(1), till)] {
        let mut other = cursor.clone();
        per_type_position(&mut other, &types, s, t, "Observation", t);
        assert_eq!(other.types_done, ["Observation"], "another window");
        assert_eq!((other.global_since, other.global_till), (Some(s), Some(t)));
    }
}
