//! The running application: settings plus the adapters built from them, shared by every function invocation
//! and CLI command. Cheap to clone (one `Arc`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::storage::blob::{BlobError, BlobStore};
use crate::storage::tables::{TableError, TableService};

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
}

#[derive(Clone, Debug)]
pub struct App {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    tables: TableService,
    blobs: BlobStore,
}

/// Storage calls are small; anything slower than this is a stuck connection, and the next tick retries.
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);

impl App {
    pub fn build(settings: Settings) -> Result<App, StartupError> {
        let credential = settings.storage.credential().map_err(StartupError::Credential)?;
        let http = reqwest::Client::builder()
            .timeout(STORAGE_TIMEOUT)
            .user_agent(concat!("fhir-migration-tool/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tables = TableService::new(settings.storage.table_endpoint().clone(), credential.clone(), http);
        let blobs = BlobStore::new(settings.storage.blob_endpoint().clone(), credential)?;
        Ok(App {
            inner: Arc::new(Inner {
                settings,
                tables,
                blobs,
            }),
        })
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
