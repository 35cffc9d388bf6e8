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
    // The report names its scope, and the status body carries what `status --json` does (issue 25).
    assert!(
        cutover["scope"]
            .as_str()
            .unwrap()
            .starts_with("scope: the whole server"),
        "{progress}"
    );
    for key in ["lastTickAt", "waiting", "openFailures", "sourceClockSkewSeconds"] {
        assert!(progress.get(key).is_some(), "{key}: {progress}");
    }
    assert!(progress["progress"]["exportedVersions"].is_i64(), "{progress}");
    let plain = http_payload("MigrationStatus_Http", "req", "GET", json!({}), None);
    let (_, progress) = call("MigrationStatus_Http", plain.clone()).await;
    assert!(progress.get("cutover").is_none(), "only on request");
}

/// `Reconcile_Http` on 200,000 ids per server: the `E2ETest_Runner` timer works on the run in checkpointed slices
/// (two timers at once never both advance it), a slice whose checkpoint was lost is repeated without counting or
/// deleting anything twice, `Reconcile_Status` shows the progress, and the result is exact.
#[tokio::test]
async fn reconcile_http_compares_200000_ids_in_slices_and_the_result_is_exact() {
    use crate::faults::scenario;
    use fhir_emulator::seed::load_into;
    use fhir_migration_tool::config::{Settings, SettingsSource};
    use fhir_migration_tool::storage::tables::IfMatch;
    use fhir_testkit::{http_payload, timer_payload};
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};

    const COMMON: usize = 200_000;
    let began = Instant::now();
    let s = scenario(0, 1, &[]).await;
    // Only this test's Patients: the scenario's generator may add a few of its own.
    for (k, _) in s.source.store().snapshot() {
        if &*k.0 == "Patient" {
            s.source.store().hard_delete("Patient", &k.1);
        }
    }
    // Three ids per millisecond, so comparisons meet groups; an hour ago, so later writes sort after them.
    let base = chrono::Utc::now() - chrono::TimeDelta::hours(1);
    let line = |id: &str, i: usize| {
        let t = base + chrono::TimeDelta::milliseconds((i / 3) as i64);
        format!(
            r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"1","lastUpdated":"{}"}},"gender":"unknown"}}"#,
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        )
    };
    let common: Vec<String> = (0..COMMON).map(|i| line(&format!("c{i}"), i)).collect();
    let mut on_source = common.clone();
    let mut on_destination = common;
    // 5 only at the source (missing), 7 only at the destination (hard-deleted at the source), spread out.
    on_source.extend((0..5).map(|i| line(&format!("m{i}"), i * 40_000 + 1)));
    on_destination.extend((0..7).map(|i| line(&format!("x{i}"), i * 30_000 + 2)));
    for (store, lines) in [(s.source.store(), &on_source), (s.destination.store(), &on_destination)] {
        let (loaded, errors) = load_into(store, lines);
        assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(3)]);
        assert_eq!(loaded, lines.len());
    }
    // 3 soft-deleted at the source (the migration will carry them), and some updated there: a newer version
    // elsewhere in the order, not a gap.
    for i in [10, 100_000, 199_990] {
        assert!(s.source.store().delete("Patient", &format!("c{i}")).is_some());
    }
    // 301 of them, so the look-ups of ids seen on one side only run in several batches.
    for i in (0..301).map(|k| 20 + k * 600) {
        let body = json!({ "resourceType": "Patient", "id": format!("c{i}"), "gender": "other" });
        s.source.store().put("Patient", &format!("c{i}"), body).unwrap();
    }
    println!("seeded in {:?}", began.elapsed());

    let handler = s.handler().await;
    let call = |function: &'static str, payload: Value| {
        let invoker = handler.invoker();
        async move {
            let resp: Value = invoker.invoke(function, &payload).await.unwrap().json().await.unwrap();
            let res = &resp["Outputs"]["res"];
            let body: Value = serde_json::from_str(res["body"].as_str().unwrap_or("null")).unwrap();
            (res["statusCode"].as_u64().unwrap_or(0), body)
        }
    };
    let bad = http_payload("Reconcile_Http", "req", "POST", json!({ "pagesPerSlice": "0" }), None);
    let (code, body) = call("Reconcile_Http", bad).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("pagesPerSlice"), "{body}");
    // 40 pages of 1000 ids per slice (both servers together): about 20 slices to compare.
    let start = http_payload(
        "Reconcile_Http",
        "req",
        "POST",
        json!({ "types": "Patient", "maxDeletes": "10", "pagesPerSlice": "40" }),
        Some(r#"{"apply": true}"#),
    );
    let (code, started) = call("Reconcile_Http", start).await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let mut status = http_payload("Reconcile_Status", "req", "GET", json!({}), None);
    status["Data"]["req"]["Params"] = json!({ "id": id });

    // The run's row, read and written behind the handler's back to play a lost checkpoint.
    let mut settings = SettingsSource::default();
    settings.extend(s.settings.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let app = fhir_migration_tool::app::App::build(Settings::from_source(&settings).unwrap()).unwrap();
    let table = app.tables().table(&app.settings().reconcile_table).unwrap();

    // A candidate recorded by a slice whose checkpoint was lost, for an id the source has (again): the delete
    // phase asks the source before deleting, and keeps it.
    let mut stale = fhir_migration_tool::storage::tables::Entity::new(id.as_str(), "Patient_c5").unwrap();
    stale
        .set_str("ResourceType", "Patient")
        .set_str("ResourceId", "c5")
        .set_str("State", "candidate");
    table.upsert(&stale).await.unwrap();

    let tick = || {
        let invoker = handler.invoker();
        let id = id.clone();
        async move {
            let payload = timer_payload("E2ETest_Runner", "myTimer", &chrono::Utc::now().to_rfc3339(), false);
            let resp = invoker.invoke("E2ETest_Runner", &payload).await.unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            let body: Value = resp.json().await.unwrap();
            body.to_string().contains(&id)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut progress = Vec::new();
    let mut replayed = false;
    let done = loop {
        assert!(Instant::now() < deadline, "the run did not finish: {progress:?}");
        let before = table.get("run", &id).await.unwrap().unwrap();
        // Two timers at once: the lease lets one of them work on the run.
        let (a, b) = tokio::join!(tick(), tick());
        assert!(!(a && b), "two invocations worked on the run at once");
        let (code, body) = call("Reconcile_Status", status.clone()).await;
        let custom = body["customStatus"].clone();
        progress.push((
            custom["phase"].clone(),
            custom["sourceIds"].clone(),
            custom["slices"].clone(),
        ));
        // Once, mid-comparison: the slice just done "crashed" before its checkpoint — the row goes back, and the
        // next slice repeats it (writing its candidates again).
        if !replayed && custom["sourceIds"].as_u64().unwrap_or(0) > 100_000 {
            replayed = true;
            let mut back = before.clone();
            back.set_datetime("LeaseUntil", chrono::Utc::now() - chrono::TimeDelta::seconds(1));
            table.replace(&back, &IfMatch::Any).await.unwrap();
            continue;
        }
        if code == 200 {
            break body;
        }
        assert_eq!(code, 202, "{body}");
        assert_eq!(body["output"], Value::Null, "no report before the run completes");
    };
    assert!(replayed, "{progress:?}");
    assert_eq!(done["runtimeStatus"], "Completed", "{done}");
    let slices = done["customStatus"]["slices"].as_u64().unwrap();
    println!(
        "{slices} slices; {} status polls; done in {:?}",
        progress.len(),
        began.elapsed()
    );
    assert!(slices > 5, "the comparison ran in slices: {progress:?}");
    let out = &done["output"];
    assert_eq!(out["sourceIds"], json!(COMMON - 3 + 5), "{out}");
    assert_eq!(out["destinationIds"], json!(COMMON + 7), "{out}");
    assert_eq!(out["missingAtDestination"], 5, "{out}");
    assert_eq!(out["pendingSoftDeletes"], 3, "{out}");
    assert_eq!(out["hardDeletedAtSource"], 7, "{out}");
    assert_eq!(out["deleted"], 7, "{out}");
    assert_eq!(out["applied"], true, "{out}");
    assert_eq!(out["typesCompared"], 1, "{out}");
    let mut missing: Vec<&str> = out["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    missing.sort();
    assert_eq!(
        missing,
        ["Patient/m0", "Patient/m1", "Patient/m2", "Patient/m3", "Patient/m4"]
    );
    let http = reqwest::Client::new();
    for i in 0..7 {
        let url = format!("{}/Patient/x{i}", s.destination.base_url);
        assert_eq!(http.get(url).send().await.unwrap().status(), 404, "x{i} deleted");
    }
    for other in ["c0", "c5"] {
        let url = format!("{}/Patient/{other}", s.destination.base_url);
        assert_eq!(http.get(url).send().await.unwrap().status(), 200, "{other} not deleted");
    }
    // One row per candidate, each marked deleted; the stale one kept.
    let mut rows = table.query_all(Some(&format!("PartitionKey eq '{id}'"))).await.unwrap();
    let kept = rows.iter().position(|r| r.row_key() == "Patient_c5").unwrap();
    assert_eq!(rows.remove(kept).get_str("State"), Some("kept"));
    assert_eq!(rows.len(), 7);
    assert!(
        rows.iter()
            .all(|r| r.get_str("State") == Some("deleted") && r.get_datetime("DeletedAt").is_some())
    );
    // A finished run is left alone.
    assert!(!tick().await);
    assert!(began.elapsed() < Duration::from_secs(240), "{:?}", began.elapsed());
}
