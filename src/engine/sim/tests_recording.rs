//! Recording a finished import's refused lines with the ledger's own code in the simulator's world: a version
//! refused again, an error file short of the server's count, one that cannot be read yet, and the refusals that
//! are benign only when the destination holds what was refused (issue 23).

use super::tests_ledger::{key, one_version_and_error_file, refusal};
use super::world::{Faults, Version};
use super::{Sim, settings};
use crate::engine::failures::Selection;
use crate::engine::failures::ports::Work;
use crate::ledger::{Entry, Kind, State};

/// The same version refused again in a later import's error file is one more attempt on its entry, with the
/// newer reason, even when the entry was resolved meanwhile: a version the destination lost and refuses again is
/// open again, never left resolved, while an accepted one stays accepted. The same error file read again (a
/// replay, or an entry written again from it after a crash) changes nothing.
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
    // A crash after the entry was written but before its file was marked read: the file is read again on a
    // later tick, and the entry written again from it changes nothing.
    let replay = now + chrono::TimeDelta::minutes(5);
    let again = futures::executor::block_on(Work(&ports).upsert(e.clone(), replay)).expect("written");
    assert_eq!((again.attempts, again.last_seen), (1, now), "{again:?}");
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
    // An operator's acceptance stands when the version is refused again: one more attempt, the newer reason,
    // still accepted with the operator's words.
    futures::executor::block_on(Work(&ports).accept_failures(&Selection::Keys(vec![key(&v)]), "a test record"))
        .expect("accepted");
    let third = file(
        "c",
        "Failed to import resource with version conflict, resource id: r0, line: 1",
    );
    record(&third, later + chrono::TimeDelta::hours(1));
    let e = sim.world().ledger_entry(&v).cloned().expect("kept");
    assert_eq!(
        (e.kind, e.state, e.attempts, e.resolution.as_str()),
        (Kind::Conflict, State::Accepted, 3, "accepted: a test record"),
        "{e:?}"
    );
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

/// A shortfall read again stays open, one attempt more each time, while its error file cannot be read or still
/// holds fewer lines than the server counted; once the file holds them all, every line is named (those the
/// export file does not hold by their place, with the file's resource type) and the shortfall is resolved.
#[test]
fn a_shortfall_read_again_stays_open_until_its_file_names_every_line() {
    let (sim, v, input, file) = one_version_and_error_file("short-again", 3);
    let conflict = |line: u64| {
        serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
            "details": { "text": "Failed to import resource with version conflict, resource id: r0, line: 1" },
            "diagnostics": format!("Failed to process resource at line: {line} with stream start offset: 0") }] })
        .to_string()
            + "\n"
    };
    {
        let mut w = sim.world();
        w.files.insert(input, vec![v]);
        w.error_texts.insert(file.url.clone(), conflict(1));
    }
    let ports = sim.operator();
    let now = sim.world().now;
    futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(&file), now)).expect("recorded");
    let short = |w: &super::world::World| {
        w.ledger
            .values()
            .map(|(e, _)| e.clone())
            .find(|e| e.unnamed_lines > 0)
            .expect("the shortfall")
    };
    let read_again = |text: Option<String>| {
        let key = short(&sim.world()).key;
        match text {
            Some(t) => sim.world().error_texts.insert(file.url.clone(), t),
            None => sim.world().error_texts.remove(&file.url),
        };
        futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(vec![key]), now))
            .expect("retry asked");
        let said = futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
        (short(&sim.world()), said)
    };
    // The operator's retry is attempt 1; each read that cannot name the lines, one more.
    let (after, said) = read_again(None);
    assert!(said.iter().any(|l| l.contains("is still not readable")), "{said:?}");
    assert_eq!((after.state, after.attempts), (State::Open, 2), "{after:?}");
    let (after, said) = read_again(Some(conflict(1) + &conflict(2)));
    assert!(
        said.iter()
            .any(|l| l.contains("still lacks 2 failed line(s) the server counted (it holds 2)")),
        "{said:?}"
    );
    assert_eq!((after.state, after.attempts), (State::Open, 2), "{after:?}");
    let (after, said) = read_again(Some(conflict(1) + &conflict(2) + &conflict(3)));
    assert!(said.iter().any(|l| l.contains("read the error file")), "{said:?}");
    assert_eq!(after.state, State::Resolved, "{after:?}");
    let w = sim.world();
    let by_place: Vec<&Entry> = w
        .ledger
        .values()
        .map(|(e, _)| e)
        .filter(|e| e.id.is_empty() && e.unnamed_lines == 0)
        .collect();
    assert_eq!(by_place.len(), 2, "{by_place:?}");
    assert!(
        by_place.iter().all(|e| e.resource_type == v.resource_type()),
        "{by_place:?}"
    );
}

