//! The failure ledger's own code in the simulator's loop: an operator's retry and acceptance (issue 23). The
//! automatic retry of lines refused as in the future runs in every stormy schedule (`tests.rs`).

use super::tests::seeds;
use super::world::{Faults, Version};
use super::{Sim, settings};
use crate::engine::failures::Selection;
use crate::engine::failures::ports::Work;
use crate::ledger::{Entry, Kind, State};

fn key(v: &Version) -> String {
    Entry::key_of(v.resource_type(), &format!("r{}", v.resource), &v.version.to_string())
}

/// Versions the destination refuses as conflicts (an operator wrote other versions on their milliseconds
/// there) are open in the ledger at the end of the migration. The operator removes the cause of two and retries
/// them: the ledger's retry import brings them and settles them as resolved. Two retried without a fix fail
/// again and are open with the server's reason. Two accepted with a reason are named as accepted. Crashes and
/// two shells run throughout, and every schedule's final checks hold.
#[test]
fn an_operator_retries_fixed_conflicts_and_accepts_the_rest() {
    for seed in seeds(20) {
        let mut sim = Sim::new(seed, settings(&[]), 40, 0, Faults::default());
        sim.crash_rate = 10;
        sim.two_shells = seed % 2 == 1;
        // Six resources' current versions, each with another version on its millisecond at the destination.
        let chosen = sim.world().clash(6);
        assert_eq!(chosen.len(), 6, "seed {seed}");
        sim.run(0, 3_000).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for v in &chosen {
            let w = sim.world();
            let e = w
                .ledger_entry(v)
                .unwrap_or_else(|| panic!("seed {seed}: {v:?} not in the ledger"));
            assert_eq!((e.kind, e.state), (Kind::Conflict, State::Open), "seed {seed}: {e:?}");
            assert!(!w.destination.contains(v));
        }
        let (fixed, rest) = chosen.split_at(2);
        let (unfixed, accepted) = rest.split_at(2);
        {
            let mut w = sim.world();
            for v in fixed {
                let other = Version {
                    version: v.version + 100,
                    ..*v
                };
                w.destination.remove(&other);
                w.foreign.remove(&other);
            }
        }
        // The operator's two requests run interleaved with the timers' ticks at every call, each under a crash
        // plan of its own (a command killed half way is run again), with the storage faults of a stormy day.
        sim.world().faults = Faults {
            table_unavailable: 2,
            table_timeout: 2,
            ..Faults::default()
        };
        let retry: Vec<String> = fixed.iter().chain(unfixed).map(key).collect();
        let accept: Vec<String> = accepted.iter().map(key).collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        for _ in 0..200 {
            let step = done.load(std::sync::atomic::Ordering::SeqCst);
            if step == 2 {
                break;
            }
            let (retry, accept, done) = (retry.clone(), accept.clone(), done.clone());
            sim.round_with(Some(Box::new(move |p| {
                Box::pin(async move {
                    let now = p.world().now;
                    // A command run again after a crash names what it has not done yet (the operator reads
                    // `failures` first): what is queued, settled or accepted already is left out.
                    let (retry, accept): (Vec<String>, Vec<String>) = {
                        let w = p.world();
                        let state = |k: &String| w.ledger.get(k).map(|(e, _)| e.state);
                        (
                            retry.into_iter().filter(|k| state(k) == Some(State::Open)).collect(),
                            accept.into_iter().filter(|k| state(k) == Some(State::Open)).collect(),
                        )
                    };
                    let ok = if step == 0 && retry.is_empty() || step == 1 && accept.is_empty() {
                        true
                    } else if step == 0 {
                        Work(p).retry_failures(&Selection::Keys(retry), now).await.is_ok()
                    } else {
                        Work(p)
                            .accept_failures(&Selection::Keys(accept), "test: records of our own")
                            .await
                            .is_ok()
                    };
                    if ok {
                        done.store(step + 1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })));
        }
        assert_eq!(
            done.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "seed {seed}: the requests never went through"
        );
        sim.run(0, 3_000).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let w = sim.world();
        for v in fixed {
            let e = w.ledger_entry(v).expect("kept");
            assert_eq!(e.state, State::Resolved, "seed {seed}: {e:?}");
            assert!(w.destination.contains(v), "seed {seed}: {v:?} resolved but not there");
        }
        for v in unfixed {
            let e = w.ledger_entry(v).expect("kept");
            assert_eq!((e.kind, e.state), (Kind::Conflict, State::Open), "seed {seed}: {e:?}");
            // Refused again by the server's rule (two instances racing on a retry file may add a round first).
            assert!(
                e.attempts >= 2 && e.message.contains("version conflict"),
                "seed {seed}: {e:?}"
            );
            assert!(!w.destination.contains(v));
        }
        for v in accepted {
            let e = w.ledger_entry(v).expect("kept");
            assert_eq!(e.state, State::Accepted, "seed {seed}: {e:?}");
            assert!(e.resolution.contains("records of our own"), "seed {seed}: {e:?}");
        }
    }
}

/// A refusal no retry can cure (the destination's clock a month behind: every version is "in the future") is
/// retried on its own a bounded number of times, then shown as open with its last reason: the schedule ends
/// with every version named, nothing still waiting and no job left running.
#[test]
fn retries_that_never_succeed_end_open_with_their_reason() {
    for seed in seeds(5) {
        let mut sim = Sim::new(seed, settings(&[]), 20, 0, Faults::default());
        sim.world().destination_behind = chrono::TimeDelta::days(30);
        sim.crash_rate = 10;
        sim.two_shells = seed % 2 == 1;
        sim.run(0, 5_000).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let w = sim.world();
        assert!(w.destination.is_empty(), "seed {seed}");
        for v in &w.source {
            let e = w
                .ledger_entry(v)
                .unwrap_or_else(|| panic!("seed {seed}: {v:?} not in the ledger"));
            assert_eq!((e.kind, e.state), (Kind::Future, State::Open), "seed {seed}: {e:?}");
            // The last reason is the destination's refusal, or (two instances racing on one retry file) the
            // input's ETag the other one's write changed.
            assert!(
                e.message.starts_with("gave up after 30 retries")
                    && (e.message.contains("cannot be in the future") || e.message.contains("Etag not match")),
                "seed {seed}: {e:?}"
            );
            assert_eq!(e.attempts, 31, "seed {seed}: {e:?}");
        }
    }
}

/// The same version refused again in a later import's error file is one more attempt on its entry, with the
/// newer reason, even when the entry was resolved meanwhile: a version the destination lost and refuses again is
/// open again, never left resolved. The same error file read again (a replay) changes nothing.
#[test]
fn a_version_refused_again_in_a_new_error_file_updates_its_entry() {
    use crate::fhir::wire::ImportErrorFile;
    let sim = Sim::new(1, settings(&[]), 4, 0, Faults::default());
    let v = sim.world().source[0];
    let input = "https://exports/0/Patient-0.ndjson".to_string();
    let line = |text: &str| {
        serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
            "details": { "text": text },
            "diagnostics": "Failed to process resource at line: 1 with stream start offset: 0" }] })
        .to_string()
    };
    let file = |name: &str, text: &str| {
        let url = format!("https://errors/{name}.ndjson");
        sim.world().error_texts.insert(url.clone(), line(text) + "\n");
        ImportErrorFile {
            resource_type: Some(v.resource_type().into()),
            count: 1,
            input_url: Some(input.clone()),
            url,
        }
    };
    sim.world().files.insert(input.clone(), vec![v]);
    let ports = sim.operator();
    let now = sim.world().now;
    let record = |f: &ImportErrorFile, now| {
        futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(f), now)).expect("recorded")
    };
    let first = file(
        "a",
        "Failed to import resource with version conflict, resource id: r0, line: 1",
    );
    record(&first, now);
    record(&first, now);
    let e = sim.world().ledger_entry(&v).cloned().expect("recorded");
    assert_eq!((e.kind, e.state, e.attempts), (Kind::Conflict, State::Open, 1), "{e:?}");
    // Resolved meanwhile (say an operator's retry brought it), then refused again in a new file.
    {
        let mut w = sim.world();
        let (row, _) = w.ledger.get_mut(&key(&v)).expect("kept");
        row.state = State::Resolved;
        row.resolution = "imported on retry".into();
    }
    let second = file("b", "Failed to import duplicate resource, resource id: r0, line: 1");
    let later = now + chrono::TimeDelta::hours(2);
    record(&second, later);
    let e = sim.world().ledger_entry(&v).cloned().expect("kept");
    assert_eq!(
        (e.kind, e.state, e.attempts),
        (Kind::Duplicate, State::Open, 2),
        "{e:?}"
    );
    // The entry keeps when the version was first refused, and says when it was last.
    assert_eq!((e.first_seen, e.last_seen), (now, later), "{e:?}");
    assert_eq!(e.error_file, second.url);
    assert!(e.message.contains("duplicate resource"), "{e:?}");
}

