//! Sends telemetry to App Insights' Track API, from a background task, so a tick never waits on it.
//!
//! Why a direct client rather than the `opentelemetry-application-insights` exporter: our event contract has
//! property keys chosen at run time, which `tracing` fields cannot express; the exporter forces https on
//! connection-string endpoints, so the production path could not be tested against a local collector; and a
//! wrong mapping would silently turn custom events into `traces` and empty every dashboard tile. The envelope
//! format is small and stable, and owning it keeps about a dozen crates out of the build.
//!
//! Guarantees: [`Telemetry`] calls only build the envelope and push it into a bounded queue; when the queue is
//! full the item is dropped and counted. The sender batches, retries throttling and transient failures a few
//! times, logs (rate-limited, without contents) when it gives up, and [`AppInsights::flush`] drains the queue on
//! shutdown within a deadline. Nothing is sampled.

mod connection;
pub mod envelope;

pub use connection::ConnectionString;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use super::context;
use super::{Dependency, Event, Exception, Telemetry};
use envelope::Common;

/// Queue capacity: about an hour of a busy migration's items, a few MB at most.
pub const QUEUE_CAPACITY: usize = 8192;
/// Items per post (the Track API accepts far more; smaller posts fail less as a whole).
const MAX_BATCH: usize = 500;
/// How long the sender waits for more items before posting a partial batch.
const LINGER: Duration = Duration::from_millis(200);
/// Attempts per batch for throttling and transient failures.
const ATTEMPTS: u32 = 3;
/// One post's deadline.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// The scope of Entra-authenticated ingestion (`/v2.1/track`).
pub const MONITOR_SCOPE: &str = "https://monitor.azure.com/.default";
/// At most one "could not send" log line per this period.
const WARN_EVERY: Duration = Duration::from_secs(60);

enum Command {
    Item(Value),
    Flush(oneshot::Sender<()>),
}

/// The App Insights sink. Cheap to share behind an `Arc`.
pub struct AppInsights {
    common: Common,
    queue: mpsc::Sender<Command>,
    counters: Arc<Counters>,
}

/// What happened to the items, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Given up on after the attempts (or rejected as invalid by the service).
    pub failed: AtomicU64,
}

