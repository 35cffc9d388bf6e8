//! What every benchmark part shares: emulators with configured job times, settings for a stack, seeding, and
//! a tick driver that plays the three timers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use fhir_emulator::blob::BlobConfig;
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, RunningEmulator, Store};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::engine::Engine;
use fhir_migration_tool::telemetry::RecordingTelemetry;
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY};

/// An emulator whose export/import jobs take `job_time` before producing output (the server's own work).
pub async fn emulator(flavor: Flavor, azurite: &Azurite, job_time: Duration) -> RunningEmulator {
    let config = EmulatorConfig {
        blob: Some(BlobConfig {
            endpoint: url::Url::parse(&azurite.blob_endpoint()).expect("Azurite's blob endpoint is a URL"),
            account: DEV_ACCOUNT.into(),
            key: DEV_KEY.into(),
        }),
        job_latency: job_time,
        ..EmulatorConfig::quick(flavor)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    fhir_emulator::spawn(config, listener)
        .await
        .expect("the emulator starts")
}

static TABLES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Settings for a migration between two emulators on one Azurite, with fresh tables each time.
pub fn settings(
    azurite: &Azurite,
    source: &RunningEmulator,
    destination: &RunningEmulator,
    extra: &[(&str, String)],
) -> SettingsSource {
    let n = TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run = std::process::id();
    let mut s = SettingsSource::default();
    s.extend([
        ("AZURE_StorageConnectionString".to_string(), azurite.connection_string()),
        ("AZURE_ChunkTableName".to_string(), format!("chunk{run}x{n}")),
        ("AZURE_ExportTableName".to_string(), format!("export{run}x{n}")),
        ("AZURE_SourceUri".to_string(), source.base_url.clone()),
        ("AZURE_DestinationUri".to_string(), destination.base_url.clone()),
        ("AZURE_ExportWithHistory".to_string(), "true".into()),
        ("AZURE_ExportWithDelete".to_string(), "true".into()),
        ("AZURE_SafetyLagSeconds".to_string(), "60".into()),
    ]);
    s.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    s
}

/// An app whose telemetry is recorded (the benchmarks count table calls through it).
pub fn app(source: &SettingsSource) -> (App, RecordingTelemetry) {
    let telemetry = RecordingTelemetry::default();
    let settings = Settings::from_source(source).expect("valid benchmark settings");
    let app = App::build_with_telemetry(settings, Arc::new(telemetry.clone())).expect("the app builds");
    (app, telemetry)
}

/// Seeds `resources` resources (history and soft deletes included) over `days` days ending at `end`.
pub fn seed(store: &Store, resources: usize, days: u32, end: DateTime<Utc>, seed: u64) -> usize {
    let lines = generate(&SeedParams {
        resources,
        span_days: days,
        end: Some(end.timestamp_millis()),
        seed,
        hostile: false,
        search_parameters: 0,
        ..SeedParams::default()
    });
    let (loaded, errors) = load_into(store, &lines);
    assert!(errors.is_empty(), "{} seed lines refused", errors.len());
    loaded
}

/// Plays the three timers every `cadence` until everything before `through` is migrated and nothing is in
/// flight; returns the elapsed time. Ticks that lose an ETag race are fine (another tick did the work).
pub async fn migrate(engine: &Engine, cadence: Duration, through: DateTime<Utc>, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = Utc::now();
        for result in [
            engine.starter_tick(now).await.map(|_| ()),
            engine.export_status_tick(now).await.map(|_| ()),
            engine.import_status_tick(now).await.map(|_| ()),
        ] {
            if let Err(e) = result {
                assert!(e.is_conflict(), "a tick failed: {e}");
            }
        }
        let status = engine.status(Utc::now()).await.expect("status");
        let migrated = status
            .migrated_through
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t >= through);
        if migrated && status.windows_in_flight.is_empty() {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not caught up within {limit:?}: {status:?}");
        tokio::time::sleep(cadence).await;
    }
}

/// `now - minutes`, for seeding data that ends a little before the frontier.
pub fn minutes_ago(minutes: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::minutes(minutes)
}
