//! A local stand-in for App Insights' ingestion endpoint (`POST /v2/track`): it keeps every envelope and every
//! raw body it receives, answers as the Track API does (refusing items over the service's size limits), and can be
//! told to fail the next posts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

/// The instrumentation key the mock's connection string carries.
pub const TEST_INSTRUMENTATION_KEY: &str = "5e1c0de0-0000-4000-8000-00000000a11c";

#[derive(Default)]
struct Received {
    envelopes: Vec<Value>,
    bodies: Vec<String>,
    /// Scripted answers for the next posts, instead of 200.
    script: VecDeque<Scripted>,
}

/// What the mock answers to one post.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// The whole post fails with this status; nothing is kept.
    Status(u16),
    /// 206: the items at these indices fail with the given status; the others are kept.
    Partial(Vec<(usize, u16)>),
}

/// A running mock ingestion endpoint; stops when dropped.
pub struct MockIngestion {
    port: u16,
    received: Arc<Mutex<Received>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl MockIngestion {
    pub async fn start() -> std::io::Result<MockIngestion> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v2/track", post(track))
            .route("/v2.1/track", post(track_with_token))
            .with_state(received.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(MockIngestion {
            port,
            received,
            _stop: stop,
        })
    }

    /// A connection string pointing at this mock.
    pub fn connection_string(&self) -> String {
        format!(
            "InstrumentationKey={TEST_INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:{}/;LiveEndpoint=http://127.0.0.1:{}/",
            self.port, self.port
        )
    }

    /// Answers the next posts with these instead of 200.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.lock().script.extend(answers);
    }

    /// Every envelope kept so far, in arrival order.
    pub fn envelopes(&self) -> Vec<Value> {
        self.lock().envelopes.clone()
    }

    /// Every raw request body, including refused ones (to search for secrets).
    pub fn bodies(&self) -> Vec<String> {
        self.lock().bodies.clone()
    }

    /// The kept envelopes of one kind: `Event`, `RemoteDependency`, `Exception`.
    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        let name = format!("Microsoft.ApplicationInsights.{kind}");
        self.envelopes()
            .into_iter()
            .filter(|e| e["name"] == name.as_str())
            .collect()
    }

    /// Custom events as (name, properties).
    pub fn custom_events(&self) -> Vec<(String, serde_json::Map<String, Value>)> {
        self.of_kind("Event")
            .into_iter()
            .map(|e| {
                let base = &e["data"]["baseData"];
                (
                    base["name"].as_str().unwrap_or_default().to_string(),
                    base["properties"].as_object().cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The bearer token the mock's Entra-authenticated endpoint accepts.
pub const TEST_MONITOR_TOKEN: &str = "token-for-monitor";

/// `/v2.1/track`: as `/v2/track`, for callers with an Entra token (401 without one, 403 with another).
async fn track_with_token(
    State(received): State<Arc<Mutex<Received>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    match auth.and_then(|a| a.strip_prefix("Bearer ")) {
        None => (StatusCode::UNAUTHORIZED, axum::Json(json!({ "errors": [] }))),
        Some(token) if token != TEST_MONITOR_TOKEN => (StatusCode::FORBIDDEN, axum::Json(json!({ "errors": [] }))),
        Some(_) => track(State(received), body).await,
    }
}

/// Accepts a JSON array or newline-delimited JSON, as the Track API does.
async fn track(State(received): State<Arc<Mutex<Received>>>, body: Bytes) -> (StatusCode, axum::Json<Value>) {
    let text = String::from_utf8_lossy(&body).into_owned();
    let items: Option<Vec<Value>> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => Some(items),
        Ok(single @ Value::Object(_)) => Some(vec![single]),
        _ => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect(),
    };
    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
    r.bodies.push(text);
    let Some(items) = items else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "itemsReceived": 0, "itemsAccepted": 0, "errors": [] })),
        );
    };
    let n = items.len();
    match r.script.pop_front() {
        Some(Scripted::Status(code)) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            axum::Json(json!({ "itemsReceived": n, "itemsAccepted": 0, "errors": [] })),
        ),
        Some(Scripted::Partial(failures)) => {
            let errors: Vec<Value> = failures
                .iter()
                .filter(|(i, _)| *i < n)
                .map(|(i, code)| json!({ "index": i, "statusCode": code, "message": "scripted" }))
                .collect();
            for (i, item) in items.into_iter().enumerate() {
                if !failures.iter().any(|(f, _)| *f == i) {
                    r.envelopes.push(item);
                }
            }
            (
                StatusCode::PARTIAL_CONTENT,
                axum::Json(json!({ "itemsReceived": n, "itemsAccepted": n - errors.len(), "errors": errors })),
            )
        }
        None => {
            // Like the real service: an item over a limit is refused (400 in a 206), the others are kept.
            let mut errors = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match over_limit(&item) {
                    Some(why) => errors.push(json!({ "index": i, "statusCode": 400, "message": why })),
                    None => r.envelopes.push(item),
                }
            }
            let status = if errors.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::PARTIAL_CONTENT
            };
            (
                status,
                axum::Json(json!({ "itemsReceived": n, "itemsAccepted": n - errors.len(), "errors": errors })),
            )
        }
    }
}

/// Application Insights' documented per-item limits (Azure Monitor service limits, "Application Insights"):
/// an item of at most 64 kB, an event or dependency name of 512 (1,024 for a dependency) characters, property
/// names of 150 and values of 8,192 characters, an exception message of 32,768 characters.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;
pub const MAX_NAME_CHARS: usize = 512;
pub const MAX_PROPERTY_NAME_CHARS: usize = 150;
pub const MAX_PROPERTY_VALUE_CHARS: usize = 8_192;
pub const MAX_EXCEPTION_MESSAGE_CHARS: usize = 32_768;

/// Why the real service would refuse this item, if it would.
pub fn over_limit(item: &Value) -> Option<String> {
    let size = item.to_string().len();
    if size > MAX_ITEM_BYTES {
        return Some(format!("item of {size} bytes is over {MAX_ITEM_BYTES}"));
    }
    let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
    let base = &item["data"]["baseData"];
    let name_limit = if item["name"] == "Microsoft.ApplicationInsights.RemoteDependency" {
        1_024
    } else {
        MAX_NAME_CHARS
    };
    if chars(&base["name"]) > name_limit {
        return Some(format!("name over {name_limit} characters"));
    }
    if let Some(props) = base["properties"].as_object() {
        for (k, v) in props {
            if k.chars().count() > MAX_PROPERTY_NAME_CHARS {
                return Some(format!("property name over {MAX_PROPERTY_NAME_CHARS} characters"));
            }
            if chars(v) > MAX_PROPERTY_VALUE_CHARS {
                return Some(format!("property {k} over {MAX_PROPERTY_VALUE_CHARS} characters"));
            }
        }
    }
    if let Some(exceptions) = base["exceptions"].as_array() {
        for e in exceptions {
            if chars(&e["message"]) > MAX_EXCEPTION_MESSAGE_CHARS {
                return Some(format!(
                    "exception message over {MAX_EXCEPTION_MESSAGE_CHARS} characters"
                ));
            }
        }
    }
    None
}
