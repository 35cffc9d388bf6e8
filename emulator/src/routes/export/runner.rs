//! Runs one export job in the background: selects versions by the flavor's window rules (reference §3), writes
//! them as NDJSON to the storage account with the servers' container and blob naming (§2.4, item 18), and
//! records the outcome the status endpoint reports.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::anonymize;
use super::{ExportRequest, ExportState, Scope};
use crate::App;
use crate::faults::Faults;
use crate::store::{ExportSelection, SearchFilter, VersionRef, export_deleted_line};
use crate::time::{Millis, compact_stamp, now_ms};

/// Why a job failed: the status the status endpoint returns and the reason it quotes.
struct Failure(u16, String);

pub(super) fn start(app: App, id: u64, created: Millis, request: ExportRequest) {
    tokio::spawn(async move {
        let mut stopping = app.stopping.clone();
        // The job runs in its own task so that a bug in it (a panic) fails the job instead of leaving it
        // "running" forever.
        let job = tokio::spawn({
            let app = app.clone();
            async move { run(&app, id, created, request).await }
        });
        let abort = job.abort_handle();
        let result = tokio::select! {
            r = job => r.unwrap_or_else(|_| Err(Failure(500, "Unknown Error.".into()))),
            _ = stopping.wait_for(|s| *s) => {
                abort.abort();
                return;
            }
        };
        let mut jobs = app.exports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = jobs.jobs.get_mut(&id) {
            job.state = match result {
                Ok(()) => ExportState::Completed { finished_at: now_ms() },
                Err(Failure(status, reason)) => ExportState::Failed { status, reason },
            };
        }
    });
}

fn cancelled(app: &App, id: u64) -> bool {
    app.exports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .jobs
        .get(&id)
        .is_none_or(|j| j.cancelled)
}

