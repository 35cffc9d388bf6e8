//! The failure ledger against real storage (Azurite) and the emulated destination: every refused line lands
//! once with its class, a conflict blocks cut-over until it is fixed and retried, and nothing is dropped. Error
//! files the server writes in its odd ways, or that cannot be read: server_error_files.rs.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use fhir_emulator::seed::load_into;
use fhir_migration_tool::cutover::cutover;
use fhir_migration_tool::engine::failures::Selection;
use fhir_migration_tool::fhir::wire::ImportErrorFile;
use fhir_migration_tool::ledger::{Class, Kind, State};
use serde_json::json;

use crate::migration::{assert_same, run_to_completion, seed, stack};

pub(crate) fn instant(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn patient(id: &str, version: &str, at: &str, family: &str) -> String {
    json!({ "resourceType": "Patient", "id": id, "meta": { "versionId": version, "lastUpdated": at }, "name": [{ "family": family }] })
        .to_string()
}

/// The keys of every ledger entry, sorted.
pub(crate) async fn ledger_keys(engine: &fhir_migration_tool::engine::Engine) -> Vec<String> {
    let mut keys: Vec<String> = engine
        .ledger()
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    keys.sort();
    keys
}

/// An error-file line as the server writes it (reference §5.3).
pub(crate) fn error(message: &str, line: usize) -> String {
    json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error", "details": { "text": message },
        "diagnostics": format!("Failed to process resource at line: {line} with stream start offset: 0") }] })
    .to_string()
}

