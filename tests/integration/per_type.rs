//! Per-type mode (`AZURE_IsParallel=false`: each window exported one resource type at a time): every version
//! migrated, the mode or the type list changed mid-window, a crash after a part is planned, and progress
//! reported while it catches up. Each compares both servers.

use chrono::Utc;

#[cfg(feature = "fail-points")]
use crate::engine::fast;
use crate::engine::started_exports;
use crate::migration::{Stack, assert_same, round, run_to_completion, seed, stack};

/// How many exports have started, and the distinct (since, till) ranges among them, sorted.
fn started_ranges(stack: &Stack) -> (usize, Vec<(String, String)>) {
    let started = started_exports(stack);
    let mut ranges: Vec<(String, String)> = started
        .iter()
        .map(|r| {
            let (since, till) = r.split_once("..").expect("since..till");
            (since.to_string(), till.to_string())
        })
        .collect();
    ranges.sort();
    ranges.dedup();
    (started.len(), ranges)
}

#[tokio::test]
async fn per_type_mode_migrates_every_version_one_type_at_a_time() {
    // The bar for both modes: at least 5,000 resources over at least 12 windows.
    let stack = stack(&[("AZURE_IsParallel", "false"), ("AZURE_ResourceExportChunkTime", "2")]).await;
    seed(&stack, 5000, 14);
    run_to_completion(&stack, 2000).await;
    let versions = assert_same(stack.source.store(), stack.destination.store());
    assert!(versions >= 5000);
    let (started, windows) = started_ranges(&stack);
    assert!(windows.len() >= 12, "{} windows", windows.len());
    assert!(
        started >= windows.len() * 10,
        "one export per type with data per window: {started}"
    );
}

#[tokio::test]
async fn switching_is_parallel_mid_run_neither_loses_nor_repeats_data() {
    let mut stack = stack(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceExportChunkTime", "10"),
        ("AZURE_ExportChunkTime", "4"),
    ])
    .await;
    seed(&stack, 800, 15);
    // A few rounds in per-type mode: the first window is part-way through its types.
    for _ in 0..4 {
        round(&stack.engine).await;
    }
    let status = stack.engine.status(Utc::now()).await.unwrap();
    assert!(!status.windows_in_flight.is_empty());
    // The operator switches to parallel mode and the app restarts.
    stack.engine = stack.engine_with(&[("AZURE_IsParallel", "true")]);
    run_to_completion(&stack, 600).await;
    assert_same(stack.source.store(), stack.destination.store());
    // Windows never overlap: per-type parts cover their window once per type, parallel windows follow on.
    // Ranges never overlap: each distinct range starts where the previous one ended (or later).
    let (_, ranges) = started_ranges(&stack);
    for pair in ranges.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "overlapping windows {pair:?}");
    }
    assert!(ranges.len() > 3, "{ranges:?}");
}

#[cfg(feature = "fail-points")]
#[tokio::test]
async fn per_type_crash_after_planning_repairs_from_the_row_even_when_counts_change() {
    let mut stack = stack(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceExportChunkTime", "40"),
        ("AZURE_ResourceTypes", "Patient,Observation,Encounter"),
    ])
    .await;
    stack.engine = fast(&stack.engine);
    seed(&stack, 400, 31);
    // The planner stops right after inserting the first part (Patient) — before moving the cursor.
    stack.engine.fail_points().arm("planned-job", 1);
    let _ = stack.engine.starter_tick(Utc::now()).await;
    assert!(stack.engine.fail_points().all_fired());
    // Before anyone re-plans, Patient's resources in the window change (the window's Patients are hard-deleted),
    // so a fresh plan would now start at Observation.
    for (key, _) in stack.source.store().snapshot() {
        if &*key.0 == "Patient" {
            stack.source.store().hard_delete("Patient", &key.1);
        }
    }
    run_to_completion(&stack, 300).await;
    // Observation and Encounter still arrive: the cursor was rebuilt from the Patient row, not from a new plan.
    let dst = stack.destination.store().snapshot();
    for t in ["Observation", "Encounter"] {
        let src_n = stack
            .source
            .store()
            .snapshot()
            .iter()
            .filter(|(k, _)| &*k.0 == t)
            .count();
        let dst_n = dst.iter().filter(|(k, _)| &*k.0 == t).count();
        assert_eq!(src_n, dst_n, "{t}");
    }
}

#[tokio::test]
async fn per_type_progress_is_reported_while_catching_up() {
    let stack = stack(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceExportChunkTime", "5"),
        ("AZURE_ResourceTypes", "Patient,Observation"),
    ])
    .await;
    seed(&stack, 600, 32);
    let mut seen_progress = false;
    let mut first: Option<String> = None;
    for _ in 0..300 {
        round(&stack.engine).await;
        let status = stack.engine.status(Utc::now()).await.unwrap();
        if let Some(t) = status.migrated_through.clone() {
            match &first {
                None => first = Some(t),
                Some(f) if t > *f && !status.windows_in_flight.is_empty() => seen_progress = true,
                _ => {}
            }
        }
        if seen_progress {
            break;
        }
    }
    assert!(
        seen_progress,
        "migratedThrough moved while windows were still in flight"
    );
}

#[tokio::test]
async fn reordering_resource_types_mid_window_neither_skips_nor_repeats_a_type() {
    let mut stack = stack(&[
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceExportChunkTime", "40"),
        ("AZURE_ResourceTypes", "Patient,Observation,Encounter"),
    ])
    .await;
    seed(&stack, 500, 35);
    // One starter tick plans and starts the first type of the (single, 40-day) window.
    stack.engine.starter_tick(Utc::now()).await.unwrap();
    assert_eq!(started_exports(&stack).len(), 1);
    // The operator reverses the list and restarts.
    stack.engine = stack.engine_with(&[("AZURE_ResourceTypes", "Encounter,Observation,Patient")]);
    run_to_completion(&stack, 300).await;
    for t in ["Patient", "Observation", "Encounter"] {
        let n = |store: &fhir_emulator::Store| store.snapshot().iter().filter(|(k, _)| &*k.0 == t).count();
        assert_eq!(n(stack.source.store()), n(stack.destination.store()), "{t}");
    }
    assert_eq!(started_exports(&stack).len(), 3, "each type exported once");
}
