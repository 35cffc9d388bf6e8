//! The import side of the core: payloads posted, polled, settled into their window.
use chrono::TimeDelta;

use super::*;
use crate::engine::core::{Facts, ImportPoll, PostKey, Snapshot, Timer};
use crate::state::rows::ExportStatus;
use crate::state::{Cursor, Job, Payload};

fn import_ctx<'a>(
    settings: &'a crate::config::MigrationSettings,
    timing: &'a crate::engine::Timing,
    now: chrono::DateTime<chrono::Utc>,
) -> Context<'a> {
    Context {
        nonce: 7,
        ..Context::for_test(settings, timing, Timer::ImportStatus, now)
    }
}

/// A window settles over all the payloads its export row counts: one completed of two is no verdict.
#[test]
fn a_window_settles_only_over_every_payload_it_counts() {
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc::now();
    let (mut snapshot, facts) = running(now, TimeDelta::zero());
    snapshot.payloads[0].status = ImportStatus::Completed;
    snapshot.jobs[0].payloads = 2;
    assert!(settle_windows(&import_ctx(&settings, &timing, now), &snapshot, &facts).is_none());
    snapshot.jobs[0].payloads = 1;
    assert!(settle_windows(&import_ctx(&settings, &timing, now), &snapshot, &facts).is_some());
}

/// One window with one running import, polled Running this tick.
fn running(now: chrono::DateTime<chrono::Utc>, counted_ago: TimeDelta) -> (Snapshot, Facts) {
    let mut cursor = Cursor::new();
    cursor.next_job = 1;
    cursor.totals_at = Some(now - counted_ago);
    cursor.source_total = "10".into();
    cursor.destination_total = "4".into();
    let mut job = Job::planned(0, now - TimeDelta::days(1), now - TimeDelta::hours(1), "");
    job.attempt = 1;
    job.export_status = ExportStatus::Completed;
    job.payloads = 1;
    let mut p = Payload::new(0, 1, 1, "import_payload_1.json".into());
    p.status = ImportStatus::Running;
    p.attempt = 1;
    p.import_url = "https://destination/_operations/import/7".into();
    p.start_time = Some(now - TimeDelta::minutes(1));
    let mut facts = Facts::default();
    facts.import_polls.insert(PostKey::of(&p), ImportPoll::Running);
    let snapshot = Snapshot {
        cursor,
        jobs: vec![job],
        payloads: vec![p],
    };
    (snapshot, facts)
}

#[test]
fn whole_server_counts_are_reused_within_the_interval() {
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let now = crate::engine::sim::t0();
    let ctx = import_ctx(&settings, &timing, now);
    let (snapshot, facts) = running(now, TimeDelta::minutes(5));
    let Some(Action::Note(notes)) = poll_imports(&ctx, &snapshot, &facts) else {
        panic!("a Running event from the saved counts, without counting")
    };
    assert_eq!(notes.events[0].get("SourceResourceCount"), Some("10"));
    assert_eq!(notes.events[0].get("DestinationResourceCount"), Some("4"));
    let (stale, facts) = running(now, TimeDelta::minutes(20));
    assert_eq!(poll_imports(&ctx, &stale, &facts), Some(Action::CountTotals));
    // The interval is half-open: counts saved exactly AZURE_CountIntervalMinutes ago are counted afresh.
    let (edge, facts) = running(now, settings.count_interval);
    assert_eq!(poll_imports(&ctx, &edge, &facts), Some(Action::CountTotals));
    let (edge, facts) = running(now, settings.count_interval - TimeDelta::milliseconds(1));
    assert!(matches!(poll_imports(&ctx, &edge, &facts), Some(Action::Note(_))));
    // Fresh counts are saved on the cursor once, then the event carries them.
    let (stale, mut facts) = running(now, TimeDelta::minutes(20));
    facts.totals = Some(crate::engine::core::Totals {
        source: "12".into(),
        destination: "6".into(),
        ..Default::default()
    });
    facts.totals_counted = true;
    let Some(Action::Write {
        write: crate::engine::core::Write::Cursor(saved),
        notes,
    }) = poll_imports(&ctx, &stale, &facts)
    else {
        panic!("fresh counts are saved on the cursor")
    };
    assert_eq!(
        (
            saved.totals_at,
            saved.source_total.as_str(),
            saved.destination_total.as_str()
        ),
        (Some(now), "12", "6")
    );
    facts.marks.extend(notes.mark);
    let Some(Action::Note(notes)) = poll_imports(&ctx, &stale, &facts) else {
        panic!("once saved, the Running event follows with the fresh counts")
    };
    assert_eq!(notes.events[0].get("DestinationResourceCount"), Some("6"));
    // A finished import always counts afresh.
    let (snapshot, mut facts) = running(now, TimeDelta::minutes(1));
    let key = PostKey::of(&snapshot.payloads[0]);
    facts.import_polls.insert(
        key,
        ImportPoll::Done(crate::fhir::wire::ImportResult {
            transaction_time: None,
            output: Vec::new(),
            error: Vec::new(),
        }),
    );
    assert_eq!(poll_imports(&ctx, &snapshot, &facts), Some(Action::CountTotals));
}

