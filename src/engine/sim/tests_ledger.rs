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
        let ports = sim.operator();
        let now = sim.world().now;
        let retry: Vec<String> = fixed.iter().chain(unfixed).map(key).collect();
        let queued = futures::executor::block_on(Work(&ports).retry_failures(&Selection::Keys(retry), now))
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(queued, 4, "seed {seed}");
        let kept = futures::executor::block_on(Work(&ports).accept_failures(
            &Selection::Keys(accepted.iter().map(key).collect()),
            "test: records of our own",
        ))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert_eq!(kept, 2, "seed {seed}");
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
