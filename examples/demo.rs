//! The local demo behind `./scripts/demo`: Azurite, an emulated Azure API for FHIR (source), an emulated AHDS
//! FHIR service (destination) and the real custom-handler binary, wired as in Azure, then driven like the
//! Functions host drives it. Everything stops when the demo ends, even on failure.
//!
//! Today the handler's timer function prepares the migration state; the engine and verification issues grow
//! this into a full migration with a verification report.

use std::path::PathBuf;
use std::process::ExitCode;

use fhir_emulator::blob::BlobConfig;
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::storage::tables::TableService;
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY, HandlerProcess, timer_payload};
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

    step("starting the custom handler as the Functions host would");
    let settings = [
        ("AzureWebJobsStorage", azurite.connection_string()),
        ("AZURE_ChunkTableName", "chunk".to_string()),
        ("AZURE_ExportTableName", "export".to_string()),
        ("AZURE_SourceUri", source.base_url.clone()),
        ("AZURE_DestinationUri", destination.base_url.clone()),
    ];
    let log = workdir.join("handler.log");
    let handler = HandlerProcess::start(&handler_binary()?, &settings, Some(&log))
        .await
        .map_err(|e| format!("the handler did not become ready: {e} (see {})", log.display()))?;
    println!("    listening on 127.0.0.1:{} (log: {})", handler.port(), log.display());

    step("firing the MigrationOrchestrator timer");
    let now = chrono::Utc::now().to_rfc3339();
    let resp = handler
        .invoke(
            "MigrationOrchestrator",
            &timer_payload("MigrationOrchestrator", "myTimer", &now, false),
        )
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("the timer invocation failed with {status}: {body}"));
    }
    for line in body["Logs"].as_array().into_iter().flatten() {
        println!("    handler log: {}", line.as_str().unwrap_or_default());
    }

    step("verifying");
    let mut source_settings = SettingsSource::default();
    source_settings.extend(settings.iter().cloned());
    let parsed = Settings::from_source(&source_settings).map_err(|e| e.to_string())?;
    let credential = parsed.storage.credential()?;
    let tables = TableService::new(
        parsed.storage.table_endpoint().clone(),
        credential,
        reqwest::Client::new(),
    );
    for name in [&parsed.chunk_table, &parsed.export_table] {
        let rows = tables
            .table(name)
            .map_err(|e| e.to_string())?
            .query_all(None)
            .await
            .map_err(|e| e.to_string())?;
        println!("    state table '{name}' exists ({} rows)", rows.len());
    }
    println!(
        "\nverification: PASS — the stack is up, the source is seeded, and the handler serves its functions end to end."
    );
    println!(
        "(The migration engine that moves the data, and the verification checks, arrive with the next issues; see README.)"
    );
    drop(handler);
    Ok(())
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
