//! The running application: settings plus the adapters built from them, shared by every function invocation
//! and CLI command. Cheap to clone (one `Arc`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Settings, StorageSettings};
use crate::engine::Engine;
use crate::fhir::FhirClient;
use crate::fhir::auth::{Server, token_source};
use crate::fhir::client::RetryPolicy;
use crate::state::StateStore;
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::tables::{TableError, TableService};
use crate::telemetry::appinsights::AppInsights;
use crate::telemetry::{Fanout, LogTelemetry, Telemetry};

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
    #[error("App Insights telemetry needs an async runtime; build the app inside one")]
    NoRuntime,
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
    telemetry: Arc<dyn Telemetry>,
    app_insights: Option<Arc<AppInsights>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const USER_AGENT: &str = concat!("fhir-migration-tool/", env!("CARGO_PKG_VERSION"));

/// Storage calls are small; anything slower than this is a stuck connection, and the next tick retries.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// FHIR calls include the import status call, which the server itself may hold for up to 60 s.
const FHIR_TIMEOUT: Duration = Duration::from_secs(180);
/// A server that does not even accept the connection in this time is unreachable (a firewall dropping packets,
/// a private endpoint not resolvable from here); without it a connect would wait out the whole call timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping process waits for queued telemetry to reach App Insights.
const TELEMETRY_FLUSH: Duration = Duration::from_secs(5);

impl App {
    pub fn build(settings: Settings) -> Result<App, StartupError> {
        App::build_with_telemetry(settings, Arc::new(LogTelemetry))
    }

    /// For commands an operator waits on: FHIR calls give up sooner ([`RetryPolicy::interactive`]).
    pub fn build_interactive(settings: Settings) -> Result<App, StartupError> {
        App::build_with(settings, Arc::new(LogTelemetry), RetryPolicy::interactive())
    }

    /// Builds every adapter from the settings. Nothing is contacted yet; credentials that cannot even be set
    /// up fail here, at start-up. Telemetry goes to `local` and, when configured, to App Insights.
    pub fn build_with_telemetry(settings: Settings, local: Arc<dyn Telemetry>) -> Result<App, StartupError> {
        App::build_with(settings, local, RetryPolicy::default())
    }

    fn build_with(settings: Settings, local: Arc<dyn Telemetry>, retry: RetryPolicy) -> Result<App, StartupError> {
        let app_insights = match &settings.app_insights {
            Some(cs) => {
                tokio::runtime::Handle::try_current().map_err(|_| StartupError::NoRuntime)?;
                let http = reqwest::Client::builder().user_agent(USER_AGENT).build()?;
                Some(Arc::new(AppInsights::start(cs, http)))
            }
            None => None,
        };
        let telemetry: Arc<dyn Telemetry> = match &app_insights {
            Some(ai) => Arc::new(Fanout(vec![local, ai.clone() as Arc<dyn Telemetry>])),
            None => local,
        };
        let credential = settings.storage.credential().map_err(StartupError::Credential)?;
        let http = reqwest::Client::builder()
            .timeout(STORAGE_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(USER_AGENT)
            .build()?;
        let tables = TableService::new(settings.storage.table_endpoint().clone(), credential.clone(), http)
            .with_telemetry(telemetry.clone());
        let blobs =
            BlobStore::new(settings.storage.blob_endpoint().clone(), credential)?.with_telemetry(telemetry.clone());
        let m = &settings.migration;
        let fhir_http = reqwest::Client::builder()
            .timeout(FHIR_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        let source_tokens = token_source(m, Server::Source).map_err(StartupError::FhirCredential)?;
        let destination_tokens = token_source(m, Server::Destination).map_err(StartupError::FhirCredential)?;
        let source = FhirClient::new(m.source.clone(), source_tokens, &m.user_agent, fhir_http.clone())
            .with_telemetry(telemetry.clone())
            .with_retry(retry.clone());
        let destination = FhirClient::new(m.destination.clone(), destination_tokens, &m.user_agent, fhir_http)
            .with_telemetry(telemetry.clone())
            .with_retry(retry);
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
            crate::ledger::Ledger::new(tables.table(&settings.failure_table)?, &m.partition_key),
            telemetry.clone(),
        );
        // Import error files live on the export/import account; read them from there when it is named, and
        // from the tool's own account (the same account in local set-ups) in any case.
        let mut error_stores = vec![blobs.clone()];
        if let Some(uri) = m
            .integration_storage
            .as_ref()
            .filter(|u| *u != settings.storage.blob_endpoint())
        {
            let credential = match &settings.storage {
                StorageSettings::AccountKey(_) => StorageSettings::managed_identity_credential(None),
                other => other.credential(),
            }
            .map_err(StartupError::Credential)?;
            error_stores.push(BlobStore::new(uri.clone(), credential)?.with_telemetry(telemetry.clone()));
        }
        let engine = engine.with_error_stores(error_stores);
        Ok(App {
            inner: Arc::new(Inner {
                settings,
                tables,
                blobs,
                engine,
                telemetry,
                app_insights,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Where this app's telemetry goes (the log, and App Insights when configured).
    pub fn telemetry(&self) -> &Arc<dyn Telemetry> {
        &self.inner.telemetry
    }

    /// The App Insights sink, when configured (tests read its counters).
    pub fn app_insights(&self) -> Option<&AppInsights> {
        self.inner.app_insights.as_deref()
    }

    /// Sends what telemetry is still queued; call before the process exits. Bounded, so a dead endpoint cannot
    /// hold up a shutdown.
    pub async fn shutdown(&self) {
        if let Some(ai) = &self.inner.app_insights
            && !ai.flush(TELEMETRY_FLUSH).await
        {
            tracing::warn!("not all telemetry reached App Insights before shutdown");
        }
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
