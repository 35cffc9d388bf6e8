//! Verification runs that outlive a process: `E2ETest_Http` records a run, a timer works on it in bounded
//! slices, and `E2ETest_Status` reports it. Progress and partial results live in one table row (partition
//! `{PartitionKey}-verify` of the export table), so each checkpoint is a single ETag-guarded write: a crash
//! repeats at most the slice in progress, and a lease keeps two ticks off the same run.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::Content;
use super::deep::{self, DeepReport, MAX_COUNT};
use super::full::{FullReport, compare_type_from};
use super::stored::{clip, fit_deep, get_pieces, set_pieces};
use super::surface::{SurfaceReport, surface};
use crate::engine::Engine;
use crate::storage::tables::{Entity, IfMatch, TableClient, TableError, filter};
use crate::telemetry::Event;

/// How long one tick works on a run before checkpointing and letting go.
const SLICE: Duration = Duration::from_secs(120);
/// A server error ends the slice and keeps the checkpoint; this many in a row fail the run.
pub const MAX_ATTEMPTS: u32 = 3;
/// Most types one run checks (the R4 list has about 145).
pub const MAX_TYPES: usize = 300;
/// A run whose lease has not been renewed for this long is presumed abandoned by a crashed tick.
const LEASE: TimeDelta = TimeDelta::minutes(5);

/// Which checks a run does. The original ran surface and deep; that stays the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    pub surface: bool,
    pub deep: bool,
    pub full: bool,
}

impl Checks {
    pub const DEFAULT: Checks = Checks {
        surface: true,
        deep: true,
        full: false,
    };

    /// `surface`, `deep`, `full`, `all`, or a comma-separated mix; empty means [`Checks::DEFAULT`].
    pub fn parse(text: &str) -> Option<Checks> {
        let mut checks = Checks {
            surface: false,
            deep: false,
            full: false,
        };
        let mut any = false;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            any = true;
            match part.to_ascii_lowercase().as_str() {
                "surface" => checks.surface = true,
                "deep" => checks.deep = true,
                "full" => checks.full = true,
                "all" => {
                    checks = Checks {
                        surface: true,
                        deep: true,
                        full: true,
                    }
                }
                _ => return None,
            }
        }
        Some(if any { checks } else { Checks::DEFAULT })
    }

    pub fn names(&self) -> String {
        [("surface", self.surface), ("deep", self.deep), ("full", self.full)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One run's persisted state.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub checks: Checks,
    /// Resources the deep check samples.
    pub count: usize,
    pub types: Vec<String>,
    /// `Pending`, `Running`, `Completed` or `Failed` (the Durable vocabulary the original's callers expect).
    pub status: String,
    pub surface: Option<SurfaceReport>,
    pub deep: Option<DeepReport>,
    pub full: FullReport,
    /// The type the full check is on, and where in it to resume.
    pub type_index: usize,
    pub resume_from: Option<i64>,
    pub error: String,
    /// Failed attempts in a row (a server error); the run fails for good at [`MAX_ATTEMPTS`].
    pub attempts: u32,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub lease_until: Option<DateTime<Utc>>,
    entity_etag: Option<crate::storage::tables::ETag>,
}

pub struct Runs<'a> {
    table: TableClient,
    partition: String,
    engine: &'a Engine,
    slice: Duration,
}

impl<'a> Runs<'a> {
    pub fn new(table: TableClient, engine: &'a Engine) -> Runs<'a> {
        let partition = format!("{}-verify", engine.settings().partition_key);
        Runs {
            table,
            partition,
            engine,
            slice: SLICE,
        }
    }

    /// Shortens (or lengthens) the work slice per tick; tests use zero to checkpoint after every page.
    pub fn with_slice(mut self, slice: Duration) -> Runs<'a> {
        self.slice = slice;
        self
    }

