//! The engine under stress: a crash at every step boundary, two engines on the same tables, import failures and
//! line errors under both policies, the pause window, empty windows, a specific run, an upgrade mid-migration, and
//! the de-identified path. Each ends by comparing both servers version by version. Per-type mode: per_type.rs;
//! failed, endless and too large exports, halving and the retry latch: export_failures.rs.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fhir_emulator::{Faults, JobFailure};
use fhir_migration_tool::engine::{Engine, Timing};
#[cfg(feature = "fail-points")]
use fhir_migration_tool::engine::{EngineError, FAIL_POINTS};
use serde_json::json;

use crate::migration::{Stack, assert_contract, assert_same, round, run_to_completion, seed, stack};

/// The engine with short waits (confirmation re-poll, lease), for tests that run many ticks.
pub(crate) fn fast(engine: &Engine) -> Engine {
    engine.clone().with_timing(Timing {
        confirm_delay: Duration::from_millis(2),
        lease: TimeDelta::milliseconds(300),
        ..Timing::default()
    })
}

/// Runs ticks, treating an injected crash as the process dying mid-tick (the next tick starts afresh).
#[cfg(feature = "fail-points")]
async fn rounds_surviving_crashes(engine: &Engine, max: usize, done: impl Fn() -> bool) {
    for _ in 0..max {
        let now = Utc::now();
        for result in [
            engine.starter_tick(now).await.map(|_| ()),
            engine.export_status_tick(now).await.map(|_| ()),
            engine.import_status_tick(now).await.map(|_| ()),
        ] {
            match result {
                Ok(()) => {}
                Err(EngineError::Injected(_)) => {}
                Err(e) => assert!(e.is_conflict(), "tick failed: {e}"),
            }
        }
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// The distinct windows among exported ones (a window exported twice appears once).
fn distinct_windows(exports: &[String]) -> Vec<String> {
    let mut distinct = exports.to_vec();
    distinct.sort();
    distinct.dedup();
    distinct
}

/// Every export started so far, as `since..till`.
pub(crate) fn started_exports(stack: &Stack) -> Vec<String> {
    stack
        .telemetry
        .events()
        .iter()
        .filter(|e| e.name == "Export" && e.get("ExportStatus") == Some("Started"))
        .map(|e| format!("{}..{}", e.get("Since").unwrap(), e.get("Till").unwrap()))
        .collect()
}

// The crash tests need the engine's fail points: ./scripts/test runs them (`--features fail-points`).
#[cfg(feature = "fail-points")]
#[tokio::test]
async fn a_crash_between_any_two_writes_loses_and_duplicates_nothing() {
    for (n, point) in FAIL_POINTS.iter().enumerate() {
        let mut stack = stack(&[("AZURE_ExportChunkTime", "10")]).await;
        stack.engine = fast(&stack.engine);
        seed(&stack, 400, n as u64 + 10);
        // The second window crashes at this point.
        stack.engine.fail_points().arm(point, 2);
        let engine = stack.engine.clone();
        let target = Utc::now() - TimeDelta::minutes(5);
        let check = || {
            // Polled synchronously below; here only the fail point matters.
            engine.fail_points().all_fired()
        };
        rounds_surviving_crashes(&stack.engine, 40, check).await;
        assert!(stack.engine.fail_points().all_fired(), "{point} was never reached");
        // After the crash, ordinary ticks finish the migration.
        run_to_completion(&stack, 200).await;
        let versions = assert_same(stack.source.store(), stack.destination.store());
        assert!(versions > 400, "{point}: {versions}");
        let status = stack.engine.status(Utc::now()).await.unwrap();
        assert!(status.migrated_through.unwrap() >= fhir_migration_tool::fhir::format_instant(target));
        // Each window was exported once, or twice when the crash hid an accepted kick-off (the orphan export
        // is never imported).
        let exports = started_exports(&stack);
        let distinct = distinct_windows(&exports);
        let repeats = exports.len() - distinct.len();
        let allowed = usize::from(matches!(*point, "export-accepted"));
        assert!(
            repeats <= allowed,
            "{point}: {repeats} window(s) exported twice: {exports:?}"
        );
    }
}

#[tokio::test]
async fn two_engines_on_the_same_tables_never_export_a_window_twice() {
    let stack = stack(&[]).await;
    seed(&stack, 1500, 3);
    let (a, b) = (fast(&stack.engine), fast(&stack.engine));
    for _ in 0..200 {
        tokio::join!(round(&a), round(&b));
        let status = a.status(Utc::now()).await.unwrap();
        if status.windows_in_flight.is_empty()
            && status
                .migrated_through
                .is_some_and(|t| t >= fhir_migration_tool::fhir::format_instant(Utc::now() - TimeDelta::minutes(5)))
        {
            break;
        }
    }
    assert_same(stack.source.store(), stack.destination.store());
    let exports = started_exports(&stack);
    let distinct = distinct_windows(&exports);
    assert_eq!(
        exports.len(),
        distinct.len(),
        "a window was exported twice: {exports:?}"
    );
    assert!(exports.len() >= 12);
}

#[tokio::test]
async fn failed_imports_are_retried_with_a_new_definition() {
    let stack = stack(&[]).await;
    seed(&stack, 500, 6);
    stack.destination.set_faults(Faults {
        import_unit_failure: Some(JobFailure {
            status: 500,
            reason: "transient".into(),
            count: Some(2),
        }),
        ..Default::default()
    });
    run_to_completion(&stack, 300).await;
    assert_same(stack.source.store(), stack.destination.store());
    let failed = stack
        .telemetry
        .events()
        .iter()
        .filter(|e| e.name == "Import" && e.get("ImportStatus") == Some("Failed"))
        .count();
    assert!(
        failed >= 1,
        "the failed import was seen ({failed}) and retried until the window committed"
    );
}

#[tokio::test]
async fn import_line_errors_are_recorded_and_continue_or_halt_by_policy() {
    for policy in ["Continue", "Halt"] {
        let stack = stack(&[("AZURE_ImportErrorPolicy", policy)]).await;
        seed(&stack, 300, 7);
        // The destination already holds a different version 1 of one source resource: a version conflict.
        let victim = stack
            .source
            .store()
            .snapshot()
            .into_iter()
            .find(|(k, r)| &*k.0 == "Patient" && r.versions().len() == 1 && !r.current().unwrap().deleted)
            .unwrap();
        let v = &victim.1.versions()[0];
        let mut body: serde_json::Value = serde_json::from_str(&v.body).unwrap();
        body["gender"] = json!("unknown-conflicting");
        let (_, errors) = fhir_emulator::seed::load_into(stack.destination.store(), &[body.to_string()]);
        assert!(errors.is_empty());
        for _ in 0..60 {
            round(&stack.engine).await;
        }
        let status = stack.engine.status(Utc::now()).await.unwrap();
        let failed_lines: i64 = stack
            .telemetry
            .events()
            .iter()
            .filter(|e| e.name == "Import" && e.get("ImportStatus") == Some("Completed"))
            .filter_map(|e| e.get("FailedImportCount")?.parse::<i64>().ok())
            .sum();
        assert_eq!(failed_lines, 1, "{policy}: the conflict is counted");
        let events = stack.telemetry.events();
        assert_contract(&events);
        let errors: Vec<_> = events.iter().filter(|e| e.name == "ImportErrors").collect();
        assert_eq!(errors.len(), 1, "{policy}");
        assert_eq!(
            (errors[0].get("Conflicts"), errors[0].get("FailedImportCount")),
            (Some("1"), Some("1")),
            "{policy}: the error file was read and classified: {:?}",
            errors[0]
        );
        if policy == "Continue" {
            assert!(!status.halted, "{status:?}");
            assert!(status.windows_in_flight.is_empty(), "{status:?}");
        } else {
            assert!(status.halted, "{status:?}");
            let halted = status
                .windows_in_flight
                .iter()
                .find(|w| w.import_status == "Halted")
                .expect("a halted window");
            assert!(
                halted.payloads.iter().any(|p| !p.error_files.is_empty()),
                "error files are listed"
            );
            stack.engine.clear_failures().await.unwrap();
            run_to_completion(&stack, 200).await;
        }
    }
}

#[tokio::test]
async fn nothing_new_starts_in_the_pause_window_but_running_work_finishes() {
    let hour = Utc::now().format("%H").to_string().parse::<u32>().unwrap();
    let (start, end) = (hour.to_string(), ((hour + 1) % 24).to_string());
    let stack = stack(&[
        ("AZURE_PauseDm", "true"),
        ("AZURE_StartTime", &start),
        ("AZURE_EndTime", &end),
    ])
    .await;
    seed(&stack, 200, 8);
    let report = stack.engine.starter_tick(Utc::now()).await.unwrap();
    assert!(
        report.lines.iter().any(|l| l.contains("restricted window")),
        "{:?}",
        report.lines
    );
    stack.engine.import_status_tick(Utc::now()).await.unwrap();
    assert!(
        started_exports(&stack).is_empty(),
        "no export starts inside the pause window"
    );
    // An hour later the window is over (the clock is an argument, so the test moves it).
    let later = Utc::now() + TimeDelta::hours(1);
    stack.engine.starter_tick(later).await.unwrap();
    assert_eq!(started_exports(&stack).len(), 1);
}

#[tokio::test]
async fn empty_ranges_are_skipped_without_an_export_and_a_specific_run_stops_at_its_end() {
    let end = (Utc::now() - TimeDelta::days(10))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let stack = stack(&[
        ("AZURE_SpecificRun", "true"),
        ("AZURE_EndDate", &end),
        ("AZURE_ExportChunkTime", "1"),
    ])
    .await;
    // Two bursts of data 20 days apart: the gap must be skipped without exporting 20 empty days.
    let now = Utc::now();
    let burst = |days_ago: i64, seed_no: u64| fhir_emulator::seed::SeedParams {
        resources: 100,
        seed: seed_no,
        span_days: 1,
        end: Some((now - TimeDelta::days(days_ago)).timestamp_millis()),
        search_parameters: 0,
        hostile: false,
        ..Default::default()
    };
    for (days, s) in [(25, 11), (2, 12)] {
        let mut lines = fhir_emulator::seed::generate(&burst(days, s));
        for l in lines.iter_mut() {
            *l = l.replace("\"id\":\"", &format!("\"id\":\"b{s}"));
        }
        let (_, errors) = fhir_emulator::seed::load_into(stack.source.store(), &lines);
        assert!(errors.is_empty(), "{errors:?}");
    }
    for _ in 0..60 {
        round(&stack.engine).await;
    }
    let status = stack.engine.status(Utc::now()).await.unwrap();
    assert_eq!(
        status.migrated_through.as_deref(),
        Some(end.replace('Z', ".000Z").as_str()),
        "{status:?}"
    );
    let report = stack.engine.starter_tick(Utc::now()).await.unwrap();
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("Specific time range date is reached"))
    );
    // Only the older burst was migrated; exports covered about two days of data, not twenty.
    let exports = started_exports(&stack).len();
    assert!(exports <= 4, "{exports} exports for a one-day burst");
    let dst = stack.destination.store().snapshot();
    assert!(
        dst.iter().all(|(k, _)| k.1.starts_with("b11")),
        "nothing after the end date was migrated"
    );
    assert!(dst.len() >= 100);
}

