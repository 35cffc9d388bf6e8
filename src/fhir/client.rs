//! One HTTP client per FHIR server: base URL (its path kept), User-Agent, bearer token only for that server,
//! and retries that honour the server's own throttling signals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use url::Url;

use super::FhirError;
use super::auth::TokenSource;
use crate::telemetry::{Dependency, NoTelemetry, Telemetry};

/// How a call is retried. Kick-offs and polls are all safe to repeat (reference Appendix A and §9), but each
/// tick and each command must stay bounded: attempts are capped, and so is the whole call's time (`budget`,
/// attempts and waits together; a later attempt gets only what is left of it as its timeout).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub budget: Duration,
}

/// A retry is logged at warn level (not debug) once the call has been going on, or would wait, this long: a
/// hiccup stays quiet, an outage shows within seconds.
const VISIBLE_AFTER: Duration = Duration::from_secs(3);
/// An attempt is not started with less than this left of the budget: it could not finish anyway.
const MIN_ATTEMPT: Duration = Duration::from_secs(5);

impl Default for RetryPolicy {
    /// For the timers (`serve`, `run`): patient, since the next tick would only try again. A call gives up
    /// after 6 attempts or 4 minutes, well inside the 10-minute function timeout.
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            budget: Duration::from_secs(240),
        }
    }
}

impl RetryPolicy {
    /// For commands an operator waits on (`plan`, `verify`, `preflight`, …): a call gives up after 4 attempts
    /// or 60 seconds, so an unreachable server is reported within a minute.
    pub fn interactive() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
            budget: Duration::from_secs(60),
        }
    }
}

/// A server's `Date` and the moment its answer arrived here.
type ServerClock = (chrono::DateTime<chrono::Utc>, Instant);

#[derive(Clone)]
pub struct FhirClient {
    base: Url,
    http: reqwest::Client,
    tokens: TokenSource,
    user_agent: String,
    retry: RetryPolicy,
    telemetry: Arc<dyn Telemetry>,
    /// The server's clock as its latest `Date` header gave it, and when that answer arrived here.
    clock: Arc<std::sync::Mutex<Option<ServerClock>>>,
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
            clock: Arc::default(),
        }
    }

    /// The server's current time, from the `Date` header of its latest answer plus the time since (`None`
    /// before any answer). Whole seconds: it reads at most a second behind, the safe side for a frontier.
    pub fn server_now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let seen = *self.clock.lock().unwrap_or_else(|p| p.into_inner());
        seen.map(|(date, at)| date + chrono::TimeDelta::from_std(at.elapsed()).unwrap_or_default())
    }

    fn observe_clock(&self, resp: &Response) {
        let date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok());
        if let Some(date) = date {
            *self.clock.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((date.with_timezone(&chrono::Utc), Instant::now()));
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
        let started = Instant::now();
        let deadline = started + self.retry.budget;
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
            // An attempt gets what is left of the budget for its answer to start (the client's own timeout,
            // which also covers reading the body, applies too).
            let left = deadline.saturating_duration_since(Instant::now()).max(MIN_ATTEMPT);
            let outcome = match tokio::time::timeout(left, build(request).send()).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err((describe(&e), e.is_connect() || e.is_timeout() || e.is_request())),
                Err(_) => Err((format!("timed out: no answer within {} s", left.as_secs()), true)),
            };
            if let Ok(resp) = &outcome {
                self.observe_clock(resp);
            }
            let status = outcome.as_ref().ok().map(|r| r.status().as_u16());
            self.telemetry
                .dependency(timer.finish(status, status.is_some_and(|s| s < 400)));
            let mut last = !retry || attempt >= self.retry.attempts;
            // The wait the server asks for or the backoff, and whether another attempt still fits the budget.
            let planned = match &outcome {
                Ok(resp) => retry_hint(resp).unwrap_or_else(|| self.backoff(attempt)),
                Err(_) => self.backoff(attempt),
            }
            .min(self.retry.max_delay);
            last |= Instant::now() + planned + MIN_ATTEMPT > deadline;
            let reason = match &outcome {
                Ok(resp) => {
                    let status = resp.status();
                    let transient = status == StatusCode::REQUEST_TIMEOUT
                        || status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS;
                    if !transient || last {
                        return Ok(outcome.expect("matched Ok"));
                    }
                    format!("HTTP {status}")
                }
                Err((message, repeatable)) if !last && *repeatable => message.clone(),
                Err(_) => {
                    let (message, _) = outcome.expect_err("matched Err");
                    return Err(FhirError::Transport {
                        url: redact(url),
                        message,
                    });
                }
            };
            let (next, of, secs) = (attempt + 1, self.retry.attempts, planned.as_secs_f64());
            let host = url.host_str().unwrap_or_default();
            if started.elapsed() + planned >= VISIBLE_AFTER {
                tracing::warn!("{host}: retrying {next}/{of} in {secs:.0} s: {reason} ({})", url.path());
            } else {
                tracing::debug!("{host}: retrying {next}/{of} in {secs:.1} s: {reason} ({})", url.path());
            }
            tokio::time::sleep(planned).await;
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
    // reqwest's own text may include the URL; keep it out and name the kind of failure instead, with the
    // innermost cause ("Connection refused", "dns error: …"), which is what an operator can act on.
    let mut cause = std::error::Error::source(e);
    let mut text = String::new();
    while let Some(c) = cause {
        text = c.to_string();
        cause = c.source();
    }
    format!("{kind}: {text}")
}