    /// Records a new run; the timer picks it up.
    pub async fn start(&self, checks: Checks, types: Vec<String>, count: Option<usize>) -> Result<Run, TableError> {
        self.table.create_if_missing().await?;
        let now = Utc::now();
        // Time first (ids sort by creation), then 64 random bits: instances of a scaled-out app share no counter.
        let id = format!(
            "{}{}",
            now.format("%Y%m%d%H%M%S%3f"),
            crate::telemetry::context::random_hex(16)
        );
        let mut types = if types.is_empty() {
            self.engine.settings().resource_types.clone()
        } else {
            types
        };
        let mut seen = std::collections::BTreeSet::new();
        types.retain(|t| seen.insert(t.clone()));
        types.truncate(MAX_TYPES);
        let run = Run {
            id,
            checks,
            count: count
                .unwrap_or(self.engine.settings().deep_check_count as usize)
                .clamp(1, MAX_COUNT),
            types,
            status: "Pending".into(),
            surface: None,
            deep: None,
            full: FullReport::default(),
            type_index: 0,
            resume_from: None,
            error: String::new(),
            attempts: 0,
            created: now,
            updated: now,
            lease_until: None,
            entity_etag: None,
        };
        let etag = self.table.insert(&self.to_entity(&run)?).await?;
        Ok(Run {
            entity_etag: Some(etag),
            ..run
        })
    }

    pub async fn get(&self, id: &str) -> Result<Option<Run>, TableError> {
        self.table.create_if_missing().await?;
        Ok(self
            .table
            .get(&self.partition, id)
            .await?
            .as_ref()
            .and_then(from_entity))
    }

