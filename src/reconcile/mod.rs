//! Hard-delete reconciliation. `$export` carries soft deletes but never hard deletes, so a resource hard-deleted
//! at the source during the migration stays at the destination. This compares the current id sets of both
//! servers type by type and finds:
//!
//! - ids **extra at the destination**. Each is checked at the source: 404 means hard-deleted (or never there),
//!   a candidate for deletion; 410 means soft-deleted and not migrated yet (the migration carries it); 200
//!   means it appeared meanwhile. Only 404s are candidates.
//! - ids **missing at the destination**: not migrated yet, or lost. They are reported, never acted on.
//!
//! Both servers are read in `lastUpdated` order (ids and meta only, `_elements=id`), a page at a time, and
//! compared one millisecond at a time; an id seen on one side only is looked up on the other. Memory holds one
//! millisecond's ids and the differences, not the data, and a comparison can pause after any millisecond and
//! resume there ([`compare_type_from`]): `Reconcile_Http` runs do it in slices ([`runs`]).
//!
//! Dry run by default. With `apply`, the candidates are hard-deleted at the destination, but only when there
//! are no more than `max_deletes` of them. Every deletion is recorded in the `reconcile` table and as an App
//! Insights event. Re-running is safe: it recomputes from the servers, and deleting an absent id is a no-op.

pub mod runs;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::fhir::{FhirClient, FhirError};
use crate::storage::tables::{Entity, TableClient, TableError};
use crate::telemetry::{Event, Telemetry};

/// Ids listed per kind in a report at most (all are counted).
const LISTED: usize = 200;
/// Parallel reads of ids found at the destination only and not at the source (each tells 404 from 410).
const LOOKUPS: usize = 8;
/// Ids found on one side only, gathered before they are looked up on the other.
const BATCH: usize = 200;
/// Ids per `_id` search (keeps the URL short).
const ID_SEARCH: usize = 50;

#[derive(Debug, Clone)]
pub struct Options {
    pub types: Vec<String>,
    pub apply: bool,
    /// The most deletions one run may make; more candidates than this and nothing is deleted.
    pub max_deletes: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Report {
    pub run_id: String,
    pub types_compared: usize,
    pub source_ids: u64,
    pub destination_ids: u64,
    /// At the destination, gone (404) from the source: hard-deleted there.
    pub hard_deleted_at_source: u64,
    /// At the destination, soft-deleted (410) at the source: the migration will carry the delete.
    pub pending_soft_deletes: u64,
    /// At the source, not (yet) at the destination.
    pub missing_at_destination: u64,
    pub deleted: u64,
    pub applied: bool,
    /// Why nothing was deleted although `apply` was asked.
    pub refused: Option<String>,
    /// `Type/id` of the first candidates and of the first missing ids.
    pub candidates: Vec<String>,
    pub missing: Vec<String>,
}

impl Report {
    /// Nothing extra and nothing missing (after any deletions).
    pub fn clean(&self) -> bool {
        self.missing_at_destination == 0 && self.hard_deleted_at_source == self.deleted
    }
}

/// One server's current ids of a type with their `lastUpdated` (milliseconds), in `lastUpdated` order, a page
/// at a time.
struct Ids<'a> {
    client: &'a FhirClient,
    next: Option<url::Url>,
    page: std::collections::VecDeque<(i64, String)>,
    /// Pages fetched so far (a slice is bounded by them).
    pages: u64,
}

