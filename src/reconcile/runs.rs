//! Reconciliation as a persisted run, for `Reconcile_Http`: the request records the run and answers at once, the
//! `E2ETest_Runner` timer works on it in bounded slices, and `Reconcile_Status/{id}` reports its progress.
//!
//! Everything a run has done lives in its row (partition `run` of the reconcile table): the phase, the type and
//! the millisecond to resume from, and the counts so far. Each slice compares from the checkpoint for at most
//! [`SLICE`] or the run's page budget, then writes the new checkpoint with one ETag-guarded replace, so two
//! invocations can never both advance a run, and a crash repeats at most the slice in progress (its counts were
//! never written).
//!
//! Every candidate (an id at the destination hard-deleted at the source) is written to the run's own partition
//! (`PartitionKey` = run id, `RowKey` = `{type}_{id}`, `State` `candidate`) before the checkpoint that counts it:
//! a repeated slice writes the same rows again, and the count comes from the checkpoint only. With `apply`, once
//! every type is compared and the candidates are within the cap, later slices take the rows still `candidate`,
//! ask the source once more (an id written there again since is kept: `State` `kept`), delete the others at the
//! destination (deleting an absent id is a no-op) and mark each row `deleted` with `DeletedAt`. The final
//! `deleted` figure is counted from those rows, so a crash between a delete and the checkpoint loses or repeats
//! nothing.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use reqwest::StatusCode;

use super::{Found, Options, Report, compare_type_from, delete, over_cap, read_state, summary};
use crate::engine::Engine;
use crate::storage::tables::{ETag, Entity, IfMatch, TableClient, TableError, filter};
use crate::telemetry::{Event, Telemetry};

/// The partition holding run rows (candidate and deletion rows are partitioned by run id).
const RUNS: &str = "run";
/// How long one invocation works on runs before checkpointing and letting go: well inside the host's
/// `functionTimeout` (10 minutes), together with the verification slice the same timer runs first.
const SLICE: Duration = Duration::from_secs(120);
/// A run whose lease has not been renewed for this long is presumed abandoned by a crashed invocation.
const LEASE: TimeDelta = TimeDelta::minutes(5);
/// Pages (1000 ids each, both servers together) one slice reads at most, unless the run asks for fewer.
pub const DEFAULT_PAGES_PER_SLICE: u64 = 400;
/// The most a run may ask for.
pub const MAX_PAGES_PER_SLICE: u64 = 5000;
/// Candidates deleted per slice at most (each is a DELETE and a row write).
const DELETES_PER_SLICE: usize = 1000;
/// A server error ends the slice and keeps the checkpoint; this many in a row fail the run.
pub const MAX_ATTEMPTS: u32 = 3;
/// Ids kept per list in a stored report (a Table string holds at most 32K characters).
const STORED_IDS: usize = 100;

pub struct Runs<'a> {
    table: TableClient,
    engine: &'a Engine,
    slice: Duration,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Comparing the id sets, type by type.
    Compare,
    /// Deleting the recorded candidates (with `apply`, within the cap).
    Delete,
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    /// `Pending`, `Running`, `Completed` or `Failed`.
    pub status: String,
    pub options: Options,
    pub pages_per_slice: u64,
    pub phase: Phase,
    pub type_index: usize,
    pub resume_from: Option<i64>,
    /// Counts and first ids so far; the final report once completed.
    pub report: Report,
    /// Slices worked (each one invocation's share).
    pub slices: u64,
    pub error: String,
    pub attempts: u32,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    etag: Option<ETag>,
}

impl Run {
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "Pending" | "Running")
    }

    /// The body `Reconcile_Status` answers with: progress in `customStatus`, the report once done (marked
    /// partial when the run failed).
    pub fn status_body(&self) -> Value {
        let r = &self.report;
        let done = self.status == "Completed";
        let failed = self.status == "Failed";
        json!({
            "id": self.id,
            "runtimeStatus": self.status,
            "createdTime": self.created.to_rfc3339(),
            "lastUpdatedTime": self.updated.to_rfc3339(),
            "input": {
                "types": self.options.types.len(),
                "apply": self.options.apply,
                "maxDeletes": self.options.max_deletes,
                "pagesPerSlice": self.pages_per_slice,
            },
            "customStatus": {
                "phase": match self.phase { Phase::Compare => "compare", Phase::Delete => "delete" },
                "typesDone": self.type_index,
                "typesTotal": self.options.types.len(),
                "slices": self.slices,
                "sourceIds": r.source_ids,
                "destinationIds": r.destination_ids,
                "hardDeletedAtSource": r.hard_deleted_at_source,
                "missingAtDestination": r.missing_at_destination,
                "deleted": r.deleted,
                "failedAttempts": self.attempts,
                "lastError": if self.error.is_empty() { Value::Null } else { json!(self.error) },
            },
            "output": if done || failed { serde_json::to_value(r).unwrap_or_default() } else { Value::Null },
            "partial": failed,
            "error": if self.error.is_empty() { Value::Null } else { json!(self.error) },
        })
    }
}