#[tokio::test]
async fn deidentified_export_truncates_overflowing_decimals_so_imports_succeed() {
    let stack = stack(&[
        ("AZURE_IsExportDeidentified", "true"),
        ("AZURE_ConfigFile", "DemoTruncate.json"),
    ])
    .await;
    let params = fhir_emulator::seed::SeedParams {
        resources: 200,
        seed: 13,
        overflow_decimal: true,
        end: Some((Utc::now() - TimeDelta::minutes(10)).timestamp_millis()),
        ..Default::default()
    };
    let (_, errors) = fhir_emulator::seed::load_into(stack.source.store(), &fhir_emulator::seed::generate(&params));
    assert!(errors.is_empty());
    let config = fhir_emulator::TRUNCATE_QUANTITIES;
    let blob = fhir_emulator::blob::BlobClient::new(fhir_emulator::blob::BlobConfig {
        endpoint: url::Url::parse(&stack.azurite.blob_endpoint()).unwrap(),
        account: fhir_testkit::DEV_ACCOUNT.into(),
        key: fhir_testkit::DEV_KEY.into(),
    })
    .unwrap();
    blob.ensure_container("anonymization").await.unwrap();
    blob.put("anonymization", "DemoTruncate.json", config.as_bytes().to_vec())
        .await
        .unwrap();
    run_to_completion(&stack, 300).await;
    let migrated = stack
        .destination
        .store()
        .resource("Observation", "overflow-decimal")
        .expect("the overflowing Observation arrived");
    let body = &migrated.current().unwrap().body;
    assert!(body.contains("123456789012345678"), "{body}");
    assert!(
        !body.contains("1234567890123456789012"),
        "truncated to 18 characters: {body}"
    );
}

