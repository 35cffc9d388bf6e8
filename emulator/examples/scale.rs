//! Emulator scale benchmark (issue: 200,000 resources with history in under 2 GB RSS, and a full system export
//! of them to Azurite in under 60 s). Run through `./scripts/bench`, which builds it in release mode; prints a
//! table and writes JSON to the path given as the first argument.

use std::time::{Duration, Instant};

use fhir_emulator::blob::BlobConfig;
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY, process_memory_mb};
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench-results/emulator-scale.json".into());
    let resources: usize = std::env::var("SCALE_RESOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let azurite = Azurite::start().await.expect("Azurite starts (run npm ci)");
    let config = EmulatorConfig {
        blob: Some(BlobConfig {
            endpoint: url::Url::parse(&azurite.blob_endpoint()).unwrap(),
            account: DEV_ACCOUNT.into(),
            key: DEV_KEY.into(),
        }),
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    let emulator = spawn(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap();

    let started = Instant::now();
    let lines = generate(&SeedParams {
        resources,
        hostile: false,
        search_parameters: 0,
        ..SeedParams::default()
    });
    let (loaded, errors) = load_into(emulator.store(), &lines);
    assert!(errors.is_empty(), "{} seed lines refused", errors.len());
    drop(lines);
    let seed_secs = started.elapsed().as_secs_f64();
    let (resource_count, version_count) = emulator.store().size();
    let rss_after_load = process_memory_mb("VmRSS:");

    let http = reqwest::Client::new();
    let started = Instant::now();
    let kickoff = http
        .get(format!(
            "{}/$export?includeAssociatedData=_history,_deleted",
            emulator.base_url
        ))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let status_url = kickoff.headers()["content-location"].to_str().unwrap().to_string();
    let manifest: Value = loop {
        let resp = http.get(&status_url).send().await.unwrap();
        if resp.status() == 200 {
            break resp.json().await.unwrap();
        }
        assert_eq!(resp.status(), 202, "export failed: {}", resp.text().await.unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "export did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let export_secs = started.elapsed().as_secs_f64();
    let exported: u64 = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    let files = manifest["output"].as_array().unwrap().len();
    let rss_peak = process_memory_mb("VmRSS:");
    assert_eq!(exported as usize, loaded, "every stored version was exported");

    let rows = [
        ("resources", resource_count as f64, "", "200000"),
        ("versions (with history)", version_count as f64, "", ""),
        ("seed + load time", seed_secs, "s", ""),
        ("RSS after load", rss_after_load, "MB", "< 2048"),
        ("full system export to Azurite", export_secs, "s", "< 60"),
        ("versions exported", exported as f64, "", ""),
        ("export files", files as f64, "", ""),
        ("RSS after export", rss_peak, "MB", "< 2048"),
    ];
    println!("{:<32} {:>14} {:>8}", "measure", "value", "target");
    for (name, value, unit, target) in rows {
        println!("{name:<32} {:>14} {target:>8}", format!("{value:.1}{unit}"));
    }
    let report = json!({
        "benchmark": "emulator-scale",
        "resources": resource_count, "versions": version_count,
        "seed_seconds": seed_secs, "rss_after_load_mb": rss_after_load,
        "export_seconds": export_secs, "exported_versions": exported, "export_files": files,
        "rss_after_export_mb": rss_peak,
        "targets": { "rss_mb_max": 2048, "export_seconds_max": 60 },
        "pass": rss_peak < 2048.0 && export_secs < 60.0
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nwrote {out}");
}
