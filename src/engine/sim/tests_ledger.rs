//! The failure ledger's retries with its own code in the simulator's loop (issue 23): an operator's retry and
//! acceptance, retries that never succeed, and a retry settled only once its error files are read. The automatic
//! retry of lines refused as in the future runs in every stormy schedule (`tests.rs`); recording refused lines is
//! in `tests_recording.rs`.

use super::tests::seeds;
use super::world::{Faults, Version};
use super::{Sim, settings};
use crate::engine::failures::Selection;
use crate::engine::failures::ports::Work;
use crate::ledger::{Entry, Kind, State};

/// A version's ledger key.
pub(super) fn key(v: &Version) -> String {
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

/// An error-file line in the server's format, about line 1 of a unit at offset 0.
pub(super) fn refusal(text: &str) -> String {
    serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
        "details": { "text": text },
        "diagnostics": "Failed to process resource at line: 1 with stream start offset: 0" }] })
    .to_string()
}

/// A world with one source version, the export file holding it at `input`, and the error file `name` of an
/// import the server counted `count` failed lines in (its text is the test's to write).
pub(super) fn one_version_and_error_file(
    name: &str,
    count: u64,
) -> (Sim, Version, String, crate::fhir::wire::ImportErrorFile) {
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

/// A simulator whose ledger holds one version refused with `message` in the error file `name`.
fn one_refused_version(name: &str, message: &str) -> (Sim, Version) {
    let (sim, v, input, file) = one_version_and_error_file(name, 1);
    sim.world().files.insert(input, vec![v]);
    sim.world()
        .error_texts
        .insert(file.url.clone(), refusal(message) + "\n");
    let now = sim.world().now;
    futures::executor::block_on(Work(&sim.operator()).record_failures(1, std::slice::from_ref(&file), now))
        .expect("recorded");
    (sim, v)
}

/// Another writer's version on `v`'s millisecond at the destination, so a retry of `v` is refused as a conflict.
fn another_version_on_its_millisecond(sim: &Sim, v: &Version) {
    sim.world().destination.insert(Version {
        version: v.version + 100,
        ..*v
    });
}

/// Asks a retry of `v`'s entry and ticks once, which posts the retry import; the entry as it is then.
fn retry_posted(ports: &super::SimPorts, v: &Version, now: chrono::DateTime<chrono::Utc>) -> Entry {
    futures::executor::block_on(Work(ports).retry_failures(&Selection::Keys(vec![key(v)]), now)).expect("retry asked");
    futures::executor::block_on(Work(ports).ledger_tick(now)).expect("a tick");
    let posted = ports
        .world
        .lock()
        .expect("the world")
        .ledger_entry(v)
        .cloned()
        .expect("kept");
    assert!(
        !posted.retry_import.is_empty(),
        "a retry import is in flight: {posted:?}"
    );
    posted
}

/// A finished retry import's error files are read before its versions are settled: a read that may pass leaves
/// the retry in flight (its entries keep their kind) until the files can be read, and then the entry takes the
/// server's new reason. Past the job timeout, it is settled by what the destination holds alone.
#[test]
fn a_retry_is_settled_only_once_its_error_files_are_read_or_past_the_job_timeout() {
    for overdue in [false, true] {
        let (sim, v) = one_refused_version("first", "Failed to import duplicate resource, resource id: r0, line: 1");
        let ports = sim.operator();
        let now = sim.world().now;
        let tick = |now| futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
        assert_eq!(sim.world().ledger_entry(&v).map(|e| e.kind), Some(Kind::Duplicate));
        // Another writer's version on its millisecond: the retry is refused as a conflict.
        another_version_on_its_millisecond(&sim, &v);
        let posted = retry_posted(&ports, &v, now);
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
            let said = tick(now);
            assert!(
                said.iter()
                    .any(|l| l.ends_with("ended: 0 version(s) now at the destination, 1 still failing")),
                "{said:?}"
            );
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

/// Each operator's request changes only the entries it may: an accepted entry can be reopened (open again, saying
/// what it was) or retried by its key, not accepted again; an open one cannot be reopened; a reopen names its
/// entries (never all of them at once).
#[test]
fn requests_change_only_the_entries_they_may() {
    use crate::engine::failures::RequestError;
    let (sim, v) = one_refused_version(
        "asked",
        "Failed to import resource with version conflict, resource id: r0, line: 1",
    );
    let ports = sim.operator();
    let now = sim.world().now;
    let mine = Selection::Keys(vec![key(&v)]);
    let work = Work(&ports);
    let state = || sim.world().ledger_entry(&v).cloned().expect("kept");
    assert!(matches!(
        futures::executor::block_on(work.reopen_failures(&mine)),
        Err(RequestError::NotAccepted(_))
    ));
    assert_eq!(
        futures::executor::block_on(work.accept_failures(&mine, "known gap")).expect("accepted"),
        1
    );
    assert!(matches!(
        futures::executor::block_on(work.accept_failures(&mine, "again")),
        Err(RequestError::Unknown(_))
    ));
    assert!(matches!(
        futures::executor::block_on(work.reopen_failures(&Selection::AllOpen)),
        Err(RequestError::NoIds)
    ));
    let stranger = Selection::Keys(vec!["Patient|nobody|1".into()]);
    assert!(matches!(
        futures::executor::block_on(work.reopen_failures(&stranger)),
        Err(RequestError::NotAccepted(_))
    ));
    assert_eq!(
        futures::executor::block_on(work.reopen_failures(&mine)).expect("reopened"),
        1
    );
    let e = state();
    assert_eq!(
        (e.state, e.resolution.as_str()),
        (State::Open, "reopened (was accepted: known gap)")
    );
    assert_eq!(
        futures::executor::block_on(work.accept_failures(&mine, "known gap")).expect("accepted"),
        1
    );
    assert_eq!(
        futures::executor::block_on(work.retry_failures(&mine, now)).expect("queued"),
        1
    );
    let e = state();
    assert_eq!((e.state, e.next_attempt, e.attempts), (State::Retrying, Some(now), 1));
}

/// A retry import that never finishes, or whose polls never answer, is waited on up to the job timeout (not a
/// moment less), then cancelled and its versions queued again with the reason; never polled for ever.
#[test]
fn a_retry_import_that_never_finishes_or_answers_is_given_up_after_the_job_timeout() {
    for unanswered in [false, true] {
        let (sim, v) = one_refused_version(
            "hung",
            "Failed to import resource with version conflict, resource id: r0, line: 1",
        );
        let ports = sim.operator();
        let now = sim.world().now;
        let tick = |now| futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
        futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(vec![key(&v)]), now))
            .expect("retry asked");
        sim.world().faults.import_job_hangs = 100;
        tick(now);
        let posted = sim.world().ledger_entry(&v).cloned().expect("kept");
        assert!(!posted.retry_import.is_empty(), "{posted:?}");
        if unanswered {
            sim.world().faults.poll_throttled = 100;
        }
        let timeout = settings(&[]).job_timeout;
        for at in [now + chrono::TimeDelta::minutes(1), now + timeout] {
            let said = tick(at);
            let e = sim.world().ledger_entry(&v).cloned().expect("kept");
            assert_eq!(e.retry_import, posted.retry_import, "still waited on at {at}: {said:?}");
            assert_eq!(
                said.iter().any(|l| l.contains("Could not poll")),
                unanswered,
                "{said:?}"
            );
        }
        let said = tick(now + timeout + chrono::TimeDelta::milliseconds(1));
        let e = sim.world().ledger_entry(&v).cloned().expect("kept");
        assert!(said.iter().any(|l| l.contains("past the job timeout")), "{said:?}");
        assert_eq!(
            (e.state, e.retry_import.as_str(), e.attempts),
            (State::Retrying, "", 2),
            "{e:?}"
        );
        assert!(
            e.message.contains("ran past the job timeout and was cancelled"),
            "{e:?}"
        );
        let id: usize = posted
            .retry_import
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a job id");
        assert!(sim.world().imports[id].cancelled, "the hung import is cancelled");
    }
}

/// Versions left out over the same-millisecond capacity are retried after the others, never in their import,
/// and one per (type, millisecond) at a time, so a retry adds at most one row to any crowded millisecond.
#[test]
fn versions_left_out_for_capacity_are_retried_after_the_others_one_per_millisecond() {
    let sim = Sim::new(1, settings(&[]), 6, 0, Faults::default());
    // Three versions of one type: two left out on one millisecond, one refused as a conflict.
    let (crowded_a, crowded_b, conflict) = {
        let w = sim.world();
        let patients: Vec<Version> = w
            .source
            .iter()
            .filter(|v| v.resource_type() == w.source[0].resource_type())
            .copied()
            .collect();
        (patients[0], patients[1], patients[2])
    };
    let input = "https://exports/0/crowded.ndjson".to_string();
    let now = sim.world().now;
    {
        let mut w = sim.world();
        w.files.insert(input.clone(), vec![crowded_a, crowded_b, conflict]);
        for (n, v) in [crowded_a, crowded_b, conflict].into_iter().enumerate() {
            let kind = if v == conflict {
                Kind::Conflict
            } else {
                Kind::SameMillisecond
            };
            let mut e = Entry::open(key(&v), 1, kind, "left out".into(), now);
            e.resource_type = v.resource_type().into();
            e.id = format!("r{}", v.resource);
            e.version_id = v.version.to_string();
            e.last_updated = "2026-01-01T00:00:00.001Z".into();
            e.input_file = input.clone();
            e.line = n as u64 + 1;
            e.state = State::Retrying;
            e.next_attempt = Some(now);
            let tag = w.next_etag();
            w.ledger.insert(e.key.clone(), (e, tag));
        }
    }
    let ports = sim.operator();
    let in_flight = |v: &Version| !sim.world().ledger_entry(v).expect("kept").retry_import.is_empty();
    futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
    assert_eq!(
        (in_flight(&conflict), in_flight(&crowded_a), in_flight(&crowded_b)),
        (true, false, false)
    );
    // The conflict settled (here: accepted), the two crowded ones are next, one of them at a time.
    futures::executor::block_on(Work(&ports).accept_failures(&Selection::Keys(vec![key(&conflict)]), "test"))
        .expect("accepted");
    futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
    assert_eq!(u8::from(in_flight(&crowded_a)) + u8::from(in_flight(&crowded_b)), 1);
}

/// A retry the destination takes settles its entry as resolved and says how many versions arrived. When the
/// export file is gone by then, the destination's copy of the version is the evidence; another version on its
/// millisecond (the conflict still there) is not.
#[test]
fn a_retry_that_imports_resolves_its_entry_and_counts_it() {
    for file_gone_then in [None, Some(false), Some(true)] {
        let (sim, v) = one_refused_version(
            "taken",
            "Failed to import resource with version conflict, resource id: r0, line: 1",
        );
        let ports = sim.operator();
        let now = sim.world().now;
        let tick = |now| futures::executor::block_on(Work(&ports).ledger_tick(now)).expect("a tick");
        if file_gone_then == Some(false) {
            another_version_on_its_millisecond(&sim, &v);
        }
        let posted = retry_posted(&ports, &v, now);
        if file_gone_then.is_some() {
            sim.world().files.remove(&posted.input_file);
        }
        let mut said = Vec::new();
        for _ in 0..10 {
            said = tick(now);
            if said.iter().any(|l| l.contains("a retry import ended")) {
                break;
            }
        }
        let e = sim.world().ledger_entry(&v).cloned().expect("kept");
        let resolved = file_gone_then != Some(false);
        let line = if resolved {
            "ended: 1 version(s) now at the destination, 0 still failing"
        } else {
            "ended: 0 version(s) now at the destination, 1 still failing"
        };
        assert!(said.iter().any(|l| l.ends_with(line)), "{file_gone_then:?}: {said:?}");
        if resolved {
            assert_eq!(e.state, State::Resolved, "{e:?}");
            assert!(e.resolution.starts_with("imported on retry (attempt "), "{e:?}");
        } else {
            assert_eq!(e.state, State::Open, "{e:?}");
        }
    }
}
