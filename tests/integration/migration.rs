//! The engine end to end: Azurite for state, an aapi emulator as source and an ahds emulator as destination
//! sharing one storage account, the real FHIR client and Table client. Ticks are driven directly (the handler
//! tests cover the Functions wiring); every test ends by comparing both servers version by version.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, RunningEmulator, Store};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::engine::{Engine, Timing};
use fhir_migration_tool::storage::blob::BlobStore;
use fhir_migration_tool::telemetry::RecordingTelemetry;
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY, Gate};
use serde_json::Value;

use crate::support::unique_name;

pub struct Stack {
    /// Kept alive for the stack's lifetime (dropping it stops Azurite).
    pub azurite: Azurite,
    pub source: RunningEmulator,
    pub destination: RunningEmulator,
    pub _app: App,
    pub engine: Engine,
    pub telemetry: RecordingTelemetry,
    /// The settings the stack was built from (to build a second engine on the same tables).
    pub source_settings: SettingsSource,
}

impl Stack {
    /// Another engine on the same tables and servers, with some settings changed (an operator's restart).
    pub fn engine_with(&self, changes: &[(&str, &str)]) -> Engine {
        let mut s = self.source_settings.clone();
        s.extend(changes.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Settings::from_source(&s).expect("valid test settings");
        let app = App::build_with_telemetry(settings, Arc::new(self.telemetry.clone())).unwrap();
        app.engine().clone().with_timing(Timing {
            confirm_delay: Duration::from_millis(5),
            ..Timing::default()
        })
    }

    /// The tool as an operator runs it, on this stack's storage reached through other loopback ports (a
    /// `fhir_testkit::Gate` in front of Azurite's blob or table service, to take one of them away).
    pub fn app_via(&self, blob_port: u16, table_port: u16) -> App {
        let mut s = self.source_settings.clone();
        s.extend([(
            "AZURE_StorageConnectionString".to_string(),
            self.azurite.connection_string_via(blob_port, table_port),
        )]);
        App::build(Settings::from_source(&s).expect("valid test settings")).unwrap()
    }

    /// The export account as a second blob account the tool knows: this stack's Azurite blob service behind a
    /// gate, so a test can take it away while the tool's own storage answers, and a client of the same data
    /// whose key the service refuses (403, as a missing role in Azure), with the export and error containers.
    pub async fn gated_exports(&self) -> GatedExports {
        use fhir_migration_tool::secret::Secret;
        use fhir_migration_tool::storage::StorageCredential;
        use fhir_migration_tool::storage::connection_string::StorageAccount;

        let gate = Gate::to(([127, 0, 0, 1], self.azurite.blob_port()).into())
            .await
            .unwrap();
        let account = StorageAccount::parse(
            &self
                .azurite
                .connection_string_via(gate.port(), self.azurite.table_port()),
        )
        .unwrap();
        let with_key = |account_name: &str, key| {
            BlobStore::new(
                account.blob_endpoint.clone(),
                StorageCredential::SharedKey {
                    account: account_name.to_string(),
                    key,
                },
            )
            .unwrap()
        };
        let store = with_key(&account.name, account.key.clone());
        let refused = with_key(DEV_ACCOUNT, Secret::new(vec![7u8; 64]));
        store.ensure_container("exports").await.unwrap();
        store.ensure_container("fhirlogs").await.unwrap();
        GatedExports { gate, store, refused }
    }
}

/// See [`Stack::gated_exports`].
pub struct GatedExports {
    pub gate: Gate,
    pub store: BlobStore,
    pub refused: BlobStore,
}

pub async fn emulator(flavor: Flavor, azurite: &Azurite) -> RunningEmulator {
    emulator_with(flavor, azurite, |_| {}).await
}

/// An emulator on the stack's Azurite with its configuration changed (a limit scaled down for a test).
pub async fn emulator_with(
    flavor: Flavor,
    azurite: &Azurite,
    change: impl FnOnce(&mut EmulatorConfig),
) -> RunningEmulator {
    let mut config = EmulatorConfig {
        blob: Some(fhir_emulator::blob::BlobConfig {
            endpoint: url::Url::parse(&azurite.blob_endpoint()).unwrap(),
            account: DEV_ACCOUNT.into(),
            key: DEV_KEY.into(),
        }),
        ..EmulatorConfig::quick(flavor)
    };
    change(&mut config);
    fhir_emulator::spawn(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap()
}

/// Settings for a migration between two emulators on one Azurite, with fresh table names: history and deletes
/// on, 2-day windows, 60 s lag.
pub fn base_settings(
    azurite: &Azurite,
    source: &RunningEmulator,
    destination: &RunningEmulator,
) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_StorageConnectionString", azurite.connection_string()),
        ("AZURE_ChunkTableName", unique_name("chunk")),
        ("AZURE_ExportTableName", unique_name("export")),
        ("AZURE_SourceUri", source.base_url.clone()),
        ("AZURE_DestinationUri", destination.base_url.clone()),
        ("AZURE_ExportWithHistory", "true".into()),
        ("AZURE_ExportWithDelete", "true".into()),
        ("AZURE_ExportChunkTime", "2".into()),
        ("AZURE_SafetyLagSeconds", "60".into()),
    ]
}