fn to_entity(run: &Run) -> Result<Entity, TableError> {
    let mut report = run.report.clone();
    report.candidates.truncate(STORED_IDS);
    report.missing.truncate(STORED_IDS);
    let mut e = Entity::new(RUNS, run.id.as_str())?;
    e.set_str("Status", run.status.as_str())
        .set_str("Types", run.options.types.join(","))
        .set_bool("Apply", run.options.apply)
        .set_i64("MaxDeletes", run.options.max_deletes as i64)
        .set_i64("PagesPerSlice", run.pages_per_slice as i64)
        .set_str(
            "Phase",
            match run.phase {
                Phase::Compare => "compare",
                Phase::Delete => "delete",
            },
        )
        .set_i64("TypeIndex", run.type_index as i64)
        .set_str("Report", serde_json::to_string(&report).unwrap_or_default())
        .set_i64("Slices", run.slices as i64)
        .set_str("Error", clip(&run.error, 2000))
        .set_i64("Attempts", i64::from(run.attempts))
        .set_datetime("Created", run.created)
        .set_datetime("LastUpdatedTime", run.updated);
    if let Some(r) = run.resume_from {
        e.set_i64("ResumeFrom", r);
    }
    if let Some(l) = run.lease_until {
        e.set_datetime("LeaseUntil", l);
    }
    Ok(e)
}

fn from_entity(e: &Entity) -> Option<Run> {
    let created = e.get_datetime("Created")?;
    Some(Run {
        id: e.row_key().to_string(),
        status: e.get_str("Status").unwrap_or("Pending").to_string(),
        options: Options {
            types: e
                .get_str("Types")
                .unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            apply: e.get_bool("Apply").unwrap_or(false),
            max_deletes: e.get_i64("MaxDeletes").unwrap_or(0).max(0) as usize,
        },
        pages_per_slice: e
            .get_i64("PagesPerSlice")
            .unwrap_or(DEFAULT_PAGES_PER_SLICE as i64)
            .clamp(1, MAX_PAGES_PER_SLICE as i64) as u64,
        phase: if e.get_str("Phase") == Some("delete") {
            Phase::Delete
        } else {
            Phase::Compare
        },
        type_index: e.get_i64("TypeIndex").unwrap_or(0).max(0) as usize,
        resume_from: e.get_i64("ResumeFrom"),
        report: e
            .get_str("Report")
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default(),
        slices: e.get_i64("Slices").unwrap_or(0).max(0) as u64,
        error: e.get_str("Error").unwrap_or_default().to_string(),
        attempts: e.get_i64("Attempts").unwrap_or(0).clamp(0, i64::from(MAX_ATTEMPTS)) as u32,
        created,
        updated: e.get_datetime("LastUpdatedTime").unwrap_or(created),
        lease_until: e.get_datetime("LeaseUntil"),
        etag: e.etag().cloned(),
    })
}

/// At most `max` bytes of `text`, cut at a character boundary (server diagnostics can be any length).
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The row recording one candidate of a run.
fn candidate_row(run_id: &str, resource_type: &str, id: &str) -> Result<Entity, TableError> {
    let mut row = Entity::new(run_id, format!("{resource_type}_{id}"))?;
    row.set_str("ResourceType", resource_type)
        .set_str("ResourceId", id)
        .set_str("State", "candidate");
    Ok(row)
}

impl<'a> Runs<'a> {
    pub fn new(table: TableClient, engine: &'a Engine) -> Runs<'a> {
        Runs {
            table,
            engine,
            slice: SLICE,
        }
    }

    /// Shortens (or lengthens) the time one tick works; tests use zero to checkpoint after every millisecond.
    pub fn with_slice(mut self, slice: Duration) -> Runs<'a> {
        self.slice = slice;
        self
    }

