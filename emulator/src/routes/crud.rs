//! Create, read, vread, update, soft and hard delete, and batch bundles (the original tool copies custom
//! SearchParameters with a batch of PUTs).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{BundleBuilder, check_type, first, query_pairs};
use crate::App;
use crate::middleware::{RequestId, empty};
use crate::outcome::{FhirError, FhirResult, IssueCode};
use crate::store::{Read, Version, WriteError, Written};
use crate::time::format_instant;

fn not_found(resource_type: &str, id: &str) -> FhirError {
    FhirError::not_found(format!(
        "Resource type '{resource_type}' with id '{id}' couldn't be found."
    ))
}

fn gone(resource_type: &str, id: &str) -> FhirError {
    FhirError::new(
        StatusCode::GONE,
        IssueCode::NotFound,
        format!("The resource '{resource_type}/{id}' has been deleted."),
    )
}

fn version_headers(response: &mut Response, v: &Version) {
    let last_modified = chrono::DateTime::from_timestamp_millis(v.last_updated)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    for (name, value) in [
        ("etag", format!("W/\"{}\"", v.version_id)),
        ("last-modified", last_modified),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
}

fn resource_response(status: StatusCode, v: &Version) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, crate::outcome::FHIR_JSON)],
        v.body.to_string(),
    )
        .into_response();
    version_headers(&mut response, v);
    response
}

fn write_error(e: WriteError) -> FhirError {
    FhirError::bad_request(e.to_string())
}

fn parse_body(bytes: &Bytes) -> FhirResult<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| FhirError::bad_request(format!("The request body is not valid JSON: {e}")))
}

pub async fn read(State(app): State<App>, Path((resource_type, id)): Path<(String, String)>) -> FhirResult<Response> {
    check_type(&resource_type)?;
    match app.store.read(&resource_type, &id) {
        Read::Found(v) => Ok(resource_response(StatusCode::OK, &v)),
        Read::Gone(_) => Err(gone(&resource_type, &id)),
        Read::Missing => Err(not_found(&resource_type, &id)),
    }
}

pub async fn vread(
    State(app): State<App>,
    Path((resource_type, id, vid)): Path<(String, String, String)>,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    match app.store.vread(&resource_type, &id, &vid) {
        Read::Found(v) => Ok(resource_response(StatusCode::OK, &v)),
        Read::Gone(_) => Err(gone(&resource_type, &id)),
        Read::Missing => Err(FhirError::not_found(format!(
            "Resource type '{resource_type}' with id '{id}' and version '{vid}' couldn't be found."
        ))),
    }
}

fn written_response(app: &App, w: &Written) -> Response {
    let status = if w.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = resource_response(status, &w.version);
    if w.created {
        let body: Value = serde_json::from_str(&w.version.body).unwrap_or(Value::Null);
        let location = format!(
            "{}/{}/{}/_history/{}",
            app.base_url,
            body["resourceType"].as_str().unwrap_or_default(),
            body["id"].as_str().unwrap_or_default(),
            w.version.version_id
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, v);
        }
    }
    response
}

pub async fn update(
    State(app): State<App>,
    Path((resource_type, id)): Path<(String, String)>,
    body: Bytes,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let written = app
        .store
        .put(&resource_type, &id, parse_body(&body)?)
        .map_err(write_error)?;
    Ok(written_response(&app, &written))
}

pub async fn create(State(app): State<App>, Path(resource_type): Path<String>, body: Bytes) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let written = app
        .store
        .create(&resource_type, parse_body(&body)?)
        .map_err(write_error)?;
    Ok(written_response(&app, &written))
}

/// Soft delete by default; `hardDelete=true` removes every version (AHDS and AAPI both accept it).
pub async fn delete(
    State(app): State<App>,
    Path((resource_type, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    let pairs = query_pairs(raw.as_deref());
    if first(&pairs, "hardDelete").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        app.store.hard_delete(&resource_type, &id);
    } else {
        app.store.delete(&resource_type, &id);
    }
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /` with a batch or transaction Bundle of PUT, POST, DELETE and GET entries. Entries are applied in
/// order; a transaction is not rolled back on failure (the migration only sends batches).
pub async fn batch(
    State(app): State<App>,
    axum::Extension(rid): axum::Extension<RequestId>,
    body: Bytes,
) -> FhirResult<Response> {
    let bundle = parse_body(&body)?;
    let kind = match (bundle["resourceType"].as_str(), bundle["type"].as_str()) {
        (Some("Bundle"), Some("batch")) => "batch-response",
        (Some("Bundle"), Some("transaction")) => "transaction-response",
        _ => {
            return Err(FhirError::bad_request(
                "Bundle type is not present or not supported. Supported types are batch and transaction.",
            ));
        }
    };
    let mut out = BundleBuilder::new(&rid.0, kind, None, &[]);
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let method = entry["request"]["method"].as_str().unwrap_or_default();
        let url = entry["request"]["url"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/');
        let mut parts = url.splitn(2, '/');
        let (resource_type, id) = (parts.next().unwrap_or_default(), parts.next());
        let result = apply_entry(&app, method, resource_type, id, entry.get("resource").cloned());
        match result {
            Ok((status, Some(v))) => {
                let response = json!({ "response": {
                    "status": status, "etag": format!("W/\"{}\"", v.version_id), "lastModified": format_instant(v.last_updated, v.sub_ms)
                }});
                out.entry(&json!({}), &v.body, &response);
            }
            Ok((status, None)) => out.entry(&json!({}), "null", &json!({ "response": { "status": status } })),
            Err(e) => {
                let outcome = e.body(&rid.0);
                out.entry(
                    &json!({}),
                    "null",
                    &json!({ "response": { "status": e.status.as_u16().to_string(), "outcome": outcome } }),
                );
            }
        }
    }
    Ok(out.finish())
}

fn apply_entry(
    app: &App,
    method: &str,
    resource_type: &str,
    id: Option<&str>,
    resource: Option<Value>,
) -> FhirResult<(&'static str, Option<Version>)> {
    check_type(resource_type)?;
    match (method, id) {
        ("PUT", Some(id)) => {
            let w = app
                .store
                .put(resource_type, id, resource.unwrap_or(Value::Null))
                .map_err(write_error)?;
            Ok((if w.created { "201 Created" } else { "200 OK" }, Some(w.version)))
        }
        ("POST", None) => {
            let w = app
                .store
                .create(resource_type, resource.unwrap_or(Value::Null))
                .map_err(write_error)?;
            Ok(("201 Created", Some(w.version)))
        }
        ("DELETE", Some(id)) => {
            app.store.delete(resource_type, id);
            Ok(("204 NoContent", None))
        }
        ("GET", Some(id)) => match app.store.read(resource_type, id) {
            Read::Found(v) => Ok(("200 OK", Some(v))),
            Read::Gone(_) => Err(gone(resource_type, id)),
            Read::Missing => Err(not_found(resource_type, id)),
        },
        _ => Err(FhirError::bad_request(format!(
            "The batch entry '{method} {resource_type}' is not supported."
        ))),
    }
}
