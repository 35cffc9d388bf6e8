//! What the shell does around the core's decisions, and what they write, seen through whole ticks: the
//! clock-skew report, the retry latch's count, the notes (log lines, events) every write carries, the
//! SearchParameter sync, and the payload rows a finished export writes. Each test here came from a mutant the
//! schedules let through.

use chrono::TimeDelta;

use super::tests::seeds;
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

/// Every failure is added to the retry latch once, also when two shells fail windows at the same moment, and the
/// latch stops the migration at its limit: no export is started after it. (A storage failure or a crash between
/// the failure's write and the count's loses that count: the latch then stops one failure later. The two are
/// rows of different tables, which Table storage cannot write together.)
#[test]
fn every_failure_counts_once_on_the_retry_latch_and_the_latch_stops_new_exports() {
    for seed in seeds(20) {
        let mut sim = Sim::new(
            seed,
            settings(&[
                ("AZURE_MaxExportRetriesEnabled", "true"),
                ("AZURE_MaxExportRetries", "3"),
            ]),
            20,
            0,
            Faults {
                export_job_fails: 100,
                ..Faults::default()
            },
        );
        sim.two_shells = seed % 2 == 1;
        for _ in 0..150 {
            sim.round();
        }
        assert!(sim.violations().is_empty(), "seed {seed}: {:?}", sim.violations());
        let (failures, exports) = {
            let w = sim.world();
            let seen = w
                .events
                .iter()
                .filter(|e| e.name == "Export" && e.get("ExportStatus") == Some("Failed"))
                .count() as i64;
            let failures = w.cursor.as_ref().expect("a cursor").0.failures;
            assert_eq!(failures, seen, "seed {seed}: each failed export is counted once");
            (failures, w.exports.len())
        };
        assert!(failures >= 3, "seed {seed}: {failures}");
        // Halted: no export is started any more.
        for _ in 0..50 {
            sim.round();
        }
        assert_eq!(
            sim.world().exports.len(),
            exports,
            "seed {seed}: an export started after the latch"
        );
    }
}

/// Each write's notes reach the operator: every committed window has its export and import events, and the
/// `ImportTill` the dashboard reads ends where the cursor is.
#[test]
fn the_notes_of_every_write_reach_telemetry() {
    let mut sim = Sim::new(3, settings(&[]), 30, 0, Faults::default());
    sim.run(0, 3_000).unwrap_or_else(|e| panic!("{e}"));
    let w = sim.world();
    let named = |name: &str| w.events.iter().filter(|e| e.name == name).count();
    // Windows that were exported (empty ones are skipped by counting and have no export).
    let committed = w
        .jobs
        .values()
        .filter(|(j, _)| j.export_status == crate::state::rows::ExportStatus::Completed)
        .count();
    assert!(committed > 0);
    assert!(
        named("Export") >= committed,
        "{} Export events, {committed} windows",
        named("Export")
    );
    assert!(
        named("Import") >= committed,
        "{} Import events, {committed} windows",
        named("Import")
    );
    let last_till = w
        .events
        .iter()
        .rev()
        .find(|e| e.name == "ImportTill")
        .and_then(|e| e.get("Till"))
        .map(str::to_string);
    let since = w.cursor.as_ref().and_then(|(c, _)| c.since);
    assert_eq!(
        last_till
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_millis()),
        since.map(|s| s.timestamp_millis())
    );
}

/// The custom SearchParameters are copied whole once, then only what changed since the last sync, each sync
/// starting where the one before covered (a full copy each time would be safe but slow; an incremental first
/// copy would miss what existed before).
#[test]
fn searchparameters_are_copied_whole_once_then_from_where_the_last_sync_ended() {
    let mut sim = Sim::new(2, settings(&[]), 30, 0, Faults::default());
    sim.run(0, 3_000).unwrap_or_else(|e| panic!("{e}"));
    let w = sim.world();
    let since = &w.search_parameter_since;
    assert!(since.len() > 2, "{since:?}");
    assert_eq!(since[0], None, "{since:?}");
    assert!(since[1..].iter().all(Option::is_some), "{since:?}");
    assert!(since[1..].windows(2).all(|p| p[0] <= p[1]), "{since:?}");
}