    /// Works on open runs, least recently updated first, until the slice is used up. A run that cannot be
    /// saved is logged and skipped, so it never blocks the others. Returns the ids worked on.
    pub async fn tick(&self) -> Result<Vec<String>, TableError> {
        self.table.create_if_missing().await?;
        let started = Instant::now();
        let query = format!(
            "{} and RuntimeStatus ne 'Completed' and RuntimeStatus ne 'Failed'",
            filter::eq("PartitionKey", &self.partition)
        );
        let mut open: Vec<Run> = self
            .table
            .query_all(Some(&query))
            .await?
            .iter()
            .filter_map(from_entity)
            .collect();
        open.sort_by_key(|r| r.updated);
        let mut worked = Vec::new();
        for run in open {
            if run.lease_until.is_some_and(|l| l > Utc::now()) {
                continue;
            }
            // Claim: only the tick whose write wins works on the run.
            let mut claimed = run.clone();
            claimed.status = "Running".into();
            claimed.lease_until = Some(Utc::now() + LEASE);
            let claimed = match self.save(&claimed).await {
                Ok(r) => r,
                Err(TableError::Conflict { .. }) => continue,
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "could not claim verification run");
                    continue;
                }
            };
            let id = claimed.id.clone();
            worked.push(id.clone());
            if let Err(e) = self.work(claimed, started).await {
                tracing::warn!(run = %id, error = %e, "verification run not saved; the next tick retries it");
            }
            if started.elapsed() >= self.slice {
                break;
            }
        }
        Ok(worked)
    }

    async fn work(&self, mut run: Run, started: Instant) -> Result<(), TableError> {
        let engine = self.engine;
        let m = engine.settings();
        let history = m.export_with_history || m.export_with_delete;
        // Any save below records progress, which ends a run of failed attempts.
        run.attempts = 0;
        run.error.clear();
        if run.checks.surface && run.surface.is_none() {
            match surface(engine.source(), engine.destination(), &run.types, history, false).await {
                Ok(report) => {
                    for row in &report.rows {
                        engine.telemetry_event(
                            Event::new("SurfaceCheck")
                                .with("Resource", &row.resource)
                                .with("SourceCount", row.source_count)
                                .with("DestinationCount", row.destination_count)
                                .with("Result", &row.result),
                        );
                    }
                    run.surface = Some(report);
                    run = self.save(&run).await?;
                }
                Err(e) => return self.setback(run, format!("surface check: {e}")).await,
            }
        }
        if run.checks.deep && run.deep.is_none() {
            match self.deep(&run).await {
                Ok(report) => {
                    run.deep = Some(report);
                    run = self.save(&run).await?;
                }
                Err(e) => return self.setback(run, format!("deep check: {e}")).await,
            }
        }
        if run.checks.full {
            while run.type_index < run.types.len() {
                let t = run.types[run.type_index].clone();
                let stop = |_: &FullReport| started.elapsed() >= self.slice;
                match compare_type_from(
                    engine.source(),
                    engine.destination(),
                    &t,
                    history,
                    Content::of(m),
                    run.resume_from,
                    &mut run.full,
                    stop,
                )
                .await
                {
                    Ok(Some(resume)) => {
                        run.resume_from = Some(resume);
                        run.lease_until = None;
                        self.save(&run).await?;
                        return Ok(());
                    }
                    Ok(None) => {
                        run.type_index += 1;
                        run.resume_from = None;
                        run = self.save(&run).await?;
                    }
                    Err(e) => return self.setback(run, format!("full check of {t}: {e}")).await,
                }
                if started.elapsed() >= self.slice {
                    run.lease_until = None;
                    self.save(&run).await?;
                    return Ok(());
                }
            }
            run.full.passed = run.full.missing == 0 && run.full.extra == 0 && run.full.different == 0;
            engine.telemetry_event(
                Event::new("FullCheck")
                    .with("Compared", run.full.compared)
                    .with("Missing", run.full.missing)
                    .with("Extra", run.full.extra)
                    .with("Different", run.full.different)
                    .with("Result", if run.full.passed { "Pass" } else { "Fail" }),
            );
        }
        run.status = "Completed".into();
        run.lease_until = None;
        self.save(&run).await?;
        Ok(())
    }

    /// Samples types with data (counted now: the surface check may not be part of the run).
    async fn deep(&self, run: &Run) -> Result<DeepReport, crate::fhir::FhirError> {
        let engine = self.engine;
        let report = deep::check(
            engine.source(),
            engine.destination(),
            &run.types,
            run.surface.as_ref(),
            run.count,
            &engine.settings().deep_check_ignore_paths,
            Content::of(engine.settings()),
        )
        .await?;
        for row in &report.rows {
            engine.telemetry_event(
                Event::new("DeepCheck")
                    .with("Resource", &row.resource)
                    .with("id", &row.id)
                    .with("Result", &row.result),
            );
        }
        Ok(report)
    }

    /// A server error: the work since the last checkpoint is dropped (the row still holds it), the run is
    /// released for the next tick, and after [`MAX_ATTEMPTS`] in a row it fails with the reason.
    async fn setback(&self, run: Run, error: String) -> Result<(), TableError> {
        let mut saved = match self
            .table
            .get(&self.partition, &run.id)
            .await?
            .as_ref()
            .and_then(from_entity)
        {
            Some(saved) => saved,
            None => return Ok(()),
        };
        saved.attempts += 1;
        saved.error = clip(&error, 2000);
        saved.lease_until = None;
        if saved.attempts >= MAX_ATTEMPTS {
            saved.status = "Failed".into();
        }
        self.save(&saved).await.map(|_| ())
    }

    /// Writes the run if nobody else did since it was read. A lease still held is renewed, so a tick that keeps
    /// saving keeps its claim however long the run takes.
    async fn save(&self, run: &Run) -> Result<Run, TableError> {
        let mut run = run.clone();
        run.updated = Utc::now();
        if run.lease_until.is_some() {
            run.lease_until = Some(run.updated + LEASE);
        }
        let entity = self.to_entity(&run)?;
        let Some(etag) = run.entity_etag.clone() else {
            // Only rows read from the table are saved; without an ETag the write could not be guarded.
            return Err(TableError::Conflict {
                table: self.table.name().to_string(),
                partition_key: self.partition.clone(),
                row_key: run.id.clone(),
            });
        };
        run.entity_etag = Some(self.table.replace(&entity, &IfMatch::ETag(etag)).await?);
        Ok(run)
    }

    fn to_entity(&self, run: &Run) -> Result<Entity, TableError> {
        let mut e = Entity::new(&self.partition, &run.id)?;
        e.set_str("Checks", run.checks.names())
            .set_i64("Count", run.count as i64)
            .set_str("Types", run.types.join(","))
            .set_str("RuntimeStatus", &run.status)
            .set_i64("TypeIndex", run.type_index as i64)
            .set_str("Error", clip(&run.error, 2000))
            .set_i64("Attempts", i64::from(run.attempts))
            .set_datetime("CreatedTime", run.created)
            .set_datetime("LastUpdatedTime", run.updated);
        let surface = run.surface.as_ref().map(serde_json::to_string).transpose();
        set_pieces(&mut e, "SurfaceOutput", &surface.ok().flatten().unwrap_or_default());
        set_pieces(
            &mut e,
            "DeepOutput",
            &run.deep.as_ref().map(fit_deep).unwrap_or_default(),
        );
        set_pieces(
            &mut e,
            "FullOutput",
            &serde_json::to_string(&run.full).unwrap_or_default(),
        );
        match run.resume_from {
            Some(r) => e.set_i64("ResumeFrom", r),
            None => e.remove("ResumeFrom"),
        };
        match run.lease_until {
            Some(l) => e.set_datetime("LeaseUntil", l),
            None => e.remove("LeaseUntil"),
        };
        Ok(e)
    }
}

