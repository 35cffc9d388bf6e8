//! How an emulator behaves: which product it imitates (E-1), cancel semantics (E-2), timings that model server
//! time, the storage account it exports to and imports from (E-4), and token checking. Faults (E-3) live in
//! [`crate::faults`] because they change at run time.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blob::BlobConfig;

/// Which Azure product the emulator imitates (E-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Azure API for FHIR (Gen1, Cosmos DB): non-parallel export by default, inclusive `_till`, no `$import`.
    Aapi,
    /// Azure Health Data Services FHIR service (Gen2, SQL): parallel export with `[since, till)` snapshots,
    /// `$import` available.
    Ahds,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Aapi => "aapi",
            Flavor::Ahds => "ahds",
        }
    }
}

/// Export cancel semantics (E-2, reference §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelMode {
    /// Bulk Data 2.0 (current): 202 on any existing job, then 404 for GET and DELETE.
    Bulkdata2,
    /// Before Feb 2026: 409 on a finished job; GET after cancel returns the partial manifest.
    Legacy,
}

/// Token checking (items 61–62). Off by default: the tool sends no token to loopback emulators.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Where a 401's `WWW-Authenticate` points clients.
    pub authority: String,
}

/// The server's rows per (resource type, millisecond): the surrogate-id sequence rolls over at 80,000.
pub const SAME_MS_CAPACITY: u32 = 80_000;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub flavor: Flavor,
    /// The base URL clients use (it appears in `Content-Location`, manifests and bundles, and is the token
    /// audience). `None`: `http://<listener address>`.
    pub base_url: Option<String>,
    /// The export/import storage account. Without it `$export` jobs fail with the storage error and `$import`
    /// kick-offs are refused as "not configured", as on a server without an integration account.
    pub blob: Option<BlobConfig>,
    pub cancel_mode: CancelMode,
    /// How long export status stays 202 after the last sub-job finished (real servers: 15 s).
    pub settle: Duration,
    /// Fixed time an export or import job takes before it starts producing output.
    pub job_latency: Duration,
    /// Extra time per resource exported or imported, to model server throughput in benchmarks.
    pub per_resource_latency: Duration,
    /// At most this many import jobs run at once (others wait); `None`: no cap (the real code has none).
    pub import_concurrency: Option<usize>,
    /// Export files roll over after this many bytes (real servers: 64 MB).
    pub rollover_bytes: usize,
    pub auth: Option<AuthConfig>,
    /// Whether the server runs in InitialImportMode (then `InitialLoad` is allowed and writes are locked).
    pub initial_import_mode: bool,
    /// `$import`: at most this many rows of one resource type may share one millisecond in the destination,
    /// counting rows already stored. The SQL surrogate id is `ms * 80000 + sequence`, so the server's limit is
    /// 80,000 (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Schema/Sql/Sprocs/MergeResourcesBeginTransaction.sql`,
    /// `fs:src/Microsoft.Health.Fhir.Core/Extensions/IdHelper.cs`; reference §11.1). Tests scale it down.
    pub same_ms_capacity: u32,
    /// `$import` processing units run concurrently in a random order, as the server enqueues them
    /// (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Operations/Import/ImportOrchestratorJob.cs`, reference
    /// §11.5). A seed makes the order reproducible; `None` draws a new order per job.
    pub import_order_seed: Option<u64>,
}

impl EmulatorConfig {
    /// The defaults of the real product, with no storage and no token checking.
    pub fn new(flavor: Flavor) -> EmulatorConfig {
        EmulatorConfig {
            flavor,
            base_url: None,
            blob: None,
            cancel_mode: CancelMode::Bulkdata2,
            settle: Duration::from_secs(15),
            job_latency: Duration::ZERO,
            per_resource_latency: Duration::ZERO,
            import_concurrency: None,
            rollover_bytes: 64 * 1024 * 1024,
            auth: None,
            initial_import_mode: false,
            same_ms_capacity: SAME_MS_CAPACITY,
            import_order_seed: None,
        }
    }

    /// Fast timings for tests and demos: no settle window.
    pub fn quick(flavor: Flavor) -> EmulatorConfig {
        EmulatorConfig {
            settle: Duration::ZERO,
            ..EmulatorConfig::new(flavor)
        }
    }
}