/// An error-file line in the server's format, about line 1 of a unit at offset 0.
fn refusal(text: &str) -> String {
    serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
        "details": { "text": text },
        "diagnostics": "Failed to process resource at line: 1 with stream start offset: 0" }] })
    .to_string()
}

/// A world with one source version, the export file holding it at `input`, and the error file `name` of an
/// import the server counted `count` failed lines in (its text is the test's to write).
fn one_version_and_error_file(name: &str, count: u64) -> (Sim, Version, String, crate::fhir::wire::ImportErrorFile) {
    let sim = Sim::new(1, settings(&[]), 4, 0, Faults::default());
    let v = sim.world().source[0];
    let input = "https://exports/0/Patient-0.ndjson".to_string();
    let file = crate::fhir::wire::ImportErrorFile {
        resource_type: Some(v.resource_type().into()),
        count,
        input_url: Some(input.clone()),
        url: format!("https://errors/{name}.ndjson"),
    };
    (sim, v, input, file)
}

/// An error file holding fewer lines than the server counted: the lines it holds are named, and the rest are one
/// shortfall entry counting them (and how many lines the file held), never dropped.
#[test]
fn an_error_file_short_of_the_servers_count_records_the_difference() {
    let (sim, v, input, file) = one_version_and_error_file("short", 3);
    {
        let mut w = sim.world();
        w.files.insert(input, vec![v]);
        w.error_texts.insert(
            file.url.clone(),
            refusal("Failed to import resource with version conflict, resource id: r0, line: 1") + "\n",
        );
    }
    let ports = sim.operator();
    let now = sim.world().now;
    let summary = futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now))
        .expect("recorded");
    // Two entries: the named line and the shortfall.
    assert_eq!(summary.permanent, 2, "{summary:?}");
    let w = sim.world();
    let named = w.ledger_entry(&v).expect("the line the file holds");
    assert_eq!((named.kind, named.state), (Kind::Conflict, State::Open));
    let short: Vec<&Entry> = w
        .ledger
        .values()
        .map(|(e, _)| e)
        .filter(|e| e.unnamed_lines > 0)
        .collect();
    assert_eq!(short.len(), 1, "{short:?}");
    assert_eq!(
        (short[0].unnamed_lines, short[0].line, short[0].kind),
        (2, 1, Kind::Unreadable)
    );
    assert_eq!(short[0].state, State::Open);
}

