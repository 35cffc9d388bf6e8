//! The Azure Functions custom-handler wire format: what the host POSTs to `/<FunctionName>` and what the
//! handler answers. Shapes follow the host's source (Workers/Http); where hosts differ (the `Query` field is an
//! object on current hosts and a string on older ones) both forms are accepted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of every invocation: trigger and input bindings in `Data`, trigger metadata and `sys` in `Metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationRequest {
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

impl InvocationRequest {
    /// `Metadata.sys.UtcNow`: the host's clock at invocation time.
    pub fn utc_now(&self) -> Option<DateTime<Utc>> {
        let text = self.metadata.get("sys")?.get("UtcNow")?.as_str()?;
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
    }

    /// The timer binding's value, parsed.
    pub fn timer(&self, binding: &str) -> Result<TimerInfo, PayloadError> {
        let value = self
            .data
            .get(binding)
            .ok_or(PayloadError::MissingBinding(binding.to_string()))?;
        serde_json::from_value(value.clone()).map_err(|e| PayloadError::Malformed(binding.to_string(), e.to_string()))
    }

    /// The HTTP trigger binding's value, parsed.
    pub fn http(&self, binding: &str) -> Result<HttpRequestData, PayloadError> {
        let value = self
            .data
            .get(binding)
            .ok_or(PayloadError::MissingBinding(binding.to_string()))?;
        serde_json::from_value(value.clone()).map_err(|e| PayloadError::Malformed(binding.to_string(), e.to_string()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the invocation has no '{0}' binding in Data; check the function's function.json")]
    MissingBinding(String),
    #[error("the '{0}' binding could not be read: {1}")]
    Malformed(String, String),
}

/// A timer trigger's value.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct TimerInfo {
    /// True when the host fires a tick it missed (for example after a restart). Harmless by design: every tick
    /// re-reads state before acting.
    #[serde(default)]
    pub is_past_due: bool,
    #[serde(default)]
    pub schedule_status: Option<ScheduleStatus>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleStatus {
    pub last: Option<String>,
    pub next: Option<String>,
    pub last_updated: Option<String>,
}

/// An HTTP trigger's request as the host forwards it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpRequestData {
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub method: String,
    #[serde(default, deserialize_with = "query_object_or_string")]
    pub query: BTreeMap<String, String>,
    /// Header names keep the host's spelling; look them up with [`HttpRequestData::header`].
    #[serde(default, deserialize_with = "headers")]
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Present only when the request had a body.
    #[serde(default)]
    pub body: Option<Value>,
}

impl HttpRequestData {
    /// The first value of a header, matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// A query parameter, matched case-insensitively (the host lower-cases nothing, users type anything).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text: a JSON string is unwrapped, any other JSON value is re-serialised.
    pub fn body_text(&self) -> Option<String> {
        match self.body.as_ref()? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// `Query` is `{"k":"v"}` on current hosts; older hosts and the docs send a string: JSON text of that object
/// or a raw `k=v&…` query string.
fn query_object_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(match value {
        Value::Object(map) => map.into_iter().map(|(k, v)| (k, scalar_text(v))).collect(),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(map)) => map.into_iter().map(|(k, v)| (k, scalar_text(v))).collect(),
            _ => url::form_urlencoded::parse(s.trim_start_matches('?').as_bytes())
                .into_owned()
                .collect(),
        },
        _ => BTreeMap::new(),
    })
}

/// Header values arrive as arrays of strings; accept a bare string too.
fn headers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    let value = Value::deserialize(d)?;
    let Value::Object(map) = value else {
        return Ok(BTreeMap::new());
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let values = match v {
                Value::Array(items) => items.into_iter().map(scalar_text).collect(),
                other => vec![scalar_text(other)],
            };
            (k, values)
        })
        .collect())
}

fn scalar_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// What the handler answers (always with HTTP 200; a non-2xx makes the host fail the invocation).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InvocationResponse {
    pub outputs: Map<String, Value>,
    /// Lines the host logs under the function's category (App Insights `traces`).
    pub logs: Vec<String>,
    pub return_value: Value,
}

/// The value of an `http` output binding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpResponseData {
    pub status_code: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl HttpResponseData {
    pub fn json(status_code: u16, body: &Value) -> HttpResponseData {
        HttpResponseData {
            status_code,
            headers: BTreeMap::from([("Content-Type".into(), "application/json; charset=utf-8".into())]),
            body: body.to_string(),
        }
    }

    pub fn text(status_code: u16, body: impl Into<String>) -> HttpResponseData {
        HttpResponseData {
            status_code,
            headers: BTreeMap::from([("Content-Type".into(), "text/plain; charset=utf-8".into())]),
            body: body.into(),
        }
    }
}

