//! The cut-over assistant against real servers: NOT READY while a writer is still writing to the source,
//! READY once writes stop and the tool has migrated the last tail, checked and reconciled.

use std::time::Duration;

use fhir_migration_tool::cutover::{Options, cutover};

use crate::migration::{run_to_completion, seed, stack};

#[tokio::test]
async fn not_ready_while_the_source_is_written_and_ready_after() {
    let stack = stack(&[("AZURE_SafetyLagSeconds", "1"), ("AZURE_ExportConfirmSeconds", "0")]).await;
    seed(&stack, 300, 21);
    run_to_completion(&stack, 200).await;
    let app = &stack._app;

    let lag = cutover(
        app,
        &Options {
            final_check: false,
            quiet: Duration::ZERO,
            timeout: Duration::ZERO,
            poll: Duration::ZERO,
        },
    )
    .await
    .unwrap();
    assert!(
        !lag.ready && lag.reasons.iter().any(|r| r.contains("--final")),
        "{lag:?}"
    );

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(fhir_emulator::writer::run(
        fhir_emulator::writer::WriterParams {
            target: stack.source.base_url.clone(),
            rate: 20.0,
            seed: 9,
            types: vec!["Patient".into()],
            token: None,
            hard_deletes: false,
        },
        async {
            let _ = stopped.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = Options {
        final_check: true,
        quiet: Duration::from_secs(2),
        timeout: Duration::from_secs(3),
        poll: Duration::from_millis(200),
    };
    let report = cutover(app, &busy).await.unwrap();
    assert!(!report.ready, "{report:?}");
    assert!(
        report.reasons.iter().any(|r| r.contains("still being written")),
        "{report:?}"
    );
    assert!(report.pending_source_versions > 0, "{report:?}");

    let _ = stop.send(());
    let writes = writer.await.unwrap();
    assert!(writes.created > 0);
    let quiet = Options {
        final_check: true,
        quiet: Duration::from_secs(2),
        timeout: Duration::from_secs(120),
        poll: Duration::from_millis(200),
    };
    let skipped = || {
        stack
            .telemetry
            .events()
            .iter()
            .filter(|e| e.name == "WindowSkipped")
            .count()
    };
    let skipped_before = skipped();
    let report = cutover(app, &quiet).await.unwrap();
    assert!(report.ready, "{report:?}");
    // The tail is driven to the millisecond without a loop of empty sub-millisecond windows (each one a cursor
    // write and an event; the defect wrote about a hundred per call).
    assert!(
        skipped() - skipped_before <= 3,
        "{} empty ranges skipped by one --final",
        skipped() - skipped_before
    );
    assert_eq!(report.full_check_passed, Some(true));
    assert_eq!(report.reconcile_clean, Some(true));
    assert_eq!((report.pending_source_versions, report.windows_in_flight), (0, 0));
}