/// A SearchParameter the destination refused to import is benign once the destination holds it (the tool's
/// sync copies them through the REST API), and waits five minutes for the sync otherwise.
#[test]
fn a_refused_search_parameter_is_benign_once_the_destination_holds_it() {
    use crate::fhir::wire::ImportErrorFile;
    let sim = Sim::new(1, settings(&[]), 4, 0, Faults::default());
    let now = sim.world().now;
    let ports = sim.operator();
    for (id, held) in [("sp-held", true), ("sp-missing", false)] {
        let input = format!("https://exports/0/SearchParameter-{id}.ndjson");
        let file = ImportErrorFile {
            resource_type: Some("SearchParameter".into()),
            count: 1,
            input_url: Some(input.clone()),
            url: format!("https://errors/{id}.ndjson"),
        };
        {
            let mut w = sim.world();
            let line = serde_json::json!({ "resourceType": "SearchParameter", "id": id,
                "meta": { "versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z" } });
            w.error_texts.insert(input, line.to_string() + "\n");
            w.error_texts.insert(
                file.url.clone(),
                refusal("SearchParameter resources cannot be processed by import.") + "\n",
            );
            if held {
                w.search_parameters.insert(id.to_string());
            }
        }
        futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now))
            .expect("recorded");
        let w = sim.world();
        let (e, _) = &w.ledger[&Entry::key_of("SearchParameter", id, "1")];
        assert_eq!(e.kind, Kind::SearchParameter);
        if held {
            assert_eq!(
                (e.class, e.state),
                (crate::ledger::Class::Benign, State::Resolved),
                "{e:?}"
            );
            assert!(e.resolution.contains("copied through the REST API"), "{e:?}");
        } else {
            assert_eq!(
                (e.class, e.state),
                (crate::ledger::Class::Transient, State::Retrying),
                "{e:?}"
            );
            assert_eq!(e.next_attempt, Some(now + chrono::TimeDelta::minutes(5)), "{e:?}");
            assert!(e.resolution.is_empty(), "{e:?}");
        }
    }
}