/// Under `AZURE_ImportErrorPolicy=Halt`, a finished import halts on permanent lines only: lines the ledger
/// found benign (the identical version is at the destination) or transient (retried later) do not.
#[test]
fn halt_stops_on_permanent_lines_not_on_benign_ones() {
    use crate::engine::error_files::ErrorSummary;
    use crate::fhir::wire::{ImportErrorFile, ImportOutput, ImportResult};
    let settings = crate::engine::sim::settings(&[("AZURE_ImportErrorPolicy", "Halt")]);
    let timing = crate::engine::Timing::default();
    let now = crate::engine::sim::t0();
    let ctx = import_ctx(&settings, &timing, now);
    let outcome = |summary: ErrorSummary| {
        let (snapshot, mut facts) = running(now, TimeDelta::minutes(1));
        let key = PostKey::of(&snapshot.payloads[0]);
        facts.totals = Some(crate::engine::core::Totals::default());
        facts.marks.insert(Mark::TotalsSaved);
        facts.import_polls.insert(
            key,
            ImportPoll::Done(ImportResult {
                transaction_time: None,
                output: vec![ImportOutput {
                    resource_type: Some("Patient".into()),
                    count: 8,
                    input_url: None,
                }],
                error: vec![ImportErrorFile {
                    resource_type: Some("Patient".into()),
                    count: 2,
                    input_url: None,
                    url: "https://a/fhirlogs/e.ndjson".into(),
                }],
            }),
        );
        facts.error_summaries.insert(key, Some(summary));
        match poll_imports(&ctx, &snapshot, &facts) {
            Some(Action::Write {
                write: crate::engine::core::Write::Payload(p),
                ..
            }) => p.status,
            other => panic!("the import is recorded: {other:?}"),
        }
    };
    let benign = ErrorSummary {
        duplicates: 2,
        benign: 2,
        ..ErrorSummary::default()
    };
    assert_eq!(outcome(benign), ImportStatus::Completed);
    let transient = ErrorSummary {
        invalid: 2,
        transient: 2,
        ..ErrorSummary::default()
    };
    assert_eq!(outcome(transient), ImportStatus::Completed);
    let permanent = ErrorSummary {
        conflicts: 1,
        benign: 1,
        permanent: 1,
        ..ErrorSummary::default()
    };
    assert_eq!(outcome(permanent), ImportStatus::Halted);
}

/// The window's summary of its payloads: a halted payload halts the window (with its reason) once; a running
/// one marks it running once; a window imported whole is processed without a line about parts.
#[test]
fn a_window_takes_its_payloads_halt_or_run_once_and_is_processed_when_all_completed() {
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc::now();
    let ctx = import_ctx(&settings, &timing, now);
    let decide = |snapshot: &Snapshot, facts: &Facts| settle_windows(&ctx, snapshot, facts);
    let (mut snapshot, facts) = running(now, TimeDelta::zero());

    // Running: the window is marked running, once.
    let Some(Action::Write {
        write: Write::Job(j), ..
    }) = decide(&snapshot, &facts)
    else {
        panic!("the window marked running")
    };
    assert_eq!(j.import_status, ImportStatus::Running);
    snapshot.jobs[0].import_status = ImportStatus::Running;
    assert!(decide(&snapshot, &facts).is_none());

    // Halted: the window halts with the payload's reason, once.
    snapshot.payloads[0].status = ImportStatus::Halted;
    snapshot.payloads[0].failure_reason = "2 line(s) failed to import for good".into();
    let Some(Action::Write {
        write: Write::Job(j), ..
    }) = decide(&snapshot, &facts)
    else {
        panic!("the window halted")
    };
    assert_eq!(
        (j.import_status, j.failure_reason.as_str()),
        (ImportStatus::Halted, "2 line(s) failed to import for good")
    );
    snapshot.jobs[0].import_status = ImportStatus::Halted;
    assert!(decide(&snapshot, &facts).is_none());

    // Completed: processed, and no line about a next part.
    snapshot.payloads[0].status = ImportStatus::Completed;
    snapshot.jobs[0].import_status = ImportStatus::Running;
    let Some(Action::Write {
        write: Write::Job(j),
        notes,
    }) = decide(&snapshot, &facts)
    else {
        panic!("the window processed")
    };
    assert!(j.processed);
    assert!(notes.lines.is_empty(), "{notes:?}");
    assert_eq!(notes.fail_point, Some("window-processed"));

    // A window split in time (a remainder to export): its part is done, the next part follows, and the line
    // says so (with the same fail point).
    let end = snapshot.jobs[0].till + TimeDelta::hours(3);
    snapshot.jobs[0].remainder_till = Some(end);
    let Some(Action::Write {
        write: Write::Job(j),
        notes,
    }) = decide(&snapshot, &facts)
    else {
        panic!("the next part")
    };
    assert!(!j.processed && j.till == end, "{j:?}");
    assert_eq!(notes.lines.len(), 1, "{notes:?}");
    assert!(notes.lines[0].starts_with("Window part") && notes.lines[0].contains("exporting the next part"));
    assert_eq!(notes.fail_point, Some("window-processed"));
}

