//! What the shell needs from the outside world, as one trait: the state tables, the source and destination
//! servers, and the payload blobs. [`Engine`] implements it with the real adapters (Table storage, the FHIR
//! client, Blob storage); the simulator implements it in memory. Server answers arrive already sorted into the
//! core's terms ([`Answer`], [`ExportPoll`], [`ImportPoll`]), so both sides feed the core the same facts.

use std::future::Future;

use chrono::{DateTime, Utc};

use super::core::confirm::EtagLookup;
use super::core::{Answer, ExportPoll, ImportPoll, Snapshot, Totals, Write};
use super::error_files::ErrorSummary;
use super::{Engine, EngineError};
use crate::fhir::{FhirError, Poll};
use crate::state::{Cursor, Job, Payload};
use crate::storage::tables::TableError;

/// A row as stored after a write, with its new ETag.
#[derive(Debug, Clone)]
pub enum Written {
    Cursor(Cursor),
    Job(Job),
    Payload(Payload),
}

pub trait Ports: Sync {
    fn load(&self) -> impl Future<Output = Result<Snapshot, EngineError>> + Send;
    /// A value no earlier call, in this process or another, returned: import attempts are named by it.
    fn nonce(&self) -> u64;
    /// The source server's clock as its latest answer gave it (`None` before any answer).
    fn source_now(&self) -> Option<DateTime<Utc>>;
    /// Performs a write. An inserted payload that already exists comes back as stored (a repeated run).
    fn write(&self, write: &Write) -> impl Future<Output = Result<Written, TableError>> + Send;
    fn count(
        &self,
        resource_type: Option<&str>,
        since: DateTime<Utc>,
        till: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, EngineError>> + Send;
    fn oldest(
        &self,
        from: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<Option<DateTime<Utc>>, EngineError>> + Send;
    fn kick_off(&self, query: &str) -> impl Future<Output = Answer> + Send;
    /// One poll of an export; `confirm`: the second poll that confirms a completion, made after the
    /// confirmation delay (`AZURE_ExportConfirmSeconds`).
    fn poll_export(&self, url: &str, confirm: bool) -> impl Future<Output = ExportPoll> + Send;
    /// Each export file's blob ETag, in order.
    fn export_file_etags(&self, urls: &[String]) -> impl Future<Output = Vec<EtagLookup>> + Send;
    fn post(&self, body: &serde_json::Value) -> impl Future<Output = Answer> + Send;
    fn poll_import(&self, url: &str) -> impl Future<Output = ImportPoll> + Send;
    /// Cancels a job (best effort); what the server answered (the core decides what it means).
    fn cancel(&self, url: &str, destination: bool) -> impl Future<Output = super::core::rules::CancelAnswer> + Send;
    fn totals(&self) -> impl Future<Output = Totals> + Send;
    /// Copies the custom SearchParameters (`since` none), or carries what changed at the source since `since`;
    /// what it did, or why it failed.
    fn copy_search_parameters(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<super::search_parameters::SearchParameterSync, String>> + Send;
    /// Writes a payload blob; `new_container` when this tick has not written to the container yet (it is
    /// created if missing once per tick, not once per blob).
    fn put_blob(
        &self,
        container: &str,
        name: &str,
        body: Vec<u8>,
        new_container: bool,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;
    fn get_blob(
        &self,
        container: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, EngineError>> + Send;
    /// Scans the next share of a waiting payload's export files for versions of one resource on one millisecond
    /// (see [`super::core::scan`]).
    fn scan_payload(
        &self,
        payload: &Payload,
        container: &str,
        tag: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<super::core::scan::Scanned, EngineError>> + Send;
    /// Examines a payload refused for the destination's same-millisecond capacity: names the versions that
    /// cannot fit in the ledger and writes the payload's body without them (see [`super::core::capacity`]).
    fn trim_for_capacity(
        &self,
        payload: &Payload,
        container: &str,
        tag: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<super::core::capacity::CapacityTrim, EngineError>> + Send;
    /// Records a finished import's failed lines in the failure ledger; the counts by kind and class.
    fn record_failures(
        &self,
        window: i64,
        errors: &[crate::fhir::wire::ImportErrorFile],
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<ErrorSummary, EngineError>> + Send;
}

/// A random 64-bit value from the standard library's per-process random keys, mixed with the time and a
/// counter: unique across processes and calls without another dependency.
pub fn fresh_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Sorts a kick-off's or POST's result into the core's terms.
pub fn answer_of(result: Result<crate::fhir::Accepted, FhirError>) -> Answer {
    match result {
        Ok(accepted) => Answer::Accepted {
            status_url: accepted.status_url,
        },
        Err(FhirError::Rejected {
            status,
            diagnostics,
            retry_after,
            ..
        }) => Answer::Refused {
            status,
            diagnostics,
            retry_after,
        },
        Err(e) => Answer::Unsent { error: e.to_string() },
    }
}

impl Ports for Engine {
    fn nonce(&self) -> u64 {
        fresh_nonce()
    }

    fn source_now(&self) -> Option<DateTime<Utc>> {
        self.source.server_now()
    }

    async fn load(&self) -> Result<Snapshot, EngineError> {
        let cursor = self.state.cursor().await?;
        let active = self.state.active(&cursor).await?;
        Ok(Snapshot {
            cursor,
            jobs: active.jobs,
            payloads: active.payloads,
        })
    }

    async fn write(&self, write: &Write) -> Result<Written, TableError> {
        Ok(match write {
            Write::Cursor(c) => Written::Cursor(self.state.save_cursor(c).await?),
            Write::InsertJob(j) => Written::Job(self.state.insert_job(j).await?),
            Write::Job(j) => Written::Job(self.state.save_job(j).await?),
            Write::InsertPayload(p) => Written::Payload(self.state.insert_payload(p).await?),
            Write::Payload(p) => Written::Payload(self.state.save_payload(p).await?),
        })
    }

    async fn count(
        &self,
        resource_type: Option<&str>,
        since: DateTime<Utc>,
        till: DateTime<Utc>,
    ) -> Result<u64, EngineError> {
        Ok(self.window_count(resource_type, since, till).await?)
    }

    async fn oldest(&self, from: Option<DateTime<Utc>>) -> Result<Option<DateTime<Utc>>, EngineError> {
        let history = self.settings.export_with_history || self.settings.export_with_delete;
        Ok(self.source.oldest_last_updated(history, from).await?)
    }

    async fn kick_off(&self, query: &str) -> Answer {
        answer_of(self.source.export(query).await)
    }

    async fn poll_export(&self, url: &str, confirm: bool) -> ExportPoll {
        if confirm {
            tokio::time::sleep(self.timing.confirm_delay).await;
        }
        match self.source.export_status(url).await {
            Ok(Poll::Done(manifest)) => ExportPoll::Done(manifest),
            Ok(Poll::Running(_)) => ExportPoll::Running,
            Ok(Poll::Failed { status, diagnostics }) => ExportPoll::Failed { status, diagnostics },
            Err(e) => ExportPoll::Unreachable(e.to_string()),
        }
    }

    async fn export_file_etags(&self, urls: &[String]) -> Vec<EtagLookup> {
        self.read_export_etags(urls).await
    }

    async fn post(&self, body: &serde_json::Value) -> Answer {
        answer_of(self.destination.import(body).await)
    }

    async fn poll_import(&self, url: &str) -> ImportPoll {
        match self.destination.import_status(url).await {
            Ok(Poll::Running(_)) => ImportPoll::Running,
            Ok(Poll::Done(result)) => ImportPoll::Done(result),
            Ok(Poll::Failed { status, diagnostics }) => ImportPoll::Failed { status, diagnostics },
            Err(e) => ImportPoll::Unreachable(e.to_string()),
        }
    }

    /// A refusal that asking again cannot change (a 4xx other than 408 and 429: no permission, a bad request)
    /// is reported and taken as the end of trying, so the window moves on; only an unreachable or failing
    /// server (which may answer later) is an error, and the cancel is made again next tick.
    async fn cancel(&self, url: &str, destination: bool) -> super::core::rules::CancelAnswer {
        use super::core::rules::CancelAnswer;
        let server = if destination { &self.destination } else { &self.source };
        match server.cancel(url).await {
            Ok(()) => CancelAnswer::Accepted,
            Err(FhirError::Rejected {
                status, diagnostics, ..
            }) => CancelAnswer::Refused { status, diagnostics },
            Err(e) => CancelAnswer::Unsent(e.to_string()),
        }
    }

    /// Whole-server totals: every version with history or deletes on, else current resources. A failed count
    /// is reported in `SourceError`/`DestinationError`, never fatal.
    async fn totals(&self) -> Totals {
        let history = self.settings.export_with_history || self.settings.export_with_delete;
        let (s, d) = tokio::join!(self.source.total(history), self.destination.total(history));
        let split = |r: Result<u64, FhirError>| match r {
            Ok(n) => (n.to_string(), String::new()),
            Err(e) => (" ".to_string(), e.to_string()),
        };
        let (source, source_error) = split(s);
        let (destination, destination_error) = split(d);
        Totals {
            source,
            destination,
            source_error,
            destination_error,
        }
    }

    async fn copy_search_parameters(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<super::search_parameters::SearchParameterSync, String> {
        self.sync_search_parameters(since).await.map_err(|e| e.to_string())
    }

    async fn put_blob(
        &self,
        container: &str,
        name: &str,
        body: Vec<u8>,
        new_container: bool,
    ) -> Result<(), EngineError> {
        if new_container {
            self.blobs.ensure_container(container).await?;
        }
        self.blobs.put(container, name, body).await?;
        Ok(())
    }

    async fn get_blob(&self, container: &str, name: &str) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.blobs.get(container, name).await?)
    }

    async fn record_failures(
        &self,
        window: i64,
        errors: &[crate::fhir::wire::ImportErrorFile],
        now: DateTime<Utc>,
    ) -> Result<ErrorSummary, EngineError> {
        Engine::record_failures(self, window, errors, now).await
    }

    async fn trim_for_capacity(
        &self,
        payload: &Payload,
        container: &str,
        tag: &str,
        now: DateTime<Utc>,
    ) -> Result<super::core::capacity::CapacityTrim, EngineError> {
        Engine::trim_for_capacity(self, payload, container, tag, now).await
    }

    async fn scan_payload(
        &self,
        payload: &Payload,
        container: &str,
        tag: &str,
        now: DateTime<Utc>,
    ) -> Result<super::core::scan::Scanned, EngineError> {
        Engine::scan_payload(self, payload, container, tag, now).await
    }
}

/// Export files whose ETags are read at once.
const ETAG_READS_AT_ONCE: usize = 16;

impl Engine {
    /// Each export file's blob ETag, in order (the core decides what each outcome means: `core::confirm`). A
    /// file the tool cannot read is logged with what to grant.
    async fn read_export_etags(&self, urls: &[String]) -> Vec<EtagLookup> {
        use futures::{StreamExt, stream};
        stream::iter(urls.to_vec())
            .map(|url| async move {
                let Ok(parsed) = url::Url::parse(&url) else {
                    return EtagLookup::Failed(format!("export file URL {url} is not a URL"));
                };
                let Some((store, container, name)) = self.locate_blob(&parsed) else {
                    tracing::warn!("export file {container_url} is on a storage account the tool does not know; imported without an ETag", container_url = crate::fhir::client::redact(&parsed));
                    return EtagLookup::UnknownAccount;
                };
                match store.etag(&container, &name).await {
                    Ok(etag) => EtagLookup::Found(etag),
                    Err(crate::storage::blob::BlobError::Service { status: 401 | 403, .. }) => {
                        tracing::warn!("the tool may not read the export file {container}/{name}; imported without an ETag (grant it 'Storage Blob Data Reader' on the export account)");
                        EtagLookup::Forbidden
                    }
                    Err(e) => EtagLookup::Failed(format!("{container}/{name}: {e}")),
                }
            })
            .buffered(ETAG_READS_AT_ONCE)
            .collect()
            .await
    }

    /// Resources (versions, when history or deletes are exported) with lastUpdated in `[since, till)`, of one
    /// type or all.
    pub(crate) async fn window_count(
        &self,
        resource_type: Option<&str>,
        since: DateTime<Utc>,
        till: DateTime<Utc>,
    ) -> Result<u64, FhirError> {
        let history = self.settings.export_with_history || self.settings.export_with_delete;
        if history {
            self.source.history_count(resource_type, since, Some(till)).await
        } else {
            self.source.count(resource_type, since, Some(till)).await
        }
    }
}