/// A stack with the given extra settings (on top of: history and deletes on, 2-day windows, 60 s lag).
pub async fn stack(extra: &[(&str, &str)]) -> Stack {
    stack_on(Azurite::start().await.unwrap(), extra).await
}

/// A stack on a given Azurite (a persistent one can be stopped and restarted mid-test).
pub async fn stack_on(azurite: Azurite, extra: &[(&str, &str)]) -> Stack {
    stack_from(azurite, Flavor::Aapi, extra).await
}

/// A stack whose source is of the given flavour (an AHDS source: AHDS to AHDS).
pub async fn stack_from(azurite: Azurite, source_flavor: Flavor, extra: &[(&str, &str)]) -> Stack {
    let destination = emulator(Flavor::Ahds, &azurite).await;
    stack_to(azurite, source_flavor, destination, extra).await
}

/// A stack whose destination is the given emulator (on the same Azurite).
pub async fn stack_to(
    azurite: Azurite,
    source_flavor: Flavor,
    destination: RunningEmulator,
    extra: &[(&str, &str)],
) -> Stack {
    let source = emulator(source_flavor, &azurite).await;
    let mut s = SettingsSource::default();
    s.extend(base_settings(&azurite, &source, &destination));
    s.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let source_settings = s.clone();
    let settings = Settings::from_source(&s).expect("valid test settings");
    let telemetry = RecordingTelemetry::default();
    let app = App::build_with_telemetry(settings, Arc::new(telemetry.clone())).unwrap();
    let engine = app.engine().clone().with_timing(Timing {
        confirm_delay: Duration::from_millis(5),
        ..Timing::default()
    });
    Stack {
        azurite,
        source,
        destination,
        _app: app,
        engine,
        telemetry,
        source_settings,
    }
}

/// Every event is in the telemetry contract: known name, known keys, allowed values.
pub fn assert_contract(events: &[fhir_migration_tool::telemetry::Event]) {
    use fhir_migration_tool::telemetry::contract;
    for e in events {
        let keys: Vec<&str> = e.properties.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(contract::violation(&e.name, &keys), None);
        for (k, v) in &e.properties {
            if let Some(allowed) = contract::allowed_values(&e.name, k) {
                assert!(allowed.contains(&v.as_str()), "{}.{k} = {v}", e.name);
            }
        }
    }
}

/// Seeds the source: `resources` resources over 30 days ending 10 minutes ago.
pub fn seed(stack: &Stack, resources: usize, seed: u64) -> usize {
    let params = SeedParams {
        resources,
        seed,
        end: Some((Utc::now() - TimeDelta::minutes(10)).timestamp_millis()),
        ..SeedParams::default()
    };
    let (loaded, errors) = load_into(stack.source.store(), &generate(&params));
    assert!(errors.is_empty(), "{errors:?}");
    loaded
}

/// One round of the three timers, in the order a host would likely fire them.
pub async fn round(engine: &Engine) {
    let now = Utc::now();
    for (name, result) in [
        ("starter", engine.starter_tick(now).await.map(|_| ())),
        ("export status", engine.export_status_tick(now).await.map(|_| ())),
        ("import status", engine.import_status_tick(now).await.map(|_| ())),
    ] {
        if let Err(e) = result {
            assert!(e.is_conflict(), "{name} tick failed: {e}");
        }
    }
}

