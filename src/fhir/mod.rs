//! Talking to the FHIR servers: one call per operation the migration needs (reference §5.3 of the original,
//! Appendix A of the bulk-API reference), with responses turned into enums at the edge.
//!
//! - [`auth`]: where tokens come from, and which hosts get them.
//! - [`client`]: the HTTP client with retries that honour `Retry-After`.
//! - [`wire`]: the manifest, import result and `Parameters` shapes.

pub mod auth;
pub mod client;
pub mod wire;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub use client::FhirClient;
use client::{read_json, redact, rejection};
use wire::{ExportManifest, ImportResult};

/// Whether a refusal with this status is worth the same call again later (throttled, timed out, server-side).
pub fn is_transient(status: u16) -> bool {
    status == 429 || status == 408 || status >= 500
}

/// What went wrong in a FHIR call, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("the server refused {url}: HTTP {status}: {diagnostics}{}", refusal_hint(*.status))]
    Rejected {
        status: u16,
        url: String,
        diagnostics: String,
        /// The wait the server asked for (`x-ms-retry-after-ms` or `Retry-After`), when it named one.
        retry_after: Option<std::time::Duration>,
    },
    #[error(
        "could not reach {url}: {message}. Check the server's URL, that it is running, and that it is reachable from where the tool runs (DNS, firewall, private endpoint); timers try again on their next tick"
    )]
    Transport { url: String, message: String },
    #[error("{url} answered with something the tool cannot read: {detail}")]
    InvalidResponse { url: String, detail: String },
    #[error("invalid URL {0}")]
    BadUrl(String),
    #[error(
        "the server sent a URL on another host ({url}) where one on {server} was expected; it is not followed, so no token leaves the configured servers"
    )]
    ForeignUrl { url: String, server: String },
    #[error(transparent)]
    Token(#[from] auth::TokenError),
}

/// What to do about a refusal, by its status.
fn refusal_hint(status: u16) -> &'static str {
    match status {
        401 => {
            " (the token was not accepted: the server's URL is the token audience; check AZURE_SourceUri/AZURE_DestinationUri and the credential)"
        }
        403 => {
            " (if the identity lacks a role: grant the function app's identity FHIR Data Exporter on the source, FHIR Data Importer and Writer on the destination, and FHIR Data Reader on both; the server also answers 403 to a search it finds invalid, and then its message above says what, so report it as a bug of the tool)"
        }
        404 => " (check the server's URL and its path)",
        423 => " (the destination is locked for initial import mode: switch its import configuration to incremental)",
        429 | 500..=599 => " (the server is busy or failing; it is retried)",
        _ => "",
    }
}

/// An accepted kick-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The status URL (`Content-Location`).
    pub status_url: String,
}

/// A status poll's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Poll<T> {
    /// 202: still running (an import may include a partial result).
    Running(Option<T>),
    /// 200 with the result.
    Done(T),
    /// Any other status: the job failed; the status and the server's diagnostics.
    Failed { status: u16, diagnostics: String },
}

/// One version as the server has it.
#[derive(Debug, Clone, PartialEq)]
pub enum VersionRead {
    Found(Value),
    /// A deleted version (410).
    Gone,
    Missing,
}

pub use crate::instant::format_instant;

fn enc(v: &str) -> String {
    crate::storage::encode_component(v)
}

/// How far behind this machine's clock a server's may be when a range's end is sent as `_before`.
pub const HISTORY_END_MARGIN: TimeDelta = TimeDelta::seconds(5);

/// The end to send as `_before` for a history count of `[since, till)`: the server refuses one later than its
/// own clock (403), so an end within [`HISTORY_END_MARGIN`] of `now`, or after it, is asked as open. What that
/// may add is only what was written at or after the end in those last seconds.
pub fn history_end(till: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    till.filter(|t| *t <= now - HISTORY_END_MARGIN)
}

