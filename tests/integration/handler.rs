//! The real `fhir-migration-tool serve` process, driven by the harness the way the Azure Functions host drives it.

use std::path::Path;
use std::process::Command;

use fhir_migration_tool::functions::{FUNCTIONS, Trigger};
use fhir_testkit::{Azurite, HandlerProcess, free_port, http_payload, timer_payload as host_timer};
use serde_json::{Value, json};

use crate::support::{azurite, table_service, unique_name};

const NOW: &str = "2026-11-26T07:40:45.004275Z";

/// The handler process with its FHIR servers (emulators, kept alive alongside it).
struct Running {
    handler: HandlerProcess,
    _servers: (fhir_emulator::RunningEmulator, fhir_emulator::RunningEmulator),
}

impl std::ops::Deref for Running {
    type Target = HandlerProcess;
    fn deref(&self) -> &HandlerProcess {
        &self.handler
    }
}

async fn start(azurite: &Azurite, chunk: &str, export: &str) -> Running {
    let emulator = |flavor| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fhir_emulator::spawn(fhir_emulator::EmulatorConfig::quick(flavor), listener)
            .await
            .unwrap()
    };
    let (source, destination) = (
        emulator(fhir_emulator::Flavor::Aapi).await,
        emulator(fhir_emulator::Flavor::Ahds).await,
    );
    let settings = [
        ("AzureWebJobsStorage", azurite.connection_string()),
        ("AZURE_ChunkTableName", chunk.to_string()),
        ("AZURE_ExportTableName", export.to_string()),
        ("AZURE_SourceUri", source.base_url.clone()),
        ("AZURE_DestinationUri", destination.base_url.clone()),
    ];
    let handler = HandlerProcess::start(Path::new(env!("CARGO_BIN_EXE_fhir-migration-tool")), &settings, None)
        .await
        .expect("the handler starts and answers GET /");
    Running {
        handler,
        _servers: (source, destination),
    }
}

fn timer_payload(function: &str, binding: &str) -> Value {
    host_timer(function, binding, NOW, false)
}

