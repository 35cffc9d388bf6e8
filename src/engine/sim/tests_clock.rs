//! The source's clock as the shell reads it (its answers' `Date` header): a machine clock off the source's by
//! more than half the safety lag is reported to the operator, once per starter tick, as a line and an event.

use chrono::TimeDelta;

use super::world::Faults;
use super::{Sim, settings};
use crate::engine::FailPoints;
use crate::engine::core::Timer;
use crate::engine::shell::Shell;

/// One tick of `timer` by a shell over the simulated world; the lines it reported.
fn tick(sim: &Sim, timer: Timer) -> Vec<String> {
    let ports = sim.operator();
    let fail = FailPoints::default();
    let shell = Shell {
        ports: &ports,
        settings: &sim.settings,
        timing: &sim.timing,
        telemetry: &ports,
        fail: &fail,
        export_table: "export",
    };
    let now = sim.world().now;
    futures::executor::block_on(shell.run(timer, now))
        .expect("a tick")
        .lines
}

#[test]
fn a_source_clock_off_by_more_than_half_the_safety_lag_is_reported_on_starter_ticks_only() {
    // The default safety lag is 300 s: half of it is the threshold, exclusive.
    for (source_ahead, reported) in [
        (-900, Some("ahead of")),
        (-151, Some("ahead of")),
        (-150, None),
        (0, None),
        (120, None),
        (150, None),
        (151, Some("behind")),
        (900, Some("behind")),
    ] {
        let sim = Sim::new(1, settings(&[]), 4, 0, Faults::default());
        sim.world().source_skew = TimeDelta::seconds(source_ahead);
        let skew_lines =
            |lines: Vec<String>| -> Vec<String> { lines.into_iter().filter(|l| l.starts_with("Clock skew")).collect() };
        let other = skew_lines(tick(&sim, Timer::ExportStatus));
        assert!(other.is_empty(), "{source_ahead}: {other:?}");
        let said = skew_lines(tick(&sim, Timer::Starter));
        let events: Vec<_> = sim
            .world()
            .events
            .iter()
            .filter(|e| e.name == "ClockSkew")
            .cloned()
            .collect();
        match reported {
            None => assert!(
                said.is_empty() && events.is_empty(),
                "{source_ahead}: {said:?} {events:?}"
            ),
            Some(direction) => {
                assert_eq!(said.len(), 1, "{source_ahead}: {said:?}");
                let expected = format!(
                    "this machine's clock is {} s {direction} the source server's",
                    source_ahead.abs()
                );
                assert!(said[0].contains(&expected), "{source_ahead}: {said:?}");
                assert!(said[0].contains("the 300 s safety lag"), "{said:?}");
                assert_eq!(events.len(), 1, "{source_ahead}: {events:?}");
                assert_eq!(events[0].get("SkewSeconds"), Some((-source_ahead).to_string().as_str()));
                assert_eq!(events[0].get("SafetyLagSeconds"), Some("300"));
            }
        }
    }
}
