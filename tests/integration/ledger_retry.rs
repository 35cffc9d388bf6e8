//! The failure ledger's retry imports against the emulated destination: a retry import that is still running
//! past `AZURE_JobTimeoutHours` is cancelled at the server and its version queued again, and the next retry is a
//! new import definition, never the hung job handed back (reference §11.7); after 30 retries the entry is open
//! with its last reason.

use chrono::{TimeDelta, Utc};
use fhir_emulator::Flavor;
use fhir_migration_tool::engine::failures::Selection;
use fhir_migration_tool::fhir::wire::ImportErrorFile;
use fhir_migration_tool::ledger::{Class, Kind, State};

use crate::ledger::{instant, patient};
use crate::migration::{emulator_with, stack_to};
use fhir_testkit::Azurite;

#[tokio::test]
async fn a_retry_import_past_the_job_timeout_is_cancelled_and_its_version_queued_again() {
    let azurite = Azurite::start().await.unwrap();
    // The destination takes an hour to start any import: the retry import stays running.
    let destination = emulator_with(Flavor::Ahds, &azurite, |c| {
        c.job_latency = std::time::Duration::from_secs(3600)
    })
    .await;
    let stack = stack_to(azurite, Flavor::Aapi, destination, &[("AZURE_JobTimeoutHours", "1")]).await;
    let engine = &stack.engine;
    let blobs = stack._app.blobs();
    blobs.ensure_container("exports").await.unwrap();
    blobs.ensure_container("fhirlogs").await.unwrap();
    let at = instant(Utc::now() - TimeDelta::hours(1));
    blobs
        .put(
            "exports",
            "run/Patient-1.ndjson",
            patient("h1", "1", &at, "Hung").into_bytes(),
        )
        .await
        .unwrap();
    let refusal = serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
        "details": { "text": "Failed to import resource with version conflict, resource id: h1, line: 1" },
        "diagnostics": "Failed to process resource at line: 1 with stream start offset: 0" }] });
    blobs
        .put("fhirlogs", "import-1.ndjson", format!("{refusal}\n").into_bytes())
        .await
        .unwrap();
    let file = ImportErrorFile {
        resource_type: Some("Patient".into()),
        count: 1,
        input_url: Some(blobs.blob_url("exports", "run/Patient-1.ndjson")),
        url: blobs.blob_url("fhirlogs", "import-1.ndjson"),
    };
    let now = Utc::now();
    engine.record_failures(1, &[file], now).await.unwrap();
    let key = "Patient|h1|1";
    let entry = engine.ledger().get(key).await.unwrap().unwrap();
    assert_eq!((entry.kind, entry.state), (Kind::Conflict, State::Open));

    // The operator retries it: the ledger posts a retry import, which the destination leaves running.
    engine
        .retry_failures(&Selection::Keys(vec![key.to_string()]), now)
        .await
        .unwrap();
    engine.ledger_tick(now).await.unwrap();
    let posted = engine.ledger().get(key).await.unwrap().unwrap();
    assert!(!posted.retry_import.is_empty(), "{posted:?}");
    let hung: u64 = posted.retry_import.rsplit('/').next().unwrap().parse().unwrap();
    assert_eq!(stack.destination.import_inputs().len(), 1);
    // Within the timeout: polled, left running.
    engine.ledger_tick(now + TimeDelta::minutes(30)).await.unwrap();
    let waiting = engine.ledger().get(key).await.unwrap().unwrap();
    assert_eq!(waiting.retry_import, posted.retry_import, "{waiting:?}");
    assert!(stack.destination.cancelled_jobs().1.is_empty());

    // Past it: cancelled at the destination and queued again, with the reason and a later retry time.
    let late = now + TimeDelta::hours(2);
    engine.ledger_tick(late).await.unwrap();
    let queued = engine.ledger().get(key).await.unwrap().unwrap();
    assert_eq!(stack.destination.cancelled_jobs().1, vec![hung]);
    assert_eq!(queued.state, State::Retrying, "{queued:?}");
    assert!(queued.retry_import.is_empty(), "{queued:?}");
    assert!(queued.attempts > posted.attempts, "{queued:?}");
    assert!(queued.next_attempt.is_some_and(|t| t > late), "{queued:?}");
    assert!(queued.message.contains("ran past the job timeout"), "{queued:?}");

    // When it is due, the next retry is a new import at the destination, not the cancelled job handed back.
    engine.ledger_tick(late + TimeDelta::hours(2)).await.unwrap();
    let again = engine.ledger().get(key).await.unwrap().unwrap();
    assert!(!again.retry_import.is_empty(), "{again:?}");
    assert_ne!(again.retry_import, posted.retry_import);
    assert_eq!(stack.destination.import_inputs().len(), 2);

    // Every retry hangs: after 30 retries the entry is shown open with its last reason, and no retry import of
    // it is left running at the destination.
    let mut t = late + TimeDelta::hours(2);
    let mut ticks = 0;
    let last = loop {
        t += TimeDelta::hours(2);
        engine.ledger_tick(t).await.unwrap();
        let e = engine.ledger().get(key).await.unwrap().unwrap();
        if e.state == State::Open {
            break e;
        }
        ticks += 1;
        assert!(ticks < 100, "never gave up: {e:?}");
    };
    assert!(last.message.starts_with("gave up after 30 retries"), "{last:?}");
    assert!(last.message.contains("ran past the job timeout"), "{last:?}");
    assert!(last.retry_import.is_empty(), "{last:?}");
    let posted = stack.destination.import_inputs().len();
    assert_eq!(
        stack.destination.cancelled_jobs().1.len(),
        posted,
        "every hung retry import was cancelled"
    );
    assert_eq!(posted, 30, "the operator's retry and 29 automatic ones");
    // Open entries are not retried automatically.
    engine.ledger_tick(t + TimeDelta::days(1)).await.unwrap();
    assert_eq!(stack.destination.import_inputs().len(), posted);
}