impl<'a> Ids<'a> {
    /// From `from` (inclusive, milliseconds) when resuming, else from the oldest resource.
    fn new(client: &'a FhirClient, resource_type: &str, from: Option<i64>) -> Result<Ids<'a>, FhirError> {
        let t = crate::storage::encode_component(resource_type);
        let mut first = format!("{t}?_elements=id&_sort=_lastUpdated&_count=1000");
        if let Some(at) = from.and_then(DateTime::from_timestamp_millis) {
            let at = crate::storage::encode_component(&crate::fhir::format_instant(at));
            first.push_str(&format!("&_lastUpdated=ge{at}"));
        }
        Ok(Ids {
            client,
            next: Some(client.url(&first)?),
            page: std::collections::VecDeque::new(),
            pages: 0,
        })
    }

    /// The next id's lastUpdated, fetching pages (empty ones included) until one arrives or none are left.
    async fn peek(&mut self) -> Result<Option<i64>, FhirError> {
        while self.page.is_empty() {
            let Some(url) = self.next.take() else { return Ok(None) };
            let bundle = self.client.page(&url).await?;
            self.pages += 1;
            self.next = self.client.next_page(&bundle)?;
            for e in bundle["entry"].as_array().into_iter().flatten() {
                if e["search"]["mode"] == "outcome" || e["resource"]["resourceType"] == "OperationOutcome" {
                    continue;
                }
                // An entry without id or lastUpdated would silently shrink the comparison: refuse it.
                let resource = &e["resource"];
                let read = resource["id"].as_str().zip(
                    resource["meta"]["lastUpdated"]
                        .as_str()
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
                );
                let Some((id, at)) = read else {
                    return Err(FhirError::InvalidResponse {
                        url: url.to_string(),
                        detail: "a search entry has no readable id or meta.lastUpdated".into(),
                    });
                };
                self.page.push_back((at.timestamp_millis(), id.to_string()));
            }
        }
        Ok(self.page.front().map(|(at, _)| *at))
    }

    /// Every id with this lastUpdated (they are contiguous).
    async fn take(&mut self, at: i64) -> Result<BTreeSet<String>, FhirError> {
        let mut ids = BTreeSet::new();
        while self.peek().await? == Some(at) {
            ids.extend(self.page.pop_front().map(|(_, id)| id));
        }
        Ok(ids)
    }
}

/// What one call of [`compare_type_from`] found besides the counts in the report: the ids hard-deleted at the
/// source (every one, for deletion) in the order found.
#[derive(Debug, Default)]
pub struct Found {
    pub candidates: Vec<String>,
    /// Pages read from both servers.
    pub pages: u64,
}

/// Compares one type's current ids from `from` (a lastUpdated in milliseconds, inclusive) on, adding counts and
/// the first ids of each kind to `report`.
///
/// Both servers are read in `lastUpdated` order and compared a millisecond at a time: incremental import keeps
/// `lastUpdated`, so a migrated resource sits at the same point of both streams. Ids at that point on one side
/// only are looked up on the other in batches (an `_id` search; an id may have another version there, at
/// another time): memory holds one millisecond's ids and a batch of differences, whatever the size of the
/// servers.
///
/// After each millisecond, `stop` is asked (with the pages read so far) whether to pause; when it says yes, the
/// returned value is where to resume, and everything before it is compared and counted exactly once. `None`
/// means the type is done.
pub async fn compare_type_from(
    source: &FhirClient,
    destination: &FhirClient,
    resource_type: &str,
    from: Option<i64>,
    report: &mut Report,
    found: &mut Found,
    mut stop: impl FnMut(u64) -> bool,
) -> Result<Option<i64>, FhirError> {
    let (mut src, mut dst) = (
        Ids::new(source, resource_type, from)?,
        Ids::new(destination, resource_type, from)?,
    );
    let pages_before = found.pages;
    // Ids seen on one side only, looked up on the other in batches (settled before any return, so a checkpoint
    // never counts an id it has not settled).
    let (mut only_src, mut only_dst): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    loop {
        let (a, b) = tokio::try_join!(src.peek(), dst.peek())?;
        found.pages = pages_before + src.pages + dst.pages;
        let at = match (a, b) {
            (Some(x), None) | (None, Some(x)) => Some(x),
            (Some(x), Some(y)) => Some(x.min(y)),
            (None, None) => None,
        };
        if let Some(at) = at {
            let left = src.take(at).await?;
            let right = dst.take(at).await?;
            found.pages = pages_before + src.pages + dst.pages;
            report.source_ids += left.len() as u64;
            report.destination_ids += right.len() as u64;
            only_src.extend(left.difference(&right).cloned());
            only_dst.extend(right.difference(&left).cloned());
        }
        let pause = at.is_some_and(|_| stop(found.pages));
        let last = at.is_none() || pause;
        if last || only_src.len() >= BATCH {
            settle_missing(destination, resource_type, std::mem::take(&mut only_src), report).await?;
        }
        if last || only_dst.len() >= BATCH {
            settle_extra(source, resource_type, std::mem::take(&mut only_dst), report, found).await?;
        }
        match at {
            None => return Ok(None),
            // Resume right after this millisecond.
            Some(at) if pause => return Ok(Some(at + 1)),
            Some(_) => {}
        }
    }
}

/// Ids at the source whose lastUpdated the destination lacks: present there (another version, an update not
/// migrated yet) or missing.
async fn settle_missing(
    destination: &FhirClient,
    resource_type: &str,
    ids: Vec<String>,
    report: &mut Report,
) -> Result<(), FhirError> {
    let present = present(destination, resource_type, &ids).await?;
    for id in ids.into_iter().filter(|id| !present.contains(id)) {
        report.missing_at_destination += 1;
        if report.missing.len() < LISTED {
            report.missing.push(format!("{resource_type}/{id}"));
        }
    }
    Ok(())
}

/// Ids at the destination whose lastUpdated the source lacks: present at the source (another version), soft-
/// deleted there (410: the migration carries the delete), or gone (404: a candidate).
async fn settle_extra(
    source: &FhirClient,
    resource_type: &str,
    ids: Vec<String>,
    report: &mut Report,
    found: &mut Found,
) -> Result<(), FhirError> {
    let present = present(source, resource_type, &ids).await?;
    let absent: Vec<String> = ids.into_iter().filter(|id| !present.contains(id)).collect();
    for (id, state) in look_up(source, resource_type, absent).await {
        match state? {
            StatusCode::NOT_FOUND => {
                report.hard_deleted_at_source += 1;
                if report.candidates.len() < LISTED {
                    report.candidates.push(format!("{resource_type}/{id}"));
                }
                found.candidates.push(id);
            }
            StatusCode::GONE => report.pending_soft_deletes += 1,
            // Written at the source since the search: not a candidate.
            _ => {}
        }
    }
    Ok(())
}

/// Which of `ids` a server holds now (current, not deleted): one `_id` search per [`ID_SEARCH`] ids.
async fn present(server: &FhirClient, resource_type: &str, ids: &[String]) -> Result<BTreeSet<String>, FhirError> {
    let t = crate::storage::encode_component(resource_type);
    let mut held = BTreeSet::new();
    for chunk in ids.chunks(ID_SEARCH) {
        let list: Vec<String> = chunk.iter().map(|id| crate::storage::encode_component(id)).collect();
        let mut next = Some(server.url(&format!("{t}?_id={}&_elements=id&_count=1000", list.join(",")))?);
        while let Some(url) = next.take() {
            let bundle = server.page(&url).await?;
            next = server.next_page(&bundle)?;
            for e in bundle["entry"].as_array().into_iter().flatten() {
                if e["search"]["mode"] != "outcome"
                    && let Some(id) = e["resource"]["id"].as_str()
                {
                    held.insert(id.to_string());
                }
            }
        }
    }
    Ok(held)
}

/// What a server says about each of `ids`, a few at a time. Owned values, so the futures are `Send` for any
/// caller.
async fn look_up(
    server: &FhirClient,
    resource_type: &str,
    ids: Vec<String>,
) -> Vec<(String, Result<StatusCode, FhirError>)> {
    let jobs: Vec<(FhirClient, String, String)> = ids
        .into_iter()
        .map(|id| (server.clone(), resource_type.to_string(), id))
        .collect();
    stream::iter(jobs)
        .map(|(server, t, id)| async move {
            let state = read_state(&server, &t, &id).await;
            (id, state)
        })
        .buffered(LOOKUPS)
        .collect()
        .await
}

/// What a server says about one id: 200 (there), 404 (never there or hard-deleted) or 410 (soft-deleted).
pub(crate) async fn read_state(server: &FhirClient, resource_type: &str, id: &str) -> Result<StatusCode, FhirError> {
    let url = server.url(&format!(
        "{}/{}",
        crate::storage::encode_component(resource_type),
        crate::storage::encode_component(id)
    ))?;
    let resp = server.send(Method::GET, &url, |r| r, true).await?;
    match resp.status() {
        s @ (StatusCode::OK | StatusCode::NOT_FOUND | StatusCode::GONE) => Ok(s),
        _ => Err(crate::fhir::client::rejection(resp, &url).await),
    }
}

/// Compares, and with `apply` deletes within the cap. `record` keeps each deletion (the `reconcile` table).
pub async fn reconcile(
    source: &FhirClient,
    destination: &FhirClient,
    options: &Options,
    record: Option<&TableClient>,
    telemetry: &dyn Telemetry,
) -> Result<Report, ReconcileError> {
    let run_id = format!(
        "{}{}",
        Utc::now().format("%Y%m%d%H%M%S"),
        crate::telemetry::context::random_hex(8)
    );
    let mut report = Report {
        run_id: run_id.clone(),
        ..Report::default()
    };
    let mut candidates: Vec<(String, String)> = Vec::new();
    for t in &options.types {
        let mut found = Found::default();
        compare_type_from(source, destination, t, None, &mut report, &mut found, |_| false).await?;
        report.types_compared += 1;
        candidates.extend(found.candidates.into_iter().map(|id| (t.clone(), id)));
    }
    if options.apply {
        if candidates.len() > options.max_deletes {
            report.refused = Some(over_cap(candidates.len() as u64, options.max_deletes));
        } else {
            if let Some(table) = record {
                table.create_if_missing().await?;
            }
            for (t, id) in &candidates {
                delete(destination, t, id).await?;
                report.deleted += 1;
                if let Some(table) = record {
                    let mut row = Entity::new(run_id.as_str(), format!("{t}_{id}"))?;
                    row.set_str("ResourceType", t.as_str())
                        .set_str("ResourceId", id.as_str())
                        .set_datetime("DeletedAt", Utc::now());
                    table.upsert(&row).await?;
                }
                telemetry.event(
                    Event::new("ReconcileDelete")
                        .with("RunId", &run_id)
                        .with("Resource", t)
                        .with("id", id),
                );
            }
            report.applied = true;
        }
    }
    telemetry.event(summary(&report));
    Ok(report)
}

/// The `Reconcile` event that ends a run.
pub(crate) fn summary(report: &Report) -> Event {
    let result = if report.refused.is_some() {
        "Refused"
    } else if report.clean() {
        "Pass"
    } else {
        "Fail"
    };
    Event::new("Reconcile")
        .with("RunId", &report.run_id)
        .with("HardDeletedAtSource", report.hard_deleted_at_source)
        .with("MissingAtDestination", report.missing_at_destination)
        .with("PendingSoftDeletes", report.pending_soft_deletes)
        .with("Deleted", report.deleted)
        .with("Applied", report.applied)
        .with("Result", result)
}

/// The message of a refusal: more candidates than the cap.
pub(crate) fn over_cap(candidates: u64, cap: usize) -> String {
    format!(
        "{candidates} resources would be deleted, more than the cap of {cap}; check the candidates, then run again with a cap of at least {candidates}"
    )
}

/// Hard-deletes one resource at the destination; an id already gone is fine (a re-run).
pub(crate) async fn delete(destination: &FhirClient, resource_type: &str, id: &str) -> Result<(), FhirError> {
    let url = destination.url(&format!(
        "{}/{}?hardDelete=true",
        crate::storage::encode_component(resource_type),
        crate::storage::encode_component(id)
    ))?;
    let resp = destination.send(Method::DELETE, &url, |r| r, true).await?;
    match resp.status() {
        s if s.is_success() || s == StatusCode::NOT_FOUND || s == StatusCode::GONE => Ok(()),
        _ => Err(crate::fhir::client::rejection(resp, &url).await),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error("could not record the deletions: {0}")]
    Table(#[from] TableError),
}

/// The report as text for the CLI.
pub fn describe(r: &Report) -> String {
    let mut out = format!(
        "reconcile run {}: {} types, {} ids at the source, {} at the destination\n",
        r.run_id, r.types_compared, r.source_ids, r.destination_ids
    );
    out.push_str(&format!(
        "  hard-deleted at the source, still at the destination: {}\n",
        r.hard_deleted_at_source
    ));
    for c in &r.candidates {
        out.push_str(&format!("    {c}\n"));
    }
    out.push_str(&format!(
        "  soft-deleted at the source, not migrated yet (the migration carries them): {}\n",
        r.pending_soft_deletes
    ));
    out.push_str(&format!(
        "  at the source, not (yet) at the destination: {}\n",
        r.missing_at_destination
    ));
    for m in &r.missing {
        out.push_str(&format!("    {m}\n"));
    }
    match (&r.refused, r.applied) {
        (Some(why), _) => out.push_str(&format!("  nothing deleted: {why}\n")),
        (None, true) => out.push_str(&format!("  deleted at the destination: {}\n", r.deleted)),
        (None, false) if r.hard_deleted_at_source > 0 => {
            out.push_str("  dry run: run again with --apply to delete them at the destination\n")
        }
        _ => {}
    }
    out
}

/// When the run happened, from its id (for listings).
pub fn started(run_id: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(run_id.get(..14)?, "%Y%m%d%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}
