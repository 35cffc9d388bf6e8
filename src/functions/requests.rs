//! What the run-starting HTTP functions (verification and reconciliation) share: request parsing with clear
//! 400s, the status URL of a run, and the status route's answer.

use serde_json::{Value, json};

use super::payload::{HttpRequestData, HttpResponseData, InvocationResponse};

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
