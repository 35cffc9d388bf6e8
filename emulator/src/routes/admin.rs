//! Emulator-only administration (no Azure equivalent): switch faults at run time, load historical data with
//! its own versionId and lastUpdated (how the seeder writes history into an aapi source, which has no
//! `$import`), and read store statistics. Not subject to throttling or token checks.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::App;
use crate::faults::Faults;
use crate::outcome::{FhirError, FhirResult, plain_json};
use crate::store::{ImportOptions, LineOutcome};
use crate::time::now_ms;

pub fn router() -> Router<App> {
    Router::new()
        .route("/faults", get(get_faults).put(put_faults))
        .route("/load", post(load))
        .route("/stats", get(stats))
        .route("/late", post(late))
}

async fn get_faults(State(app): State<App>) -> Response {
    plain_json(
        StatusCode::OK,
        &serde_json::to_value(app.faults().clone()).unwrap_or_default(),
    )
}

async fn put_faults(State(app): State<App>, body: Bytes) -> FhirResult<Response> {
    let faults: Faults =
        serde_json::from_slice(&body).map_err(|e| FhirError::bad_request(format!("Invalid faults: {e}")))?;
    *app.faults() = faults.clone();
    Ok(plain_json(
        StatusCode::OK,
        &serde_json::to_value(faults).unwrap_or_default(),
    ))
}

/// NDJSON in, merged with the incremental-import rules (negative versions allowed), counts out.
async fn load(State(app): State<App>, body: Bytes) -> FhirResult<Response> {
    let opts = ImportOptions::seeding(now_ms());
    let text = String::from_utf8_lossy(&body);
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    for (i, raw) in text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .enumerate()
    {
        // The seeder also loads custom SearchParameters, which $import refuses but a server stores.
        match crate::seed::parse_seed_line(raw, i + 1, &opts) {
            Ok(line) => lines.push(line),
            Err(e) => errors.push(json!({ "line": i + 1, "error": e })),
        }
    }
    let mut loaded = 0;
    let mut unchanged = 0;
    for (line, outcome) in app.store.import_batch(lines, &opts) {
        match outcome {
            LineOutcome::Loaded => loaded += 1,
            LineOutcome::Unchanged => unchanged += 1,
            LineOutcome::Error(e) => errors.push(json!({ "line": line, "error": e })),
        }
    }
    Ok(plain_json(
        StatusCode::OK,
        &json!({ "loaded": loaded, "unchanged": unchanged, "errors": errors }),
    ))
}

/// Fault `lateVisibility` (reference §11.10): `{"resource": {...}, "ageMs": N, "hiddenMs": M}` writes a new version
/// whose `lastUpdated` is N ms in the past and which stays invisible to read, search, history and export for M ms,
/// like a transaction that took the SQL clock before it committed. Answers the `lastUpdated` it will carry.
async fn late(State(app): State<App>, body: Bytes) -> FhirResult<Response> {
    let req: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| FhirError::bad_request(format!("Invalid late write: {e}")))?;
    let resource = req["resource"].clone();
    let resource_type = resource["resourceType"].as_str().unwrap_or_default().to_string();
    let id = resource["id"].as_str().unwrap_or_default().to_string();
    let age = req["ageMs"].as_u64().unwrap_or(0);
    let hidden = req["hiddenMs"].as_u64().unwrap_or(0);
    let last_updated = app
        .store
        .write_late(&resource_type, &id, resource, age, hidden)
        .map_err(|e| FhirError::bad_request(e.to_string()))?;
    Ok(plain_json(StatusCode::OK, &json!({ "lastUpdated": last_updated })))
}

async fn stats(State(app): State<App>) -> impl IntoResponse {
    let (resources, versions) = app.store.size();
    plain_json(StatusCode::OK, &json!({ "resources": resources, "versions": versions }))
}
