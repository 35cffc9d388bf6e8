//! What the tool reports to App Insights, behind one trait so the engine does not care where it goes.
//!
//! Three kinds of item, as App Insights knows them:
//! - **custom events** (`customEvents`): named and shaped exactly as the original tool's (`Export`, `Import`,
//!   `ImportTill`, …, see [`contract`]) so its dashboard queries keep working;
//! - **dependencies** (`dependencies`): one per outgoing FHIR or storage call, for the failure and latency tiles;
//! - **exceptions** (`exceptions`): failed invocations and failed jobs.
//!
//! [`appinsights::AppInsights`] sends them to an App Insights ingestion endpoint; [`LogTelemetry`] writes events
//! to stdout (which the Functions host forwards to `traces`); [`RecordingTelemetry`] keeps them for tests.

pub mod appinsights;
pub mod context;
pub mod contract;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// One event: a name and string properties (App Insights stores every custom dimension as a string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub properties: Vec<(String, String)>,
}

impl Event {
    pub fn new(name: &str) -> Event {
        Event {
            name: name.to_string(),
            properties: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Event {
        self.properties.push((key.to_string(), value.to_string()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// One outgoing call, as App Insights' `dependencies` table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// `HTTP` for FHIR servers, `Azure table` and `Azure blob` for storage: the portal groups by it.
    pub kind: &'static str,
    /// The host (and port) called.
    pub target: String,
    /// What was done, e.g. `GET /$export` or `QueryEntities chunk`; low-cardinality so the portal can group.
    pub name: String,
    /// The URL without any secret (SAS signatures are removed), or the blob path.
    pub data: String,
    /// The HTTP status, or `Exception` when no response came back.
    pub result_code: String,
    pub success: bool,
    pub started: DateTime<Utc>,
    pub duration: Duration,
}

impl Dependency {
    /// A call that got an HTTP response. 4xx answers the caller expects (404 on a lookup, 412 on a lost ETag
    /// race) are still reported as failures only when `success` is false: the caller decides.
    pub fn http(kind: &'static str, target: &url::Url, name: String, started: DateTime<Utc>) -> DependencyTimer {
        DependencyTimer {
            kind,
            target: host_of(target),
            data: without_secrets(target),
            name,
            started,
            clock: std::time::Instant::now(),
        }
    }
}

/// Measures one call; finish it with the outcome.
#[derive(Debug)]
pub struct DependencyTimer {
    kind: &'static str,
    target: String,
    data: String,
    name: String,
    started: DateTime<Utc>,
    clock: std::time::Instant,
}

impl DependencyTimer {
    /// `status` is the HTTP status, or `None` when the call never got an answer.
    pub fn finish(self, status: Option<u16>, success: bool) -> Dependency {
        Dependency {
            kind: self.kind,
            target: self.target,
            name: self.name,
            data: self.data,
            result_code: status.map_or_else(|| "Exception".to_string(), |s| s.to_string()),
            success,
            started: self.started,
            duration: self.clock.elapsed(),
        }
    }
}

fn host_of(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

/// The URL with its query removed when the query could carry a credential (`sig=`, `code=`, `token`).
pub fn without_secrets(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    let _ = u.set_password(None);
    if u.query().is_some_and(|q| {
        let q = q.to_ascii_lowercase();
        q.contains("sig=") || q.contains("code=") || q.contains("token")
    }) {
        u.set_query(Some("redacted"));
    }
    u.to_string()
}

/// A failure worth an `exceptions` row: a failed invocation, or a job the server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    /// A short stable kind, e.g. `FunctionFailed` or `ExportFailed`; the portal groups by it.
    pub type_name: String,
    /// The operator-facing message (error types in this crate never carry secrets).
    pub message: String,
    pub properties: Vec<(String, String)>,
}

impl Exception {
    pub fn new(type_name: &str, message: impl ToString) -> Exception {
        Exception {
            type_name: type_name.to_string(),
            message: message.to_string(),
            properties: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl ToString) -> Exception {
        self.properties.push((key.to_string(), value.to_string()));
        self
    }
}

/// Where telemetry goes. Every method returns at once and never fails: telemetry must not slow or break a tick.
pub trait Telemetry: Send + Sync {
    fn event(&self, event: Event);
    fn dependency(&self, _call: Dependency) {}
    fn exception(&self, _error: Exception) {}
}

/// Drops everything: for adapters built without telemetry (tests, one-off CLI calls).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn event(&self, _event: Event) {}
}

/// Writes events to the log (stdout), one line each with the properties as JSON. Dependencies are left out
/// (too many), exceptions are logged where they happen.
#[derive(Debug, Default)]
pub struct LogTelemetry;

impl Telemetry for LogTelemetry {
    fn event(&self, event: Event) {
        let props: serde_json::Map<String, serde_json::Value> = event
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        tracing::info!(event = %event.name, properties = %serde_json::Value::Object(props), "telemetry event");
    }
}

/// Keeps everything in memory (tests assert on it).
#[derive(Debug, Default, Clone)]
pub struct RecordingTelemetry {
    events: Arc<Mutex<Vec<Event>>>,
    dependencies: Arc<Mutex<Vec<Dependency>>>,
    exceptions: Arc<Mutex<Vec<Exception>>>,
}

fn snapshot<T: Clone>(items: &Mutex<Vec<T>>) -> Vec<T> {
    items.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

impl RecordingTelemetry {
    pub fn events(&self) -> Vec<Event> {
        snapshot(&self.events)
    }

    pub fn dependencies(&self) -> Vec<Dependency> {
        snapshot(&self.dependencies)
    }

    pub fn exceptions(&self) -> Vec<Exception> {
        snapshot(&self.exceptions)
    }
}

impl Telemetry for RecordingTelemetry {
    fn event(&self, event: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    fn dependency(&self, call: Dependency) {
        self.dependencies.lock().unwrap_or_else(|p| p.into_inner()).push(call);
    }

    fn exception(&self, error: Exception) {
        self.exceptions.lock().unwrap_or_else(|p| p.into_inner()).push(error);
    }
}

/// Sends each item to several sinks.
pub struct Fanout(pub Vec<Arc<dyn Telemetry>>);

impl Telemetry for Fanout {
    fn event(&self, event: Event) {
        for sink in &self.0 {
            sink.event(event.clone());
        }
    }

    fn dependency(&self, call: Dependency) {
        for sink in &self.0 {
            sink.dependency(call.clone());
        }
    }

    fn exception(&self, error: Exception) {
        for sink in &self.0 {
            sink.exception(error.clone());
        }
    }
}

/// The id the dashboard joins events on: the last path segment of a status URL.
pub fn id_of(status_url: &str) -> String {
    status_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_queries_that_could_carry_credentials() {
        let sas = url::Url::parse("https://a.blob.core.windows.net/c/b?sv=1&sig=abc%2B").unwrap();
        assert_eq!(without_secrets(&sas), "https://a.blob.core.windows.net/c/b?redacted");
        let export = url::Url::parse("https://fhir.example/$export?_since=2024-01-01T00:00:00.000Z").unwrap();
        assert_eq!(without_secrets(&export), export.as_str());
        let user = url::Url::parse("https://u:pw@fhir.example/x").unwrap();
        assert!(!without_secrets(&user).contains("pw"));
    }

    #[test]
    fn a_dependency_names_its_target_and_outcome() {
        let url = url::Url::parse("http://127.0.0.1:8080/fhir/Patient?_count=1").unwrap();
        let d = Dependency::http("HTTP", &url, "GET /fhir/Patient".into(), Utc::now()).finish(Some(503), false);
        assert_eq!(
            (d.target.as_str(), d.result_code.as_str(), d.success),
            ("127.0.0.1:8080", "503", false)
        );
        let d = Dependency::http("HTTP", &url, "GET".into(), Utc::now()).finish(None, false);
        assert_eq!(d.result_code, "Exception");
    }
}