#[tokio::test]
async fn every_kind_of_refused_line_lands_once_with_its_class() {
    let stack = stack(&[]).await;
    let engine = &stack.engine;
    let blobs = stack._app.blobs();
    let at = instant(Utc::now() - TimeDelta::hours(1));
    // The destination already holds b1 exactly as exported, and a different c1 under the same version.
    let (_, errors) = load_into(
        stack.destination.store(),
        &[patient("b1", "1", &at, "Same"), patient("c1", "1", &at, "Other")],
    );
    assert!(errors.is_empty(), "{errors:?}");
    let future = instant(Utc::now() + TimeDelta::hours(1));
    let input = [
        patient("b1", "1", &at, "Same"),
        patient("c1", "1", &at, "Mine"),
        patient("bad/id #1", "1", &at, "X"),
        patient("f1", "1", &future, "Later"),
        json!({ "resourceType": "SearchParameter", "id": "sp1", "meta": { "versionId": "1", "lastUpdated": at } })
            .to_string(),
    ]
    .join("\n");
    let said = [
        error("Failed to import duplicate resource, resource id: b1, line: 1", 1),
        error(
            "Failed to import resource with version conflict, resource id: c1, line: 2",
            2,
        ),
        error(
            "Invalid resource id: 'bad/id #1'. Id must be any combination of upper or lower case ASCII letters",
            3,
        ),
        error("LastUpdated in the resource cannot be in the future.", 4),
        error("SearchParameter resources cannot be processed by import.", 5),
    ]
    .join("\n");
    blobs.ensure_container("exports").await.unwrap();
    blobs.ensure_container("fhirlogs").await.unwrap();
    blobs
        .put("exports", "run/Patient-1.ndjson", input.into_bytes())
        .await
        .unwrap();
    blobs
        .put("fhirlogs", "import-1.ndjson", said.into_bytes())
        .await
        .unwrap();
    let files = [
        ImportErrorFile {
            resource_type: Some("Patient".into()),
            count: 5,
            input_url: Some(blobs.blob_url("exports", "run/Patient-1.ndjson")),
            url: blobs.blob_url("fhirlogs", "import-1.ndjson"),
        },
        ImportErrorFile {
            resource_type: Some("Observation".into()),
            count: 4,
            input_url: Some(blobs.blob_url("exports", "run/Observation-1.ndjson")),
            url: blobs.blob_url("fhirlogs", "gone.ndjson"),
        },
    ];
    let summary = engine.record_failures(3, &files, Utc::now()).await.unwrap();
    assert_eq!(
        (summary.benign, summary.transient, summary.permanent),
        (1, 2, 3),
        "{summary:?}"
    );
    let entries = engine.ledger().list(None).await.unwrap();
    let find = |key: &str| {
        entries
            .iter()
            .find(|e| e.key == key)
            .unwrap_or_else(|| panic!("{key} in {entries:?}"))
    };
    let b1 = find("Patient|b1|1");
    assert_eq!(
        (b1.kind, b1.class, b1.state),
        (Kind::Duplicate, Class::Benign, State::Resolved)
    );
    let c1 = find("Patient|c1|1");
    assert_eq!(
        (c1.kind, c1.class, c1.state),
        (Kind::Conflict, Class::Permanent, State::Open)
    );
    assert_eq!((c1.window, c1.line, c1.last_updated.as_str()), (3, 2, at.as_str()));
    // An id Table storage could not take as a key is escaped in the key and kept as it is in the row.
    let bad = find(&fhir_migration_tool::ledger::Entry::key_of("Patient", "bad/id #1", "1"));
    assert_eq!(bad.id, "bad/id #1");
    assert_eq!((bad.kind, bad.class), (Kind::InvalidId, Class::Permanent));
    let f1 = find("Patient|f1|1");
    assert_eq!(
        (f1.kind, f1.class, f1.state),
        (Kind::Future, Class::Transient, State::Retrying)
    );
    assert!(
        f1.next_attempt.unwrap() > Utc::now() + TimeDelta::minutes(59),
        "retried after its instant"
    );
    // A SearchParameter is benign only once the destination has it (the starter's sync copies them).
    let sp = find("SearchParameter|sp1|1");
    assert_eq!((sp.class, sp.state), (Class::Transient, State::Retrying));
    let unreadable: Vec<_> = entries.iter().filter(|e| e.kind == Kind::Unreadable).collect();
    assert_eq!(unreadable.len(), 1);
    assert!(
        unreadable[0].message.contains("4 line(s) failed"),
        "{}",
        unreadable[0].message
    );
    assert_eq!(entries.len(), 6);
    let events = |stack: &crate::migration::Stack| {
        stack
            .telemetry
            .events()
            .iter()
            .filter(|e| e.name == "ImportFailure")
            .count()
    };
    assert_eq!(events(&stack), 6, "an event per entry");
    crate::migration::assert_contract(&stack.telemetry.events());

    // Recording the same files again (a crash replay) changes nothing.
    engine.record_failures(3, &files, Utc::now()).await.unwrap();
    let again = engine.ledger().list(None).await.unwrap();
    assert_eq!(again.len(), 6);
    assert!(again.iter().all(|e| e.attempts == 1), "{again:?}");
    assert_eq!(events(&stack), 6);
    let status = engine.status(Utc::now()).await.unwrap();
    assert_eq!(
        (
            status.import_failures.permanent_unresolved,
            status.import_failures.transient_pending,
            status.import_failures.benign
        ),
        (3, 2, 1)
    );
}

/// A stack whose storage has the export and error-file containers the tests write into.
pub(crate) async fn with_file_containers() -> crate::migration::Stack {
    let stack = stack(&[]).await;
    let blobs = stack._app.blobs();
    blobs.ensure_container("exports").await.unwrap();
    blobs.ensure_container("fhirlogs").await.unwrap();
    stack
}

/// A migrated stack whose destination held a different version 1 of Patient `id` before the migration.
pub(crate) async fn migrated_with_a_conflict(id: &str, resources: usize, seed_no: u64) -> crate::migration::Stack {
    let stack = stack(&[("AZURE_SafetyLagSeconds", "1"), ("AZURE_ExportConfirmSeconds", "0")]).await;
    seed(&stack, resources, seed_no);
    let at = instant(Utc::now() - TimeDelta::minutes(20));
    load_into(stack.source.store(), &[patient(id, "1", &at, "Source")]);
    load_into(
        stack.destination.store(),
        &[patient(id, "1", &at, "Written at the destination")],
    );
    run_to_completion(&stack, 300).await;
    stack
}

