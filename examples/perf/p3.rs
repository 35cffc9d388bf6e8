//! P3, footprint: how fast the handler process answers the host's first `GET /`, and its peak memory while it
//! migrates a large dataset (the handler only: the emulators run in the benchmark's own process).

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use fhir_emulator::Flavor;
use fhir_testkit::{Azurite, HandlerProcess, http_payload, timer_payload};
use serde::Serialize;
use serde_json::Value;

use crate::common;

#[derive(Debug, Serialize)]
pub struct Footprint {
    /// Median of several starts: process spawn to the first successful `GET /`.
    pub start_to_ready_ms: f64,
    pub starts: usize,
    pub resources: usize,
    pub versions: usize,
    pub migration_seconds: f64,
    /// VmHWM of the handler process at the end of the migration.
    pub peak_rss_mb: f64,
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn status(handler: &HandlerProcess) -> Value {
    let resp = handler
        .invoke(
            "MigrationStatus_Http",
            &http_payload("MigrationStatus_Http", "req", "GET", serde_json::json!({}), None),
        )
        .await
        .expect("status call");
    let body: Value = resp.json().await.expect("status JSON");
    serde_json::from_str(body["Outputs"]["res"]["body"].as_str().unwrap_or("{}")).unwrap_or_default()
}

pub async fn run(azurite: &Azurite, binary: &Path, resources: usize) -> Footprint {
    let source = common::emulator(Flavor::Aapi, azurite, Duration::ZERO).await;
    let destination = common::emulator(Flavor::Ahds, azurite, Duration::ZERO).await;
    let end = common::minutes_ago(30);
    let versions = common::seed(source.store(), resources, 30, end, 99);
    let source_settings = common::settings(
        azurite,
        &source,
        &destination,
        &[
            ("AZURE_ExportChunkTime", "10".into()),
            ("AZURE_ExportConfirmSeconds", "0".into()),
        ],
    );
    let settings: Vec<(&str, String)> = source_settings.pairs().map(|(k, v)| (k, v.to_string())).collect();

    let mut starts = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let handler = HandlerProcess::start(binary, &settings, None)
            .await
            .expect("the handler starts");
        starts.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(handler);
    }
    starts.sort_by(f64::total_cmp);

    let handler = HandlerProcess::start(binary, &settings, None)
        .await
        .expect("the handler starts");
    let started = Instant::now();
    loop {
        for function in ["MigrationOrchestrator", "ExportStatus", "ImportStatus"] {
            let payload = timer_payload(function, "myTimer", &Utc::now().to_rfc3339(), false);
            let resp = handler.invoke(function, &payload).await.expect("timer call");
            assert!(
                resp.status().is_success(),
                "{function} failed: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let s = status(&handler).await;
        let through = s["migratedThrough"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if s["windowsInFlight"].as_array().is_some_and(|w| w.is_empty()) && through.is_some_and(|t| t >= end) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the migration did not finish: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let migration = started.elapsed();
    let (_, destination_versions) = destination.store().size();
    assert!(
        destination_versions >= versions,
        "{destination_versions} of {versions} versions migrated"
    );
    Footprint {
        start_to_ready_ms: starts[starts.len() / 2],
        starts: starts.len(),
        resources,
        versions,
        migration_seconds: migration.as_secs_f64(),
        peak_rss_mb: peak_rss_mb(handler.pid()),
    }
}
