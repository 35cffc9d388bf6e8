//! Errors as the real servers render them: an `OperationOutcome` whose `id` is the request id, with
//! `meta.lastUpdated`, one issue with the server's code and diagnostics text, and the HTTP status the server uses
//! (reference §2.6).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::time::{format_ms, now_ms};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The issue codes the servers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Processing,
    NotFound,
    Forbidden,
    Conflict,
    Throttled,
    Login,
    NotSupported,
    Informational,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Processing => "processing",
            IssueCode::NotFound => "not-found",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Conflict => "conflict",
            IssueCode::Throttled => "throttled",
            IssueCode::Login => "login",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Informational => "informational",
        }
    }
}

/// A failed request. Rendered by the request-id middleware, which fills in the id.
#[derive(Debug, Clone)]
pub struct FhirError {
    pub status: StatusCode,
    pub code: IssueCode,
    pub diagnostics: String,
    /// Extra response headers (`WWW-Authenticate`, `Retry-After`, …).
    pub headers: Vec<(&'static str, String)>,
}

impl FhirError {
    pub fn new(status: StatusCode, code: IssueCode, diagnostics: impl Into<String>) -> FhirError {
        FhirError {
            status,
            code,
            diagnostics: diagnostics.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(diagnostics: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::BAD_REQUEST, IssueCode::Invalid, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> FhirError {
        FhirError::new(StatusCode::NOT_FOUND, IssueCode::NotFound, diagnostics)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> FhirError {
        self.headers.push((name, value.into()));
        self
    }

    /// The OperationOutcome body with the given request id.
    pub fn body(&self, request_id: &str) -> Value {
        outcome_body(request_id, "error", self.code, &self.diagnostics)
    }
}

pub fn outcome_body(request_id: &str, severity: &str, code: IssueCode, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "id": request_id,
        "meta": { "lastUpdated": format_ms(now_ms()) },
        "issue": [{ "severity": severity, "code": code.as_str(), "diagnostics": diagnostics }]
    })
}

/// Marks a response as an error whose body the request-id middleware must render (it knows the id).
#[derive(Clone)]
pub struct PendingOutcome(pub FhirError);

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                response.headers_mut().insert(*name, v);
            }
        }
        response.extensions_mut().insert(PendingOutcome(self));
        response
    }
}

/// A FHIR JSON response with the given status.
pub fn fhir_json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, FHIR_JSON)], body.to_string()).into_response()
}

/// A plain `application/json` response (manifests and import results are not fhir+json).
pub fn plain_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

pub type FhirResult<T> = Result<T, FhirError>;
