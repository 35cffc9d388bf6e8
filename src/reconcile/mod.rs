//! Hard-delete reconciliation. `$export` carries soft deletes but never hard deletes, so a resource hard-deleted
//! at the source during the migration stays at the destination. This compares the current id sets of both
//! servers type by type and finds:
//!
//! - ids **extra at the destination**. Each is checked at the source: 404 means hard-deleted (or never there),
//!   a candidate for deletion; 410 means soft-deleted and not migrated yet (the migration carries it); 200
//!   means it appeared meanwhile. Only 404s are candidates.
//! - ids **missing at the destination**: not migrated yet, or lost. They are reported, never acted on.
//!
//! Both servers are read in `lastUpdated` order, ids only (`_elements=id`), a page at a time, and matched as
//! they stream: memory holds the unmatched ids only, which is the differences, not the data.
//!
//! Dry run by default. With `apply`, the candidates are hard-deleted at the destination, but only when there
//! are no more than `max_deletes` of them. Every deletion is recorded in the `reconcile` table and as an App
//! Insights event. Re-running is safe: it recomputes from the servers, and deleting an absent id is a no-op.

pub mod runs;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::Serialize;

use crate::fhir::{FhirClient, FhirError};
use crate::storage::tables::{Entity, TableClient, TableError};
use crate::telemetry::{Event, Telemetry};

/// Ids listed per kind in a report at most (all are counted).
const LISTED: usize = 200;

#[derive(Debug, Clone)]
pub struct Options {
    pub types: Vec<String>,
    pub apply: bool,
    /// The most deletions one run may make; more candidates than this and nothing is deleted.
    pub max_deletes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
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

/// One server's current ids of a type, in `lastUpdated` order, a page at a time.
struct Ids<'a> {
    client: &'a FhirClient,
    next: Option<url::Url>,
    page: std::vec::IntoIter<String>,
}

impl<'a> Ids<'a> {
    fn new(client: &'a FhirClient, resource_type: &str) -> Result<Ids<'a>, FhirError> {
        let t = crate::storage::encode_component(resource_type);
        Ok(Ids {
            client,
            next: Some(client.url(&format!("{t}?_elements=id&_sort=_lastUpdated&_count=1000"))?),
            page: Vec::new().into_iter(),
        })
    }

    async fn next(&mut self) -> Result<Option<String>, FhirError> {
        loop {
            if let Some(id) = self.page.next() {
                return Ok(Some(id));
            }
            let Some(url) = self.next.take() else { return Ok(None) };
            let bundle = self.client.page(&url).await?;
            self.next = self.client.next_page(&bundle)?;
            let ids: Vec<String> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["search"]["mode"] != "outcome")
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
                .collect();
            self.page = ids.into_iter();
        }
    }
}

/// The ids of one type present on only one side. Both streams advance together and match as they go, so the
/// maps hold only ids not (yet) seen on the other side.
async fn compare_type(
    source: &FhirClient,
    destination: &FhirClient,
    resource_type: &str,
    report: &mut Report,
) -> Result<(Vec<String>, Vec<String>), FhirError> {
    let (mut src, mut dst) = (Ids::new(source, resource_type)?, Ids::new(destination, resource_type)?);
    let mut only_src: HashMap<String, ()> = HashMap::new();
    let mut only_dst: HashMap<String, ()> = HashMap::new();
    let (mut src_done, mut dst_done) = (false, false);
    while !(src_done && dst_done) {
        if !src_done {
            match src.next().await? {
                Some(id) => {
                    report.source_ids += 1;
                    if only_dst.remove(&id).is_none() {
                        only_src.insert(id, ());
                    }
                }
                None => src_done = true,
            }
        }
        if !dst_done {
            match dst.next().await? {
                Some(id) => {
                    report.destination_ids += 1;
                    if only_src.remove(&id).is_none() {
                        only_dst.insert(id, ());
                    }
                }
                None => dst_done = true,
            }
        }
    }
    let mut missing: Vec<String> = only_src.into_keys().collect();
    let mut extra: Vec<String> = only_dst.into_keys().collect();
    missing.sort();
    extra.sort();
    Ok((missing, extra))
}

/// What the source says about an id the destination has and its search did not return.
async fn source_state(source: &FhirClient, resource_type: &str, id: &str) -> Result<StatusCode, FhirError> {
    let url = source.url(&format!(
        "{}/{}",
        crate::storage::encode_component(resource_type),
        crate::storage::encode_component(id)
    ))?;
    Ok(source.send(Method::GET, &url, |r| r, true).await?.status())
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
        let (missing, extra) = compare_type(source, destination, t, &mut report).await?;
        report.types_compared += 1;
        report.missing_at_destination += missing.len() as u64;
        for id in missing {
            if report.missing.len() < LISTED {
                report.missing.push(format!("{t}/{id}"));
            }
        }
        for id in extra {
            match source_state(source, t, &id).await? {
                StatusCode::NOT_FOUND => {
                    report.hard_deleted_at_source += 1;
                    if report.candidates.len() < LISTED {
                        report.candidates.push(format!("{t}/{id}"));
                    }
                    candidates.push((t.clone(), id));
                }
                StatusCode::GONE => report.pending_soft_deletes += 1,
                _ => {}
            }
        }
    }
    if options.apply {
        if candidates.len() > options.max_deletes {
            report.refused = Some(format!(
                "{} resources would be deleted, more than the cap of {}; check the candidates, then run again with a cap of at least {}",
                candidates.len(),
                options.max_deletes,
                candidates.len()
            ));
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
    let result = if report.refused.is_some() {
        "Refused"
    } else if report.clean() {
        "Pass"
    } else {
        "Fail"
    };
    telemetry.event(
        Event::new("Reconcile")
            .with("RunId", &run_id)
            .with("HardDeletedAtSource", report.hard_deleted_at_source)
            .with("MissingAtDestination", report.missing_at_destination)
            .with("PendingSoftDeletes", report.pending_soft_deletes)
            .with("Deleted", report.deleted)
            .with("Applied", report.applied)
            .with("Result", result),
    );
    Ok(report)
}

/// Hard-deletes one resource at the destination; an id already gone is fine (a re-run).
async fn delete(destination: &FhirClient, resource_type: &str, id: &str) -> Result<(), FhirError> {
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