/// The first copy counts what the destination holds; a later sync that carried changes tells the operator to
/// reindex again (the cursor keeps when), and one that wrote any counts at least one; a sync that carried nothing
/// changes nothing.
#[test]
fn a_sync_that_changed_searchparameters_asks_for_another_reindex_and_counts_what_it_wrote() {
    use crate::engine::search_parameters::SearchParameterSync;
    let cursor = |sim: &Sim| sim.world().cursor.as_ref().expect("a cursor").0.clone();
    let rounds = |sim: &mut Sim| {
        for _ in 0..20 {
            sim.round();
        }
        assert!(sim.world().search_parameter_answer.is_none(), "the answer was given");
        assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    };
    // The first copy: 2 written, 3 already there.
    let mut sim = Sim::new(2, settings(&[]), 30, 0, Faults::default());
    sim.world().search_parameter_answer = Some(SearchParameterSync {
        written: 2,
        unchanged: 3,
        ..Default::default()
    });
    rounds(&mut sim);
    let first = cursor(&sim);
    assert!(first.search_parameters_copied);
    assert_eq!(first.search_parameter_count, 5);
    assert_eq!(first.search_parameters_changed_at, None, "a first copy is no change");

    // Nothing at first, then one deleted at the source, then one written.
    let mut sim = Sim::new(2, settings(&[]), 30, 0, Faults::default());
    sim.world().search_parameter_answer = Some(SearchParameterSync::default());
    rounds(&mut sim);
    assert_eq!(cursor(&sim).search_parameter_count, 0);
    assert_eq!(cursor(&sim).search_parameters_changed_at, None, "nothing changed");
    let deleted_at = sim.world().now;
    sim.world().search_parameter_answer = Some(SearchParameterSync {
        deleted: 1,
        ..Default::default()
    });
    rounds(&mut sim);
    let after = cursor(&sim);
    assert!(
        after.search_parameters_changed_at.is_some_and(|t| t >= deleted_at),
        "{after:?}"
    );
    assert_eq!(after.search_parameter_count, 0, "a deletion writes nothing");
    let written_at = sim.world().now;
    sim.world().search_parameter_answer = Some(SearchParameterSync {
        written: 1,
        ..Default::default()
    });
    rounds(&mut sim);
    let after = cursor(&sim);
    assert!(
        after.search_parameters_changed_at.is_some_and(|t| t >= written_at),
        "{after:?}"
    );
    assert_eq!(after.search_parameter_count, 1);
}

/// SearchParameters the destination refused are reported in the tick's log (the migration goes on); a sync
/// that refused none says nothing of it.
#[test]
fn refused_searchparameters_are_reported_and_only_then() {
    use crate::engine::search_parameters::SearchParameterSync;
    for refused in [0, 1, 2] {
        let sim = Sim::new(2, settings(&[]), 10, 0, Faults::default());
        sim.world().search_parameter_answer = Some(SearchParameterSync {
            refused,
            ..Default::default()
        });
        let lines = tick(&sim, Timer::Starter);
        assert!(sim.world().search_parameter_answer.is_none(), "the sync ran");
        let said: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("were refused by the destination"))
            .collect();
        match refused {
            0 => assert!(said.is_empty(), "{said:?}"),
            n => {
                assert_eq!(said.len(), 1, "{lines:?}");
                assert!(
                    said[0].starts_with(&format!("{n} custom SearchParameter(s)")),
                    "{said:?}"
                );
            }
        }
    }
}

/// The payload rows a finished export writes: numbered from 1 within their window's attempt, named after that
/// number (the original tool's `import_payload_<n>.json`), and each expecting the lines its files hold (what
/// tells a result handed back from an older import, with more lines, from this payload's own).
#[test]
fn payload_rows_are_numbered_from_one_and_expect_the_lines_of_their_files() {
    let mut sim = Sim::new(4, settings(&[("AZURE_FileCount", "2")]), 60, 0, Faults::default());
    sim.run(0, 3_000).unwrap_or_else(|e| panic!("{e}"));
    let w = sim.world();
    let mut numbers: std::collections::BTreeMap<(i64, i64), Vec<i64>> = Default::default();
    for (p, _) in w.payloads.values() {
        numbers.entry((p.seq, p.export_attempt)).or_default().push(p.index);
        assert_eq!(p.blob, format!("import_payload_{}.json", p.index));
    }
    payloads_expect_the_lines_of_their_files(&w);
    assert!(!numbers.is_empty());
    assert!(
        numbers.values().any(|n| n.len() > 1),
        "some window has several payloads"
    );
    for (window, mut n) in numbers {
        n.sort_unstable();
        assert_eq!(n, (1..=n.len() as i64).collect::<Vec<_>>(), "window {window:?}");
    }
}

/// Checks that each payload of its window's current attempt expects the lines its files (as its body names them
/// now, copies included) hold; returns how many versions those payloads say their scans left out.
pub(super) fn payloads_expect_the_lines_of_their_files(w: &super::world::World) -> i64 {
    let mut left_out = 0;
    for (p, _) in w.payloads.values() {
        let (job, _) = &w.jobs[&p.seq];
        if job.attempt != p.export_attempt {
            continue;
        }
        let container = crate::engine::core::flow::payload_container(&job.export_id);
        let body = w.blobs.get(&(container, p.blob.clone())).expect("the payload's body");
        let body: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        let lines: usize = crate::engine::failures::files::input_urls(&body)
            .iter()
            .map(|u| w.files.get(u).map_or(0, Vec::len))
            .sum();
        assert_eq!(p.expected_lines, Some(lines as i64), "{p:?}");
        left_out += p.left_out;
    }
    left_out
}