fn from_entity(e: &Entity) -> Option<Run> {
    Some(Run {
        id: e.row_key().to_string(),
        checks: Checks::parse(e.get_str("Checks")?)?,
        count: e.get_i64("Count").unwrap_or(1).clamp(1, MAX_COUNT as i64) as usize,
        deep: serde_json::from_str(&get_pieces(e, "DeepOutput")).ok(),
        types: e
            .get_str("Types")
            .unwrap_or_default()
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        status: e.get_str("RuntimeStatus")?.to_string(),
        surface: serde_json::from_str(&get_pieces(e, "SurfaceOutput")).ok(),
        full: serde_json::from_str(&get_pieces(e, "FullOutput")).unwrap_or_default(),
        type_index: e.get_i64("TypeIndex").unwrap_or(0).max(0) as usize,
        resume_from: e.get_i64("ResumeFrom"),
        error: e.get_str("Error").unwrap_or_default().to_string(),
        attempts: e.get_i64("Attempts").unwrap_or(0).clamp(0, i64::from(MAX_ATTEMPTS)) as u32,
        created: e.get_datetime("CreatedTime")?,
        updated: e.get_datetime("LastUpdatedTime")?,
        lease_until: e.get_datetime("LeaseUntil"),
        entity_etag: e.etag().cloned(),
    })
}

impl Run {
    /// The Durable-style status body: `runtimeStatus`, progress in `customStatus`, and the output as real JSON.
    pub fn status_body(&self) -> Value {
        let mut output = serde_json::Map::new();
        if let Some(s) = &self.surface {
            output.insert("SurfaceCheck".into(), serde_json::to_value(&s.rows).unwrap_or_default());
        }
        if let Some(d) = &self.deep {
            output.insert("DeepCheck".into(), serde_json::to_value(&d.rows).unwrap_or_default());
            output.insert(
                "DeepCheckSummary".into(),
                json!({
                    "compared": d.compared,
                    "failed": d.failed,
                    "passed": d.passed,
                    "rowsOmitted": (d.compared as usize).saturating_sub(d.rows.len()),
                }),
            );
        }
        if self.checks.full {
            output.insert("FullCheck".into(), serde_json::to_value(&self.full).unwrap_or_default());
        }
        // What the content comparison was: the deep rows and the full check say it too.
        let content = self
            .deep
            .as_ref()
            .and_then(|d| d.rows.first().map(|r| r.content.clone()))
            .or_else(|| self.checks.full.then(|| self.full.content.clone()))
            .filter(|c| !c.is_empty());
        if let Some(c) = content {
            output.insert("Content".into(), Value::String(c));
        }
        let passed = self.surface.as_ref().is_none_or(|s| s.passed)
            && self.deep.as_ref().is_none_or(|d| d.passed)
            && (!self.checks.full || self.full.passed);
        let done = self.status == "Completed";
        let failed = self.status == "Failed";
        json!({
            "name": "E2ETest",
            "instanceId": self.id,
            "runtimeStatus": self.status,
            "input": { "mode": self.checks.names(), "types": self.types, "count": self.count },
            "customStatus": {
                "surfaceDone": self.surface.is_some(),
                "deepDone": self.deep.is_some(),
                "typesDone": self.type_index,
                "typesTotal": self.types.len(),
                "compared": self.full.compared,
                "failedAttempts": self.attempts,
                "lastError": if self.error.is_empty() { Value::Null } else { Value::String(self.error.clone()) },
            },
            // A failed run shows what it had checked before it stopped, marked partial.
            "output": if done || failed { Value::Object(output) } else { Value::Null },
            "partial": failed,
            "passed": if done { Value::Bool(passed) } else { Value::Null },
            "error": if self.error.is_empty() { Value::Null } else { Value::String(self.error.clone()) },
            "createdTime": self.created.to_rfc3339(),
            "lastUpdatedTime": self.updated.to_rfc3339(),
        })
    }

    /// Still being worked on (the status function answers 202 then).
    pub fn is_open(&self) -> bool {
        self.status == "Pending" || self.status == "Running"
    }
}