#[tokio::test]
async fn a_payload_out_of_attempts_gets_its_window_exported_again() {
    let stack = stack(&[("AZURE_MaxImportRetries", "2")]).await;
    seed(&stack, 300, 33);
    stack.destination.set_faults(Faults {
        import_unit_failure: Some(JobFailure {
            status: 400,
            reason: "Input file deleted, renamed, or moved during job.".into(),
            count: None,
        }),
        ..Default::default()
    });
    // Long enough for the first window's payload to use both attempts.
    for _ in 0..40 {
        round(&stack.engine).await;
        let failures = stack
            .telemetry
            .events()
            .iter()
            .filter(|e| e.name == "Import" && e.get("ImportStatus") == Some("Failed"))
            .count();
        if failures >= 2 {
            break;
        }
    }
    stack.destination.set_faults(Faults::default());
    run_to_completion(&stack, 300).await;
    assert_same(stack.source.store(), stack.destination.store());
    let exports = started_exports(&stack);
    let distinct = distinct_windows(&exports);
    assert!(
        exports.len() > distinct.len(),
        "the window whose payload ran out of attempts was exported again"
    );
}

/// Rows written by the release before the engine core lack the columns it added (failure streak, deferrals,
/// split level, remainder, processing unit). A migration in flight continues after the upgrade with nothing
/// lost: the new engine reads such rows as "no streak, no split".
#[tokio::test]
async fn a_migration_started_by_the_previous_release_continues_after_the_upgrade() {
    use fhir_migration_tool::config::Settings;
    use fhir_migration_tool::storage::tables::{IfMatch, TableService};

    let stack = stack(&[("AZURE_ExportChunkTime", "10")]).await;
    seed(&stack, 400, 41);
    for _ in 0..3 {
        round(&stack.engine).await;
    }
    let settings = Settings::from_source(&stack.source_settings).unwrap();
    let service = TableService::new(
        settings.storage.table_endpoint().clone(),
        settings.storage.credential().unwrap(),
        reqwest::Client::new(),
    );
    let table = service.table(&settings.export_table).unwrap();
    let added = [
        "FailureStreak",
        "Deferrals",
        "SplitLevel",
        "RemainderTill",
        "ProcessingUnitBytes",
    ];
    let mut stripped = 0;
    for mut row in table.query_all(None).await.unwrap() {
        let had: Vec<&str> = added
            .iter()
            .copied()
            .filter(|c| row.property_names().any(|p| p == *c))
            .collect();
        if had.is_empty() {
            continue;
        }
        for c in had {
            row.remove(c);
        }
        table.replace(&row, &IfMatch::Any).await.unwrap();
        stripped += 1;
    }
    assert!(stripped > 0, "the first ticks wrote rows to downgrade");
    let status = stack.engine.status(Utc::now()).await.unwrap();
    assert!(
        !status.windows_in_flight.is_empty(),
        "windows are in flight at the upgrade"
    );
    run_to_completion(&stack, 300).await;
    assert_same(stack.source.store(), stack.destination.store());
}