/// Runs rounds until the migration has caught up (nothing in flight, migrated through the seeded data).
pub async fn run_to_completion(stack: &Stack, max_rounds: usize) -> usize {
    let target = Utc::now() - TimeDelta::minutes(5);
    for n in 1..=max_rounds {
        round(&stack.engine).await;
        let status = stack.engine.status(Utc::now()).await.unwrap();
        let through = status
            .migrated_through
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if status.windows_in_flight.is_empty() && through.is_some_and(|t| t >= target) {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = stack.engine.status(Utc::now()).await.unwrap();
    panic!(
        "not caught up after {max_rounds} rounds: {}",
        serde_json::to_string_pretty(&status).unwrap()
    );
}

/// Every version of every resource (SearchParameters aside: they are copied by PUT) is identical.
pub fn assert_same(source: &Store, destination: &Store) -> usize {
    let src: Vec<_> = source
        .snapshot()
        .into_iter()
        .filter(|(k, _)| &*k.0 != "SearchParameter")
        .collect();
    let dst: Vec<_> = destination
        .snapshot()
        .into_iter()
        .filter(|(k, _)| &*k.0 != "SearchParameter")
        .collect();
    let missing: Vec<_> = src
        .iter()
        .filter(|(k, _)| !dst.iter().any(|(d, _)| d == k))
        .map(|(k, _)| format!("{}/{}", k.0, k.1))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "missing at the destination: {missing:?}");
    assert_eq!(src.len(), dst.len(), "extra resources at the destination");
    let mut versions = 0;
    for ((k, s), (_, d)) in src.iter().zip(&dst) {
        let sv: Vec<_> = s
            .versions()
            .iter()
            .map(|v| (v.version_id, v.last_updated, v.deleted, body_without_instant(&v.body)))
            .collect();
        let dv: Vec<_> = d
            .versions()
            .iter()
            .map(|v| (v.version_id, v.last_updated, v.deleted, body_without_instant(&v.body)))
            .collect();
        assert_eq!(sv, dv, "{}/{}", k.0, k.1);
        versions += sv.len();
    }
    versions
}

/// A stored body without its `meta.lastUpdated` text: Azure API for FHIR keeps it to 100 ns and AHDS to the
/// millisecond (reference §11.2), so the text differs while the instant (compared in milliseconds beside it)
/// is the same.
fn body_without_instant(body: &str) -> Value {
    let mut v: Value = serde_json::from_str(body).unwrap();
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("lastUpdated");
    }
    v
}

#[tokio::test]
async fn parallel_mode_migrates_every_version_over_many_windows() {
    let stack = stack(&[]).await;
    let loaded = seed(&stack, 5000, 1);
    run_to_completion(&stack, 400).await;
    let versions = assert_same(stack.source.store(), stack.destination.store());
    assert!(
        versions >= 5000 && versions + 10 >= loaded - 3,
        "{versions} versions compared of {loaded} loaded"
    );
    let events = stack.telemetry.events();
    let exports = events
        .iter()
        .filter(|e| e.name == "Export" && e.get("ExportStatus") == Some("Started"))
        .count();
    assert!(exports >= 12, "{exports} windows exported");
    let tills = events.iter().filter(|e| e.name == "ImportTill").count();
    assert!(tills >= 12);
    // Custom SearchParameters were copied with their ids.
    for k in 0..3 {
        assert!(
            stack
                .destination
                .store()
                .resource("SearchParameter", &format!("custom-sp-{k}"))
                .is_some()
        );
    }
    let status = stack.engine.status(Utc::now()).await.unwrap();
    assert!(status.reminder.unwrap().contains("$reindex"));
    assert_eq!(status.failures, 0);
    // Every import names each file with its blob's ETag (issue 19): a file rewritten under an old name is a
    // new import definition, never a match for an old job, and the server checks the file is still that one.
    let jobs = stack.destination.import_inputs();
    assert!(jobs.len() >= 12, "{} import jobs", jobs.len());
    let blobs = stack._app.blobs();
    for (id, inputs) in jobs {
        for (url, etag) in inputs {
            let (container, name) = blobs.locate(&url::Url::parse(&url).unwrap()).expect("an Azurite blob");
            let current = blobs.etag(&container, &name).await.unwrap().expect("the file exists");
            assert_eq!(etag.as_deref(), Some(current.as_str()), "import {id}: {url}");
        }
    }
}