impl InvocationResponse {
    /// A response carrying only log lines (timer functions).
    pub fn logs(logs: Vec<String>) -> InvocationResponse {
        InvocationResponse {
            logs,
            ..Default::default()
        }
    }

    /// A response for an HTTP function: `res` is the name of its `http` output binding.
    pub fn http(binding: &str, res: HttpResponseData, logs: Vec<String>) -> InvocationResponse {
        let mut outputs = Map::new();
        outputs.insert(
            binding.to_string(),
            serde_json::to_value(res).expect("plain data serialises"),
        );
        InvocationResponse {
            outputs,
            logs,
            return_value: Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timer_payload_as_captured_from_a_real_host() {
        let req: InvocationRequest = serde_json::from_value(json!({
            "Data": { "myTimer": { "Schedule": { "AdjustForDST": true }, "ScheduleStatus": null, "IsPastDue": false } },
            "Metadata": { "sys": { "MethodName": "MigrationOrchestrator", "UtcNow": "2023-09-07T11:40:45.004275Z", "RandGuid": "9a7c" } }
        }))
        .unwrap();
        let timer = req.timer("myTimer").unwrap();
        assert!(!timer.is_past_due);
        assert_eq!(timer.schedule_status, None);
        assert_eq!(req.utc_now().unwrap().to_rfc3339(), "2023-09-07T11:40:45.004275+00:00");
        assert_eq!(
            req.timer("other").unwrap_err(),
            PayloadError::MissingBinding("other".into())
        );
    }

    #[test]
    fn monitored_timer_carries_its_schedule_status() {
        let req: InvocationRequest = serde_json::from_value(json!({
            "Data": { "myTimer": { "IsPastDue": true, "ScheduleStatus": {
                "Last": "2026-11-26T07:00:00Z", "Next": "2026-11-26T07:05:00Z", "LastUpdated": "2026-11-26T07:00:00Z" } } }
        }))
        .unwrap();
        let timer = req.timer("myTimer").unwrap();
        assert!(timer.is_past_due);
        assert_eq!(
            timer.schedule_status.unwrap().next.as_deref(),
            Some("2026-11-26T07:05:00Z")
        );
    }

    #[test]
    fn http_payload_with_query_as_object() {
        let req: InvocationRequest = serde_json::from_value(json!({
            "Data": { "req": {
                "Url": "https://app.azurewebsites.net/api/MigrationStatus_Http?format=json",
                "Method": "GET",
                "Query": { "format": "json", "Code": "k" },
                "Headers": { "Accept": ["application/json"], "X-Forwarded-For": ["1.2.3.4"] },
                "Params": {},
                "Identities": [ { "AuthenticationType": null } ]
            } },
            "Metadata": {}
        }))
        .unwrap();
        let http = req.http("req").unwrap();
        assert_eq!(http.method, "GET");
        assert_eq!(http.query_param("FORMAT"), Some("json"));
        assert_eq!(http.header("accept"), Some("application/json"));
        assert_eq!(http.body_text(), None);
    }

    #[test]
    fn http_payload_with_query_as_string_in_both_old_forms() {
        for query in [
            json!("{\"mode\":\"deep\",\"count\":\"5\"}"),
            json!("?mode=deep&count=5"),
        ] {
            let req: InvocationRequest = serde_json::from_value(json!({
                "Data": { "req": { "Url": "http://localhost/api/E2ETest_Http", "Method": "POST", "Query": query,
                                   "Headers": { "Content-Type": "application/json" }, "Body": "{\"types\":[\"Patient\"]}" } }
            }))
            .unwrap();
            let http = req.http("req").unwrap();
            assert_eq!(http.query_param("mode"), Some("deep"));
            assert_eq!(http.query_param("count"), Some("5"));
            assert_eq!(http.header("content-type"), Some("application/json"));
            assert_eq!(http.body_text().as_deref(), Some("{\"types\":[\"Patient\"]}"));
        }
    }

    #[test]
    fn http_response_uses_the_shape_the_host_reads() {
        let resp = InvocationResponse::http("res", HttpResponseData::text(200, "ok"), vec!["done".into()]);
        let wire = serde_json::to_value(&resp).unwrap();
        assert_eq!(wire["Outputs"]["res"]["statusCode"], 200);
        assert_eq!(
            wire["Outputs"]["res"]["headers"]["Content-Type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(wire["Outputs"]["res"]["body"], "ok");
        assert_eq!(wire["Logs"][0], "done");
        assert_eq!(wire["ReturnValue"], Value::Null);
    }
}
