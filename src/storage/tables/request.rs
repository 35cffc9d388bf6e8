//! Signing and sending Table REST requests, and reading the service's answers.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Map, Value};
use sha2::Sha256;
use url::Url;

use super::{ETag, IfMatch, TableError};
use crate::storage::{STORAGE_SCOPE, StorageCredential};
use crate::telemetry::{Dependency, NoTelemetry, Telemetry};

/// The oldest REST version that accepts Entra ID tokens for Tables; Azurite and Azure both serve it.
const API_VERSION: &str = "2019-02-02";
/// Attempts for requests that never reached the service or were turned away with 503 (safe to repeat).
const ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub(crate) struct Sender {
    inner: Arc<Inner>,
    telemetry: Arc<dyn Telemetry>,
}

struct Inner {
    endpoint: Url,
    credential: StorageCredential,
    http: reqwest::Client,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSender")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("credential", &self.inner.credential)
            .finish()
    }
}

impl Sender {
    pub(crate) fn new(endpoint: Url, credential: StorageCredential, http: reqwest::Client) -> Sender {
        Sender {
            inner: Arc::new(Inner {
                endpoint,
                credential,
                http,
            }),
            telemetry: Arc::new(NoTelemetry),
        }
    }

    /// Reports every request as a dependency to `telemetry`.
    pub(crate) fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Sender {
        self.telemetry = telemetry;
        self
    }

    /// Sends one request to `path` (already percent-encoded) below the service endpoint, retrying only when
    /// the request certainly had no effect.
    pub(crate) async fn send(
        &self,
        operation: &'static str,
        table: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        if_match: Option<&IfMatch>,
    ) -> Result<Response, TableError> {
        let base = self.inner.endpoint.as_str().trim_end_matches('/');
        let url = Url::parse(&format!("{base}/{path}")).map_err(|e| TableError::InvalidResponse {
            operation,
            detail: format!("could not build a request URL: {e}"),
        })?;
        let body = body.map(|b| serde_json::to_vec(&b).expect("JSON values always serialize"));
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .headers(self.headers(&url, body.is_some(), if_match).await?);
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let timer = Dependency::http("Azure table", &url, format!("{operation} {table}"), chrono::Utc::now());
            let sent = request.send().await;
            // 404, 409 and 412 are answers the protocol expects (absent row, existing table, lost ETag race).
            let status = sent.as_ref().ok().map(|r| r.status().as_u16());
            let success = status.is_some_and(|s| s < 400 || matches!(s, 404 | 409 | 412));
            self.telemetry.dependency(timer.finish(status, success));
            let retry = match sent {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && attempt < ATTEMPTS => true,
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_connect() && attempt < ATTEMPTS => true,
                Err(source) => {
                    return Err(TableError::Transport {
                        operation,
                        endpoint: base.to_string(),
                        source,
                    });
                }
            };
            if retry {
                let wait = Duration::from_millis(200 * 4u64.pow(attempt - 1));
                let next = attempt + 1;
                if started.elapsed() + wait >= Duration::from_secs(3) {
                    tracing::warn!(
                        "table storage busy or unreachable ({operation} {table}): retrying {next}/{ATTEMPTS}"
                    );
                } else {
                    tracing::debug!(
                        "table storage busy or unreachable ({operation} {table}): retrying {next}/{ATTEMPTS}"
                    );
                }
                tokio::time::sleep(wait).await;
            }
        }
    }

    async fn headers(&self, url: &Url, has_body: bool, if_match: Option<&IfMatch>) -> Result<HeaderMap, TableError> {
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let mut h = HeaderMap::new();
        let mut put = |name: &'static str, value: &str| {
            // Every value here is ASCII built by this module, except an ETag echoed from the service.
            if let Ok(v) = HeaderValue::from_str(value) {
                h.insert(name, v);
            }
        };
        put("x-ms-date", &date);
        put("x-ms-version", API_VERSION);
        put("accept", "application/json;odata=minimalmetadata");
        put("dataserviceversion", "3.0;NetFx");
        put("maxdataserviceversion", "3.0;NetFx");
        if has_body {
            put("content-type", "application/json");
            put("prefer", "return-no-content");
        }
        if let Some(m) = if_match {
            put("if-match", m.header_value());
        }
        let authorization = match &self.inner.credential {
            StorageCredential::SharedKey { account, key } => {
                // SharedKeyLite: HMAC-SHA256 over the date and the canonical resource (/account + path [+ ?comp=]).
                let mut resource = format!("/{account}{}", url.path());
                if let Some((_, comp)) = url.query_pairs().find(|(k, _)| k == "comp") {
                    resource.push_str(&format!("?comp={comp}"));
                }
                let mut mac = Hmac::<Sha256>::new_from_slice(key.expose()).expect("HMAC accepts any key length");
                mac.update(format!("{date}\n{resource}").as_bytes());
                let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
                format!("SharedKeyLite {account}:{signature}")
            }
            StorageCredential::Token(credential) => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| TableError::Token(e.to_string()))?;
                format!("Bearer {}", token.token.secret())
            }
        };
        let mut value = HeaderValue::from_str(&authorization)
            .map_err(|_| TableError::Token("the credential produced a value that is not a valid header".into()))?;
        value.set_sensitive(true);
        h.insert("authorization", value);
        Ok(h)
    }

    pub(crate) fn etag_of(&self, operation: &'static str, resp: &Response) -> Result<ETag, TableError> {
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(|v| ETag(v.to_string()))
            .ok_or(TableError::InvalidResponse {
                operation,
                detail: "no ETag header".into(),
            })
    }

    pub(crate) async fn json_object(
        &self,
        operation: &'static str,
        resp: Response,
    ) -> Result<Map<String, Value>, TableError> {
        let bytes = resp.bytes().await.map_err(|source| TableError::Transport {
            operation,
            endpoint: self.inner.endpoint.to_string(),
            source,
        })?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(TableError::InvalidResponse {
                operation,
                detail: "the body is not a JSON object".into(),
            }),
        }
    }

    /// Turns a failed response into [`TableError::Service`], with the service's own code and message.
    pub(crate) async fn service_error(&self, operation: &'static str, table: &str, resp: Response) -> TableError {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let error = &body["odata.error"];
        let code = error["code"].as_str().unwrap_or("").to_string();
        let message = error["message"]["value"]
            .as_str()
            .or_else(|| error["message"].as_str())
            .unwrap_or("(no message)")
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        TableError::Service {
            operation,
            table: table.to_string(),
            status,
            code,
            message,
        }
    }
}
