//! Custom SearchParameters (`$import` refuses them, reference §4.2) travel through the REST API: the first copy
//! reads every page of the source's list (the original read only the first 1,000) and PUTs each by id, so ids
//! are kept and unchanged ones skipped. After that, each starter tick asks the source's SearchParameter history
//! for what changed since the last sync (cheap when nothing did) and carries creations, changes and deletions.
//! A failure is reported and retried on the next tick; it never blocks the data migration.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::Engine;
use crate::fhir::FhirError;

/// What one copy or sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchParameterSync {
    pub written: i64,
    pub deleted: i64,
    pub unchanged: i64,
    /// Refused by the destination (a 4xx asking again cannot change): logged by id, left out of this sync so
    /// the data migration goes on, and reported by `cutover --final`, which compares SearchParameters.
    pub refused: i64,
}

/// How far back each sync looks past the previous one: a change committed just as the last sync read (with a
/// slightly older lastUpdated) is still seen. Carrying a change twice changes nothing.
const OVERLAP: TimeDelta = TimeDelta::minutes(5);

fn without_meta(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("meta");
        map.remove("text");
    }
    v
}

/// How a SearchParameter differs between the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    Missing,
    Different,
    Extra,
}

/// The SearchParameters that differ, by id, comparing content without `meta` and `text`: the copies are
/// written through the REST API, so their lastUpdated and versionId are the destination's own and a
/// version-by-version comparison would find every one missing and extra.
pub async fn differences(
    source: &crate::fhir::FhirClient,
    destination: &crate::fhir::FhirClient,
) -> Result<Vec<(Difference, String)>, FhirError> {
    let by_id = |list: Vec<Value>| -> HashMap<String, Value> {
        list.into_iter()
            .filter_map(|sp| Some((sp["id"].as_str()?.to_string(), without_meta(&sp))))
            .collect()
    };
    let source = by_id(source.search_parameters().await?);
    let destination = by_id(destination.search_parameters().await?);
    let mut out = Vec::new();
    for (id, sp) in &source {
        match destination.get(id) {
            None => out.push((Difference::Missing, id.clone())),
            Some(d) if d != sp => out.push((Difference::Different, id.clone())),
            Some(_) => {}
        }
    }
    out.extend(
        destination
            .keys()
            .filter(|id| !source.contains_key(*id))
            .map(|id| (Difference::Extra, id.clone())),
    );
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

impl Engine {
    /// The first copy (`since` none) or a sync of what changed at the source since `since`.
    pub(crate) async fn sync_search_parameters(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<SearchParameterSync, FhirError> {
        let Some(since) = since else {
            let mut done = SearchParameterSync::default();
            for sp in self.source.search_parameters().await? {
                self.carry(&sp, &mut done).await?;
            }
            return Ok(done);
        };
        // The newest entry per id decides: a resource to carry, or a deletion.
        let query = format!(
            "SearchParameter/_history?_since={}&_count=1000",
            crate::storage::encode_component(&crate::fhir::format_instant(since - OVERLAP))
        );
        let mut newest: HashMap<String, (DateTime<Utc>, Option<Value>)> = HashMap::new();
        let mut url = self.source.url(&query)?;
        for _ in 0..10_000 {
            let page = self.source.page(&url).await?;
            for entry in page["entry"].as_array().into_iter().flatten() {
                let deleted = entry["request"]["method"] == "DELETE";
                let resource = &entry["resource"];
                let id = resource["id"]
                    .as_str()
                    .or_else(|| entry["request"]["url"].as_str().and_then(|u| u.rsplit('/').next()))
                    .unwrap_or_default()
                    .to_string();
                // A deletion's entry may carry no resource meta: its response's lastModified says when; with no
                // time at all, a deletion wins (a deleted parameter must not be put back).
                let at = resource["meta"]["lastUpdated"]
                    .as_str()
                    .or(entry["response"]["lastModified"].as_str())
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(if deleted {
                        DateTime::<Utc>::MAX_UTC
                    } else {
                        DateTime::<Utc>::MIN_UTC
                    });
                if id.is_empty() || newest.get(&id).is_some_and(|(seen, _)| *seen >= at) {
                    continue;
                }
                newest.insert(id, (at, (!deleted).then(|| resource.clone())));
            }
            match self.source.next_page(&page)? {
                Some(next) => url = next,
                None => break,
            }
        }
        let mut done = SearchParameterSync::default();
        for (id, (_, resource)) in newest {
            match resource {
                Some(sp) => self.carry(&sp, &mut done).await?,
                None => {
                    if self.destination.read("SearchParameter", &id).await?.is_some() {
                        let url = self
                            .destination
                            .url(&format!("SearchParameter/{}", crate::storage::encode_component(&id)))?;
                        let resp = self.destination.send(Method::DELETE, &url, |r| r, true).await?;
                        if !(resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND) {
                            return Err(crate::fhir::client::rejection(resp, &url).await);
                        }
                        done.deleted += 1;
                    }
                }
            }
        }
        Ok(done)
    }

    /// How the destination's custom SearchParameters differ from the source's (by id, content without meta):
    /// one line per difference, empty when they agree. The cut-over's final check reports these.
    pub async fn compare_search_parameters(&self) -> Result<Vec<String>, FhirError> {
        let mut out: Vec<String> = differences(&self.source, &self.destination)
            .await?
            .into_iter()
            .map(|(kind, id)| match kind {
                Difference::Missing => format!("SearchParameter/{id} is missing at the destination"),
                Difference::Different => format!("SearchParameter/{id} differs at the destination"),
                Difference::Extra => format!("SearchParameter/{id} is at the destination but no longer at the source"),
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// PUTs one SearchParameter by id unless the destination already holds the same.
    async fn carry(&self, sp: &Value, done: &mut SearchParameterSync) -> Result<(), FhirError> {
        let id = sp["id"].as_str().unwrap_or_default();
        let existing = self.destination.read("SearchParameter", id).await?;
        if existing.as_ref().map(without_meta) == Some(without_meta(sp)) {
            done.unchanged += 1;
            return Ok(());
        }
        let mut body = sp.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("meta");
        }
        match self.destination.put(&body).await {
            Ok(_) => done.written += 1,
            Err(FhirError::Rejected {
                status, diagnostics, ..
            }) if (400..500).contains(&status) && !matches!(status, 408 | 429) => {
                tracing::warn!(
                    "SearchParameter/{id} was refused by the destination (HTTP {status}: {diagnostics}); fix it there or at the source: cut-over reports it until the two agree"
                );
                done.refused += 1;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}
