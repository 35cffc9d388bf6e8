//! One HTTP client per FHIR server: base URL (its path kept), User-Agent, bearer token only for that server,
//! and retries that honour the server's own throttling signals.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use url::Url;

use super::FhirError;
use super::auth::TokenSource;
use crate::telemetry::{Dependency, NoTelemetry, Telemetry};

/// How a call is retried. Kick-offs and polls are all safe to repeat (reference Appendix A and §9), but each
/// tick must stay bounded, so attempts and total waiting are capped.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct FhirClient {
    base: Url,
    http: reqwest::Client,
    tokens: TokenSource,
    user_agent: String,
    retry: RetryPolicy,
    telemetry: Arc<dyn Telemetry>,
}

impl std::fmt::Debug for FhirClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirClient")
            .field("base", &self.base.as_str())
            .field("tokens", &self.tokens)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl FhirClient {
    pub fn new(base: Url, tokens: TokenSource, user_agent: &str, http: reqwest::Client) -> FhirClient {
        FhirClient {
            base,
            http,
            tokens,
            user_agent: user_agent.to_string(),
            retry: RetryPolicy::default(),
            telemetry: Arc::new(NoTelemetry),
        }
    }

    /// Reports every request (each retry too) to `telemetry` as a dependency.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> FhirClient {
        self.telemetry = telemetry;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> FhirClient {
        self.retry = retry;
        self
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `{base}/{relative}`: the configured base path is kept (the original dropped it for some calls).
    pub fn url(&self, relative: &str) -> Result<Url, FhirError> {
        let text = format!(
            "{}/{}",
            self.base.as_str().trim_end_matches('/'),
            relative.trim_start_matches('/')
        );
        Url::parse(&text).map_err(|e| FhirError::BadUrl(format!("{text}: {e}")))
    }

    /// Accepts a URL from a server response (Content-Location, next links) only if it points at this server:
    /// the token for this server must never travel anywhere else.
    pub fn own_url(&self, text: &str) -> Result<Url, FhirError> {
        let url = Url::parse(text).map_err(|e| FhirError::BadUrl(format!("{text}: {e}")))?;
        let same = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        if !same {
            return Err(FhirError::ForeignUrl {
                url: text.to_string(),
                server: self.base.to_string(),
            });
        }
        Ok(url)
    }

    /// Sends a request built by `build`. With `retry`, connection errors, 408, 5xx and 429 are retried; a 429
    /// or 503 waits for `x-ms-retry-after-ms` or `Retry-After` when given. Status polls pass `retry = false`:
    /// each tick polls again anyway, and a poll's 5xx or 429 may be a failed job rather than a hiccup, which
    /// only the caller can tell apart.
    pub async fn send(
        &self,
        method: Method,
        url: &Url,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        retry: bool,
    ) -> Result<Response, FhirError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header("user-agent", &self.user_agent);
            if let Some(token) = self.tokens.bearer().await? {
                request = request.bearer_auth(token.expose());
            }
            // Named by method and path; the query stays out of the name (it is in the URL).
            let timer = Dependency::http("HTTP", url, format!("{method} {}", url.path()), chrono::Utc::now());
            let outcome = build(request).send().await;
            let status = outcome.as_ref().ok().map(|r| r.status().as_u16());
            self.telemetry
                .dependency(timer.finish(status, status.is_some_and(|s| s < 400)));
            let last = !retry || attempt >= self.retry.attempts;
            let wait = match &outcome {
                Ok(resp) => {
                    let status = resp.status();
                    let hint = retry_hint(resp);
                    let transient = status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    if !transient || last {
                        return Ok(outcome.expect("matched Ok"));
                    }
                    hint.unwrap_or_else(|| self.backoff(attempt))
                }
                Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => self.backoff(attempt),
                Err(_) => {
                    let e = outcome.expect_err("matched Err");
                    return Err(FhirError::Transport {
                        url: redact(url),
                        message: describe(&e),
                    });
                }
            };
            tracing::debug!(url = %redact(url), attempt, wait_ms = wait.as_millis() as u64, "retrying FHIR call");
            tokio::time::sleep(wait.min(self.retry.max_delay)).await;
        }
    }

    /// Exponential backoff with jitter: base × 2^(attempt-1), ±25 %.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.retry.base_delay.saturating_mul(1 << (attempt - 1).min(10));
        let jitter = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            % 500) as f64
            / 1000.0;
        exp.mul_f64(0.75 + jitter).min(self.retry.max_delay)
    }

    pub async fn get_json(&self, relative: &str) -> Result<Value, FhirError> {
        let url = self.url(relative)?;
        let resp = self
            .send(Method::GET, &url, |r| r.header("accept", "application/fhir+json"), true)
            .await?;
        read_json(resp, &url).await
    }
}

fn retry_hint(resp: &Response) -> Option<Duration> {
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = header("x-ms-retry-after-ms").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_millis(ms));
    }
    header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The error a failed response carries: its status and the OperationOutcome's first diagnostics.
pub async fn rejection(resp: Response, url: &Url) -> FhirError {
    let status = resp.status().as_u16();
    let retry_after = retry_hint(&resp);
    let text = read_text(resp).await;
    FhirError::Rejected {
        status,
        retry_after,
        url: redact(url),
        diagnostics: diagnostics_of(&text),
    }
}

/// `issue[0].diagnostics`, else the original tool's fallback text.
pub fn diagnostics_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["issue"][0]["diagnostics"].as_str().map(str::to_string))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "For more information check Content location.".to_string())
}

/// The largest JSON body the tool reads (a manifest of 10,000 files, or a page of 1,000 large resources, is
/// far smaller): a broken or hostile server cannot make it buffer without bound.
pub const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

pub async fn read_json(resp: Response, url: &Url) -> Result<Value, FhirError> {
    if !resp.status().is_success() {
        return Err(rejection(resp, url).await);
    }
    let bytes = read_bounded(resp, url, MAX_JSON_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| FhirError::InvalidResponse {
        url: redact(url),
        detail: e.to_string(),
    })
}

/// The largest error or progress body read (OperationOutcomes are small); longer ones are cut.
pub const MAX_TEXT_BODY: usize = 1024 * 1024;

/// A small body as text, at most [`MAX_TEXT_BODY`]; empty when it cannot be read or is too large.
pub async fn read_text(resp: Response) -> String {
    let url = resp.url().clone();
    read_bounded(resp, &url, MAX_TEXT_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Reads a body of at most `limit` bytes, refusing larger ones before reading them when the length is declared.
pub async fn read_bounded(mut resp: Response, url: &Url, limit: usize) -> Result<Vec<u8>, FhirError> {
    let too_big = || FhirError::InvalidResponse {
        url: redact(url),
        detail: format!("the body is larger than {} MB", limit / (1024 * 1024)),
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| FhirError::Transport {
        url: redact(url),
        message: describe(&e),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// URLs are logged without their query string: export queries are harmless, but SAS-bearing blob URLs are not.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    if u.query().is_some_and(|q| q.contains("sig=")) {
        u.set_query(Some("<redacted>"));
    }
    u.to_string()
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    // reqwest's own text may include the URL; keep it out and name the kind of failure instead.
    format!(
        "{kind}: {}",
        std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default()
    )
}
