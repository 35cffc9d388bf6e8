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

/// The request's JSON object body, `Null` when empty; `Err` (a message for a 400) when it is something else.
pub(super) fn json_body(req: &HttpRequestData) -> Result<Value, String> {
    match req.body_text() {
        Some(text) if !text.trim().is_empty() => match serde_json::from_str::<Value>(&text) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err("the request body must be a JSON object (or empty)".into()),
        },
        _ => Ok(Value::Null),
    }
}

/// The `types` option: resource type names, checked, at most `max`.
pub(super) fn types_option(req: &HttpRequestData, body: &Value, max: usize) -> Result<Vec<String>, String> {
    let types: Vec<String> = option(req, body, "types")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if types.len() > max {
        return Err(format!("at most {max} types per run"));
    }
    if let Some(bad) = types.iter().find(|t| !valid_type(t)) {
        return Err(format!(
            "'{bad}' is not a resource type name (expected e.g. types=Patient,Observation)"
        ));
    }
    Ok(types)
}

/// The status URL of a run started by `function`: the request's own address with the function's segment
/// replaced, and without its query (which holds the function key, never to be echoed). Routes are
/// case-insensitive, so the segment is found however the caller spelled it.
pub(super) fn status_uri(req: &HttpRequestData, function: &str, status_function: &str, id: &str) -> String {
    let base = req.url.split('?').next().unwrap_or_default();
    let base = match base
        .to_ascii_lowercase()
        .rfind(&format!("/{}", function.to_ascii_lowercase()))
    {
        Some(at) => &base[..at],
        None => base.rsplit_once('/').map_or(base, |(b, _)| b),
    };
    format!("{base}/{status_function}/{id}")
}

/// The run id from a status route (`…_Status/{id}`), when present and well formed (it reaches a table key).
pub(super) fn run_id(req: &HttpRequestData) -> Option<&str> {
    let id = req.params.get("id").map(String::as_str).unwrap_or_default();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())).then_some(id)
}

/// A status route's answer: 202 (poll again in a minute) while the run is open, 200 when done, 404 unknown.
pub(super) fn run_status(run: Option<(bool, Value)>, what: &str, id: &str) -> HttpResponseData {
    match run {
        Some((true, body)) => {
            let mut res = HttpResponseData::json(202, &body);
            res.headers.insert("Retry-After".into(), "60".into());
            res
        }
        Some((false, body)) => HttpResponseData::json(200, &body),
        None => HttpResponseData::json(404, &json!({ "error": format!("no {what} run with id {id}") })),
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
    let body = match json_body(&req) {
        Ok(body) => body,
        Err(message) => return Ok(bad_request(output, message)),
    };
    let Some(checks) = Checks::parse(&option(&req, &body, "mode").unwrap_or_default()) else {
        return Ok(bad_request(
            output,
            "mode must be surface, deep, full, all, or a comma-separated mix".into(),
        ));
    };
    let types = match types_option(&req, &body, MAX_TYPES) {
        Ok(types) => types,
        Err(message) => return Ok(bad_request(output, message)),
    };
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
    let status_uri = status_uri(&req, spec.name, "E2ETest_Status", &run.id);
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
    let Some(id) = run_id(&req) else {
        return Ok(bad_request(
            output,
            "the run id in the path is missing or malformed".into(),
        ));
    };
    let run = runs(app)?.get(id).await?.map(|run| (run.is_open(), run.status_body()));
    let res = run_status(run, "verification", id);
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