impl FhirClient {
    /// `_summary=count` over current resources, optionally of one type, with lastUpdated in `[since, till)`
    /// (`till` of `None`: no end).
    pub async fn count(
        &self,
        resource_type: Option<&str>,
        since: DateTime<Utc>,
        till: Option<DateTime<Utc>>,
    ) -> Result<u64, FhirError> {
        let mut query = format!("?_summary=count&_lastUpdated=ge{}", enc(&format_instant(since)));
        if let Some(till) = till {
            query.push_str(&format!("&_lastUpdated=lt{}", enc(&format_instant(till))));
        }
        if let Some(t) = resource_type {
            query.push_str(&format!("&_type={}", enc(t)));
        }
        let body = self.get_json(&query).await?;
        total_of(&body, self)
    }

    /// Counts every version (history and delete markers) with lastUpdated in `[since, till)` (`till` of `None`:
    /// no end). History endpoints ignore `_lastUpdated`, so `_since`/`_before` bound it. The server refuses a
    /// `_before` later than its clock (403, `HistoryParameterBeforeCannotBeFuture` in fhir-server's
    /// `SearchService.cs`), so a range open to the present must be asked with `None`, never with a guessed end.
    pub async fn history_count(
        &self,
        resource_type: Option<&str>,
        since: DateTime<Utc>,
        till: Option<DateTime<Utc>>,
    ) -> Result<u64, FhirError> {
        let prefix = resource_type.map(|t| format!("{}/", enc(t))).unwrap_or_default();
        let mut query = format!("{prefix}_history?_summary=count&_since={}", enc(&format_instant(since)));
        if let Some(till) = till {
            query.push_str(&format!("&_before={}", enc(&format_instant(till))));
        }
        let body = self.get_json(&query).await?;
        total_of(&body, self)
    }

    /// Whole-server totals: current resources, and with `history` every version.
    pub async fn total(&self, history: bool) -> Result<u64, FhirError> {
        let body = self
            .get_json(if history {
                "_history?_summary=count"
            } else {
                "?_summary=count"
            })
            .await?;
        total_of(&body, self)
    }

    /// The oldest `meta.lastUpdated` on the server at or after `from` (of any version when `history`),
    /// truncated to milliseconds; `None` when there is none.
    pub async fn oldest_last_updated(
        &self,
        history: bool,
        from: Option<DateTime<Utc>>,
    ) -> Result<Option<DateTime<Utc>>, FhirError> {
        let path = match (history, from) {
            (true, None) => "_history?_sort=_lastUpdated&_count=1".to_string(),
            (false, None) => "?_sort=_lastUpdated&_count=1".to_string(),
            // History endpoints ignore _lastUpdated; _since bounds them.
            (true, Some(f)) => format!(
                "_history?_since={}&_sort=_lastUpdated&_count=1",
                enc(&format_instant(f))
            ),
            (false, Some(f)) => format!(
                "?_lastUpdated=ge{}&_sort=_lastUpdated&_count=1",
                enc(&format_instant(f))
            ),
        };
        self.first_stamp(&path).await
    }

    /// The newest `meta.lastUpdated` on the server (of any version when `history`): when the source was last
    /// written, for the cut-over assistant. `None` when the server is empty.
    pub async fn newest_last_updated(&self, history: bool) -> Result<Option<DateTime<Utc>>, FhirError> {
        let path = if history {
            "_history?_sort=-_lastUpdated&_count=1"
        } else {
            "?_sort=-_lastUpdated&_count=1"
        };
        self.first_stamp(path).await
    }

