//! What every request goes through, outermost first: a request id (and OperationOutcome rendering, which needs
//! it), injected throttling (E-3, item 63), and token checks (items 61–62).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;

use crate::App;
use crate::outcome::{FHIR_JSON, FhirError, IssueCode, PendingOutcome};

/// The id of the current request (Bundle ids and OperationOutcome ids use it).
#[derive(Clone)]
pub struct RequestId(pub String);

/// Assigns `X-Request-Id`, echoes a client's own id as `X-Correlation-Id`, and renders error bodies.
pub async fn request_context(mut request: Request, next: Next) -> Response {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let id = format!(
        "{:016x}{:016x}",
        std::process::id() as u64 * 7919,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let client_id = request.headers().get("x-request-id").cloned();
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Some(PendingOutcome(error)) = response.extensions_mut().remove::<PendingOutcome>() {
        let headers = std::mem::take(response.headers_mut());
        let content_type = if error.code == IssueCode::Throttled {
            "application/json; charset=utf-8"
        } else {
            FHIR_JSON
        };
        response = (
            error.status,
            [(header::CONTENT_TYPE, content_type)],
            error.body(&id).to_string(),
        )
            .into_response();
        for (name, value) in headers {
            if let Some(name) = name
                && name != header::CONTENT_TYPE
                && name != header::CONTENT_LENGTH
            {
                response.headers_mut().insert(name, value);
            }
        }
    } else if (response.status().is_client_error() || response.status().is_server_error())
        && !response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("json"))
    {
        // Router misses and extractor rejections (oversized bodies, bad path encoding) get the server's
        // OperationOutcome too, never a plain-text body.
        let status = response.status();
        let body = axum::body::to_bytes(std::mem::take(response.body_mut()), 64 * 1024)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        let error = match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                FhirError::new(status, IssueCode::NotSupported, "The requested route was not found.")
            }
            StatusCode::NOT_FOUND => FhirError::not_found("The requested route was not found."),
            _ => FhirError::new(
                status,
                IssueCode::Invalid,
                if text.is_empty() {
                    "The request is not valid.".into()
                } else {
                    text
                },
            ),
        };
        response = (
            error.status,
            [(header::CONTENT_TYPE, FHIR_JSON)],
            error.body(&id).to_string(),
        )
            .into_response();
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    if let Some(client) = client_id {
        response.headers_mut().insert("x-correlation-id", client);
    }
    response
}

/// Answers every N-th request with 429 while the `throttleEvery` fault is on, and with 503 while
/// `serverErrorEvery` is. Admin routes are exempt, so a test can always switch the storm off.
pub async fn throttle(State(app): State<App>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/_admin") {
        return next.run(request).await;
    }
    let (every, delay_ms, errors_every) = {
        let faults = app.faults();
        (
            faults.throttle_every,
            faults.retry_after_ms.unwrap_or(1000),
            faults.server_error_every,
        )
    };
    let n = app.requests.next();
    if errors_every.is_some_and(|e| e > 0 && n % e == 0) {
        return FhirError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueCode::Processing,
            "The service is temporarily unavailable.",
        )
        .into_response();
    }
    if every.is_some_and(|e| e > 0 && n % e == 0) {
        let diagnostics = match app.config.flavor {
            crate::Flavor::Aapi => {
                "The request rate has exceeded the maximum API request rate and is being throttled. Please try again later."
            }
            crate::Flavor::Ahds => "The maximum number of concurrent API calls on this instance was reached.",
        };
        return FhirError::new(StatusCode::TOO_MANY_REQUESTS, IssueCode::Throttled, diagnostics)
            .with_header("retry-after", delay_ms.div_ceil(1000).max(1).to_string())
            .with_header("x-ms-retry-after-ms", delay_ms.to_string())
            .into_response();
    }
    next.run(request).await
}

/// The data action a request needs (reference §8).
fn required_action(method: &Method, path: &str) -> Option<&'static str> {
    if path.starts_with("/_admin") || path == "/metadata" {
        return None;
    }
    Some(
        if path.ends_with("/$export") || path.starts_with("/_operations/export") {
            "export"
        } else if path.ends_with("/$import") || path.starts_with("/_operations/import") {
            "import"
        } else if path.ends_with("/$reindex") || path.starts_with("/_operations/reindex") {
            "reindex"
        } else if method == Method::GET || method == Method::HEAD {
            "read"
        } else {
            "write"
        },
    )
}

