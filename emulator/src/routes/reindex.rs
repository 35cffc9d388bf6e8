//! `$reindex` (reference §7.6, item 60): 201 with a Parameters job; a second kick-off while one is active
//! returns the active job; `Prefer` other than `respond-sync` is refused; status and cancel by id.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::App;
use crate::outcome::{FhirError, FhirResult, fhir_json};
use crate::store::SearchFilter;
use crate::time::{Millis, format_ms, now_ms};

#[derive(Debug, Clone)]
pub struct ReindexJob {
    queued: Millis,
    total: usize,
    status: &'static str,
}

#[derive(Default)]
pub struct ReindexJobs {
    jobs: HashMap<u64, ReindexJob>,
}

fn body(id: u64, job: &ReindexJob) -> Value {
    let done = if job.status == "Completed" { job.total } else { 0 };
    json!({
        "resourceType": "Parameters",
        "id": id.to_string(),
        "parameter": [
            { "name": "id", "valueString": id.to_string() },
            { "name": "queuedTime", "valueDateTime": format_ms(job.queued) },
            { "name": "totalResourcesToReindex", "valueDecimal": job.total },
            { "name": "resourcesSuccessfullyReindexed", "valueDecimal": done },
            { "name": "progress", "valueDecimal": (done * 100).checked_div(job.total).unwrap_or(100) },
            { "name": "status", "valueString": job.status },
            { "name": "resources", "valueString": "" }
        ]
    })
}

pub async fn kickoff(State(app): State<App>, headers: HeaderMap) -> FhirResult<Response> {
    for prefer in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
        if !prefer.trim().eq_ignore_ascii_case("respond-sync") {
            return Err(FhirError::bad_request(format!(
                "Value supplied, {prefer},  for the \"Prefer\" header is not supported."
            )));
        }
    }
    let (id, job) = {
        let mut jobs = app.reindex.lock().unwrap_or_else(|p| p.into_inner());
        match jobs.jobs.iter().find(|(_, j)| matches!(j.status, "Queued" | "Running")) {
            Some((id, job)) => (*id, job.clone()),
            None => {
                let id = app.next_job_id();
                let job = ReindexJob {
                    queued: now_ms(),
                    total: app.store.count(&SearchFilter::default()),
                    status: "Running",
                };
                jobs.jobs.insert(id, job.clone());
                let app = app.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(app.config.job_latency.max(std::time::Duration::from_millis(50))).await;
                    if let Some(j) = app.reindex.lock().unwrap_or_else(|p| p.into_inner()).jobs.get_mut(&id)
                        && j.status == "Running"
                    {
                        j.status = "Completed";
                    }
                });
                (id, job)
            }
        }
    };
    let mut response = fhir_json(StatusCode::CREATED, &body(id, &job));
    if let Ok(v) = HeaderValue::from_str(&format!("{}/_operations/reindex/{id}", app.base_url)) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

fn not_found(id: &str) -> FhirError {
    FhirError::not_found(format!("The requested job \"{id}\" was not found."))
}

pub async fn status(State(app): State<App>, Path(id): Path<String>) -> FhirResult<Response> {
    let jobs = app.reindex.lock().unwrap_or_else(|p| p.into_inner());
    let n = id.parse::<u64>().map_err(|_| not_found(&id))?;
    let job = jobs.jobs.get(&n).ok_or_else(|| not_found(&id))?;
    Ok(fhir_json(StatusCode::OK, &body(n, job)))
}

pub async fn cancel(State(app): State<App>, Path(id): Path<String>) -> FhirResult<Response> {
    let mut jobs = app.reindex.lock().unwrap_or_else(|p| p.into_inner());
    let n = id.parse::<u64>().map_err(|_| not_found(&id))?;
    let job = jobs.jobs.get_mut(&n).ok_or_else(|| not_found(&id))?;
    if matches!(job.status, "Queued" | "Running") {
        job.status = "Canceled";
    }
    Ok(fhir_json(StatusCode::ACCEPTED, &body(n, job)))
}