#[tokio::test]
async fn starter_tick_creates_the_state_tables_and_reports_through_logs() {
    let azurite = azurite().await;
    let (chunk, export) = (unique_name("chunk"), unique_name("export"));
    let handler = start(&azurite, &chunk, &export).await;

    let resp = handler
        .invoke(
            "MigrationOrchestrator",
            &timer_payload("MigrationOrchestrator", "myTimer"),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let logs = body["Logs"].to_string();
    assert!(
        logs.contains("no resources yet"),
        "the empty source is reported: {logs}"
    );
    assert!(body["Outputs"].as_object().unwrap().is_empty());

    // Both tables now exist: a row can be written to each.
    let service = table_service(&azurite);
    for name in [&chunk, &export] {
        let table = service.table(name).unwrap();
        table
            .upsert(&fhir_migration_tool::storage::tables::Entity::new("p", "r").unwrap())
            .await
            .unwrap();
    }
    // A second (or past-due) tick is harmless.
    let late = host_timer("MigrationOrchestrator", "myTimer", NOW, true);
    assert_eq!(
        handler.invoke("MigrationOrchestrator", &late).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn every_listed_function_is_routed_and_unknown_ones_get_a_json_404() {
    let azurite = azurite().await;
    let handler = start(&azurite, &unique_name("chunk"), &unique_name("export")).await;
    for spec in FUNCTIONS {
        let payload = match spec.trigger {
            Trigger::Timer { binding, .. } => timer_payload(spec.name, binding),
            Trigger::Http { binding, .. } => http_payload(spec.name, binding, "GET", json!({}), None),
        };
        let resp = handler.invoke(spec.name, &payload).await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "{} answered {}",
            spec.name,
            resp.text().await.unwrap()
        );
    }

    let resp = handler
        .invoke("NoSuchFunction", &json!({"Data": {}, "Metadata": {}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("MigrationOrchestrator"),
        "{body}"
    );

    // A payload missing its trigger binding fails the invocation visibly (non-2xx), with the reason.
    let resp = handler
        .invoke("MigrationOrchestrator", &json!({"Data": {}, "Metadata": {}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("myTimer"), "{body}");
}

#[tokio::test]
async fn listens_on_loopback_only() {
    let azurite = azurite().await;
    let handler = start(&azurite, &unique_name("chunk"), &unique_name("export")).await;
    // /proc/net/tcp lists listening sockets as hex "address:port" with state 0A; 0100007F is 127.0.0.1.
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let wanted = format!(":{:04X}", handler.port());
    let listening: Vec<_> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<_> = l.split_whitespace().collect();
            (cols.get(3) == Some(&"0A") && cols[1].ends_with(&wanted)).then(|| cols[1].to_string())
        })
        .collect();
    assert_eq!(listening, [format!("0100007F{wanted}")]);
    let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    assert!(
        !v6.lines().any(|l| l.contains(&wanted) && l.contains(" 0A ")),
        "must not listen on IPv6 any"
    );
}

#[tokio::test]
async fn refuses_to_start_without_storage_and_says_why_on_stdout() {
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-migration-tool"))
        .arg("serve")
        .env_clear()
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", free_port().unwrap().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no storage account configured"), "{stdout}");
    // The host logs every stderr line as an Error; the handler writes nothing there.
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The verification functions as the host calls them: start a run, work on it with the timer, poll its status.
#[tokio::test]
async fn verification_runs_through_the_functions_and_reports_what_is_missing() {
    let azurite = azurite().await;
    let handler = start(&azurite, &unique_name("chunk"), &unique_name("export")).await;
    // Data only at the source: the check must fail and say so.
    handler
        ._servers
        .0
        .store()
        .put("Patient", "p1", json!({ "resourceType": "Patient", "id": "p1" }))
        .unwrap();
    let bad = http_payload("E2ETest_Http", "req", "POST", json!({ "types": "Patient,../x" }), None);
    let (code, body) = call(&handler, "E2ETest_Http", &bad).await;
    assert_eq!(code, 400, "{body}");

    // Options from the query string and from a JSON body, together.
    let mut payload = http_payload(
        "E2ETest_Http",
        "req",
        "POST",
        json!({ "types": "Patient" }),
        Some(r#"{"mode": ["surface", "deep", "full"], "count": 5}"#),
    );
    payload["Data"]["req"]["Url"] = json!("https://fn.example/api/E2ETest_Http?code=SECRETKEY&types=Patient");
    let (code, body, headers) = call_with_headers(&handler, "E2ETest_Http", &payload).await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let status_uri = body["statusQueryGetUri"].as_str().unwrap();
    assert_eq!(status_uri, format!("https://fn.example/api/E2ETest_Status/{id}"));
    assert_eq!(
        body["input"],
        json!({ "mode": "surface,deep,full", "types": 1, "count": 5 })
    );
    assert_eq!(
        headers["Location"],
        json!(status_uri),
        "the status URL is in Location too"
    );
    assert!(
        !body.to_string().contains("SECRETKEY"),
        "the function key is never echoed"
    );

    let status = |id: &str| {
        let mut p = http_payload("E2ETest_Status", "req", "GET", json!({}), None);
        p["Data"]["req"]["Params"] = json!({ "id": id });
        p
    };
    let (code, body) = call(&handler, "E2ETest_Status", &status(&id)).await;
    assert_eq!((code, body["runtimeStatus"].as_str()), (202, Some("Pending")), "{body}");

    let resp = handler
        .invoke("E2ETest_Runner", &timer_payload("E2ETest_Runner", "myTimer"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (code, body) = call(&handler, "E2ETest_Status", &status(&id)).await;
    assert_eq!(
        (code, body["runtimeStatus"].as_str()),
        (200, Some("Completed")),
        "{body}"
    );
    assert_eq!(body["output"]["FullCheck"]["missing"], 1, "{body}");
    assert_eq!(body["output"]["FullCheck"]["differences"][0]["id"], "p1", "{body}");
    assert_eq!(body["output"]["FullCheck"]["passed"], false, "{body}");
    assert_eq!(body["output"]["DeepCheck"][0]["id"], "p1", "{body}");
    assert_eq!(
        body["output"]["DeepCheck"][0]["differences"][0], "(missing at destination)",
        "{body}"
    );
    assert_eq!(body["output"]["SurfaceCheck"][0]["Result"], "Fail", "{body}");
    assert_eq!(body["passed"], false);

    let (code, _) = call(&handler, "E2ETest_Status", &status("nosuchrun")).await;
    assert_eq!(code, 404);
}

/// Invokes an HTTP function as the host would; returns the status code, the JSON body and the headers it set.
async fn call_with_headers(handler: &HandlerProcess, function: &str, payload: &Value) -> (u64, Value, Value) {
    let resp: Value = handler.invoke(function, payload).await.unwrap().json().await.unwrap();
    let res = &resp["Outputs"]["res"];
    let body = serde_json::from_str(res["body"].as_str().unwrap_or("null")).unwrap();
    (res["statusCode"].as_u64().unwrap_or(0), body, res["headers"].clone())
}

async fn call(handler: &HandlerProcess, function: &str, payload: &Value) -> (u64, Value) {
    let (code, body, _) = call_with_headers(handler, function, payload).await;
    (code, body)
}

/// `ImportFailures_Http`: the ledger as JSON; requests it cannot carry out get a 400 that says why.
#[tokio::test]
async fn import_failures_http_lists_the_ledger_and_refuses_unclear_requests() {
    let azurite = azurite().await;
    let handler = start(&azurite, &unique_name("chunk"), &unique_name("export")).await;
    let (code, body) = call(
        &handler,
        "ImportFailures_Http",
        &http_payload("ImportFailures_Http", "req", "GET", json!({ "all": "true" }), None),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["summary"]["total"], 0, "{body}");
    assert_eq!(body["entries"], json!([]));
    for (query, expected) in [
        (json!({ "action": "accept" }), "accept needs ids"),
        (json!({ "action": "accept", "ids": "Patient|p1|1" }), "say why"),
        (
            json!({ "action": "accept", "ids": "Patient|p1|1", "reason": "test data" }),
            "no unresolved failure",
        ),
        (json!({ "action": "retry", "ids": "Patient|p1|1" }), "Patient|p1|1"),
        (json!({ "action": "explode" }), "retry, accept or reopen"),
    ] {
        let (code, body) = call(
            &handler,
            "ImportFailures_Http",
            &http_payload("ImportFailures_Http", "req", "POST", query.clone(), None),
        )
        .await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(expected), "{query}: {body}");
    }
}