/// The roles of an authenticated caller, for checks a handler must make at a specific point of its own
/// validation (export kick-off authorizes after parameter validation, reference §1.4). `None`: tokens are not
/// checked.
#[derive(Clone, Debug)]
pub struct CallerRoles(pub Option<Vec<String>>);

impl CallerRoles {
    pub fn may(&self, action: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|roles| roles.iter().any(|r| grants(r).contains(&action)))
    }
}

/// The actions an Azure role or an action name grants.
fn grants(role: &str) -> &'static [&'static str] {
    match role {
        "FHIR Data Reader" | "read" => &["read"],
        "FHIR Data Writer" => &["read", "write"],
        "write" => &["write"],
        "FHIR Data Exporter" => &["read", "export"],
        "export" => &["export"],
        "FHIR Data Importer" => &["read", "import"],
        "import" => &["import"],
        "reindex" => &["reindex"],
        "FHIR Data Contributor" | "*" => &["read", "write", "export", "import", "reindex"],
        _ => &[],
    }
}

/// With token checking on: the bearer token's `aud` must be the server URL and its `roles` must grant the
/// request's action. Signatures are not checked (there is no Entra ID here); tokens are unsigned JWTs whose
/// payload carries `aud` and `roles`.
pub async fn authorize(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let Some(auth) = &app.config.auth else {
        request.extensions_mut().insert(CallerRoles(None));
        return next.run(request).await;
    };
    let Some(action) = required_action(request.method(), request.uri().path()) else {
        request.extensions_mut().insert(CallerRoles(None));
        return next.run(request).await;
    };
    let claims = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(decode_claims);
    let audience_ok = claims
        .as_ref()
        .and_then(|c| c.get("aud"))
        .and_then(Value::as_str)
        .is_some_and(|aud| aud.trim_end_matches('/') == app.base_url.trim_end_matches('/'));
    if !audience_ok {
        let challenge = format!(
            "Bearer authorization_uri=\"{}\", resource_id=\"{}\", realm=\"{}\"",
            auth.authority, app.base_url, app.base_url
        );
        return FhirError::new(StatusCode::UNAUTHORIZED, IssueCode::Login, "Authentication failed.")
            .with_header("www-authenticate", challenge)
            .into_response();
    }
    let roles: Vec<String> = claims
        .as_ref()
        .and_then(|c| c.get("roles"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    // An export kick-off checks the role itself, after its parameter validation, as the servers do.
    let deferred = action == "export" && request.uri().path().ends_with("/$export");
    if !deferred && !roles.iter().any(|r| grants(r).contains(&action)) {
        return FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, "Authorization failed.").into_response();
    }
    request.extensions_mut().insert(CallerRoles(Some(roles)));
    next.run(request).await
}

fn decode_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// An unsigned JWT for the emulator: `aud` plus `roles`. Tests and the seeder use it when tokens are checked.
pub fn test_token(audience: &str, roles: &[&str]) -> String {
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = enc(&serde_json::json!({ "alg": "none", "typ": "JWT" }));
    let payload = enc(&serde_json::json!({ "aud": audience, "roles": roles }));
    format!("{header}.{payload}.")
}

/// InitialImportMode (reference §5.6): every write is refused with 423 and a non-FHIR body, except `$import`
/// and cancelling operations; GETs pass, but `$reindex` is locked.
pub async fn initial_import_lock(State(app): State<App>, request: Request, next: Next) -> Response {
    if !app.config.initial_import_mode {
        return next.run(request).await;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let allowed = path.starts_with("/_admin")
        || (method == Method::GET && !path.contains("$reindex") && !path.contains("/_operations/reindex"))
        || (method == Method::POST && path.ends_with("/$import"))
        || (method == Method::DELETE && path.starts_with("/_operations/"));
    if allowed {
        return next.run(request).await;
    }
    let body = serde_json::json!({ "severity": "Error", "code": "Locked", "diagnostics": "Service is locked for initial import mode." });
    (
        StatusCode::LOCKED,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// A body-less response helper used by routes that answer 202/204.
pub fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}
