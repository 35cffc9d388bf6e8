//! Accepted losses and cut-over: READY when every remaining difference is a loss an operator accepted (named
//! with its reason), NOT READY for anything else (issue 24, item 7), including lines the ledger could not name.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use fhir_emulator::seed::load_into;
use fhir_migration_tool::cutover::cutover;
use fhir_migration_tool::engine::failures::Selection;
use fhir_migration_tool::fhir::wire::ImportErrorFile;
use fhir_migration_tool::ledger::{Kind, State};

use crate::ledger::{instant, migrated_with_a_conflict, patient};
use crate::migration::{assert_same, run_to_completion, seed, stack};

/// An accepted loss lets cut-over say READY (the full check counts it as accepted and the report names it
/// with its reason); reopened, it blocks cut-over again; retried once fixed, it is resolved (issue 24, item 7).
#[tokio::test]
async fn an_accepted_loss_is_ready_and_can_be_reopened_and_retried() {
    let stack = migrated_with_a_conflict("conflict-2", 120, 5).await;
    let engine = &stack.engine;
    let key = "Patient|conflict-2|1".to_string();
    let final_check = crate::cutover::final_check();

    let accepted = engine
        .accept_failures(&Selection::Keys(vec![key.clone()]), "test record, not needed")
        .await
        .unwrap();
    assert_eq!(accepted, 1);
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(report.ready, "{report:?}");
    assert_eq!(report.accepted_failures.len(), 1, "{report:?}");
    assert!(
        report.accepted_failures[0].contains("test record, not needed"),
        "{report:?}"
    );
    assert!(
        fhir_migration_tool::cutover::describe(&report).contains("accepted loss"),
        "every report names the accepted loss"
    );

    // Reopened: NOT READY again; an unknown or unaccepted key is refused with a clear error.
    assert!(
        engine
            .reopen_failures(&Selection::Keys(vec!["Patient|nope|1".into()]))
            .await
            .is_err()
    );
    assert_eq!(
        engine
            .reopen_failures(&Selection::Keys(vec![key.clone()]))
            .await
            .unwrap(),
        1
    );
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(!report.ready, "{report:?}");
    assert_eq!(report.import_failures.permanent_unresolved, 1, "{report:?}");

    // Accepted again, then retried after the fix: an accepted entry can be retried by its key.
    engine
        .accept_failures(&Selection::Keys(vec![key.clone()]), "changed my mind later")
        .await
        .unwrap();
    assert_eq!(stack.destination.store().hard_delete("Patient", "conflict-2"), 1);
    assert_eq!(
        engine
            .retry_failures(&Selection::Keys(vec![key.clone()]), Utc::now())
            .await
            .unwrap(),
        1
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        engine.import_status_tick(Utc::now()).await.unwrap();
        let e = engine.ledger().get(&key).await.unwrap().unwrap();
        if e.state == State::Resolved {
            break;
        }
        assert!(Instant::now() < deadline, "not resolved in time: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(report.ready, "{report:?}");
    assert!(report.accepted_failures.is_empty(), "{report:?}");
    assert_same(stack.source.store(), stack.destination.store());
}

/// Lines an error file counted but did not hold (a shortfall) cannot be named; once an operator accepts them,
/// the full check counts versions of that export file missing at the destination as that loss, up to its
/// count, and nothing else.
#[tokio::test]
async fn an_accepted_loss_the_ledger_could_not_name_covers_only_its_own_file_and_count() {
    let stack = stack(&[("AZURE_SafetyLagSeconds", "1"), ("AZURE_ExportConfirmSeconds", "0")]).await;
    seed(&stack, 40, 9);
    let at = instant(Utc::now() - TimeDelta::minutes(20));
    let lines = [
        patient("gone-1", "1", &at, "One"),
        patient("gone-2", "1", &at, "Two"),
        patient("kept-1", "1", &at, "Three"),
    ];
    load_into(stack.source.store(), &lines);
    run_to_completion(&stack, 300).await;
    // Two versions lost at the destination; an import's error file counted one failed line of a file holding
    // gone-1 and kept-1, and names none.
    let dst = stack.destination.store();
    assert_eq!(dst.hard_delete("Patient", "gone-1"), 1);
    assert_eq!(dst.hard_delete("Patient", "gone-2"), 1);
    let input = [lines[0].clone(), lines[2].clone()].join("\n");
    let file = short_error_file(stack._app.blobs(), "run/Patient-7.ndjson", input).await;
    let engine = &stack.engine;
    engine.record_failures(1, &[file], Utc::now()).await.unwrap();
    let short = engine.ledger().list(None).await.unwrap().remove(0);
    assert_eq!(
        (short.kind, short.unnamed_lines, short.state),
        (Kind::Unreadable, 1, State::Open)
    );
    engine
        .accept_failures(&Selection::Keys(vec![short.key.clone()]), "one line of a test file")
        .await
        .unwrap();
    let final_check = crate::cutover::final_check();
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(!report.ready, "gone-2 is not in that file: {report:?}");
    // gone-2 comes back; gone-1 is the accepted line.
    load_into(dst, &lines[1..2]);
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(report.ready, "{report:?}");
    assert_eq!(report.accepted_failures.len(), 1, "{report:?}");
    // A count of one covers one version: with kept-1 lost as well, it is not READY.
    assert_eq!(dst.hard_delete("Patient", "kept-1"), 1);
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(!report.ready, "{report:?}");
}

/// The full check reads the export file an unnamed accepted loss is about. When blob storage cannot be reached
/// (tables still answering), the check fails and says to run it again: it never shows the accepted versions as
/// missing, nor the destination as ready without counting them.
#[tokio::test]
async fn the_check_fails_rather_than_decide_without_the_export_file_of_an_accepted_loss() {
    use fhir_testkit::Gate;

    let stack = stack(&[("AZURE_SafetyLagSeconds", "1"), ("AZURE_ExportConfirmSeconds", "0")]).await;
    seed(&stack, 10, 3);
    let at = instant(Utc::now() - TimeDelta::minutes(20));
    let lost = patient("lost-1", "1", &at, "One");
    load_into(stack.source.store(), std::slice::from_ref(&lost));
    run_to_completion(&stack, 300).await;
    assert_eq!(stack.destination.store().hard_delete("Patient", "lost-1"), 1);

    // The operator's tool as deployed, its blobs behind a gate.
    let gate = Gate::to(([127, 0, 0, 1], stack.azurite.blob_port()).into())
        .await
        .unwrap();
    let app = stack.app_via(gate.port(), stack.azurite.table_port());
    let file = short_error_file(app.blobs(), "run/Patient-9.ndjson", lost.clone()).await;
    let engine = app.engine();
    engine.record_failures(1, &[file], Utc::now()).await.unwrap();
    let short = engine.ledger().list(None).await.unwrap().remove(0);
    assert_eq!((short.kind, short.unnamed_lines), (Kind::Unreadable, 1));
    engine
        .accept_failures(&Selection::Keys(vec![short.key.clone()]), "one line of a test file")
        .await
        .unwrap();

    let final_check = crate::cutover::final_check();
    gate.close();
    let failed = cutover(&app, &final_check).await;
    let Err(e) = failed else {
        panic!("blob storage unreachable: the check cannot count the accepted loss: {failed:?}")
    };
    assert!(e.to_string().contains("run the check again"), "{e}");
    gate.open();
    let report = cutover(&app, &final_check).await.unwrap();
    assert!(report.ready, "the accepted loss covers lost-1: {report:?}");
}

/// An export file `name` holding `input`, and an empty error file of an import that counted one failed line in
/// it: a loss the ledger cannot name.
async fn short_error_file(
    blobs: &fhir_migration_tool::storage::blob::BlobStore,
    name: &str,
    input: String,
) -> ImportErrorFile {
    blobs.ensure_container("exports").await.unwrap();
    blobs.ensure_container("fhirlogs").await.unwrap();
    blobs.put("exports", name, input.into_bytes()).await.unwrap();
    blobs.put("fhirlogs", "short.ndjson", Vec::new()).await.unwrap();
    ImportErrorFile {
        resource_type: Some("Patient".into()),
        count: 1,
        input_url: Some(blobs.blob_url("exports", name)),
        url: blobs.blob_url("fhirlogs", "short.ndjson"),
    }
}
