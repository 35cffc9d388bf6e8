//! Reconciliation as a persisted run, for `Reconcile_Http`: the request records the run and answers at once (a
//! large server takes longer than any HTTP timeout), the `E2ETest_Runner` timer runs it, and
//! `Reconcile_Status/{id}` reports it.
//!
//! A run is claimed with a lease (ETag-guarded, so two timers never run it together). If the process dies
//! mid-run, the lease expires and the next tick runs it again from the start: reconciliation recomputes from the
//! servers and deleting an absent id is a no-op, so a repeat is safe.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::{Options, Report, reconcile};
use crate::engine::Engine;
use crate::storage::tables::{Entity, IfMatch, TableClient, TableError, filter};
use crate::telemetry::Telemetry;

/// The partition holding run rows (deletion rows are partitioned by run id).
const RUNS: &str = "run";
/// How long a claimed run is presumed alive (above the host's function timeout).
const LEASE: TimeDelta = TimeDelta::minutes(11);
/// Ids kept per list in a stored report (a Table string holds at most 32K characters).
const STORED_IDS: usize = 100;

pub struct Runs<'a> {
    table: TableClient,
    engine: &'a Engine,
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub status: String,
    pub options: Options,
    pub created: Option<DateTime<Utc>>,
    pub report: Option<Value>,
    pub error: String,
    entity: Entity,
}

impl Run {
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "Pending" | "Running")
    }

    /// The body `Reconcile_Status` answers with.
    pub fn status_body(&self) -> Value {
        json!({
            "id": self.id,
            "runtimeStatus": self.status,
            "createdTime": self.created.map(|t| t.to_rfc3339()),
            "input": { "types": self.options.types.len(), "apply": self.options.apply, "maxDeletes": self.options.max_deletes },
            "output": self.report,
            "error": if self.error.is_empty() { Value::Null } else { json!(self.error) },
        })
    }

    fn from_entity(e: Entity) -> Run {
        let types = e.get_str("Types").unwrap_or_default();
        Run {
            id: e.row_key().to_string(),
            status: e.get_str("Status").unwrap_or("Pending").to_string(),
            options: Options {
                types: types.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect(),
                apply: e.get_bool("Apply").unwrap_or(false),
                max_deletes: e.get_i64("MaxDeletes").unwrap_or(0).max(0) as usize,
            },
            created: e.get_datetime("Created"),
            report: e.get_str("Report").and_then(|r| serde_json::from_str(r).ok()),
            error: e.get_str("Error").unwrap_or_default().to_string(),
            entity: e,
        }
    }
}

/// The report as stored: the lists cut to [`STORED_IDS`].
fn stored(report: &Report) -> String {
    let mut r = report.clone();
    r.candidates.truncate(STORED_IDS);
    r.missing.truncate(STORED_IDS);
    serde_json::to_string(&r).unwrap_or_default()
}

impl<'a> Runs<'a> {
    pub fn new(table: TableClient, engine: &'a Engine) -> Runs<'a> {
        Runs { table, engine }
    }

    /// Records a new run; a timer picks it up.
    pub async fn start(&self, options: Options) -> Result<Run, TableError> {
        self.table.create_if_missing().await?;
        let now = Utc::now();
        let id = format!(
            "{}{}",
            now.format("%Y%m%d%H%M%S%3f"),
            crate::telemetry::context::random_hex(16)
        );
        let mut e = Entity::new(RUNS, id.as_str())?;
        e.set_str("Status", "Pending")
            .set_str("Types", options.types.join(","))
            .set_bool("Apply", options.apply)
            .set_i64("MaxDeletes", options.max_deletes as i64)
            .set_datetime("Created", now);
        let etag = self.table.insert(&e).await?;
        e.set_etag(etag);
        Ok(Run::from_entity(e))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Run>, TableError> {
        self.table.create_if_missing().await?;
        Ok(self.table.get(RUNS, id).await?.map(Run::from_entity))
    }

    /// Runs every run that is pending, or whose claimer's lease ran out. Returns the ids worked on.
    pub async fn tick(&self, telemetry: &dyn Telemetry) -> Result<Vec<String>, TableError> {
        let open = format!(
            "{} and (Status eq 'Pending' or Status eq 'Running')",
            filter::eq("PartitionKey", RUNS)
        );
        self.table.create_if_missing().await?;
        let rows = self.table.query_all(Some(&open)).await?;
        let now = Utc::now();
        let mut worked = Vec::new();
        for row in rows {
            let run = Run::from_entity(row);
            let leased = run.entity.get_datetime("LeaseUntil").is_some_and(|l| l > now);
            if run.status == "Running" && leased {
                continue;
            }
            // Claim it; losing the ETag race means another invocation has it.
            let mut claim = run.entity.clone();
            claim
                .set_str("Status", "Running")
                .set_datetime("LeaseUntil", now + LEASE);
            let if_match = run.entity.etag().cloned().map_or(IfMatch::Any, IfMatch::ETag);
            let etag = match self.table.replace(&claim, &if_match).await {
                Ok(etag) => etag,
                Err(TableError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            };
            claim.set_etag(etag);
            let outcome = reconcile(
                self.engine.source(),
                self.engine.destination(),
                &run.options,
                Some(&self.table),
                telemetry,
            )
            .await;
            let mut done = claim.clone();
            done.remove("LeaseUntil");
            match outcome {
                Ok(report) => done.set_str("Status", "Completed").set_str("Report", stored(&report)),
                Err(e) => done.set_str("Status", "Failed").set_str("Error", e.to_string()),
            };
            let if_match = claim.etag().cloned().map_or(IfMatch::Any, IfMatch::ETag);
            match self.table.replace(&done, &if_match).await {
                Ok(_) | Err(TableError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
            worked.push(run.id);
        }
        Ok(worked)
    }
}