impl AppInsights {
    /// Starts the background sender. Must be called inside a Tokio runtime. With Entra authentication asked for,
    /// tokens come from the app's managed identity (user-assigned when the authentication string names a client
    /// id).
    pub fn start(connection: &ConnectionString, http: reqwest::Client) -> AppInsights {
        let credential = if connection.entra_only {
            let options =
                connection
                    .entra_client_id
                    .as_ref()
                    .map(|id| azure_identity::ManagedIdentityCredentialOptions {
                        user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(id.clone())),
                        ..Default::default()
                    });
            match azure_identity::ManagedIdentityCredential::new(options) {
                Ok(c) => Some(c as Arc<dyn TokenCredential>),
                Err(e) => {
                    tracing::warn!(
                        "App Insights asks for Entra authentication but no managed identity can be set up ({e}); \
                         telemetry will be refused: give the function app a managed identity with Monitoring \
                         Metrics Publisher on the Application Insights resource"
                    );
                    None
                }
            }
        } else {
            None
        };
        AppInsights::start_with_credential(connection, http, credential)
    }

    /// As [`AppInsights::start`], with the credential Entra-authenticated ingestion takes tokens from.
    pub fn start_with_credential(
        connection: &ConnectionString,
        http: reqwest::Client,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> AppInsights {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let sender = Sender {
            http,
            url: connection.track_url(),
            credential: credential.filter(|_| connection.entra_only),
            counters: counters.clone(),
            last_warning: None,
            unreported: 0,
        };
        tokio::spawn(sender.run(rx));
        AppInsights {
            common: Common::from_environment(connection.instrumentation_key()),
            queue,
            counters,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Posts everything queued so far; returns `false` if that did not finish within `within`.
    pub async fn flush(&self, within: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let asked = tokio::time::timeout(within, self.queue.send(Command::Flush(done)));
        let start = Instant::now();
        if !matches!(asked.await, Ok(Ok(()))) {
            return false;
        }
        let rest = within.saturating_sub(start.elapsed());
        matches!(tokio::time::timeout(rest, wait).await, Ok(Ok(())))
    }

    fn push(&self, envelope: Value) {
        if self.queue.try_send(Command::Item(envelope)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Telemetry for AppInsights {
    fn event(&self, event: Event) {
        self.push(self.common.event(&event, context::current().as_ref()));
    }

    fn dependency(&self, call: Dependency) {
        self.push(self.common.dependency(&call, context::current().as_ref()));
    }

    fn exception(&self, error: Exception) {
        self.push(self.common.exception(&error, context::current().as_ref()));
    }
}

fn accept(cmd: Command, batch: &mut Vec<Value>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match cmd {
        Command::Item(v) => batch.push(v),
        Command::Flush(done) => flushes.push(done),
    }
}

struct Sender {
    http: reqwest::Client,
    url: Url,
    /// Entra-authenticated ingestion only.
    credential: Option<Arc<dyn TokenCredential>>,
    counters: Arc<Counters>,
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            accept(first, &mut batch, &mut flushes);
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < MAX_BATCH && flushes.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(cmd)) => accept(cmd, &mut batch, &mut flushes),
                    Ok(None) | Err(_) => break,
                }
            }
            // A flush covers everything queued before it, so drain what is already waiting too.
            if !flushes.is_empty() {
                while let Ok(cmd) = rx.try_recv() {
                    accept(cmd, &mut batch, &mut flushes);
                    if batch.len() >= MAX_BATCH {
                        self.post(std::mem::take(&mut batch)).await;
                    }
                }
            }
            if !batch.is_empty() {
                self.post(std::mem::take(&mut batch)).await;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Posts one batch, retrying what the service says may be retried.
    async fn post(&mut self, mut items: Vec<Value>) {
        let mut problem = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt - 2))).await;
            }
            let body = Value::Array(items.clone());
            let mut request = self
                .http
                .post(self.url.clone())
                .timeout(POST_TIMEOUT)
                .header("content-type", "application/json");
            if let Some(credential) = &self.credential {
                match credential.get_token(&[MONITOR_SCOPE], None).await {
                    Ok(token) => request = request.bearer_auth(token.token.secret()),
                    Err(e) => {
                        // Not the token itself: only why there is none.
                        problem = format!("no Entra token for {MONITOR_SCOPE}: {e}");
                        continue;
                    }
                }
            }
            let sent = request.json(&body).send().await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    problem = if e.is_timeout() {
                        "timed out".into()
                    } else {
                        "could not connect".into()
                    };
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            match status {
                200 => {
                    self.counters.sent.fetch_add(items.len() as u64, Ordering::Relaxed);
                    return;
                }
                206 => {
                    let retry = retryable_indices(&answer);
                    let rejected = rejected_count(&answer, &retry);
                    let accepted = (items.len() as u64).saturating_sub(retry.len() as u64 + rejected);
                    self.counters.sent.fetch_add(accepted, Ordering::Relaxed);
                    self.give_up(rejected, "some items were rejected as invalid");
                    items = retry.into_iter().filter_map(|i| items.get(i).cloned()).collect();
                    if items.is_empty() {
                        return;
                    }
                    problem = "partially accepted".into();
                }
                408 | 429 | 439 | 500 | 502 | 503 | 504 => problem = format!("HTTP {status}"),
                _ => {
                    // 400 (malformed), 401/403 (wrong key or Entra-only resource), 404: retrying cannot help.
                    let why = match (status, self.credential.is_some()) {
                        (401 | 403, false) => format!(
                            "HTTP {status}: if local authentication is disabled on the Application Insights \
                             resource, set APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD"
                        ),
                        (401 | 403, true) => format!(
                            "HTTP {status}: give the function app's identity Monitoring Metrics Publisher on the \
                             Application Insights resource"
                        ),
                        _ => format!("HTTP {status}"),
                    };
                    self.give_up(items.len() as u64, &why);
                    return;
                }
            }
        }
        self.give_up(items.len() as u64, &problem);
    }

    fn give_up(&mut self, count: u64, why: &str) {
        if count == 0 {
            return;
        }
        self.counters.failed.fetch_add(count, Ordering::Relaxed);
        self.unreported += count;
        if self.last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                items = self.unreported,
                endpoint = %self.url.host_str().unwrap_or(""),
                "App Insights did not take telemetry ({why}); the migration is unaffected"
            );
            self.last_warning = Some(Instant::now());
            self.unreported = 0;
        }
    }
}

/// Indices the service asks to be sent again (throttled or failed on its side).
fn retryable_indices(answer: &Value) -> Vec<usize> {
    errors(answer)
        .filter(|(_, code)| matches!(code, 408 | 429 | 439 | 500 | 503))
        .map(|(i, _)| i)
        .collect()
}

fn rejected_count(answer: &Value, retry: &[usize]) -> u64 {
    errors(answer).filter(|(i, _)| !retry.contains(i)).count() as u64
}

fn errors(answer: &Value) -> impl Iterator<Item = (usize, u64)> + '_ {
    answer["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((usize::try_from(e["index"].as_u64()?).ok()?, e["statusCode"].as_u64()?)))
}
