//! Custom events, named and shaped as the original tool's (`Export`, `Import`, `ImportTill`, `ExportRetries`,
//! `MaxExportRetriesCleared`, …) so its dashboard keeps working. The engine reports through [`Telemetry`];
//! the App Insights sink is one implementation, the log sink below another, and tests record events.

use std::sync::{Arc, Mutex};

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

pub trait Telemetry: Send + Sync {
    fn event(&self, event: Event);
}

/// Writes events to the log (stdout), one line each with the properties as JSON.
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

/// Keeps events in memory (tests assert on them).
#[derive(Debug, Default, Clone)]
pub struct RecordingTelemetry {
    events: Arc<Mutex<Vec<Event>>>,
}

impl RecordingTelemetry {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Telemetry for RecordingTelemetry {
    fn event(&self, event: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

/// Sends each event to several sinks.
pub struct Fanout(pub Vec<Arc<dyn Telemetry>>);

impl Telemetry for Fanout {
    fn event(&self, event: Event) {
        for sink in &self.0 {
            sink.event(event.clone());
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