/// Writes an export file of `lines` and an error file refusing its first line with `message`; the error file.
async fn refused_first_line(stack: &crate::migration::Stack, name: &str, line: &str, message: &str) -> ImportErrorFile {
    let blobs = stack._app.blobs();
    blobs.ensure_container("exports").await.unwrap();
    blobs.ensure_container("fhirlogs").await.unwrap();
    let input = format!("run/{name}.ndjson");
    blobs.put("exports", &input, line.as_bytes().to_vec()).await.unwrap();
    let refusal = serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
        "details": { "text": message },
        "diagnostics": "Failed to process resource at line: 1 with stream start offset: 0" }] });
    let errors = format!("{name}-errors.ndjson");
    blobs
        .put("fhirlogs", &errors, format!("{refusal}\n").into_bytes())
        .await
        .unwrap();
    ImportErrorFile {
        resource_type: None,
        count: 1,
        input_url: Some(blobs.blob_url("exports", &input)),
        url: blobs.blob_url("fhirlogs", &errors),
    }
}

/// A SearchParameter the import refused (they travel through the REST API) is benign once the destination has
/// it, and waits (retrying) until then; the ledger's tick resolves it when it arrives.
#[tokio::test]
async fn a_refused_search_parameter_is_resolved_once_the_destination_has_it() {
    let azurite = Azurite::start().await.unwrap();
    let destination = crate::migration::emulator(Flavor::Ahds, &azurite).await;
    let stack = stack_to(azurite, Flavor::Aapi, destination, &[]).await;
    let sp = |id: &str| {
        serde_json::json!({ "resourceType": "SearchParameter", "id": id,
            "meta": { "versionId": "1", "lastUpdated": instant(Utc::now() - TimeDelta::hours(1)) },
            "url": format!("http://example.org/fhir/SearchParameter/{id}"), "name": id, "status": "active",
            "description": id, "code": id, "base": ["Patient"], "type": "token", "expression": "Patient.identifier" })
        .to_string()
    };
    let message = "SearchParameter resources cannot be processed by import.";
    let engine = &stack.engine;
    let now = Utc::now();
    let held = refused_first_line(&stack, "held", &sp("held-sp"), message).await;
    let (_, errors) = fhir_emulator::seed::load_into(stack.destination.store(), &[sp("held-sp")]);
    assert!(errors.is_empty(), "{errors:?}");
    let later = refused_first_line(&stack, "later", &sp("later-sp"), message).await;
    engine.record_failures(1, &[held, later], now).await.unwrap();
    let state = |e: fhir_migration_tool::ledger::Entry| (e.kind, e.class, e.state);
    let get = |key: &'static str| async move { engine.ledger().get(key).await.unwrap().unwrap() };
    assert_eq!(
        state(get("SearchParameter|held-sp|1").await),
        (Kind::SearchParameter, Class::Benign, State::Resolved)
    );
    assert_eq!(
        state(get("SearchParameter|later-sp|1").await),
        (Kind::SearchParameter, Class::Transient, State::Retrying)
    );
    let (_, errors) = fhir_emulator::seed::load_into(stack.destination.store(), &[sp("later-sp")]);
    assert!(errors.is_empty(), "{errors:?}");
    engine.ledger_tick(now + TimeDelta::minutes(10)).await.unwrap();
    let arrived = get("SearchParameter|later-sp|1").await;
    assert_eq!(arrived.state, State::Resolved, "{arrived:?}");
    assert!(
        arrived.resolution.contains("copied through the REST API"),
        "{arrived:?}"
    );
}