    /// Records a new run; a timer picks it up. `pages_per_slice` bounds each slice's reading (default
    /// [`DEFAULT_PAGES_PER_SLICE`]).
    pub async fn start(&self, options: Options, pages_per_slice: Option<u64>) -> Result<Run, TableError> {
        self.table.create_if_missing().await?;
        let now = Utc::now();
        let id = format!(
            "{}{}",
            now.format("%Y%m%d%H%M%S%3f"),
            crate::telemetry::context::random_hex(16)
        );
        let run = Run {
            report: Report {
                run_id: id.clone(),
                ..Report::default()
            },
            id,
            status: "Pending".into(),
            options,
            pages_per_slice: pages_per_slice
                .unwrap_or(DEFAULT_PAGES_PER_SLICE)
                .clamp(1, MAX_PAGES_PER_SLICE),
            phase: Phase::Compare,
            type_index: 0,
            resume_from: None,
            slices: 0,
            error: String::new(),
            attempts: 0,
            created: now,
            updated: now,
            lease_until: None,
            etag: None,
        };
        let etag = self.table.insert(&to_entity(&run)?).await?;
        Ok(Run {
            etag: Some(etag),
            ..run
        })
    }

    pub async fn get(&self, id: &str) -> Result<Option<Run>, TableError> {
        self.table.create_if_missing().await?;
        Ok(self.table.get(RUNS, id).await?.as_ref().and_then(from_entity))
    }