/// A duplicate or conflict whose identical version (same lastUpdated, same content) the destination already
/// holds is benign: resolved, saying so. One whose version the destination does not hold is open.
#[test]
fn a_refused_line_whose_identical_version_is_at_the_destination_is_benign() {
    use crate::fhir::wire::ImportErrorFile;
    let sim = Sim::new(1, settings(&[]), 6, 0, Faults::default());
    let (there, missing) = {
        let w = sim.world();
        (w.source[0], w.source[1])
    };
    sim.world().destination.insert(there);
    let ports = sim.operator();
    let now = sim.world().now;
    for (k, v) in [there, missing].into_iter().enumerate() {
        let input = format!("https://exports/0/{}-{k}.ndjson", v.resource_type());
        let file = ImportErrorFile {
            resource_type: Some(v.resource_type().into()),
            count: 1,
            input_url: Some(input.clone()),
            url: format!("https://errors/dup-{k}.ndjson"),
        };
        {
            let mut w = sim.world();
            w.files.insert(input, vec![v]);
            let text = format!(
                "Failed to import duplicate resource, resource id: r{}, line: 1",
                v.resource
            );
            w.error_texts.insert(file.url.clone(), refusal(&text) + "\n");
        }
        futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now))
            .expect("recorded");
    }
    let w = sim.world();
    let e = w.ledger_entry(&there).expect("recorded");
    assert_eq!(
        (e.kind, e.class, e.state),
        (Kind::Duplicate, crate::ledger::Class::Benign, State::Resolved)
    );
    assert!(
        e.resolution.contains("identical version is already at the destination"),
        "{e:?}"
    );
    let e = w.ledger_entry(&missing).expect("recorded");
    assert_eq!(
        (e.kind, e.class, e.state),
        (Kind::Duplicate, crate::ledger::Class::Permanent, State::Open)
    );
    assert!(e.resolution.is_empty(), "{e:?}");
}

/// A blob read that fails (storage busy or unreachable) fails the recording, as a destination that cannot be
/// asked does: nothing is written, the import's completion waits for the next tick, and its window cannot commit
/// before its refusals are named. An error file that is not there to read is an open entry at once. An operator's
/// retry of it during an outage waits within the bound every automatic retry has, and once storage answers the
/// file's lines are recorded one by one.
#[test]
fn a_failed_read_holds_the_recording_and_an_unread_file_waits_within_the_retry_bound() {
    let (sim, v, input, file) = one_version_and_error_file("late", 1);
    let text = refusal("Failed to import resource with version conflict, resource id: r0, line: 1") + "\n";
    sim.world().files.insert(input, vec![v]);
    let ports = sim.operator();
    let mut now = sim.world().now;
    let record = |now| futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now));
    let tick = |now| futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");

    // Storage fails every read: the recording fails and writes nothing.
    sim.world().error_texts.insert(file.url.clone(), text.clone());
    sim.world().faults.blob_unavailable = 100;
    let failed = record(now).expect_err("a failed read fails the recording");
    assert!(failed.to_string().contains(super::ports::INJECTED), "{failed}");
    assert!(sim.world().ledger.is_empty());

    // The file is not there: an open entry counting its lines, at once.
    sim.world().faults.blob_unavailable = 0;
    sim.world().error_texts.remove(&file.url);
    record(now).expect("recorded");
    let placeholder = {
        let w = sim.world();
        let entries: Vec<&Entry> = w.ledger.values().map(|(e, _)| e).collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(
            (entries[0].kind, entries[0].state, entries[0].unnamed_lines),
            (Kind::Unreadable, State::Open, 1)
        );
        entries[0].key.clone()
    };

    // The file is back, but storage is down: the operator's retry waits, a little longer each time, and gives up
    // after the bound with the last reason.
    sim.world().error_texts.insert(file.url.clone(), text);
    sim.world().faults.blob_unavailable = 100;
    futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(vec![placeholder.clone()]), now))
        .expect("retry asked");
    let mut waits = Vec::new();
    for _ in 0..40 {
        tick(now);
        let e = sim.world().ledger[&placeholder].0.clone();
        if e.state == State::Open {
            assert!(e.message.starts_with("gave up after 30 retries"), "{e:?}");
            assert!(e.message.contains("could not be read yet"), "{e:?}");
            break;
        }
        assert_eq!(e.state, State::Retrying, "{e:?}");
        let next = e.next_attempt.expect("a retry time");
        waits.push((next - now).num_minutes());
        now = next;
    }
    // The operator's retry counts as the first attempt: 29 waits, and the 30th failed read gives up.
    assert_eq!(waits.len(), 29, "{waits:?}");
    assert!(
        waits.windows(2).all(|w| w[0] <= w[1]) && waits[0] >= 5 && *waits.last().unwrap() <= 60,
        "{waits:?}"
    );
    assert!(sim.world().ledger_entry(&v).is_none());

    // Storage answers again: a retry reads the file, names its line and resolves the placeholder.
    sim.world().faults.blob_unavailable = 0;
    futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(vec![placeholder.clone()]), now))
        .expect("retry asked");
    tick(now);
    let w = sim.world();
    assert_eq!(w.ledger[&placeholder].0.state, State::Resolved);
    let named = w.ledger_entry(&v).expect("the file's line, named");
    assert_eq!((named.kind, named.state), (Kind::Conflict, State::Open));
}