    /// The lastUpdated of the first entry of a one-entry sorted query, following empty pages.
    async fn first_stamp(&self, path: &str) -> Result<Option<DateTime<Utc>>, FhirError> {
        let mut url = self.url(path)?;
        // AAPI can answer with empty pages that still have a next link (reference §7.4): follow them.
        for _ in 0..100 {
            let resp = self
                .send(Method::GET, &url, |r| r.header("accept", "application/fhir+json"), true)
                .await?;
            let body = read_json(resp, &url).await?;
            let found = body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    e["resource"]["meta"]["lastUpdated"]
                        .as_str()
                        .or_else(|| e["response"]["lastModified"].as_str())
                })
                .filter_map(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .next();
            if let Some(t) = found {
                return Ok(Some(DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)));
            }
            match next_link(&body) {
                Some(next) => url = self.own_url(&next)?,
                None => return Ok(None),
            }
        }
        // Never read "gave up" as "nothing there": a skip decision rests on this answer.
        Err(FhirError::InvalidResponse {
            url: client::redact(&url),
            detail: "no resource found after following 100 empty pages; giving up for this tick".into(),
        })
    }

    /// `GET {base}/$export?{query}` with the headers the servers require.
    pub async fn export(&self, query: &str) -> Result<Accepted, FhirError> {
        let url = self.url(&format!("$export?{query}"))?;
        let resp = self
            .send(
                Method::GET,
                &url,
                |r| {
                    r.header("accept", "application/fhir+json")
                        .header("prefer", "respond-async")
                },
                false,
            )
            .await?;
        accepted(resp, &url).await
    }

    /// One poll of an export status URL.
    pub async fn export_status(&self, status_url: &str) -> Result<Poll<ExportManifest>, FhirError> {
        let url = self.own_url(status_url)?;
        let resp = self.send(Method::GET, &url, |r| r, false).await?;
        match resp.status() {
            StatusCode::ACCEPTED => Ok(Poll::Running(None)),
            StatusCode::OK => {
                let body = read_json(resp, &url).await?;
                let manifest = serde_json::from_value(body).map_err(|e| FhirError::InvalidResponse {
                    url: redact(&url),
                    detail: e.to_string(),
                })?;
                Ok(Poll::Done(manifest))
            }
            _ => failed(resp).await,
        }
    }

    /// `POST {base}/$import` with a `Parameters` body.
    pub async fn import(&self, parameters: &Value) -> Result<Accepted, FhirError> {
        let url = self.url("$import")?;
        let body = parameters.to_string();
        let resp = self
            .send(
                Method::POST,
                &url,
                |r| {
                    r.header("accept", "application/fhir+json")
                        .header("prefer", "respond-async")
                        .header("content-type", "application/fhir+json; charset=utf-8")
                        .body(body.clone())
                },
                true,
            )
            .await?;
        accepted(resp, &url).await
    }

    /// One poll of an import status URL. A 202 may carry a partial result.
    pub async fn import_status(&self, status_url: &str) -> Result<Poll<ImportResult>, FhirError> {
        let url = self.own_url(status_url)?;
        let resp = self.send(Method::GET, &url, |r| r, false).await?;
        match resp.status() {
            StatusCode::ACCEPTED => {
                let text = client::read_text(resp).await;
                Ok(Poll::Running(serde_json::from_str(&text).ok()))
            }
            StatusCode::OK => {
                let body = read_json(resp, &url).await?;
                let result = serde_json::from_value(body).map_err(|e| FhirError::InvalidResponse {
                    url: redact(&url),
                    detail: e.to_string(),
                })?;
                Ok(Poll::Done(result))
            }
            _ => failed(resp).await,
        }
    }

    /// `DELETE` on a job's status URL: asks the server to cancel a job nobody waits for any more (reference
    /// §2.5, §5.5). A job that already ended answers 404 or 409, which is as good as cancelled.
    pub async fn cancel(&self, status_url: &str) -> Result<(), FhirError> {
        let url = self.own_url(status_url)?;
        let resp = self.send(Method::DELETE, &url, |r| r, false).await?;
        match resp.status().as_u16() {
            200..=299 | 404 | 409 => Ok(()),
            _ => Err(client::rejection(resp, &url).await),
        }
    }

    /// Every custom SearchParameter, following `next` links (the original read only the first 1,000).
    pub async fn search_parameters(&self) -> Result<Vec<Value>, FhirError> {
        let mut url = self.url("SearchParameter?_count=1000")?;
        let mut all = Vec::new();
        for _ in 0..10_000 {
            let resp = self
                .send(Method::GET, &url, |r| r.header("accept", "application/fhir+json"), true)
                .await?;
            let body = read_json(resp, &url).await?;
            all.extend(
                body["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.get("resource").cloned()),
            );
            match next_link(&body) {
                Some(next) => url = self.own_url(&next)?,
                None => break,
            }
        }
        Ok(all)
    }

    /// One page of a search or history, by a URL on this server (a first page from [`FhirClient::url`], or a
    /// `next` link).
    pub async fn page(&self, url: &url::Url) -> Result<Value, FhirError> {
        let resp = self
            .send(Method::GET, url, |r| r.header("accept", "application/fhir+json"), true)
            .await?;
        read_json(resp, url).await
    }

    /// The `next` link of a Bundle, checked to point at this server.
    pub fn next_page(&self, bundle: &Value) -> Result<Option<url::Url>, FhirError> {
        next_link(bundle).map(|n| self.own_url(&n)).transpose()
    }

    /// `total` of a `_summary=count` search relative to the base (`Patient?_summary=count`,
    /// `Patient/_history?_summary=count`, …).
    pub async fn count_of(&self, relative: &str) -> Result<u64, FhirError> {
        let body = self.get_json(relative).await?;
        total_of(&body, self)
    }

    /// Reads one resource; `None` when it does not exist (404) or was deleted (410).
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Value>, FhirError> {
        let url = self.url(&format!("{}/{}", enc(resource_type), enc(id)))?;
        let resp = self
            .send(Method::GET, &url, |r| r.header("accept", "application/fhir+json"), true)
            .await?;
        if matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::GONE) {
            return Ok(None);
        }
        read_json(resp, &url).await.map(Some)
    }

    /// Reads one version (`{type}/{id}/_history/{vid}`): the body, `Gone` for a deleted version, or `Missing`.
    pub async fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Result<VersionRead, FhirError> {
        let url = self.url(&format!(
            "{}/{}/_history/{}",
            enc(resource_type),
            enc(id),
            enc(version_id)
        ))?;
        let resp = self
            .send(Method::GET, &url, |r| r.header("accept", "application/fhir+json"), true)
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(VersionRead::Missing),
            StatusCode::GONE => Ok(VersionRead::Gone),
            _ => read_json(resp, &url).await.map(VersionRead::Found),
        }
    }

    /// `PUT {type}/{id}`, keeping the id.
    pub async fn put(&self, resource: &Value) -> Result<(), FhirError> {
        let t = resource["resourceType"].as_str().unwrap_or_default();
        let id = resource["id"].as_str().unwrap_or_default();
        let url = self.url(&format!("{}/{}", enc(t), enc(id)))?;
        let body = resource.to_string();
        let resp = self
            .send(
                Method::PUT,
                &url,
                |r| {
                    r.header("content-type", "application/fhir+json; charset=utf-8")
                        .body(body.clone())
                },
                true,
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(rejection(resp, &url).await)
        }
    }
}

