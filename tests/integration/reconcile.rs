//! Hard-delete reconciliation against real servers: hard deletes made at the source after their resources were
//! migrated are found, a too-small cap deletes nothing, `apply` removes them at the destination and records each
//! one, soft deletes in flight are left to the migration, and a re-run after catching up is clean.

use fhir_migration_tool::reconcile::{Options, reconcile};
use fhir_migration_tool::telemetry::RecordingTelemetry;

use crate::migration::{assert_contract, assert_same, round, run_to_completion, seed, stack};

#[tokio::test]
async fn hard_deletes_at_the_source_are_found_capped_applied_and_recorded() {
    // A short safety lag, so the writes made after the migration are carried within the test.
    let stack = stack(&[("AZURE_SafetyLagSeconds", "1")]).await;
    seed(&stack, 300, 11);
    run_to_completion(&stack, 200).await;
    let http = reqwest::Client::new();
    let src = stack.source.base_url.clone();
    let current: Vec<(String, String)> = stack
        .source
        .store()
        .snapshot()
        .into_iter()
        .filter(|(k, r)| &*k.0 == "Patient" && !r.current().unwrap().deleted)
        .map(|(k, _)| (k.0.to_string(), k.1.to_string()))
        .take(8)
        .collect();
    // Five hard deletes and two soft deletes at the source, and one new resource, all after the migration.
    for (i, (t, id)) in current.iter().enumerate() {
        let hard = if i < 5 { "?hardDelete=true" } else { "" };
        if i < 7 {
            let resp = http.delete(format!("{src}/{t}/{id}{hard}")).send().await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    }
    let body = serde_json::json!({ "resourceType": "Patient", "id": "born-late" });
    assert!(
        http.put(format!("{src}/Patient/born-late"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    let telemetry = RecordingTelemetry::default();
    let table = stack
        ._app
        .tables()
        .table(&crate::support::unique_name("reconcile"))
        .unwrap();
    let types = vec!["Patient".to_string(), "Observation".to_string()];
    let run = |apply: bool, max_deletes: usize| {
        let options = Options {
            types: types.clone(),
            apply,
            max_deletes,
        };
        let (engine, table, telemetry) = (stack.engine.clone(), table.clone(), telemetry.clone());
        async move {
            reconcile(
                engine.source(),
                engine.destination(),
                &options,
                Some(&table),
                &telemetry,
            )
            .await
            .unwrap()
        }
    };

    let dry = run(false, 100).await;
    assert_eq!(dry.hard_deleted_at_source, 5, "{dry:?}");
    assert_eq!(dry.pending_soft_deletes, 2, "{dry:?}");
    assert_eq!(dry.missing_at_destination, 1, "{dry:?}");
    assert_eq!((dry.deleted, dry.applied), (0, false));
    for (t, id) in &current[..5] {
        assert!(dry.candidates.contains(&format!("{t}/{id}")), "{dry:?}");
    }
    assert_eq!(dry.missing, ["Patient/born-late"]);

    let refused = run(true, 3).await;
    assert!(
        refused
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("more than the cap of 3")),
        "{refused:?}"
    );
    assert_eq!(refused.deleted, 0);
    let dst = stack.destination.base_url.clone();
    let (t, id) = &current[0];
    assert!(
        http.get(format!("{dst}/{t}/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success(),
        "the cap deleted nothing"
    );

    let applied = run(true, 10).await;
    assert_eq!(
        (applied.deleted, applied.applied, applied.refused.clone()),
        (5, true, None),
        "{applied:?}"
    );
    for (t, id) in &current[..5] {
        assert_eq!(
            http.get(format!("{dst}/{t}/{id}")).send().await.unwrap().status(),
            404,
            "{t}/{id} is gone"
        );
    }
    let rows = table.query_all(None).await.unwrap();
    assert_eq!(rows.len(), 5, "every deletion is recorded");
    let deletes = telemetry
        .events()
        .iter()
        .filter(|e| e.name == "ReconcileDelete")
        .count();
    assert_eq!(deletes, 5);
    assert_contract(&telemetry.events());

    // The migration carries the soft deletes and the new resource; then everything is reconciled and equal.
    // (A caught-up migration exports its tail at most once a minute, so this can take that long.)
    let mut again = run(false, 10).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
    while std::time::Instant::now() < deadline {
        if again.clean() && again.pending_soft_deletes == 0 {
            break;
        }
        round(&stack.engine).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        again = run(true, 10).await;
    }
    assert!(again.clean() && again.deleted == 0, "{again:?}");
    assert_eq!((again.pending_soft_deletes, again.missing_at_destination), (0, 0));
    assert_eq!(telemetry.events().last().unwrap().get("Result"), Some("Pass"));
    assert_same(stack.source.store(), stack.destination.store());
}

#[tokio::test]
async fn reconcile_http_records_a_run_the_runner_completes_and_status_reports() {
    use crate::faults::{finish, scenario};
    use fhir_testkit::{http_payload, timer_payload};
    use serde_json::{Value, json};

    let s = scenario(200, 5, &[]).await;
    let handler = s.handler().await;
    finish(&[handler.invoker()], s.end).await;
    let http = reqwest::Client::new();
    let gone: Vec<String> = s
        .source
        .store()
        .snapshot()
        .into_iter()
        .filter(|(k, r)| &*k.0 == "Patient" && !r.current().unwrap().deleted)
        .map(|(k, _)| k.1.to_string())
        .take(3)
        .collect();
    for id in &gone {
        let url = format!("{}/Patient/{id}?hardDelete=true", s.source.base_url);
        assert!(http.delete(url).send().await.unwrap().status().is_success());
    }
    // An HTTP function's status code and JSON body, as the host relays them.
    let call = |function: &'static str, payload: Value| {
        let invoker = handler.invoker();
        async move {
            let resp: Value = invoker.invoke(function, &payload).await.unwrap().json().await.unwrap();
            let res = &resp["Outputs"]["res"];
            let body: Value = serde_json::from_str(res["body"].as_str().unwrap_or("null")).unwrap();
            (res["statusCode"].as_u64().unwrap_or(0), body)
        }
    };
    let mut start = http_payload(
        "Reconcile_Http",
        "req",
        "POST",
        json!({ "types": "Patient", "maxDeletes": "10" }),
        Some(r#"{"apply": true}"#),
    );
    start["Data"]["req"]["Url"] = json!("https://fn.example/api/Reconcile_Http?code=SECRET&types=Patient");
    let (code, started) = call("Reconcile_Http", start.clone()).await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(
        started["statusQueryGetUri"],
        format!("https://fn.example/api/Reconcile_Status/{id}")
    );
    assert!(!started.to_string().contains("SECRET"));

    let mut status = http_payload("Reconcile_Status", "req", "GET", json!({}), None);
    status["Data"]["req"]["Params"] = json!({ "id": id });
    let (code, _) = call("Reconcile_Status", status.clone()).await;
    assert_eq!(code, 202, "pending until the runner runs it");
    let tick = timer_payload("E2ETest_Runner", "myTimer", &chrono::Utc::now().to_rfc3339(), false);
    assert!(
        handler
            .invoke("E2ETest_Runner", &tick)
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let (code, done) = call("Reconcile_Status", status.clone()).await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    assert_eq!(done["output"]["hardDeletedAtSource"], 3, "{done}");
    assert_eq!(done["output"]["deleted"], 3, "{done}");
    for id in &gone {
        let url = format!("{}/Patient/{id}", s.destination.base_url);
        assert_eq!(http.get(url).send().await.unwrap().status(), 404);
    }
    let mut unknown = status.clone();
    unknown["Data"]["req"]["Params"] = json!({ "id": "nosuchrun" });
    assert_eq!(call("Reconcile_Status", unknown.clone()).await.0, 404);

    // MigrationStatus_Http?cutover=true adds the cut-over assistant's lag report.
    let get = http_payload("MigrationStatus_Http", "req", "GET", json!({ "cutover": "true" }), None);
    let (code, progress) = call("MigrationStatus_Http", get.clone()).await;
    assert_eq!(code, 200);
    let cutover = &progress["cutover"];
    assert_eq!(cutover["ready"], false, "{progress}");
    assert!(cutover["pendingSourceVersions"].is_u64(), "{progress}");
    assert!(cutover["reasons"].to_string().contains("--final"), "{progress}");
    let plain = http_payload("MigrationStatus_Http", "req", "GET", json!({}), None);
    let (_, progress) = call("MigrationStatus_Http", plain.clone()).await;
    assert!(progress.get("cutover").is_none(), "only on request");
}