#[tokio::test]
async fn a_conflict_blocks_cut_over_until_it_is_fixed_and_retried() {
    let stack = migrated_with_a_conflict("conflict-1", 200, 4).await;

    let engine = &stack.engine;
    let entries = engine.ledger().list(None).await.unwrap();
    let open: Vec<_> = entries.iter().filter(|e| e.state.unresolved()).collect();
    assert_eq!(open.len(), 1, "{entries:?}");
    assert_eq!(
        (open[0].key.as_str(), open[0].kind),
        ("Patient|conflict-1|1", Kind::Conflict)
    );
    let status = engine.status(Utc::now()).await.unwrap();
    assert_eq!(status.import_failures.permanent_unresolved, 1);
    assert!(!status.halted, "Continue records and goes on");
    // The full check names the missing version, and reports what the ledger knows of it.
    let checked = fhir_migration_tool::verify::local::run(
        engine,
        fhir_migration_tool::verify::local::Request {
            checks: fhir_migration_tool::verify::runs::Checks::parse("full").unwrap(),
            types: vec!["Patient".into()],
            count: None,
            include_empty: false,
        },
    )
    .await
    .unwrap();
    assert!(!checked.passed);
    assert_eq!(
        checked.output["FailureLedger"]["permanentUnresolved"], 1,
        "{}",
        checked.text
    );
    assert!(
        checked
            .text
            .contains("failure ledger: 1 not at the destination (1 permanent"),
        "{}",
        checked.text
    );

    let final_check = crate::cutover::final_check();
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(!report.ready, "{report:?}");
    assert!(
        report.reasons.iter().any(|r| r.contains("`failures`")),
        "{:?}",
        report.reasons
    );

    // The operator removes the stray version at the destination and asks for a retry.
    assert_eq!(stack.destination.store().hard_delete("Patient", "conflict-1"), 1);
    let queued = engine
        .retry_failures(&Selection::Keys(vec!["Patient|conflict-1|1".into()]), Utc::now())
        .await
        .unwrap();
    assert_eq!(queued, 1);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        engine.import_status_tick(Utc::now()).await.unwrap();
        let e = engine.ledger().get("Patient|conflict-1|1").await.unwrap().unwrap();
        if e.state == State::Resolved {
            assert!(e.resolution.contains("retry"), "{}", e.resolution);
            break;
        }
        assert!(Instant::now() < deadline, "not resolved in time: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(report.ready, "{report:?}");
    assert_eq!(report.import_failures.resolved, 1);
    assert_same(stack.source.store(), stack.destination.store());
}

/// A line refused as "in the future" (ahead of the destination's clock) is retried automatically once its
/// instant has passed, and resolved by what the destination then holds. A retry made too early is refused again,
/// and the next one is a new import (a new file name and ETag: the destination de-duplicates definitions,
/// finished jobs included).
#[tokio::test]
async fn a_line_ahead_of_the_destination_clock_is_retried_automatically() {
    let stack = stack(&[]).await;
    let engine = &stack.engine;
    let blobs = stack._app.blobs();
    let ahead = Utc::now() + TimeDelta::seconds(30);
    blobs.ensure_container("exports").await.unwrap();
    blobs.ensure_container("fhirlogs").await.unwrap();
    blobs
        .put(
            "exports",
            "run/Patient-2.ndjson",
            patient("f2", "1", &instant(ahead), "Later").into_bytes(),
        )
        .await
        .unwrap();
    blobs
        .put(
            "fhirlogs",
            "import-2.ndjson",
            error("LastUpdated in the resource cannot be in the future.", 1).into_bytes(),
        )
        .await
        .unwrap();
    let file = ImportErrorFile {
        resource_type: Some("Patient".into()),
        count: 1,
        input_url: Some(blobs.blob_url("exports", "run/Patient-2.ndjson")),
        url: blobs.blob_url("fhirlogs", "import-2.ndjson"),
    };
    let summary = engine.record_failures(1, &[file], Utc::now()).await.unwrap();
    assert_eq!(summary.transient, 1);
    let entry = engine.ledger().get("Patient|f2|1").await.unwrap().unwrap();
    assert_eq!((entry.class, entry.state), (Class::Transient, State::Retrying));
    // Not due yet: nothing is posted.
    assert!(engine.ledger_tick(Utc::now()).await.unwrap().is_empty());
    assert!(stack.destination.import_inputs().is_empty());
    // Retried too early (the clock is an argument: the retry waits at least a minute in real time): refused
    // again, and queued again with a backoff.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        engine.ledger_tick(Utc::now() + TimeDelta::minutes(2)).await.unwrap();
        let e = engine.ledger().get("Patient|f2|1").await.unwrap().unwrap();
        if e.attempts >= 2 && e.retry_import.is_empty() {
            assert_eq!((e.kind, e.state), (Kind::Future, State::Retrying), "{e:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the early retry never ended: {e:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        Utc::now() + TimeDelta::seconds(10) < ahead,
        "the early retry ended too late to have been refused as in the future"
    );
    assert_eq!(stack.destination.import_inputs().len(), 1);
    // Once the instant is within the destination's tolerance (10 s), the next retry (hours on, past any
    // backoff) imports it.
    while Utc::now() + TimeDelta::seconds(9) < ahead {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        engine.ledger_tick(Utc::now() + TimeDelta::hours(3)).await.unwrap();
        let e = engine.ledger().get("Patient|f2|1").await.unwrap().unwrap();
        if e.state == State::Resolved {
            break;
        }
        assert!(Instant::now() < deadline, "not resolved: {e:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(stack.destination.store().resource("Patient", "f2").is_some());
    assert_eq!(engine.ledger().summary().await.unwrap().unresolved(), 0);
    assert_eq!(stack.destination.import_inputs().len(), 2, "one import per retry");
}

/// The ledger says "no failures" only when no failure was ever recorded (its table does not exist yet). When
/// Table storage cannot be reached, listing and summing it are errors (which status and cut-over, reading the
/// ledger through them, pass on), never a clean ledger.
#[tokio::test]
async fn an_unreachable_ledger_is_an_error_never_an_empty_list() {
    use fhir_testkit::Gate;

    let stack = with_file_containers().await;
    let gate = Gate::to(([127, 0, 0, 1], stack.azurite.table_port()).into())
        .await
        .unwrap();
    let app = stack.app_via(stack.azurite.blob_port(), gate.port());
    let ledger = app.engine().ledger();
    // Nothing recorded yet: no table, no entries.
    assert!(ledger.list(None).await.unwrap().is_empty());
    let blobs = stack._app.blobs();
    let at = instant(Utc::now() - TimeDelta::hours(2));
    blobs
        .put(
            "exports",
            "run/Patient-5.ndjson",
            patient("u1", "1", &at, "A").into_bytes(),
        )
        .await
        .unwrap();
    let line = error("Invalid resource id: 'u1'. Id must be", 1);
    blobs.put("fhirlogs", "u.ndjson", line.into_bytes()).await.unwrap();
    let file = ImportErrorFile {
        resource_type: Some("Patient".into()),
        count: 1,
        input_url: Some(blobs.blob_url("exports", "run/Patient-5.ndjson")),
        url: blobs.blob_url("fhirlogs", "u.ndjson"),
    };
    app.engine()
        .record_failures(1, std::slice::from_ref(&file), Utc::now())
        .await
        .unwrap();
    assert_eq!(ledger.summary().await.unwrap().permanent_unresolved, 1);
    gate.close();
    let listed = ledger.list(None).await;
    assert!(listed.is_err(), "Table storage unreachable: {listed:?}");
    assert!(ledger.summary().await.is_err());
    gate.open();
    assert_eq!(ledger.list(None).await.unwrap().len(), 1);
}