    /// One slice of work on each open run (least recently updated first) whose lease is free, until the time
    /// is used up. A run that cannot be saved is logged and skipped. Returns the ids worked on.
    pub async fn tick(&self, telemetry: &dyn Telemetry) -> Result<Vec<String>, TableError> {
        self.table.create_if_missing().await?;
        let started = Instant::now();
        let open = format!(
            "{} and (Status eq 'Pending' or Status eq 'Running')",
            filter::eq("PartitionKey", RUNS)
        );
        let mut runs: Vec<Run> = self
            .table
            .query_all(Some(&open))
            .await?
            .iter()
            .filter_map(from_entity)
            .collect();
        runs.sort_by_key(|r| r.updated);
        let mut worked = Vec::new();
        for run in runs {
            if run.lease_until.is_some_and(|l| l > Utc::now()) {
                continue;
            }
            // Claim: only the invocation whose write wins works on the run.
            let mut claimed = run.clone();
            claimed.status = "Running".into();
            claimed.lease_until = Some(Utc::now() + LEASE);
            let claimed = match self.save(&claimed).await {
                Ok(r) => r,
                Err(TableError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "could not claim reconciliation run");
                    continue;
                }
            };
            let id = claimed.id.clone();
            worked.push(id.clone());
            if let Err(e) = self.work(claimed, started, telemetry).await {
                tracing::warn!(run = %id, error = %e, "reconciliation slice not saved; the next tick repeats it");
            }
            if started.elapsed() >= self.slice {
                break;
            }
        }
        Ok(worked)
    }

    /// One slice: compare from the checkpoint, or delete recorded candidates, then checkpoint and release.
    async fn work(&self, mut run: Run, started: Instant, telemetry: &dyn Telemetry) -> Result<(), TableError> {
        let (source, destination) = (self.engine.source(), self.engine.destination());
        run.slices += 1;
        // Any save below records progress, which ends a series of failed attempts.
        run.attempts = 0;
        run.error.clear();
        let budget = run.pages_per_slice;
        let out_of_time = || started.elapsed() >= self.slice;
        if run.phase == Phase::Compare {
            let mut found = Found::default();
            while run.type_index < run.options.types.len() {
                let t = run.options.types[run.type_index].clone();
                let mut report = run.report.clone();
                let mut here = Found {
                    candidates: Vec::new(),
                    pages: found.pages,
                };
                let stop = |pages: u64| pages >= budget || out_of_time();
                let outcome =
                    compare_type_from(source, destination, &t, run.resume_from, &mut report, &mut here, stop).await;
                let resume = match outcome {
                    Ok(resume) => resume,
                    Err(e) => return self.setback(&run, format!("comparing {t}: {e}")).await,
                };
                // The candidates first (idempotent), then the checkpoint that counts them.
                for id in &here.candidates {
                    self.table.upsert(&candidate_row(&run.id, &t, id)?).await?;
                }
                found.pages = here.pages;
                run.report = report;
                match resume {
                    Some(at) => run.resume_from = Some(at),
                    None => {
                        run.type_index += 1;
                        run.report.types_compared += 1;
                        run.resume_from = None;
                    }
                }
                if resume.is_some() || found.pages >= budget || out_of_time() {
                    return self.release(run).await;
                }
                run = self.save(&run).await?;
            }
            // Every type compared.
            if run.options.apply {
                let candidates = run.report.hard_deleted_at_source;
                if candidates > run.options.max_deletes as u64 {
                    run.report.refused = Some(over_cap(candidates, run.options.max_deletes));
                    return self.complete(run, telemetry).await;
                }
                run.phase = Phase::Delete;
                run = self.save(&run).await?;
            } else {
                return self.complete(run, telemetry).await;
            }
        }
        // Deleting: a page of candidates not yet acted on; each is checked at the source, deleted, then marked.
        let pending = format!("{} and State eq 'candidate'", filter::eq("PartitionKey", &run.id));
        loop {
            let page = self
                .table
                .query_page(Some(&pending), Some(DELETES_PER_SLICE as u32), None)
                .await?;
            if page.entities.is_empty() {
                run.report.deleted = self.deleted(&run.id).await?;
                run.report.applied = true;
                return self.complete(run, telemetry).await;
            }
            for row in page.entities {
                let (Some(t), Some(id)) = (row.get_str("ResourceType"), row.get_str("ResourceId")) else {
                    continue;
                };
                // Slices run minutes apart: an id written at the source again since it was found stays.
                let gone = match read_state(source, t, id).await {
                    Ok(state) => state == StatusCode::NOT_FOUND,
                    Err(e) => {
                        return self
                            .setback(&run, format!("checking {t}/{id} at the source: {e}"))
                            .await;
                    }
                };
                if gone && let Err(e) = delete(destination, t, id).await {
                    return self
                        .setback(&run, format!("deleting {t}/{id} at the destination: {e}"))
                        .await;
                }
                let mut done = row.clone();
                if gone {
                    done.set_str("State", "deleted").set_datetime("DeletedAt", Utc::now());
                } else {
                    done.set_str("State", "kept");
                }
                match self.table.replace(&done, &row.if_match()).await {
                    Ok(_) if gone => {
                        run.report.deleted += 1;
                        telemetry.event(
                            Event::new("ReconcileDelete")
                                .with("RunId", &run.id)
                                .with("Resource", t)
                                .with("id", id),
                        );
                    }
                    // Kept; or another invocation marked it first.
                    Ok(_) | Err(TableError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
                if out_of_time() {
                    return self.release(run).await;
                }
            }
            run = self.save(&run).await?;
            if out_of_time() {
                return self.release(run).await;
            }
        }
    }

    /// How many of a run's candidates are marked deleted.
    async fn deleted(&self, run_id: &str) -> Result<u64, TableError> {
        let query = format!("{} and State eq 'deleted'", filter::eq("PartitionKey", run_id));
        Ok(self.table.query_all(Some(&query)).await?.len() as u64)
    }

    /// Checkpoints and lets go of the lease, for the next tick to go on.
    async fn release(&self, mut run: Run) -> Result<(), TableError> {
        run.lease_until = None;
        self.save(&run).await.map(|_| ())
    }

    /// The run is done: saved as completed, then the summary event (only once the save won).
    async fn complete(&self, mut run: Run, telemetry: &dyn Telemetry) -> Result<(), TableError> {
        run.status = "Completed".into();
        run.lease_until = None;
        run.attempts = 0;
        run.error.clear();
        let saved = self.save(&run).await?;
        telemetry.event(summary(&saved.report));
        Ok(())
    }

    /// A server error: the slice's work is dropped (the row keeps the last checkpoint), the run is released for
    /// the next tick, and after [`MAX_ATTEMPTS`] in a row it fails with the reason.
    async fn setback(&self, run: &Run, error: String) -> Result<(), TableError> {
        let Some(mut saved) = self.table.get(RUNS, &run.id).await?.as_ref().and_then(from_entity) else {
            return Ok(());
        };
        if saved.etag != run.etag {
            // Another invocation has the run now.
            return Ok(());
        }
        saved.attempts += 1;
        saved.error = error;
        saved.lease_until = None;
        saved.slices = run.slices;
        if saved.attempts >= MAX_ATTEMPTS {
            saved.status = "Failed".into();
        }
        self.save(&saved).await.map(|_| ())
    }

    /// Writes the run if nobody else did since it was read; a lease still held is renewed. Progress clears a
    /// series of failed attempts.
    async fn save(&self, run: &Run) -> Result<Run, TableError> {
        let mut run = run.clone();
        run.updated = Utc::now();
        if run.lease_until.is_some() {
            run.lease_until = Some(run.updated + LEASE);
        }
        let Some(etag) = run.etag.clone() else {
            return Err(TableError::Conflict {
                table: self.table.name().to_string(),
                partition_key: RUNS.to_string(),
                row_key: run.id.clone(),
            });
        };
        run.etag = Some(self.table.replace(&to_entity(&run)?, &IfMatch::ETag(etag)).await?);
        Ok(run)
    }
}
