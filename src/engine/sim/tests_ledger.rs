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
        let chosen: Vec<Version> = {
            let mut w = sim.world();
            let current: Vec<Version> = w
                .source
                .iter()
                .filter(|v| {
                    !w.source
                        .iter()
                        .any(|o| o.resource == v.resource && o.version > v.version)
                })
                .step_by(5)
                .take(6)
                .copied()
                .collect();
            for v in &current {
                let other = Version {
                    version: v.version + 100,
                    ..*v
                };
                w.destination.insert(other);
                w.foreign.insert(other);
            }
            current
        };
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
    let record = |f: &ImportErrorFile| {
        futures::executor::block_on(Work(&ports).record_failures(1, std::slice::from_ref(f), now)).expect("recorded")
    };
    let first = file(
        "a",
        "Failed to import resource with version conflict, resource id: r0, line: 1",
    );
    record(&first);
    record(&first);
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
    record(&second);
    let e = sim.world().ledger_entry(&v).cloned().expect("kept");
    assert_eq!(
        (e.kind, e.state, e.attempts),
        (Kind::Duplicate, State::Open, 2),
        "{e:?}"
    );
    assert_eq!(e.error_file, second.url);
    assert!(e.message.contains("duplicate resource"), "{e:?}");
}
