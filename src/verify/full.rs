//! The full check: every current resource — every version when history is migrated — of every type, on both
//! servers, compared by (id, versionId, lastUpdated, content hash).
//!
//! Both servers are read in `lastUpdated` order, a page at a time, and merged: incremental import keeps
//! `lastUpdated`, so matching entries arrive at the same point of both streams. Entries sharing one
//! millisecond are compared as a group (the servers may order them differently). Each stream fetches one page
//! ahead in the background, so memory holds at most two pages per server and one millisecond's group, whatever
//! the size of the servers.

use std::collections::{BTreeMap, VecDeque};

use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Content, content_hash};
use crate::fhir::{FhirClient, FhirError};

/// Differences listed per kind at most (all are counted).
const LISTED: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// At the source, not at the destination.
    Missing,
    /// At the destination only (a hard delete at the source, or data written straight to the destination).
    Extra,
    /// Both have it, with other content or another delete state.
    Different,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    pub kind: Kind,
    pub resource_type: String,
    pub id: String,
    pub version_id: String,
    pub last_updated: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FullReport {
    /// Versions (or current resources) compared.
    pub compared: u64,
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// The first differences of each kind.
    pub differences: Vec<Difference>,
    pub passed: bool,
    /// `compared`, or `not comparable (de-identified)` when only ids, versions, lastUpdated and delete state were.
    #[serde(default)]
    pub content: String,
    /// Missing or different versions whose loss an operator accepted in the failure ledger: counted here, not
    /// as differences, so a cut-over can be READY with every accepted loss named.
    #[serde(default)]
    pub accepted: u64,
    /// The ledger keys (`Type|id|versionId`) of the accepted losses.
    #[serde(skip)]
    pub accepted_keys: std::collections::HashSet<String>,
    /// Accepted losses the ledger could not name (lines an error file counted but did not hold, or an error file
    /// it could not read): the versions of the export file they are about, each to the loss it may belong to.
    #[serde(skip)]
    pub unnamed_keys: std::collections::HashMap<String, usize>,
    /// How many versions each of those losses still covers (its count of failed lines).
    #[serde(skip)]
    pub unnamed_left: Vec<u64>,
}

/// What an operator accepted as lost, for the full check.
#[derive(Debug, Clone, Default)]
pub struct Accepted {
    /// Ledger keys of named versions.
    pub keys: std::collections::HashSet<String>,
    /// Each unnamed loss: the ledger keys of the versions in its export file, and how many lines failed.
    pub unnamed: Vec<(Vec<String>, u64)>,
}

/// One entry of a page, reduced to what is compared.
#[derive(Debug, Clone)]
struct Entry {
    last_updated: i64,
    last_updated_text: String,
    id: String,
    version_id: String,
    deleted: bool,
    hash: u64,
}

/// A page's entries and the link to the next page.
type Page = (Vec<Entry>, Option<url::Url>);

/// A server's entries of one type in `lastUpdated` order, fetched a page at a time. While one page is compared,
/// the next is already being fetched and parsed in the background (one page ahead, so memory stays bounded),
/// which lets both servers be read at once instead of in turn.
struct Stream {
    client: FhirClient,
    next: Option<url::Url>,
    ahead: Option<tokio::task::JoinHandle<Result<Page, FhirError>>>,
    buffer: VecDeque<Entry>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A paused or failed comparison must not leave a fetch running.
        if let Some(task) = self.ahead.take() {
            task.abort();
        }
    }
}

/// Fetches one page and reads its entries.
async fn fetch(client: FhirClient, url: url::Url) -> Result<Page, FhirError> {
    let page = client.page(&url).await?;
    let next = client.next_page(&page)?;
    let mut entries = Vec::new();
    for e in page["entry"].as_array().into_iter().flatten() {
        // Servers may add an OperationOutcome entry (search mode `outcome`) with warnings; it is no data.
        if e["search"]["mode"] == "outcome" || e["resource"]["resourceType"] == "OperationOutcome" {
            continue;
        }
        // Anything else that cannot be read would silently shrink the comparison: refuse it.
        let entry = parse(e).ok_or_else(|| FhirError::InvalidResponse {
            url: url.to_string(),
            detail: "an entry has no readable id, version or lastUpdated".into(),
        })?;
        entries.push(entry);
    }
    Ok((entries, next))
}

