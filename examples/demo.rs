//! The local demo behind `./scripts/demo`: Azurite, an emulated Azure API for FHIR (source), an emulated AHDS
//! FHIR service (destination) and the real custom-handler binary, wired as in Azure, then driven like the
//! Functions host drives it. Everything stops when the demo ends, even on failure.
//!
//! The source is seeded with 2,000 resources over 30 days (history, soft deletes, custom SearchParameters),
//! the three timer functions run until the migration has caught up, and every version on both servers is
//! compared.

use std::path::PathBuf;
use std::process::ExitCode;

use fhir_emulator::blob::BlobConfig;
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY, HandlerProcess, MockIngestion, http_payload, timer_payload};
use serde_json::Value;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The handler binary built next to this example (`target/<profile>/fhir-migration-tool`).
fn handler_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("unexpected example location")?;
    let binary = dir.join("fhir-migration-tool");
    binary.exists().then_some(binary.clone()).ok_or_else(|| {
        format!(
            "{} is missing: run `cargo build --bins` (./scripts/demo does)",
            binary.display()
        )
    })
}

async fn run() -> Result<(), String> {
    let workdir = std::env::current_dir().map_err(|e| e.to_string())?.join(".demo");
    std::fs::create_dir_all(&workdir).map_err(|e| e.to_string())?;

    step("starting Azurite (Blob + Table) on free loopback ports");
    let azurite = Azurite::start().await.map_err(|e| e.to_string())?;
    println!(
        "    blob  {}\n    table {}",
        azurite.blob_endpoint(),
        azurite.table_endpoint()
    );

    step("starting the emulated FHIR servers (export/import storage: the Azurite account)");
    let source = start_emulator(Flavor::Aapi, &azurite).await?;
    let destination = start_emulator(Flavor::Ahds, &azurite).await?;
    for (role, base) in [
        ("source (Azure API for FHIR)", &source.base_url),
        ("destination (AHDS FHIR service)", &destination.base_url),
    ] {
        let software = capability(base).await?;
        println!("    {role}: {base} answers as {software}");
    }

    step("seeding the source: 2,000 resources over 30 days, with history and soft deletes");
    let lines = generate(&SeedParams {
        resources: 2000,
        ..SeedParams::default()
    });
    let (loaded, errors) = load_into(source.store(), &lines);
    if !errors.is_empty() {
        return Err(format!("seeding refused {} lines: {}", errors.len(), errors[0]));
    }
    println!("    {loaded} versions loaded");
    for (role, base) in [("source", &source.base_url), ("destination", &destination.base_url)] {
        let current = count(&format!("{base}/?_summary=count")).await?;
        let versions = count(&format!("{base}/_history?_summary=count")).await?;
        println!("    {role}: {current} current resources, {versions} versions");
    }

    step("starting a local App Insights ingestion endpoint (receives the tool's telemetry)");
    let ingestion = MockIngestion::start().await.map_err(|e| e.to_string())?;

    step("starting the custom handler as the Functions host would");
    let settings = [
        ("AzureWebJobsStorage", azurite.connection_string()),
        ("AZURE_ChunkTableName", "chunk".to_string()),
        ("AZURE_ExportTableName", "export".to_string()),
        ("AZURE_SourceUri", source.base_url.clone()),
        ("AZURE_DestinationUri", destination.base_url.clone()),
        ("AZURE_ExportWithHistory", "true".to_string()),
        ("AZURE_ExportWithDelete", "true".to_string()),
        ("AZURE_ExportChunkTime", "3".to_string()),
        ("AZURE_SafetyLagSeconds", "60".to_string()),
        ("AZURE_ExportConfirmSeconds", "1".to_string()),
        ("AZURE_MaxExportRetriesEnabled", "true".to_string()),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string()),
    ];
    let log = workdir.join("handler.log");
    let mut handler = HandlerProcess::start(&handler_binary()?, &settings, Some(&log))
        .await
        .map_err(|e| format!("the handler did not become ready: {e} (see {})", log.display()))?;
    println!("    listening on 127.0.0.1:{} (log: {})", handler.port(), log.display());

    step("migrating: firing MigrationOrchestrator, ExportStatus and ImportStatus as their timers would");
    let target = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
    let started = std::time::Instant::now();
    let mut rounds = 0;
    let status = loop {
        rounds += 1;
        for function in ["MigrationOrchestrator", "ExportStatus", "ImportStatus"] {
            let now = chrono::Utc::now().to_rfc3339();
            let resp = handler
                .invoke(function, &timer_payload(function, "myTimer", &now, false))
                .await
                .map_err(|e| e.to_string())?;
            let code = resp.status();
            let body: Value = resp.json().await.map_err(|e| e.to_string())?;
            if !code.is_success() {
                return Err(format!("{function} failed with {code}: {body}"));
            }
            for line in body["Logs"].as_array().into_iter().flatten() {
                println!("    [{function}] {}", line.as_str().unwrap_or_default());
            }
        }
        let resp = handler
            .invoke(
                "MigrationStatus_Http",
                &http_payload("MigrationStatus_Http", "req", "GET", serde_json::json!({}), None),
            )
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        let status: Value =
            serde_json::from_str(body["Outputs"]["res"]["body"].as_str().unwrap_or("{}")).map_err(|e| e.to_string())?;
        let through = status["migratedThrough"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let idle = status["windowsInFlight"].as_array().is_some_and(|w| w.is_empty());
        if idle && through.is_some_and(|t| t >= target) {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(300) {
            return Err(format!("the migration did not finish in 5 minutes: {status}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    println!(
        "    caught up after {rounds} rounds in {:.1}s: migrated through {}, {} windows committed, {} failures",
        started.elapsed().as_secs_f64(),
        status["migratedThrough"].as_str().unwrap_or("?"),
        status["windowsCommitted"],
        status["failures"]
    );
    if let Some(reminder) = status["reminder"].as_str() {
        println!("    reminder: {reminder}");
    }

    step("verifying through the functions: E2ETest_Http (mode=all), E2ETest_Runner ticks, E2ETest_Status");
    let http_body = |resp: Value| -> Result<(u64, Value), String> {
        let res = &resp["Outputs"]["res"];
        let body = serde_json::from_str(res["body"].as_str().unwrap_or("{}")).map_err(|e| e.to_string())?;
        Ok((res["statusCode"].as_u64().unwrap_or(0), body))
    };
    let resp = handler
        .invoke(
            "E2ETest_Http",
            &http_payload(
                "E2ETest_Http",
                "req",
                "POST",
                serde_json::json!({ "mode": "all", "count": "200" }),
                None,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    let (code, started_run) = http_body(resp.json().await.map_err(|e| e.to_string())?)?;
    if code != 202 {
        return Err(format!("E2ETest_Http answered {code}: {started_run}"));
    }
    let id = started_run["id"].as_str().unwrap_or_default().to_string();
    // The status URL names the Functions host, which the demo plays itself: it polls E2ETest_Status in process.
    println!("    run {id}; the demo polls its status through the handler (E2ETest_Status)");
    let verify_started = std::time::Instant::now();
    let result = loop {
        let now = chrono::Utc::now().to_rfc3339();
        let resp = handler
            .invoke(
                "E2ETest_Runner",
                &timer_payload("E2ETest_Runner", "myTimer", &now, false),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "E2ETest_Runner failed: {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        let mut payload = http_payload("E2ETest_Status", "req", "GET", serde_json::json!({}), None);
        payload["Data"]["req"]["Params"] = serde_json::json!({ "id": id });
        let resp = handler
            .invoke("E2ETest_Status", &payload)
            .await
            .map_err(|e| e.to_string())?;
        let (code, body) = http_body(resp.json().await.map_err(|e| e.to_string())?)?;
        if code == 200 {
            break body;
        }
        if code != 202 || verify_started.elapsed() > std::time::Duration::from_secs(300) {
            return Err(format!("E2ETest_Status answered {code}: {body}"));
        }
    };
    let output = &result["output"];
    let surface_rows = output["SurfaceCheck"].as_array().map_or(0, Vec::len);
    let surface_failing = output["SurfaceCheck"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["Result"] != "Pass")
        .count();
    println!("    surface check: {surface_rows} rows, {surface_failing} failing");
    let deep = &output["DeepCheckSummary"];
    println!(
        "    deep check: {} sampled resources compared, {} differ",
        deep["compared"], deep["failed"]
    );
    let full = &output["FullCheck"];
    println!(
        "    full check: {} versions compared, {} missing, {} extra, {} different",
        full["compared"], full["missing"], full["extra"], full["different"]
    );
    if result["runtimeStatus"] != "Completed" || result["passed"] != true {
        return Err(format!("verification: FAIL — {result}"));
    }

    step("cross-checking the emulators' stores directly: every version of every resource");
    let (compared, differences) = compare(source.store(), destination.store());
    for (role, base) in [("source", &source.base_url), ("destination", &destination.base_url)] {
        let current = count(&format!("{base}/?_summary=count")).await?;
        let versions = count(&format!("{base}/_history?_summary=count")).await?;
        println!("    {role}: {current} current resources, {versions} versions");
    }
    // SIGTERM, as the host recycles a worker: the handler flushes its telemetry before it exits.
    handler
        .terminate(std::time::Duration::from_secs(15))
        .await
        .map_err(|e| e.to_string())?;
    report_telemetry(&ingestion);
    if differences.is_empty() {
        println!(
            "\nverification: PASS — {compared} versions identical on both servers (custom SearchParameters copied separately)."
        );
        Ok(())
    } else {
        for d in differences.iter().take(20) {
            println!("    differs: {d}");
        }
        Err(format!(
            "verification: FAIL — {} of {compared} resources differ",
            differences.len()
        ))
    }
}

/// Compares every version (id, versionId, lastUpdated, deleted, content) of every resource but
/// SearchParameters, which are copied through the REST API and so get new versions.
fn compare(source: &fhir_emulator::Store, destination: &fhir_emulator::Store) -> (usize, Vec<String>) {
    let versions = |store: &fhir_emulator::Store| -> std::collections::BTreeMap<String, Vec<(i64, i64, bool, Value)>> {
        store
            .snapshot()
            .into_iter()
            .filter(|(k, _)| &*k.0 != "SearchParameter")
            .map(|(k, r)| {
                let v = r
                    .versions()
                    .iter()
                    .map(|v| {
                        (
                            v.version_id,
                            v.last_updated,
                            v.deleted,
                            serde_json::from_str(&v.body).unwrap_or(Value::Null),
                        )
                    })
                    .collect();
                (format!("{}/{}", k.0, k.1), v)
            })
            .collect()
    };
    let (src, dst) = (versions(source), versions(destination));
    let compared = src.values().map(Vec::len).sum();
    let mut differences: Vec<String> = src
        .iter()
        .filter(|(k, v)| dst.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    differences.extend(
        dst.keys()
            .filter(|k| !src.contains_key(*k))
            .map(|k| format!("{k} (only at the destination)")),
    );
    (compared, differences)
}

/// What App Insights would have received: custom events by name, dependency calls, exceptions.
fn report_telemetry(ingestion: &MockIngestion) {
    let mut events: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (name, _) in ingestion.custom_events() {
        *events.entry(name).or_default() += 1;
    }
    let summary: Vec<String> = events.iter().map(|(n, c)| format!("{n} {c}")).collect();
    println!(
        "    telemetry received: custom events [{}], {} dependency calls, {} exceptions",
        summary.join(", "),
        ingestion.of_kind("RemoteDependency").len(),
        ingestion.of_kind("Exception").len()
    );
}

fn step(what: &str) {
    println!("==> {what}");
}

async fn start_emulator(flavor: Flavor, azurite: &Azurite) -> Result<fhir_emulator::RunningEmulator, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let blob = BlobConfig {
        endpoint: url::Url::parse(&azurite.blob_endpoint()).map_err(|e| e.to_string())?,
        account: DEV_ACCOUNT.to_string(),
        key: DEV_KEY.to_string(),
    };
    let config = EmulatorConfig {
        blob: Some(blob),
        ..EmulatorConfig::quick(flavor)
    };
    spawn(config, listener).await.map_err(|e| e.to_string())
}

async fn count(url: &str) -> Result<u64, String> {
    let body: Value = reqwest::get(url)
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    body["total"]
        .as_u64()
        .ok_or_else(|| format!("{url} returned no total: {body}"))
}

async fn capability(base: &str) -> Result<String, String> {
    let body: Value = reqwest::get(format!("{base}/metadata"))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body["software"]["name"]
        .as_str()
        .unwrap_or("an unknown server")
        .to_string())
}