/// A window with two payloads: the first claimed for a POST by this tick (its lease running), the second
/// `second` (running, or waiting).
fn claimed(now: chrono::DateTime<chrono::Utc>, second: ImportStatus) -> (Snapshot, Facts) {
    let mut cursor = Cursor::new();
    cursor.next_job = 1;
    let mut job = Job::planned(0, now - TimeDelta::days(1), now - TimeDelta::hours(1), "");
    job.attempt = 1;
    job.export_status = ExportStatus::Completed;
    job.export_id = "5".into();
    job.payloads = 2;
    let mut first = Payload::new(0, 1, 1, "import_payload_1.json".into());
    first.status = ImportStatus::Posting;
    first.attempt = 1;
    first.lease_until = Some(now + TimeDelta::minutes(2));
    let mut other = Payload::new(0, 1, 2, "import_payload_2.json".into());
    other.status = second;
    let mut facts = Facts::default();
    facts
        .claimed
        .insert(crate::engine::core::Claim::Post(PostKey::of(&first)));
    let snapshot = Snapshot {
        cursor,
        jobs: vec![job],
        payloads: vec![first, other],
    };
    (snapshot, facts)
}

/// After claiming a POST, the tick reads the state again before posting; a claim beyond
/// `AZURE_PayloadCount` (counting the running imports) is given back (its lease already ended, so it is
/// claimed again later), and within it the POST goes out; its answer is recorded once.
#[test]
fn a_claimed_post_is_reloaded_then_given_back_over_the_cap_or_posted_and_answered_once() {
    let settings = crate::engine::sim::settings(&[("AZURE_PayloadCount", "1")]);
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc::now();
    let ctx = import_ctx(&settings, &timing, now);
    let (snapshot, mut facts) = claimed(now, ImportStatus::Running);
    let key = PostKey::of(&snapshot.payloads[0]);
    assert!(matches!(
        post_payloads(&ctx, &snapshot, &facts),
        Some(Action::Reload { .. })
    ));
    facts.marks.insert(Mark::Reloaded(key));
    // The other payload runs: one slot, taken.
    let Some(Action::Write {
        write: Write::Payload(given_back),
        notes,
    }) = post_payloads(&ctx, &snapshot, &facts)
    else {
        panic!("given back")
    };
    assert_eq!(given_back.lease_until, Some(now - TimeDelta::milliseconds(1)));
    assert_eq!(notes.mark, Some(Mark::PostHandled(key)));
    // The other payload waits: the slot is this claim's.
    let (snapshot, mut facts) = claimed(now, ImportStatus::NotStarted);
    facts.marks.insert(Mark::Reloaded(key));
    assert!(matches!(
        post_payloads(&ctx, &snapshot, &facts),
        Some(Action::Post { .. })
    ));
    facts.posts.insert(
        key,
        crate::engine::core::PostAnswer::Answer(crate::engine::core::rules::Answer::Accepted {
            status_url: "https://destination/_operations/import/9".into(),
        }),
    );
    let Some(Action::Write {
        write: Write::Payload(started),
        ..
    }) = post_payloads(&ctx, &snapshot, &facts)
    else {
        panic!("the answer recorded")
    };
    assert_eq!(started.status, ImportStatus::Started);
    facts.marks.insert(Mark::PostHandled(key));
    assert!(
        !matches!(post_payloads(&ctx, &snapshot, &facts), Some(Action::Write { write: Write::Payload(p), .. }) if p.index == 1)
    );
}