impl Stream {
    /// From `from` (inclusive, milliseconds) when resuming, else from the oldest entry.
    fn new(client: &FhirClient, resource_type: &str, history: bool, from: Option<i64>) -> Result<Stream, FhirError> {
        let t = crate::storage::encode_component(resource_type);
        let from = from
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(crate::fhir::format_instant);
        let first = match (history, from) {
            (true, None) => format!("{t}/_history?_sort=_lastUpdated&_count=1000"),
            (true, Some(f)) => format!(
                "{t}/_history?_since={}&_sort=_lastUpdated&_count=1000",
                crate::storage::encode_component(&f)
            ),
            (false, None) => format!("{t}?_sort=_lastUpdated&_count=1000"),
            (false, Some(f)) => format!(
                "{t}?_lastUpdated=ge{}&_sort=_lastUpdated&_count=1000",
                crate::storage::encode_component(&f)
            ),
        };
        let mut stream = Stream {
            client: client.clone(),
            next: Some(client.url(&first)?),
            ahead: None,
            buffer: VecDeque::new(),
        };
        stream.fetch_ahead();
        Ok(stream)
    }

    /// Starts fetching the next page, if there is one and none is being fetched.
    fn fetch_ahead(&mut self) {
        if self.ahead.is_none()
            && let Some(url) = self.next.take()
        {
            self.ahead = Some(crate::telemetry::context::spawn_in_current(fetch(
                self.client.clone(),
                url,
            )));
        }
    }

    /// The next entry's lastUpdated, waiting for pages (empty ones included) until one arrives or none are left.
    async fn peek(&mut self) -> Result<Option<i64>, FhirError> {
        while self.buffer.is_empty() {
            let Some(task) = self.ahead.take() else { return Ok(None) };
            let (entries, next) = task.await.map_err(|e| FhirError::Transport {
                url: self.client.base().to_string(),
                message: format!("a page fetch stopped: {e}"),
            })??;
            self.buffer.extend(entries);
            self.next = next;
            self.fetch_ahead();
        }
        Ok(self.buffer.front().map(|e| e.last_updated))
    }

    /// Every entry with this lastUpdated (they are contiguous).
    async fn take(&mut self, last_updated: i64) -> Result<Vec<Entry>, FhirError> {
        let mut group = Vec::new();
        while self.peek().await? == Some(last_updated) {
            group.extend(self.buffer.pop_front());
        }
        Ok(group)
    }
}

/// An entry's id, version and lastUpdated: from its resource, or — for a delete in history, which a server may
/// send without a resource — from `request.url`, `response.etag` and `response.lastModified`.
fn parse(entry: &Value) -> Option<Entry> {
    let deleted = entry["request"]["method"] == "DELETE";
    let resource = entry.get("resource").filter(|r| r.is_object());
    let (id, version_id, text) = match resource {
        Some(r) => (
            r["id"].as_str()?.to_string(),
            r["meta"]["versionId"].as_str().unwrap_or_default().to_string(),
            r["meta"]["lastUpdated"].as_str()?.to_string(),
        ),
        None if deleted => {
            let url = entry["request"]["url"].as_str()?;
            let id = url.split('?').next()?.split('/').nth(1)?.to_string();
            let etag = entry["response"]["etag"].as_str().unwrap_or_default();
            let version = etag.trim_start_matches("W/").trim_matches('"').to_string();
            (id, version, entry["response"]["lastModified"].as_str()?.to_string())
        }
        None => return None,
    };
    let last_updated = DateTime::parse_from_rfc3339(&text).ok()?.timestamp_millis();
    Some(Entry {
        last_updated,
        last_updated_text: text,
        id,
        version_id,
        deleted,
        hash: match resource {
            Some(r) if !deleted => content_hash(r),
            _ => 0,
        },
    })
}

