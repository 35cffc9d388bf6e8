//! fhir-emulator: a local stand-in for Azure API for FHIR ("aapi", the migration source) and the Azure Health
//! Data Services FHIR service ("ahds", the destination), behaving on the wire as the real servers do, item by
//! item, as described in `shared/reference/azure-fhir-bulk-api.md` (§10 is the checklist; emulator/README.md
//! maps each item to its test).
//!
//! Layout:
//! - [`config`]: flavor (E-1), cancel semantics (E-2), timings, storage (E-4), token checking.
//! - [`faults`]: fault injection (E-3), switchable at run time through `/_admin/faults`.
//! - [`store`]: the versioned resource store and the incremental-import merge rules.
//! - `routes/`: one module per operation family (crud, search, history, export, import, reindex, admin), each
//!   owning its handlers; `middleware` adds request ids, throttling faults and token checks to all of them.
//! - [`spawn`]: start an emulator on a listener (port 0 in tests); the handle stops it when dropped.

pub mod blob;
pub mod config;
pub mod faults;
mod middleware;
pub mod outcome;
pub mod resource_types;
mod routes;
pub mod seed;
pub mod store;
pub mod time;
pub mod wire;
pub mod writer;

pub use config::{AuthConfig, CancelMode, EmulatorConfig, Flavor};
pub use faults::{Faults, JobFailure};
pub use middleware::test_token;
pub use store::Store;

/// De-identification configurations the emulator understands.
pub use routes::export::anonymize::TRUNCATE_QUANTITIES;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::blob::BlobClient;
use crate::faults::RequestCounter;

/// Everything one emulator instance shares between requests and background jobs.
pub(crate) struct Shared {
    pub config: EmulatorConfig,
    pub base_url: String,
    pub store: Store,
    pub blob: Option<BlobClient>,
    pub faults: Mutex<Faults>,
    pub requests: RequestCounter,
    /// One id sequence for every job and sub-job, like the servers' job queue.
    next_job: AtomicU64,
    pub exports: Mutex<routes::export::ExportJobs>,
    pub imports: Mutex<routes::import::ImportJobs>,
    pub reindex: Mutex<routes::reindex::ReindexJobs>,
    pub import_slots: Option<Arc<Semaphore>>,
    /// Flips to true when the emulator stops, so background jobs end with it.
    pub stopping: watch::Receiver<bool>,
}

impl Shared {
    pub fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::SeqCst)
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) type App = Arc<Shared>;

/// An import input as registered: its URL and the ETag the client sent with it.
pub type InputFile = (String, Option<String>);

/// A running emulator. Dropping it stops the server and its background jobs.
pub struct RunningEmulator {
    pub addr: SocketAddr,
    pub base_url: String,
    shared: App,
    _stop: watch::Sender<bool>,
}

impl RunningEmulator {
    /// The emulator's store, for seeding and for comparing two servers in tests.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The ids of the export and import jobs a client cancelled (`DELETE` on their status URLs), sorted.
    pub fn cancelled_jobs(&self) -> (Vec<u64>, Vec<u64>) {
        let exports = self.shared.exports.lock().unwrap_or_else(|p| p.into_inner());
        let imports = self.shared.imports.lock().unwrap_or_else(|p| p.into_inner());
        fn ids<J>(jobs: &std::collections::HashMap<u64, J>, cancelled: impl Fn(&J) -> bool) -> Vec<u64> {
            let mut ids: Vec<u64> = jobs.iter().filter(|(_, j)| cancelled(j)).map(|(id, _)| *id).collect();
            ids.sort_unstable();
            ids
        }
        let e = ids(&exports.jobs, |j| j.cancelled);
        let i = ids(&imports.jobs, |j| j.cancelled);
        (e, i)
    }

    /// Every registered import job's inputs as (url, etag), by job id: tests check what a client sent.
    pub fn import_inputs(&self) -> Vec<(u64, Vec<InputFile>)> {
        let imports = self.shared.imports.lock().unwrap_or_else(|p| p.into_inner());
        let mut jobs: Vec<_> = imports
            .jobs
            .iter()
            .map(|(id, j)| {
                let inputs = j.spec.inputs.iter().map(|i| (i.url.clone(), i.etag.clone())).collect();
                (*id, inputs)
            })
            .collect();
        jobs.sort_by_key(|(id, _)| *id);
        jobs
    }

    /// Replaces the faults in force (the same as `PUT /_admin/faults`).
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults() = faults;
    }
}

/// Serves the emulator on `listener` until the returned handle is dropped.
pub async fn spawn(config: EmulatorConfig, listener: TcpListener) -> std::io::Result<RunningEmulator> {
    spawn_with_store(config, listener, Store::new()).await
}

/// Like [`spawn`], serving an existing store (a seeded dataset, or one shared with another test step).
pub async fn spawn_with_store(
    config: EmulatorConfig,
    listener: TcpListener,
    store: Store,
) -> std::io::Result<RunningEmulator> {
    let addr = listener.local_addr()?;
    let base_url = config
        .base_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{addr}"));
    let blob = match &config.blob {
        Some(b) => {
            Some(BlobClient::new(b.clone()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?)
        }
        None => None,
    };
    // Cosmos DB keeps `lastUpdated` at 100-ns ticks, SQL at milliseconds (reference §11.2).
    store.set_precise(config.flavor == Flavor::Aapi);
    let (stop, stopping) = watch::channel(false);
    let shared = Arc::new(Shared {
        import_slots: config.import_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1)))),
        config,
        base_url: base_url.clone(),
        store,
        blob,
        faults: Mutex::new(Faults::default()),
        requests: RequestCounter::default(),
        next_job: AtomicU64::new(1000),
        exports: Mutex::default(),
        imports: Mutex::default(),
        reindex: Mutex::default(),
        stopping: stopping.clone(),
    });
    let app = routes::router(shared.clone());
    let mut stopped = stopping;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(RunningEmulator {
        addr,
        base_url,
        shared,
        _stop: stop,
    })
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        let _ = self._stop.send(true);
    }
}