/// A SearchParameter the destination refused to import is benign once the destination holds it (the tool's
/// sync copies them through the REST API), and waits five minutes for the sync otherwise; the ledger's tick then
/// looks for it at the destination, never importing it.
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
    // The ledger's tick checks whether the missing one has arrived (it is never imported): not yet, then so.
    let tick = |at| futures::executor::block_on(Work(&ports).ledger_tick(at)).expect("a tick");
    let key = Entry::key_of("SearchParameter", "sp-missing", "1");
    let said = tick(now + chrono::TimeDelta::minutes(5));
    assert!(
        said.iter().any(|l| l.contains("not at the destination yet")),
        "{said:?}"
    );
    let e = sim.world().ledger[&key].0.clone();
    assert_eq!(
        (e.state, e.retry_import.as_str(), e.attempts),
        (State::Retrying, "", 2),
        "{e:?}"
    );
    sim.world().search_parameters.insert("sp-missing".into());
    tick(now + chrono::TimeDelta::hours(1));
    let e = sim.world().ledger[&key].0.clone();
    assert_eq!((e.state, e.retry_import.as_str()), (State::Resolved, ""), "{e:?}");
}

/// A duplicate or conflict whose identical version (same lastUpdated, same content) the destination already
/// holds is benign: resolved, saying so. One whose version the destination does not hold is open, and so is one
/// it holds with other content or on another millisecond (the same version id is not the same version).
/// Records an import whose error file `file` refuses `v` (its one line) as a duplicate.
fn record_a_duplicate_refusal(
    ports: &super::SimPorts,
    file: &crate::fhir::wire::ImportErrorFile,
    v: &Version,
    now: chrono::DateTime<chrono::Utc>,
) {
    let text = format!(
        "Failed to import duplicate resource, resource id: r{}, line: 1",
        v.resource
    );
    ports
        .world
        .lock()
        .expect("the world")
        .error_texts
        .insert(file.url.clone(), refusal(&text) + "\n");
    futures::executor::block_on(Work(ports).record_failures(1, std::slice::from_ref(file), now)).expect("recorded");
}

#[test]
fn a_refused_line_whose_identical_version_is_at_the_destination_is_benign() {
    use crate::fhir::wire::ImportErrorFile;
    let sim = Sim::new(1, settings(&[]), 6, 0, Faults::default());
    let (there, missing, changed, moved) = {
        let w = sim.world();
        (w.source[0], w.source[1], w.source[2], w.source[3])
    };
    {
        let mut w = sim.world();
        w.destination.insert(there);
        w.destination.insert(changed);
        w.destination.insert(Version {
            at_ms: moved.at_ms + 1,
            ..moved
        });
    }
    let ports = sim.operator();
    let now = sim.world().now;
    for (k, v) in [there, missing, changed, moved].into_iter().enumerate() {
        let input = format!("https://exports/0/{}-{k}.ndjson", v.resource_type());
        let file = ImportErrorFile {
            resource_type: Some(v.resource_type().into()),
            count: 1,
            input_url: Some(input.clone()),
            url: format!("https://errors/dup-{k}.ndjson"),
        };
        {
            let mut w = sim.world();
            if v == changed {
                let mut line: serde_json::Value =
                    serde_json::from_slice(&super::destination::render(&[v])).expect("a rendered line");
                line["gender"] = "unknown".into();
                w.error_texts.insert(input, line.to_string() + "\n");
            } else {
                w.files.insert(input, vec![v]);
            }
        }
        record_a_duplicate_refusal(&ports, &file, &v, now);
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
    for v in [missing, changed, moved] {
        let e = w.ledger_entry(&v).expect("recorded");
        assert_eq!(
            (e.kind, e.class, e.state),
            (Kind::Duplicate, crate::ledger::Class::Permanent, State::Open),
            "{v:?}"
        );
        assert!(e.resolution.is_empty(), "{e:?}");
    }
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
    // The operator's retry counts as the first attempt: 29 waits, and the 30th failed read gives up. Each wait
    // is 5 minutes per attempt so far, at most an hour.
    let expected: Vec<i64> = (2..=30).map(|attempt: i64| 5 * attempt.min(12)).collect();
    assert_eq!(waits, expected);
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
        sim.world().error_texts.insert(input, line.to_string() + "\n");
        record_a_duplicate_refusal(&ports, &file, &v, now);
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
