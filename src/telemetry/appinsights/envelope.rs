//! Track API envelopes: the JSON App Insights ingests into `customEvents` (`EventData`), `dependencies`
//! (`RemoteDependencyData`) and `exceptions` (`ExceptionData`). Every string passes through [`scrub`] first.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use crate::telemetry::context::{Operation, random_hex};
use crate::telemetry::{Dependency, Event, Exception};

/// What every envelope from this process shares.
#[derive(Debug, Clone)]
pub struct Common {
    pub instrumentation_key: String,
    /// `cloud_RoleName`: the Function App's name when running in Azure.
    pub role: String,
    /// `cloud_RoleInstance`: the machine.
    pub role_instance: String,
}

impl Common {
    pub fn from_environment(instrumentation_key: &str) -> Common {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Common {
            instrumentation_key: instrumentation_key.to_string(),
            role: env("WEBSITE_SITE_NAME").unwrap_or_else(|| "fhir-migration-tool".into()),
            role_instance: env("WEBSITE_INSTANCE_ID")
                .or_else(|| env("COMPUTERNAME"))
                .or_else(|| env("HOSTNAME"))
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    fn envelope(&self, kind: &str, time: DateTime<Utc>, operation: Option<&Operation>, data: Value) -> Value {
        let mut tags = Map::new();
        let mut tag = |k: &str, v: &str| {
            tags.insert(k.to_string(), Value::String(scrub(v).into_owned()));
        };
        tag("ai.cloud.role", &self.role);
        tag("ai.cloud.roleInstance", &self.role_instance);
        tag("ai.application.ver", env!("CARGO_PKG_VERSION"));
        tag(
            "ai.internal.sdkVersion",
            concat!("rust:fhir-migration-tool-", env!("CARGO_PKG_VERSION")),
        );
        if let Some(op) = operation {
            tag("ai.operation.id", &op.id);
            tag("ai.operation.name", &op.name);
            if let Some(parent) = &op.parent_id {
                tag("ai.operation.parentId", parent);
            }
        }
        json!({
            "name": format!("Microsoft.ApplicationInsights.{kind}"),
            "time": time.to_rfc3339_opts(SecondsFormat::Micros, true),
            "iKey": self.instrumentation_key,
            // Never sampled: the dashboard counts these.
            "sampleRate": 100.0,
            "tags": tags,
            "data": data,
        })
    }

    /// A custom event (`customEvents`).
    pub fn event(&self, event: &Event, operation: Option<&Operation>) -> Value {
        let data = json!({
            "baseType": "EventData",
            "baseData": {
                "ver": 2,
                "name": clip(&scrub(&event.name), MAX_NAME_CHARS),
                "properties": properties(&event.properties),
            },
        });
        fit(self.envelope("Event", Utc::now(), operation, data))
    }

    /// An outgoing call (`dependencies`).
    pub fn dependency(&self, call: &Dependency, operation: Option<&Operation>) -> Value {
        let data = json!({
            "baseType": "RemoteDependencyData",
            "baseData": {
                "ver": 2,
                "id": random_hex(16),
                "name": clip(&scrub(&call.name), MAX_DEPENDENCY_NAME_CHARS),
                "type": call.kind,
                "target": clip(&scrub(&call.target), MAX_DEPENDENCY_NAME_CHARS),
                "data": clip(&scrub(&call.data), MAX_PROPERTY_VALUE_CHARS),
                "resultCode": call.result_code,
                "success": call.success,
                "duration": timespan(call.duration),
            },
        });
        fit(self.envelope("RemoteDependency", call.started, operation, data))
    }

    /// A failure (`exceptions`), without a stack: the message is what the operator acts on.
    pub fn exception(&self, error: &Exception, operation: Option<&Operation>) -> Value {
        let data = json!({
            "baseType": "ExceptionData",
            "baseData": {
                "ver": 2,
                "severityLevel": 3,
                "exceptions": [{
                    "id": 1,
                    "outerId": 0,
                    "typeName": clip(&scrub(&error.type_name), MAX_PROPERTY_NAME_CHARS * 8),
                    "message": clip(&scrub(&error.message), MAX_EXCEPTION_MESSAGE_CHARS),
                    "hasFullStack": false,
                }],
                "properties": properties(&error.properties),
            },
        });
        fit(self.envelope("Exception", Utc::now(), operation, data))
    }
}

/// Application Insights refuses an item over these limits (Azure Monitor service limits, "Application
/// Insights"), so a long FHIR diagnostic would otherwise drop the whole event the dashboard and alerts key on.
pub const MAX_NAME_CHARS: usize = 512;
pub const MAX_DEPENDENCY_NAME_CHARS: usize = 1_024;
pub const MAX_PROPERTY_NAME_CHARS: usize = 150;
pub const MAX_PROPERTY_VALUE_CHARS: usize = 8_192;
pub const MAX_EXCEPTION_MESSAGE_CHARS: usize = 32_768;
/// The service's limit is 64 kB an item; a margin stays for the HTTP batch framing.
pub const MAX_ITEM_BYTES: usize = 63 * 1024;

/// `text` cut to at most `max` characters, ending with a marker that says how much was cut.
pub fn clip(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_string();
    }
    // The marker's own length depends on the count it shows; reserve enough for any count.
    let keep = max.saturating_sub(32);
    let kept: String = text.chars().take(keep).collect();
    format!("{kept}… [clipped {} chars]", total - keep)
}

/// Shrinks the longest strings of the item (property values, the exception message) until it is under
/// [`MAX_ITEM_BYTES`] once serialized.
fn fit(mut envelope: Value) -> Value {
    for _ in 0..64 {
        let size = envelope.to_string().len();
        if size <= MAX_ITEM_BYTES {
            break;
        }
        // JSON pointers to the strings that may be shrunk, longest first.
        let base = &envelope["data"]["baseData"];
        let mut candidates: Vec<String> = Vec::new();
        if let Some(props) = base["properties"].as_object() {
            candidates.extend(
                props
                    .keys()
                    .map(|k| format!("/data/baseData/properties/{}", k.replace('~', "~0").replace('/', "~1"))),
            );
        }
        if let Some(exceptions) = base["exceptions"].as_array() {
            candidates.extend((0..exceptions.len()).map(|i| format!("/data/baseData/exceptions/{i}/message")));
        }
        candidates.push("/data/baseData/data".into());
        let len = |p: &String| envelope.pointer(p).and_then(Value::as_str).map_or(0, str::len);
        let Some(longest) = candidates.iter().max_by_key(|p| len(p)).filter(|p| len(p) > 0).cloned() else {
            break;
        };
        let text = envelope
            .pointer(&longest)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let chars = text.chars().count();
        // Cut by the excess (in bytes, so at least that many characters) or by half, whichever is more.
        let target = chars.saturating_sub((size - MAX_ITEM_BYTES).max(chars / 2));
        if let Some(value) = envelope.pointer_mut(&longest) {
            *value = Value::String(clip(&text, target.max(40)));
        }
    }
    envelope
}

fn properties(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    clip(k, MAX_PROPERTY_NAME_CHARS),
                    Value::String(clip(&scrub(v), MAX_PROPERTY_VALUE_CHARS)),
                )
            })
            .collect(),
    )
}