fn total_of(body: &Value, client: &FhirClient) -> Result<u64, FhirError> {
    body["total"].as_u64().ok_or_else(|| FhirError::InvalidResponse {
        url: client.base().to_string(),
        detail: "the count Bundle has no total".into(),
    })
}

fn next_link(body: &Value) -> Option<String> {
    body["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

async fn accepted(resp: reqwest::Response, url: &url::Url) -> Result<Accepted, FhirError> {
    if resp.status() != StatusCode::ACCEPTED {
        return Err(rejection(resp, url).await);
    }
    let location = resp
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| FhirError::InvalidResponse {
            url: redact(url),
            detail: "202 without Content-Location".into(),
        })?;
    // Content-Location may be relative (RFC 9110 §8.7): resolve it against the request. Where it points is
    // checked before each poll, so a token never follows it to another host.
    let status_url = url.join(location).map_err(|e| FhirError::InvalidResponse {
        url: redact(url),
        detail: format!("Content-Location '{location}' is not a URL: {e}"),
    })?;
    Ok(Accepted {
        status_url: status_url.to_string(),
    })
}

/// Classifies a poll's non-2xx answer. A job that failed says so in an OperationOutcome ("export operation
/// failed …", "import operation failed …", a cancellation), and an unknown job is 404: both final. Everything
/// else is transient: as far as anyone knows the job is still running.
async fn failed<T>(resp: reqwest::Response) -> Result<Poll<T>, FhirError> {
    let status = resp.status();
    let text = client::read_text(resp).await;
    let outcome: Option<Value> = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(|v| v["resourceType"] == "OperationOutcome");
    let job_failed = outcome.as_ref().is_some_and(|o| {
        let d = o["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        d.contains("operation failed") || d.contains("cancellation")
    });
    // Final only when the server says the job failed (or no longer knows it); anything else — a gateway error,
    // an expired token, RBAC still propagating, throttling — may pass, and the next poll will tell.
    let transient = !(job_failed || status == StatusCode::NOT_FOUND);
    if transient {
        tracing::warn!(
            status = status.as_u16(),
            "a status poll was answered with a transient error; polling again next tick"
        );
        return Ok(Poll::Running(None));
    }
    Ok(Poll::Failed {
        status: status.as_u16(),
        diagnostics: client::diagnostics_of(&text),
    })
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone, Utc};

    use super::{FhirError, HISTORY_END_MARGIN, history_end};

    /// A refusal's message says what the operator can do about its status, and only where there is something
    /// to say: 401 the audience, 403 the roles (and that an invalid search is refused the same way), 404 the
    /// URL, 423 the import mode, 429 and 5xx that it is retried.
    #[test]
    fn a_refusal_says_what_to_do_about_its_status() {
        let message = |status: u16| {
            FhirError::Rejected {
                status,
                url: "https://fhir.example/Patient".into(),
                diagnostics: "refused".into(),
                retry_after: None,
            }
            .to_string()
        };
        let prefix = |status: u16| format!("the server refused https://fhir.example/Patient: HTTP {status}: refused");
        assert!(message(401).contains("token audience"), "{}", message(401));
        let forbidden = message(403);
        assert!(
            forbidden.contains("FHIR Data Exporter") && forbidden.contains("FHIR Data Importer"),
            "{forbidden}"
        );
        assert!(forbidden.contains("a search it finds invalid"), "{forbidden}");
        assert!(message(404).contains("check the server's URL"), "{}", message(404));
        assert!(message(423).contains("incremental"), "{}", message(423));
        for busy in [429, 500, 503, 599] {
            assert!(
                message(busy).ends_with("(the server is busy or failing; it is retried)"),
                "{}",
                message(busy)
            );
        }
        for plain in [400, 409, 412, 422, 600] {
            assert_eq!(message(plain), prefix(plain), "no hint for {plain}");
        }
    }

    #[test]
    fn a_history_end_is_sent_only_when_it_is_safely_in_the_servers_past() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let past = now - HISTORY_END_MARGIN;
        assert_eq!(history_end(Some(past), now), Some(past), "an end at the margin is sent");
        assert_eq!(
            history_end(Some(past - TimeDelta::days(3)), now),
            Some(past - TimeDelta::days(3))
        );
        let close = past + TimeDelta::milliseconds(1);
        assert_eq!(history_end(Some(close), now), None, "within the margin: open");
        assert_eq!(
            history_end(Some(now + TimeDelta::days(1)), now),
            None,
            "in the future: open"
        );
        assert_eq!(history_end(None, now), None);
    }
}