/// A refused line that is a soft deletion (the export's deleted-state marker) is benign only when the destination
/// holds that version deleted (a read answers 410 Gone); held as a live version, or not held, it is open.
#[test]
fn a_refused_soft_deletion_is_benign_only_when_the_destination_holds_it_deleted() {
    use crate::fhir::wire::ImportErrorFile;
    let sim = Sim::new(1, settings(&[]), 6, 0, Faults::default());
    let (gone, live, missing) = {
        let w = sim.world();
        (w.source[0], w.source[1], w.source[2])
    };
    {
        let mut w = sim.world();
        w.destination.insert(gone);
        w.deleted.insert(gone);
        w.destination.insert(live);
    }
    let ports = sim.operator();
    let now = sim.world().now;
    for (k, v) in [gone, live, missing].into_iter().enumerate() {
        let input = format!("https://exports/0/deleted-{k}.ndjson");
        let file = ImportErrorFile {
            resource_type: Some(v.resource_type().into()),
            count: 1,
            input_url: Some(input.clone()),
            url: format!("https://errors/deleted-{k}.ndjson"),
        };
        let at = chrono::DateTime::from_timestamp_millis(v.at_ms).expect("an instant");
        let line = serde_json::json!({ "resourceType": v.resource_type(), "id": format!("r{}", v.resource),
            "meta": { "versionId": v.version.to_string(),
                "lastUpdated": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "extension": [{ "url": "http://azurehealthcareapis.com/data-extensions/deleted-state",
                    "valueString": "soft-deleted" }] } });
        {
            let mut w = sim.world();
            w.error_texts.insert(input, line.to_string() + "\n");
            let text = format!(
                "Failed to import duplicate resource, resource id: r{}, line: 1",
                v.resource
            );
            w.error_texts.insert(file.url.clone(), refusal(&text) + "\n");
        }
        futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now))
            .expect("recorded");
    }
    let w = sim.world();
    let class = |v: &Version| {
        let e = w.ledger_entry(v).expect("recorded");
        (e.kind, e.class, e.state)
    };
    use crate::ledger::Class;
    assert_eq!(class(&gone), (Kind::Duplicate, Class::Benign, State::Resolved));
    assert_eq!(class(&live), (Kind::Duplicate, Class::Permanent, State::Open));
    assert_eq!(class(&missing), (Kind::Duplicate, Class::Permanent, State::Open));
}

