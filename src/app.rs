//! The running application: settings plus the adapters built from them, shared by every function invocation
//! and CLI command. Cheap to clone (one `Arc`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::engine::Engine;
use crate::fhir::FhirClient;
use crate::fhir::auth::{Server, token_source};
use crate::state::StateStore;
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::tables::{TableError, TableService};
use crate::telemetry::{LogTelemetry, Telemetry};

/// Why the application could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("storage credential: {0}")]
    Credential(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("FHIR credential: {0}")]
    FhirCredential(String),
}

#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    tables: TableService,
    blobs: BlobStore,
    engine: Engine,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Storage calls are small; anything slower than this is a stuck connection, and the next tick retries.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// FHIR calls include the import status call, which the server itself may hold for up to 60 s.
const FHIR_TIMEOUT: Duration = Duration::from_secs(180);

impl App {
    pub fn build(settings: Settings) -> Result<App, StartupError> {
        App::build_with_telemetry(settings, Arc::new(LogTelemetry))
    }

    /// Builds every adapter from the settings. Nothing is contacted yet; credentials that cannot even be set
    /// up fail here, at start-up.
    pub fn build_with_telemetry(settings: Settings, telemetry: Arc<dyn Telemetry>) -> Result<App, StartupError> {
        let credential = settings.storage.credential().map_err(StartupError::Credential)?;
        let user_agent = concat!("fhir-migration-tool/", env!("CARGO_PKG_VERSION"));
        let http = reqwest::Client::builder()
            .timeout(STORAGE_TIMEOUT)
            .user_agent(user_agent)
            .build()?;
        let tables = TableService::new(settings.storage.table_endpoint().clone(), credential.clone(), http);
        let blobs = BlobStore::new(settings.storage.blob_endpoint().clone(), credential)?;
        let m = &settings.migration;
        let fhir_http = reqwest::Client::builder().timeout(FHIR_TIMEOUT).build()?;
        let source_tokens = token_source(m, Server::Source).map_err(StartupError::FhirCredential)?;
        let destination_tokens = token_source(m, Server::Destination).map_err(StartupError::FhirCredential)?;
        let source = FhirClient::new(m.source.clone(), source_tokens, &m.user_agent, fhir_http.clone());
        let destination = FhirClient::new(m.destination.clone(), destination_tokens, &m.user_agent, fhir_http);
        let state = StateStore::new(
            tables.table(&settings.chunk_table)?,
            tables.table(&settings.export_table)?,
            &m.partition_key,
            &m.row_key,
        );
        let engine = Engine::new(
            Arc::new(m.clone()),
            state,
            source,
            destination,
            blobs.clone(),
            telemetry,
        );
        Ok(App {
            inner: Arc::new(Inner {
                settings,
                tables,
                blobs,
                engine,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn tables(&self) -> &TableService {
        &self.inner.tables
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// Creates the state tables if they are missing and returns their names. Safe to call on every tick.
    pub async fn ensure_tables(&self) -> Result<Vec<String>, TableError> {
        let names = [&self.inner.settings.chunk_table, &self.inner.settings.export_table];
        for name in names {
            self.inner.tables.table(name)?.create_if_missing().await?;
        }
        Ok(names.iter().map(|n| n.to_string()).collect())
    }
}