/// .NET TimeSpan text, which the Track API expects for durations: `[d.]hh:mm:ss.fffffff`.
pub fn timespan(d: Duration) -> String {
    let total = d.as_secs();
    let (days, h, m, s) = (total / 86_400, total / 3600 % 24, total / 60 % 60, total % 60);
    let ticks = d.subsec_nanos() / 100;
    let day = if days > 0 { format!("{days}.") } else { String::new() };
    format!("{day}{h:02}:{m:02}:{s:02}.{ticks:07}")
}

/// Credential-looking values a message could carry by accident (a SAS signature, an account key, a bearer
/// token, a function key). Error types in this crate are written not to carry them; this is the second line.
const MARKERS: &[&str] = &["sig=", "accountkey=", "sharedaccesssignature=", "code=", "bearer "];

/// Replaces the value after each credential marker with `REDACTED`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    for marker in MARKERS {
        let mut from = 0;
        while let Some(i) = lower[from..].find(marker) {
            let start = from + i;
            let value_start = start + marker.len();
            let boundary =
                start == 0 || matches!(lower.as_bytes()[start - 1], b'?' | b'&' | b';' | b' ' | b'"' | b'\'');
            let end = lower[value_start..]
                .find(['&', ';', '"', '\'', ' ', '\n', ',', '<', '>'])
                .map_or(lower.len(), |j| value_start + j);
            if boundary && end > value_start {
                cuts.push((value_start, end));
            }
            from = value_start;
        }
    }
    if cuts.is_empty() {
        return Cow::Borrowed(text);
    }
    cuts.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in cuts {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str("REDACTED");
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> Common {
        Common {
            instrumentation_key: "00000000-1111-2222-3333-444444444444".into(),
            role: "migtool".into(),
            role_instance: "host-1".into(),
        }
    }

    #[test]
    fn events_land_in_custom_events_with_string_properties() {
        let op = Operation {
            id: "0af7651916cd43dd8448eb211c80319c".into(),
            parent_id: Some("b7ad6b7169203331".into()),
            name: "ExportStatus".into(),
        };
        let e = common().event(
            &Event::new("Export")
                .with("ExportStatus", "Completed")
                .with("TotalResources", 12),
            Some(&op),
        );
        assert_eq!(e["name"], "Microsoft.ApplicationInsights.Event");
        assert_eq!(e["data"]["baseType"], "EventData");
        assert_eq!(e["data"]["baseData"]["name"], "Export");
        assert_eq!(e["data"]["baseData"]["properties"]["TotalResources"], "12");
        assert_eq!(e["tags"]["ai.operation.id"], op.id.as_str());
        assert_eq!(e["tags"]["ai.operation.parentId"], "b7ad6b7169203331");
        assert_eq!(e["tags"]["ai.operation.name"], "ExportStatus");
        assert_eq!(e["sampleRate"], 100.0);
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn dependencies_and_exceptions_have_their_base_types() {
        let url = url::Url::parse("https://fhir.example/Patient").unwrap();
        let call = Dependency::http("HTTP", &url, "GET /Patient".into(), Utc::now()).finish(Some(429), false);
        let d = common().dependency(&call, None);
        assert_eq!(d["data"]["baseType"], "RemoteDependencyData");
        assert_eq!(d["data"]["baseData"]["resultCode"], "429");
        assert_eq!(d["data"]["baseData"]["success"], false);
        assert_eq!(d["data"]["baseData"]["target"], "fhir.example");
        assert!(d["tags"].get("ai.operation.id").is_none());
        let x = common().exception(&Exception::new("ExportFailed", "boom").with("ExportId", "7"), None);
        assert_eq!(x["data"]["baseType"], "ExceptionData");
        assert_eq!(x["data"]["baseData"]["exceptions"][0]["typeName"], "ExportFailed");
        assert_eq!(x["data"]["baseData"]["properties"]["ExportId"], "7");
    }

    #[test]
    fn timespans_use_dotnet_text() {
        assert_eq!(timespan(Duration::from_millis(1234)), "00:00:01.2340000");
        assert_eq!(timespan(Duration::from_secs(90_061)), "1.01:01:01.0000000");
    }

    #[test]
    fn credentials_are_scrubbed_wherever_they_appear() {
        let cases = [
            (
                "https://a/b?sv=1&sig=abc%2Bdef&se=2",
                "https://a/b?sv=1&sig=REDACTED&se=2",
            ),
            (
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9v==;x",
                "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=REDACTED;x",
            ),
            ("header Bearer eyJ0eXAi.abc.def sent", "header Bearer REDACTED sent"),
            ("https://f/api/x?code=abc==", "https://f/api/x?code=REDACTED"),
            ("statusCode=500 and errorcode=x", "statusCode=500 and errorcode=x"),
            ("nothing here", "nothing here"),
            ("ünïcode sig=\u{e9}\u{e9} ok", "ünïcode sig=REDACTED ok"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub(input), expected, "{input}");
        }
    }
}