/// The export file an error file is about is read before anything is recorded: when that read fails, the
/// recording fails (done again later); when the file is not there, the lines are one open entry counting them and
/// naming the file (by position alone they could never be accepted or checked at the destination); once it
/// can be read, a retry names each line's version.
#[test]
fn an_error_file_is_recorded_only_with_the_export_file_it_is_about() {
    let (sim, v, input, file) = one_version_and_error_file("about", 1);
    sim.world().error_texts.insert(
        file.url.clone(),
        refusal("Failed to import resource with version conflict, resource id: r0, line: 1") + "\n",
    );
    let ports = sim.operator();
    let now = sim.world().now;
    let record = || futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now));

    // The export file's read fails: nothing is recorded.
    sim.world().files.insert(input.clone(), vec![v]);
    sim.world().failing_reads.insert(input.clone());
    assert!(record().is_err());
    assert!(sim.world().ledger.is_empty());

    // The export file is not there: one open entry counting the line and naming the file.
    sim.world().failing_reads.clear();
    sim.world().files.remove(&input);
    record().expect("recorded");
    let placeholder = {
        let w = sim.world();
        let entries: Vec<&Entry> = w.ledger.values().map(|(e, _)| e).collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let e = entries[0];
        assert_eq!(
            (e.kind, e.state, e.unnamed_lines),
            (Kind::Unreadable, State::Open, 1),
            "{e:?}"
        );
        assert!(e.message.contains("the export file Patient-0.ndjson"), "{e:?}");
        assert_eq!(e.input_file, input);
        e.key.clone()
    };

    // The file is back: a retry names the version.
    sim.world().files.insert(input, vec![v]);
    futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(vec![placeholder.clone()]), now))
        .expect("retry asked");
    futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
    let w = sim.world();
    assert_eq!(w.ledger[&placeholder].0.state, State::Resolved);
    let named = w.ledger_entry(&v).expect("named by version");
    assert_eq!((named.kind, named.state), (Kind::Conflict, State::Open));
}

/// A finished retry import's error files are read before its versions are settled: a read that may pass leaves
/// the retry in flight (its entries keep their kind) until the files can be read, and then the entry takes the
/// server's new reason. Past the job timeout, it is settled by what the destination holds alone.
#[test]
fn a_retry_is_settled_only_once_its_error_files_are_read_or_past_the_job_timeout() {
    for overdue in [false, true] {
        let (sim, v, input, file) = one_version_and_error_file("first", 1);
        sim.world().files.insert(input, vec![v]);
        sim.world().error_texts.insert(
            file.url.clone(),
            refusal("Failed to import duplicate resource, resource id: r0, line: 1") + "\n",
        );
        let ports = sim.operator();
        let now = sim.world().now;
        let tick = |now| futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
        futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now))
            .expect("recorded");
        assert_eq!(sim.world().ledger_entry(&v).map(|e| e.kind), Some(Kind::Duplicate));
        // Another writer's version on its millisecond: the retry is refused as a conflict.
        sim.world().destination.insert(Version {
            version: v.version + 100,
            ..v
        });
        futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(vec![key(&v)]), now))
            .expect("retry asked");
        tick(now);
        let posted = sim.world().ledger_entry(&v).cloned().expect("kept");
        assert!(
            !posted.retry_import.is_empty(),
            "a retry import is in flight: {posted:?}"
        );
        // Its error file cannot be read for now.
        sim.world().faults.blob_unavailable = 100;
        let mut said = Vec::new();
        for _ in 0..20 {
            said = tick(now);
            if said.iter().any(|l| l.contains("could not be read yet")) {
                break;
            }
        }
        assert!(said.iter().any(|l| l.contains("could not be read yet")), "{said:?}");
        let waiting = sim.world().ledger_entry(&v).cloned().expect("kept");
        assert_eq!(
            (waiting.kind, waiting.state, &waiting.retry_import),
            (Kind::Duplicate, State::Retrying, &posted.retry_import),
            "settled on nothing: {waiting:?}"
        );
        let settled = if overdue {
            tick(now + settings(&[]).job_timeout + chrono::TimeDelta::minutes(1));
            sim.world().ledger_entry(&v).cloned().expect("kept")
        } else {
            sim.world().faults.blob_unavailable = 0;
            tick(now);
            sim.world().ledger_entry(&v).cloned().expect("kept")
        };
        assert!(
            settled.retry_import.is_empty() && settled.state == State::Open,
            "{settled:?}"
        );
        if overdue {
            // Nothing read: the entry keeps the reason it had.
            assert_eq!(settled.kind, Kind::Duplicate, "{settled:?}");
        } else {
            assert_eq!(settled.kind, Kind::Conflict, "{settled:?}");
            assert!(settled.message.contains("version conflict"), "{settled:?}");
        }
    }
}