impl FullReport {
    fn record(&mut self, kind: Kind, resource_type: &str, e: &Entry) {
        if kind != Kind::Extra
            && !self.accepted_keys.is_empty()
            && self
                .accepted_keys
                .contains(&crate::ledger::Entry::key_of(resource_type, &e.id, &e.version_id))
        {
            self.accepted += 1;
            return;
        }
        // A version of an export file some of whose lines failed unnamed, and whose loss was accepted: one of
        // those lines, as long as the count allows.
        if kind != Kind::Extra
            && let Some(b) = self
                .unnamed_keys
                .get(&crate::ledger::Entry::key_of(resource_type, &e.id, &e.version_id))
            && self.unnamed_left[*b] > 0
        {
            self.unnamed_left[*b] -= 1;
            self.accepted += 1;
            return;
        }
        let counter = match kind {
            Kind::Missing => &mut self.missing,
            Kind::Extra => &mut self.extra,
            Kind::Different => &mut self.different,
        };
        *counter += 1;
        if self.differences.iter().filter(|d| d.kind == kind).count() < LISTED {
            self.differences.push(Difference {
                kind,
                resource_type: resource_type.to_string(),
                id: e.id.clone(),
                version_id: e.version_id.clone(),
                last_updated: e.last_updated_text.clone(),
            });
        }
    }
}

/// Compares one type and adds what it finds to `report`.
pub async fn compare_type(
    source: &FhirClient,
    destination: &FhirClient,
    resource_type: &str,
    history: bool,
    content: Content,
    report: &mut FullReport,
) -> Result<(), FhirError> {
    compare_type_from(
        source,
        destination,
        resource_type,
        history,
        content,
        None,
        report,
        |_| false,
    )
    .await
    .map(|_| ())
}

/// Compares one type from `from` (a lastUpdated in milliseconds, inclusive) on. After each group of entries
/// sharing a millisecond, `stop` is asked whether to pause; when it says yes, the returned value is where to
/// resume (every entry before it is compared and counted). `None` means the type is done. With
/// [`Content::NotComparable`] two versions match on id, versionId, lastUpdated and delete state alone.
#[allow(clippy::too_many_arguments)]
pub async fn compare_type_from(
    source: &FhirClient,
    destination: &FhirClient,
    resource_type: &str,
    history: bool,
    content: Content,
    from: Option<i64>,
    report: &mut FullReport,
    stop: impl FnMut(&FullReport) -> bool,
) -> Result<Option<i64>, FhirError> {
    compare_type_within(
        source,
        destination,
        resource_type,
        history,
        content,
        (from, None),
        report,
        stop,
    )
    .await
}

/// [`compare_type_from`] within `[from, till)` (milliseconds): a specific run's range, whose outside the
/// migration never carried.
#[allow(clippy::too_many_arguments)]
pub async fn compare_type_within(
    source: &FhirClient,
    destination: &FhirClient,
    resource_type: &str,
    history: bool,
    content: Content,
    (from, till): (Option<i64>, Option<i64>),
    report: &mut FullReport,
    mut stop: impl FnMut(&FullReport) -> bool,
) -> Result<Option<i64>, FhirError> {
    report.content = content.label().to_string();
    if resource_type == "SearchParameter" {
        compare_search_parameters(source, destination, report).await?;
        return Ok(None);
    }
    let compare_content = content == Content::Compared;
    let (mut src, mut dst) = (
        Stream::new(source, resource_type, history, from)?,
        Stream::new(destination, resource_type, history, from)?,
    );
    loop {
        let (a, b) = (src.peek().await?, dst.peek().await?);
        let at = match (a, b) {
            (None, None) => return Ok(None),
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) => x.min(y),
        };
        if till.is_some_and(|t| at >= t) {
            return Ok(None);
        }
        let key = |e: &Entry| (e.id.clone(), e.version_id.clone());
        let left: BTreeMap<_, Entry> = src.take(at).await?.into_iter().map(|e| (key(&e), e)).collect();
        let mut right: BTreeMap<_, Entry> = dst.take(at).await?.into_iter().map(|e| (key(&e), e)).collect();
        for (k, s) in &left {
            report.compared += 1;
            match right.remove(k) {
                None => report.record(Kind::Missing, resource_type, s),
                Some(d) if d.deleted != s.deleted || (compare_content && d.hash != s.hash) => {
                    report.record(Kind::Different, resource_type, s)
                }
                Some(_) => {}
            }
        }
        for d in right.values() {
            report.record(Kind::Extra, resource_type, d);
        }
        if stop(report) {
            // Resume right after this millisecond.
            return Ok(Some(at + 1));
        }
    }
}