/// No new POST is claimed while the retry latch holds, or in the pause window unless the last import may go on,
/// nor for a failed import out of attempts or whose same-millisecond refusal is not examined yet.
#[test]
fn no_new_post_while_latched_or_paused() {
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc::now();
    // A failed import with attempts left: due for a new POST.
    let waiting = |snapshot: &mut Snapshot| {
        snapshot.payloads[0].status = ImportStatus::Failed;
        snapshot.payloads[0].failure_reason = "import failed with HTTP 500".into();
        snapshot.payloads[0].lease_until = None;
    };
    let mut latched = crate::engine::sim::settings(&[
        ("AZURE_MaxExportRetriesEnabled", "true"),
        ("AZURE_MaxExportRetries", "1"),
    ]);
    let (mut snapshot, facts) = claimed(now, ImportStatus::NotStarted);
    waiting(&mut snapshot);
    let claims = |settings: &crate::config::MigrationSettings, snapshot: &Snapshot| {
        matches!(
            post_payloads(&import_ctx(settings, &timing, now), snapshot, &Facts::default()),
            Some(Action::Write { write: Write::Payload(p), .. }) if p.status == ImportStatus::Posting
        )
    };
    assert!(claims(&latched, &snapshot), "not latched yet");
    snapshot.cursor.failures = 1;
    assert!(!claims(&latched, &snapshot), "latched");
    snapshot.cursor.failures = 0;
    latched.pause = Some(crate::config::PauseWindow {
        start_hour: 0,
        end_hour: 24,
    });
    assert!(!claims(&latched, &snapshot), "paused");
    latched.continue_last_import_during_pause = true;
    assert!(claims(&latched, &snapshot), "paused, but the last import may go on");
    drop(facts);

    // A failed import is posted again only with attempts left, and not before its capacity refusal is examined.
    let settings = crate::engine::sim::settings(&[("AZURE_MaxImportRetries", "3")]);
    snapshot.payloads[0].attempt = 3;
    assert!(!claims(&settings, &snapshot), "out of attempts");
    snapshot.payloads[0].attempt = 2;
    assert!(claims(&settings, &snapshot), "an attempt left");
    // The claim is a new attempt with a new definition, held for the lease.
    let Some(Action::Write {
        write: Write::Payload(p),
        ..
    }) = post_payloads(&import_ctx(&settings, &timing, now), &snapshot, &Facts::default())
    else {
        panic!("a claim")
    };
    assert_eq!((p.attempt, p.lease_until), (3, Some(now + timing.lease)));
    assert!(p.post_token.ends_with("-0-1-1-3"), "{}", p.post_token);
    snapshot.payloads[0].failure_reason = "import failed with HTTP 400: Unable to generate internal IDs. If the lastUpdated meta element is provided as input, reduce the number of resources with the same up to millisecond lastUpdated below 10,000.".into();
    assert!(!claims(&settings, &snapshot), "its capacity refusal is examined first");
}

/// A POST's answer: a refusal fails the payload, with a failure counted and an `Import` event saying why; a
/// deferral (429, 503, no answer) counts the deferrals in a row, and every sixth is reported as a failure.
#[test]
fn a_refused_post_fails_with_its_event_and_every_sixth_deferral_is_reported() {
    use crate::engine::core::PostAnswer;
    use crate::engine::core::rules::Answer;
    let settings = crate::engine::sim::settings(&[]);
    let timing = crate::engine::Timing::default();
    let now = chrono::Utc::now();
    let ctx = import_ctx(&settings, &timing, now);
    let answered = |deferrals: i64, status: u16| {
        let (mut snapshot, mut facts) = claimed(now, ImportStatus::NotStarted);
        snapshot.payloads[0].deferrals = deferrals;
        let key = PostKey::of(&snapshot.payloads[0]);
        facts.marks.insert(Mark::Reloaded(key));
        facts.posts.insert(
            key,
            PostAnswer::Answer(Answer::Refused {
                status,
                diagnostics: "no".into(),
                retry_after: None,
            }),
        );
        let Some(Action::Write {
            write: Write::Payload(p),
            notes,
        }) = post_payloads(&ctx, &snapshot, &facts)
        else {
            panic!("the answer recorded")
        };
        (p, notes)
    };
    let (p, notes) = answered(0, 400);
    assert_eq!(p.status, ImportStatus::Failed);
    assert!(notes.count_failure);
    let event = notes
        .events
        .iter()
        .find(|e| e.name == "Import")
        .expect("an Import event");
    assert_eq!(event.get("ImportStatus"), Some("Failed"));
    assert!(
        event.get("FailureReason").is_some_and(|r| r.contains("HTTP 400")),
        "{event:?}"
    );
    for (before, after, reported) in [(0, 1, false), (2, 3, false), (5, 0, true)] {
        let (p, notes) = answered(before, 429);
        assert_eq!((p.deferrals, notes.count_failure), (after, reported), "after {before}");
    }
}
