//! Reliability under faults: the real handler process (or engine) migrates while it is killed, while the servers
//! misbehave, and while a second process ticks the same tables. Every scenario ends with the tool's own full
//! check, which must find nothing missing, extra or different.
//!
//! Random choices come from a seeded generator whose seed is printed; `FAULT_SEED=<n>` replays a run.
//! `./scripts/soak` repeats the whole suite with fresh seeds and more kills.

use std::path::Path;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{Flavor, RunningEmulator};
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::verify::full::FullReport;
use fhir_testkit::{Azurite, HandlerProcess, Invoker, MockIngestion, http_payload, timer_payload};
use serde_json::{Value, json};

use crate::migration::{base_settings, emulator};

/// A small deterministic generator (xorshift64*), so a failing run can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(scenario: &str) -> Rng {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(7) as u64 | 1);
        println!("{scenario}: seed {seed} (FAULT_SEED={seed} replays it)");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Azurite, two emulators sharing it, the source seeded, and the settings a handler needs.
pub struct Scenario {
    pub azurite: Azurite,
    pub source: RunningEmulator,
    pub destination: RunningEmulator,
    pub settings: Vec<(&'static str, String)>,
    /// Everything to migrate ends here.
    pub end: chrono::DateTime<Utc>,
}

pub async fn scenario(resources: usize, days: u32, extra: &[(&'static str, &str)]) -> Scenario {
    scenario_on(Azurite::start().await.unwrap(), resources, days, extra).await
}

pub async fn scenario_on(azurite: Azurite, resources: usize, days: u32, extra: &[(&'static str, &str)]) -> Scenario {
    let source = emulator(Flavor::Aapi, &azurite).await;
    let destination = emulator(Flavor::Ahds, &azurite).await;
    let end = Utc::now() - TimeDelta::minutes(10);
    let lines = generate(&SeedParams {
        resources,
        span_days: days,
        end: Some(end.timestamp_millis()),
        seed: 31,
        search_parameters: 0,
        ..SeedParams::default()
    });
    let (_, errors) = load_into(source.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");
    let mut settings = base_settings(&azurite, &source, &destination);
    settings.extend([
        ("AZURE_ExportChunkTime", "1".to_string()),
        ("AZURE_ExportConfirmSeconds", "0".to_string()),
        // A kill between "decided" and "recorded" is repaired after this; the default follows the host's
        // function timeout, far longer than a test.
        ("AZURE_LeaseSeconds", "3".to_string()),
    ]);
    settings.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    Scenario {
        azurite,
        source,
        destination,
        settings,
        end,
    }
}

impl Scenario {
    pub async fn handler(&self) -> HandlerProcess {
        HandlerProcess::start(
            Path::new(env!("CARGO_BIN_EXE_fhir-migration-tool")),
            &self.settings,
            None,
        )
        .await
        .expect("the handler starts")
    }

    /// The tool's full check of both servers, run with the same settings.
    pub async fn full_check(&self) -> FullReport {
        let mut s = SettingsSource::default();
        s.extend(self.settings.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let app = fhir_migration_tool::app::App::build(Settings::from_source(&s).unwrap()).unwrap();
        let engine = app.engine();
        fhir_migration_tool::verify::full::full(
            engine.source(),
            engine.destination(),
            &engine.settings().resource_types,
            true,
        )
        .await
        .expect("the full check runs")
    }

    /// The full check finds every version, and nothing missing, extra or different.
    pub async fn assert_complete(&self) -> FullReport {
        let report = self.full_check().await;
        assert!(
            report.passed && report.missing == 0 && report.extra == 0 && report.different == 0,
            "{report:?}"
        );
        let (_, versions) = self.source.store().size();
        assert_eq!(
            report.compared as usize, versions,
            "every version at the source compared"
        );
        report
    }
}

/// One round of the three timers through `invoker`; failed invocations are tolerated (faults are on).
pub async fn round(invoker: &Invoker) {
    for function in ["MigrationOrchestrator", "ExportStatus", "ImportStatus"] {
        let payload = timer_payload(function, "myTimer", &Utc::now().to_rfc3339(), false);
        let _ = invoker.invoke(function, &payload).await;
    }
}

pub async fn status(invoker: &Invoker) -> Value {
    let get = http_payload("MigrationStatus_Http", "req", "GET", json!({}), None);
    let Ok(resp) = invoker.invoke("MigrationStatus_Http", &get).await else {
        return Value::Null;
    };
    let body: Value = resp.json().await.unwrap_or_default();
    serde_json::from_str(body["Outputs"]["res"]["body"].as_str().unwrap_or("null")).unwrap_or_default()
}

/// Whether the status shows everything up to `end` migrated and nothing in flight.
pub fn caught_up(status: &Value, end: chrono::DateTime<Utc>) -> bool {
    let through = status["migratedThrough"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    status["windowsInFlight"].as_array().is_some_and(|w| w.is_empty()) && through.is_some_and(|t| t >= end)
}

/// Rounds until caught up (with a deadline).
pub async fn finish(invokers: &[Invoker], end: chrono::DateTime<Utc>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        futures::future::join_all(invokers.iter().map(round)).await;
        let s = status(&invokers[0]).await;
        if caught_up(&s, end) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not caught up: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn r1_killing_the_handler_at_random_moments_loses_and_duplicates_nothing() {
    let s = scenario(1200, 25, &[]).await;
    let mut rng = Rng::from_env("R1");
    let mut handler = s.handler().await;
    // The soak form (scripts/soak) raises this.
    let kills: usize = std::env::var("FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    for _ in 0..kills {
        // Timers fire back to back while the process is killed at a random moment, mid-invocation or not.
        let invoker = handler.invoker();
        let ticking = tokio::spawn(async move {
            loop {
                round(&invoker).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20 + rng.below(300))).await;
        drop(handler); // SIGKILL, as a host restarting a worker on a timeout would
        ticking.abort();
        handler = s.handler().await;
    }
    finish(&[handler.invoker()], s.end).await;
    let report = s.assert_complete().await;
    println!(
        "R1: {kills} kills, {} versions compared, 0 lost, 0 duplicated",
        report.compared
    );
}

#[tokio::test]
async fn r4_two_handler_processes_on_the_same_tables_export_each_window_once() {
    let ingestion = MockIngestion::start().await.unwrap();
    let mut s = scenario(800, 15, &[]).await;
    s.settings
        .push(("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string()));
    let (mut first, mut second) = (s.handler().await, s.handler().await);
    finish(&[first.invoker(), second.invoker()], s.end).await;
    for h in [&mut first, &mut second] {
        h.terminate(Duration::from_secs(15)).await.unwrap(); // flushes telemetry
    }
    let events = ingestion.custom_events();
    let windows: Vec<(String, String)> = events
        .iter()
        .filter(|(n, p)| n == "Export" && p["ExportStatus"] == "Started")
        .map(|(_, p)| {
            (
                p["Since"].as_str().unwrap().to_string(),
                p["Till"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let distinct: std::collections::BTreeSet<_> = windows.iter().collect();
    assert!(windows.len() >= 10, "{} exports", windows.len());
    assert_eq!(
        windows.len(),
        distinct.len(),
        "a window was exported twice: {windows:?}"
    );
    let tills: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "ImportTill")
        .map(|(_, p)| p["Till"].as_str().unwrap())
        .collect();
    let distinct_tills: std::collections::BTreeSet<_> = tills.iter().collect();
    assert_eq!(
        tills.len(),
        distinct_tills.len(),
        "the cursor advanced twice past a window: {tills:?}"
    );
    let report = s.assert_complete().await;
    println!(
        "R4: {} windows, each exported once, {} versions compared",
        windows.len(),
        report.compared
    );
}

/// Switches a fault on at the source and destination through their admin endpoints.
async fn set_faults(s: &Scenario, faults: Value) {
    let http = reqwest::Client::new();
    for server in [&s.source, &s.destination] {
        let resp = http
            .put(format!("{}/_admin/faults", server.base_url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap_or_default());
    }
}

#[tokio::test]
async fn r2_server_faults_mid_migration_are_ridden_out() {
    // Forty one-day windows, so every fault phase meets live work.
    let s = scenario(1600, 40, &[("AZURE_MaxExportRetriesEnabled", "false")]).await;
    let handler = s.handler().await;
    let invoker = handler.invoker();
    let phases = [
        json!({ "throttleEvery": 3, "retryAfterMs": 150 }),
        json!({ "serverErrorEvery": 4 }),
        json!({ "exportStatusFlap": true }),
        json!({ "importStatusDelayMs": 1500 }),
        json!({ "exportFailure": { "status": 500, "reason": "Unknown Error.", "count": 2 } }),
        json!({ "importUnitFailure": { "status": 500, "reason": "unit lost", "count": 1 } }),
        json!({ "emptyPages": true }),
    ];
    let mut saw_failures = false;
    for faults in &phases {
        set_faults(&s, faults.clone()).await;
        // Each phase lasts until a window commits under it (progress despite the fault), or 15 rounds.
        let committed = status(&invoker).await["windowsCommitted"].as_i64().unwrap_or(0);
        for _ in 0..15 {
            round(&invoker).await;
            let now = status(&invoker).await;
            // A failed export or import shows in the status (its reason and its next attempt) while retried.
            saw_failures |= now["windowsInFlight"].as_array().into_iter().flatten().any(|w| {
                w["exportAttempt"].as_i64().unwrap_or(0) > 1
                    || w["payloads"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["attempt"].as_i64().unwrap_or(0) > 1)
            });
            if std::env::var("FAULT_DEBUG").is_ok() {
                println!(
                    "{faults} -> committed {} through {} inflight {}",
                    now["windowsCommitted"], now["migratedThrough"], now["windowsInFlight"]
                );
            }
            if now["windowsCommitted"].as_i64().unwrap_or(0) > committed + 1 {
                break;
            }
        }
    }
    set_faults(&s, json!({})).await;
    finish(&[invoker], s.end).await;
    assert!(saw_failures, "failed jobs surface in the status while they are retried");
    let report = s.assert_complete().await;
    println!(
        "R2: {} fault phases, {} versions compared",
        phases.len(),
        report.compared
    );
}

#[tokio::test]
async fn r3_a_storage_outage_mid_migration_fails_ticks_cleanly_and_resumes() {
    let mut s = scenario_on(Azurite::start_persistent().await.unwrap(), 800, 15, &[]).await;
    let handler = s.handler().await;
    let invoker = handler.invoker();
    for _ in 0..4 {
        round(&invoker).await;
    }
    s.azurite.stop();
    // While storage is down every timer still answers, promptly, with a failure the host counts and logs.
    for function in ["MigrationOrchestrator", "ExportStatus", "ImportStatus"] {
        let started = std::time::Instant::now();
        let payload = timer_payload(function, "myTimer", &Utc::now().to_rfc3339(), false);
        let resp = invoker.invoke(function, &payload).await.expect("the handler answers");
        assert_eq!(resp.status(), 500, "{function}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{function} took {:?}",
            started.elapsed()
        );
    }
    let ready = reqwest::get(handler.url("")).await.unwrap();
    assert!(ready.status().is_success(), "the handler itself stays up");
    s.azurite.restart().await.unwrap();
    finish(&[invoker], s.end).await;
    let report = s.assert_complete().await;
    println!(
        "R3: storage stopped and restarted mid-migration, {} versions compared",
        report.compared
    );
}

#[tokio::test]
async fn r5_live_writes_during_the_migration_are_all_migrated_once_writes_stop() {
    // A short safety lag, so the tool catches up with the last writes within the test.
    let s = scenario(600, 10, &[("AZURE_SafetyLagSeconds", "3")]).await;
    let handler = s.handler().await;
    let invoker = handler.invoker();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(fhir_emulator::writer::run(
        fhir_emulator::writer::WriterParams {
            target: s.source.base_url.clone(),
            rate: 40.0,
            seed: 5,
            types: vec!["Patient".into(), "Observation".into(), "Encounter".into()],
            token: None,
            hard_deletes: false,
        },
        async {
            let _ = stopped.await;
        },
    ));
    // Late commits: resources that become visible with a lastUpdated already 2 s old, inside the lag window.
    let mut late = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        round(&invoker).await;
        let at = Utc::now() - TimeDelta::seconds(2);
        let line = json!({ "resourceType": "Patient", "id": format!("late-{late}"),
            "meta": { "versionId": "1", "lastUpdated": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) } });
        let (_, errors) = load_into(s.source.store(), &[line.to_string()]);
        assert!(errors.is_empty(), "{errors:?}");
        late += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    let writes = writer.await.unwrap();
    assert!(
        writes.created + writes.updated + writes.soft_deleted > 100,
        "{writes:?}"
    );
    assert!(writes.hard_deleted.is_empty());
    // Once writes stop, the tool catches up past the last one.
    finish(&[invoker], Utc::now()).await;
    let report = s.assert_complete().await;
    println!(
        "R5: {} created, {} updated, {} soft-deleted, {late} late commits; {} versions compared, all equal",
        writes.created, writes.updated, writes.soft_deleted, report.compared
    );
}