/// SearchParameters are compared by id and content (meta aside): see
/// [`crate::engine::search_parameters::differences`].
async fn compare_search_parameters(
    source: &FhirClient,
    destination: &FhirClient,
    report: &mut FullReport,
) -> Result<(), FhirError> {
    use crate::engine::search_parameters::{Difference, differences};
    let found = differences(source, destination).await?;
    let total = source.search_parameters().await?.len() as u64;
    report.compared += total;
    for (difference, id) in found {
        let kind = match difference {
            Difference::Missing => Kind::Missing,
            Difference::Different => Kind::Different,
            Difference::Extra => Kind::Extra,
        };
        let entry = Entry {
            last_updated: 0,
            last_updated_text: String::new(),
            id,
            version_id: String::new(),
            deleted: false,
            hash: 0,
        };
        report.record(kind, "SearchParameter", &entry);
    }
    Ok(())
}

/// Compares every listed type, content included.
pub async fn full(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    history: bool,
) -> Result<FullReport, FhirError> {
    full_with(source, destination, types, history, Content::Compared).await
}

/// Compares every listed type; with [`Content::NotComparable`] (a de-identified migration), without content.
pub async fn full_with(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    history: bool,
    content: Content,
) -> Result<FullReport, FhirError> {
    full_except(
        source,
        destination,
        types,
        history,
        content,
        Default::default(),
        (None, None),
    )
    .await
}

/// [`full_with`], where a missing or different version an operator `accepted` is an accepted loss, not a
/// difference: a named one by its ledger key, an unnamed one (lines counted but not named) by being in its
/// export file, up to its count.
pub async fn full_except(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    history: bool,
    content: Content,
    accepted: Accepted,
    range: (Option<i64>, Option<i64>),
) -> Result<FullReport, FhirError> {
    let mut report = FullReport {
        content: content.label().to_string(),
        accepted_keys: accepted.keys,
        ..FullReport::default()
    };
    for (b, (keys, count)) in accepted.unnamed.into_iter().enumerate() {
        report.unnamed_left.push(count);
        for k in keys {
            report.unnamed_keys.entry(k).or_insert(b);
        }
    }
    for t in types {
        compare_type_within(source, destination, t, history, content, range, &mut report, |_| false).await?;
    }
    report.passed = report.missing == 0 && report.extra == 0 && report.different == 0;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_delete_without_a_resource_is_read_from_request_and_response() {
        let e = json!({ "request": { "method": "DELETE", "url": "Patient/p1/_history/3" },
                        "response": { "etag": "W/\"3\"", "lastModified": "2026-01-02T03:04:05.678+00:00" } });
        let entry = parse(&e).unwrap();
        assert_eq!(
            (entry.id.as_str(), entry.version_id.as_str(), entry.deleted),
            ("p1", "3", true)
        );
        assert_eq!(entry.last_updated_text, "2026-01-02T03:04:05.678+00:00");
        // Not a delete and no resource: unreadable (the stream refuses the page).
        assert!(parse(&json!({ "request": { "method": "PUT", "url": "Patient/p1" } })).is_none());
    }
}