async fn run(app: &App, id: u64, created: Millis, request: ExportRequest) -> Result<(), Failure> {
    if !app.config.job_latency.is_zero() {
        tokio::time::sleep(app.config.job_latency).await;
    }
    if let Some(f) = Faults::take(&mut app.faults().export_failure) {
        return Err(Failure(f.status, f.reason));
    }
    let blob = app
        .blob
        .as_ref()
        .ok_or_else(|| Failure(404, "The storage account not found.".into()))?;
    let (container, prefix) = match &request.container {
        Some(c) => (c.clone(), format!("{}-{id}/", compact_stamp(created))),
        None => (format!("export-{id}"), String::new()),
    };
    blob.ensure_container(&container).await.map_err(storage_failure)?;
    let rules = match &request.anonymization {
        Some((name, etag)) => {
            let config = blob.get("anonymization", name).await.map_err(|e| {
                let message = if e.message.contains("container") {
                    "Anonymization container not found on the destination storage.".to_string()
                } else {
                    format!("Anonymization configuration '{name}' not found.")
                };
                Failure(400, message)
            })?;
            if etag
                .as_ref()
                .is_some_and(|t| t.trim_matches('"') != config.etag.trim_matches('"'))
            {
                return Err(Failure(400, format!("Anonymization configuration '{name}' not found.")));
            }
            Some(anonymize::parse_rules(&config.bytes).map_err(|e| Failure(400, e))?)
        }
        None => None,
    };

    let selected = select(app, created, &request)?;
    // One processing sub-job per `_maxCount` resources of one type, each with its own files.
    let mut by_type: BTreeMap<String, Vec<VersionRef>> = BTreeMap::new();
    for v in selected {
        by_type.entry(v.resource_type().to_string()).or_default().push(v);
    }
    let newline = "\n";
    for (resource_type, versions) in by_type {
        for chunk in versions.chunks(request.max_count) {
            if cancelled(app, id) {
                return Ok(());
            }
            let job = app.next_job_id();
            let per_resource = app.config.per_resource_latency * chunk.len() as u32;
            if !per_resource.is_zero() {
                tokio::time::sleep(per_resource.min(Duration::from_secs(3600))).await;
            }
            let mut file_no = 1;
            let mut buffer = String::new();
            let mut lines = 0;
            for v in chunk {
                let mut line = if v.version.deleted {
                    export_deleted_line(&v.version.body)
                } else {
                    v.version.body.to_string()
                };
                if let Some(rules) = &rules {
                    line = anonymize::apply(rules, &resource_type, line);
                }
                buffer.push_str(&line);
                buffer.push_str(newline);
                lines += 1;
                if buffer.len() >= app.config.rollover_bytes {
                    write_file(
                        app,
                        id,
                        &container,
                        &prefix,
                        &resource_type,
                        job,
                        file_no,
                        std::mem::take(&mut buffer),
                        lines,
                    )
                    .await?;
                    file_no += 1;
                    lines = 0;
                }
            }
            if lines > 0 {
                write_file(
                    app,
                    id,
                    &container,
                    &prefix,
                    &resource_type,
                    job,
                    file_no,
                    buffer,
                    lines,
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn write_file(
    app: &App,
    id: u64,
    container: &str,
    prefix: &str,
    resource_type: &str,
    job: u64,
    file_no: usize,
    content: String,
    lines: usize,
) -> Result<(), Failure> {
    let blob = app.blob.as_ref().expect("checked before the job started");
    let name = format!("{prefix}{resource_type}-{job}-{file_no}.ndjson");
    blob.put(container, &name, content.into_bytes())
        .await
        .map_err(storage_failure)?;
    let url = blob.url(container, &name);
    if let Some(j) = app.exports.lock().unwrap_or_else(|p| p.into_inner()).jobs.get_mut(&id) {
        j.output.push((resource_type.to_string(), url, lines));
    }
    Ok(())
}

/// A storage error as a job failure: the storage status, or 404 when the account could not be reached.
fn storage_failure(e: crate::blob::BlobFailure) -> Failure {
    if e.status == 0 {
        Failure(404, "The storage account not found.".into())
    } else {
        Failure(e.status, e.message)
    }
}

/// The versions the request selects, by scope and the flavor's window semantics.
fn select(app: &App, created: Millis, request: &ExportRequest) -> Result<Vec<VersionRef>, Failure> {
    let till = request.till.unwrap_or(created);
    // The SQL (ahds) parallel path: [since, till) with a snapshot at `till`; everything else searches with
    // both ends inclusive.
    // Fault `exportSqlFallback`: the SQL orchestrator's fallback job (no ranges planned) searches inclusively
    // (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Operations/Export/SqlExportOrchestratorJob.cs`; reference §11.9).
    let sql_parallel =
        request.parallel && app.config.flavor == crate::Flavor::Ahds && !app.faults().export_sql_fallback;
    let selection = ExportSelection {
        since: request.since,
        till,
        inclusive_till: !sql_parallel,
        inclusive_end: request.till_end,
        snapshot: sql_parallel && !request.history,
        history: request.history,
        deleted: request.deleted,
        types: request.types.clone(),
    };
    let mut versions = app.store.export(&selection);
    if !request.type_filters.is_empty() {
        versions.retain(|v| type_filter_accepts(&request.type_filters, v));
    }
    match &request.scope {
        Scope::System => Ok(versions),
        Scope::Patient => {
            let patients: HashSet<String> = app
                .store
                .export(&ExportSelection {
                    types: Some(HashSet::from(["Patient".to_string()])),
                    since: None,
                    ..selection.clone()
                })
                .iter()
                .map(|v| v.id().to_string())
                .collect();
            Ok(compartment(versions, &patients))
        }
        Scope::Group(group_id) => {
            let group = match app.store.read("Group", group_id) {
                crate::store::Read::Found(v) => v,
                _ => {
                    return Err(Failure(
                        400,
                        format!("Resource type 'Group' with id '{group_id}' couldn't be found."),
                    ));
                }
            };
            let body: Value = serde_json::from_str(&group.body).unwrap_or(Value::Null);
            let members: HashSet<String> = body["member"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["entity"]["reference"].as_str())
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(str::to_string)
                .collect();
            Ok(compartment(versions, &members))
        }
    }
}

/// Patients in `patients` and resources that reference one of them (an approximation of the Patient
/// compartment that is exact for the references the seeder writes).
fn compartment(versions: Vec<VersionRef>, patients: &HashSet<String>) -> Vec<VersionRef> {
    versions
        .into_iter()
        .filter(|v| {
            match v.resource_type() {
                "Patient" => return patients.contains(v.id()),
                // The Group that defines a group export is not exported itself.
                "Group" => return false,
                _ => {}
            }
            v.version
                .body
                .split("\"Patient/")
                .skip(1)
                .any(|rest| rest.split('"').next().is_some_and(|id| patients.contains(id)))
        })
        .collect()
}

/// `_typeFilter`: a version of a filtered type must match one of its type's queries (`_id`, `_lastUpdated`).
fn type_filter_accepts(filters: &[(String, Vec<(String, String)>)], v: &VersionRef) -> bool {
    let mine: Vec<_> = filters.iter().filter(|(t, _)| t == v.resource_type()).collect();
    if mine.is_empty() {
        return true;
    }
    mine.iter().any(|(_, params)| {
        params.iter().all(|(name, value)| match name.as_str() {
            "_id" => value.split(',').any(|id| id == v.id()),
            "_lastUpdated" => {
                let mut f = SearchFilter::default();
                crate::routes::search::apply_last_updated(&mut f, value).is_ok()
                    && f.from.is_none_or(|lo| v.version.last_updated >= lo)
                    && f.to.is_none_or(|hi| v.version.last_updated < hi)
            }
            _ => true,
        })
    })
}
