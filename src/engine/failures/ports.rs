//! What the failure ledger's work needs from the outside world, as one trait: the ledger's table, blobs read by
//! URL, the destination's reads, retry imports and telemetry. The engine implements it with its adapters (Table
//! storage, Blob storage, the FHIR client); the simulator implements it in memory, so the very code that records,
//! retries, accepts and settles ledger entries runs in its schedules, with crashes, two shells and storage faults.

use std::future::Future;

use chrono::TimeDelta;
use serde_json::Value;

use crate::engine::core::rules::CancelAnswer;
use crate::engine::{Engine, EngineError};
use crate::fhir::wire::ImportResult;
use crate::fhir::{Poll, VersionRead};
use crate::ledger::{Entry, State};
use crate::storage::tables::TableError;
use crate::telemetry::Event;

pub trait LedgerPorts: Sync {
    /// Creates the ledger's table when it is missing.
    fn ledger_ensure(&self) -> impl Future<Output = Result<(), TableError>> + Send;
    /// One entry; a row that cannot be read is an error, never taken for an absent one.
    fn ledger_get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, TableError>> + Send;
    /// Every entry, or those in `state`.
    fn ledger_list(&self, state: Option<State>) -> impl Future<Output = Result<Vec<Entry>, TableError>> + Send;
    /// Inserts a new entry (no ETag) or replaces the one it was read as (ETag-guarded): a concurrent writer makes
    /// it fail with a conflict.
    fn ledger_save(&self, entry: &Entry) -> impl Future<Output = Result<(), TableError>> + Send;
    /// A blob by URL: `Ok(None)` when there is nothing the tool can read there (no such blob, an account it does not
    /// know, a file too large to read whole); an error when the read failed and may succeed later.
    fn read_blob(&self, url: &str) -> impl Future<Output = Result<Option<Vec<u8>>, ReadFailed>> + Send;
    /// One version at the destination.
    fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: &str,
    ) -> impl Future<Output = Result<VersionRead, EngineError>> + Send;
    /// Whether the destination holds this SearchParameter.
    fn has_search_parameter(&self, id: &str) -> impl Future<Output = Result<bool, EngineError>> + Send;
    /// Writes a retry import's NDJSON file next to the export file `next_to`, on the account the destination
    /// imports from; its URL and ETag, or `None` when that account is not one the tool can write to.
    fn write_retry_file(
        &self,
        next_to: &str,
        name: &str,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Option<(String, Option<String>)>, EngineError>> + Send;
    /// The `$import` mode retry imports use (`AZURE_ImportMode`).
    fn import_mode(&self) -> String;
    /// POSTs an `$import`: its status URL, or why it was refused.
    fn post_import(&self, parameters: &Value) -> impl Future<Output = Result<String, String>> + Send;
    /// Polls an `$import`; why it could not be polled.
    fn import_status(&self, url: &str) -> impl Future<Output = Result<Poll<ImportResult>, String>> + Send;
    /// Cancels an `$import` (a retry import past the job timeout); what the server answered.
    fn cancel_import(&self, url: &str) -> impl Future<Output = CancelAnswer> + Send;
    /// How long a retry import may run before it is cancelled and tried again (`AZURE_JobTimeoutHours`).
    fn job_timeout(&self) -> TimeDelta;
    fn emit(&self, event: Event);
}

/// A blob read that failed and may succeed later (storage unreachable or busy, access refused): what failed, for
/// the entry that waits on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadFailed(pub String);

/// The ledger's work over a set of ports: recording ([`super::record`]) and retrying ([`super::retry`]).
pub struct Work<'a, P>(pub &'a P);

impl LedgerPorts for Engine {
    async fn ledger_ensure(&self) -> Result<(), TableError> {
        self.ledger.ensure_table().await
    }

    async fn ledger_get(&self, key: &str) -> Result<Option<Entry>, TableError> {
        self.ledger.get(key).await
    }

    async fn ledger_list(&self, state: Option<State>) -> Result<Vec<Entry>, TableError> {
        self.ledger.list(state).await
    }

    async fn ledger_save(&self, entry: &Entry) -> Result<(), TableError> {
        self.ledger.save(entry).await
    }

    async fn read_blob(&self, url: &str) -> Result<Option<Vec<u8>>, ReadFailed> {
        Engine::read_blob(self, url).await
    }

    async fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Result<VersionRead, EngineError> {
        Ok(self.destination.vread(resource_type, id, version_id).await?)
    }

    async fn has_search_parameter(&self, id: &str) -> Result<bool, EngineError> {
        Ok(self.destination.read("SearchParameter", id).await?.is_some())
    }

    async fn write_retry_file(
        &self,
        next_to: &str,
        name: &str,
        body: Vec<u8>,
    ) -> Result<Option<(String, Option<String>)>, EngineError> {
        let Some((store, container, _)) = url::Url::parse(next_to).ok().and_then(|u| self.locate_blob(&u)) else {
            return Ok(None);
        };
        store.put(&container, name, body).await?;
        let etag = store.etag(&container, name).await?;
        Ok(Some((store.blob_url(&container, name), etag)))
    }

    fn import_mode(&self) -> String {
        self.settings.import_mode.clone()
    }

    async fn post_import(&self, parameters: &Value) -> Result<String, String> {
        self.destination
            .import(parameters)
            .await
            .map(|a| a.status_url)
            .map_err(|e| e.to_string())
    }

    async fn import_status(&self, url: &str) -> Result<Poll<ImportResult>, String> {
        self.destination.import_status(url).await.map_err(|e| e.to_string())
    }

    async fn cancel_import(&self, url: &str) -> CancelAnswer {
        crate::engine::ports::Ports::cancel(self, url, true).await
    }

    fn job_timeout(&self) -> TimeDelta {
        self.settings.job_timeout
    }

    fn emit(&self, event: Event) {
        Engine::emit(self, event)
    }
}
