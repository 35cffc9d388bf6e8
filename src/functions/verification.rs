//! The verification functions: `E2ETest_Http` records a run and answers at once (a full check can take longer
//! than any HTTP timeout), the `E2ETest_Runner` timer works on open runs in slices, and `E2ETest_Status/{id}`
//! reports progress and, when done, the results.

use serde_json::{Value, json};

use super::payload::{HttpRequestData, HttpResponseData, InvocationRequest, InvocationResponse};
use super::{FunctionError, FunctionSpec, Trigger, http_output};
use crate::app::App;
use crate::verify::deep::MAX_COUNT;
use crate::verify::runs::{Checks, MAX_TYPES, Runs};

fn runs(app: &App) -> Result<Runs<'_>, FunctionError> {
    let table = app.tables().table(&app.settings().export_table)?;
    Ok(Runs::new(table, app.engine()))
}

pub(super) fn bad_request(output: &str, message: String) -> InvocationResponse {
    InvocationResponse::http(
        output,
        HttpResponseData::json(400, &json!({ "error": message })),
        Vec::new(),
    )
}

/// A resource type name as FHIR spells them; anything else never reaches a URL.
pub(super) fn valid_type(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric()) && name.len() <= 64
}

/// An option from the query string, else from a JSON body (`{"mode": "full", "types": ["Patient"], "count": 50}`).
pub(super) fn option(req: &HttpRequestData, body: &Value, name: &str) -> Option<String> {
    if let Some(v) = req.query_param(name) {
        return Some(v.to_string());
    }
    match body.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
        _ => None,
    }
}

/// `E2ETest_Http` (GET or POST; `mode=surface|deep|full|all` or a comma-separated mix, default surface,deep;
/// `types=Patient,Observation`, default every type; `count=N`, default `AZURE_DeepCheckCount`): records a run
/// and answers 202 with the status URL to poll, in the body and in `Location`.
pub(super) async fn start(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    let req = request.http("req")?;
    let body = match req.body_text() {
        Some(text) if !text.trim().is_empty() => match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Ok(bad_request(
                    output,
                    "the request body must be a JSON object (or empty)".into(),
                ));
            }
        },
        _ => Value::Null,
    };
    let Some(checks) = Checks::parse(&option(&req, &body, "mode").unwrap_or_default()) else {
        return Ok(bad_request(
            output,
            "mode must be surface, deep, full, all, or a comma-separated mix".into(),
        ));
    };
    let types: Vec<String> = option(&req, &body, "types")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if types.len() > MAX_TYPES {
        return Ok(bad_request(output, format!("at most {MAX_TYPES} types per run")));
    }
    if let Some(bad) = types.iter().find(|t| !valid_type(t)) {
        return Ok(bad_request(
            output,
            format!("'{bad}' is not a resource type name (expected e.g. types=Patient,Observation)"),
        ));
    }
    let count = match option(&req, &body, "count").map(|c| c.parse::<usize>()) {
        None => None,
        Some(Ok(n)) if (1..=MAX_COUNT).contains(&n) => Some(n),
        Some(_) => {
            return Ok(bad_request(
                output,
                format!("count must be a whole number from 1 to {MAX_COUNT}"),
            ));
        }
    };
    let run = runs(app)?.start(checks, types, count).await?;
    // The status URL is built from the request's own address, without its query: that holds the function key,
    // which must not be echoed into logs or bodies.
    let base = req.url.split('?').next().unwrap_or_default();
    // Routes are case-insensitive: find the function's segment however the caller spelled it.
    let base = match base.to_ascii_lowercase().rfind("/e2etest_http") {
        Some(at) => &base[..at],
        None => base.rsplit_once('/').map_or(base, |(b, _)| b),
    };
    let status_uri = format!("{base}/E2ETest_Status/{}", run.id);
    let body = json!({
        "id": run.id,
        "runtimeStatus": run.status,
        "statusQueryGetUri": status_uri,
        "input": { "mode": run.checks.names(), "types": run.types.len(), "count": run.count },
    });
    let mut res = HttpResponseData::json(202, &body);
    res.headers.insert("Location".into(), status_uri);
    res.headers.insert("Retry-After".into(), "60".into());
    Ok(InvocationResponse::http(
        output,
        res,
        vec![format!(
            "verification run {} recorded ({}, {} types)",
            run.id,
            run.checks.names(),
            run.types.len()
        )],
    ))
}

/// `E2ETest_Status/{id}` (GET): the run's status body, or 404.
pub(super) async fn status(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    let req = request.http("req")?;
    let id = req.params.get("id").map(String::as_str).unwrap_or_default();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Ok(bad_request(
            output,
            "the run id in the path is missing or malformed".into(),
        ));
    }
    let res = match runs(app)?.get(id).await? {
        Some(run) if run.is_open() => {
            let mut res = HttpResponseData::json(202, &run.status_body());
            res.headers.insert("Retry-After".into(), "60".into());
            res
        }
        Some(run) => HttpResponseData::json(200, &run.status_body()),
        None => HttpResponseData::json(404, &json!({ "error": format!("no verification run with id {id}") })),
    };
    Ok(InvocationResponse::http(output, res, Vec::new()))
}

/// `E2ETest_Runner` (timer): one slice of work on every open run.
pub(super) async fn runner(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let Trigger::Timer { binding, .. } = spec.trigger else {
        return Err(FunctionError::Unrouted(spec.name));
    };
    request.timer(binding)?;
    let worked = runs(app)?.tick().await?;
    let mut lines = vec![if worked.is_empty() {
        "no open verification runs".to_string()
    } else {
        format!("worked on verification runs: {}", worked.join(", "))
    }];
    // The same timer runs reconciliation runs (Reconcile_Http).
    let reconciled = super::reconcile::tick(app).await?;
    if !reconciled.is_empty() {
        lines.push(format!("worked on reconciliation runs: {}", reconciled.join(", ")));
    }
    Ok(InvocationResponse::logs(lines))
}
