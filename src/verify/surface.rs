//! The surface check: per resource type, the number of current resources on both servers — and, when
//! history or deletes are migrated, the number of versions too. Pass when every count matches.

use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};

use crate::fhir::{FhirClient, FhirError};

/// Parallel count requests per server; enough to finish 145 types quickly without straining either server.
const CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SurfaceRow {
    /// The original's property names, so the dashboard and runbooks keep reading them.
    pub resource: String,
    pub source_count: u64,
    pub destination_count: u64,
    pub result: String,
    /// `current` or `versions`.
    pub measure: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SurfaceReport {
    pub rows: Vec<SurfaceRow>,
    pub passed: bool,
}

fn row(resource: &str, measure: &str, source: u64, destination: u64) -> SurfaceRow {
    SurfaceRow {
        resource: resource.to_string(),
        source_count: source,
        destination_count: destination,
        result: if source == destination { "Pass" } else { "Fail" }.to_string(),
        measure: measure.to_string(),
    }
}

/// Counts every type on both servers. Types with no data on either side are left out unless `include_empty`.
pub async fn surface(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    history: bool,
    include_empty: bool,
) -> Result<SurfaceReport, FhirError> {
    // (type, versions?, query): owned values, so the futures below are `Send` for any caller.
    let jobs: Vec<(String, bool, String)> = types
        .iter()
        .flat_map(|t| {
            let name = crate::storage::encode_component(t);
            let current = (t.clone(), false, format!("{name}?_summary=count"));
            let versions = history.then(|| (t.clone(), true, format!("{name}/_history?_summary=count")));
            std::iter::once(current).chain(versions)
        })
        .collect();
    // The first failure ends the check: a server that cannot be reached for one type cannot be for the next
    // hundred either, and waiting out each of them made an unreachable server a 40-minute silence.
    let results: Vec<SurfaceRow> = stream::iter(jobs)
        .map(|(t, versions, query)| async move {
            let (s, d) = tokio::try_join!(source.count_of(&query), destination.count_of(&query))?;
            Ok::<_, FhirError>(row(&t, if versions { "versions" } else { "current" }, s, d))
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let mut rows = Vec::new();
    for r in results {
        if include_empty || r.source_count > 0 || r.destination_count > 0 {
            rows.push(r);
        }
    }
    // Whole-server totals last, as the original's dashboard shows them.
    let (s, d) = tokio::try_join!(source.total(false), destination.total(false))?;
    rows.push(row("Total", "current", s, d));
    if history {
        let (s, d) = tokio::try_join!(source.total(true), destination.total(true))?;
        rows.push(row("Total", "versions", s, d));
    }
    let passed = rows.iter().all(|r| r.result == "Pass");
    Ok(SurfaceReport { rows, passed })
}

/// The surface check over what the configuration migrates ([`Scope`](super::scope::Scope)): the whole server as
/// [`surface`] does it, or, for part of it, each scoped type counted within the scoped lastUpdated range, and
/// totals summed over those (whole-server totals would count what was never meant to be carried).
pub async fn surface_in(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    history: bool,
    include_empty: bool,
    scope: &super::scope::Scope,
) -> Result<SurfaceReport, FhirError> {
    if scope.is_whole() {
        return surface(source, destination, types, history, include_empty).await;
    }
    let since = scope.since.unwrap_or(chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
    let till = scope.till;
    // A server refuses a `_before` in its future; both servers are asked the same range.
    let history_till = crate::fhir::history_end(till, chrono::Utc::now());
    let ranged = scope.since.is_some() || scope.till.is_some();
    let jobs: Vec<(String, bool)> = types
        .iter()
        .flat_map(|t| std::iter::once((t.clone(), false)).chain(history.then(|| (t.clone(), true))))
        .collect();
    let count = |client: &FhirClient, t: String, versions: bool| {
        let client = client.clone();
        async move {
            let name = crate::storage::encode_component(&t);
            match (ranged, versions) {
                (true, true) => client.history_count(Some(&t), since, history_till).await,
                (true, false) => client.count(Some(&t), since, till).await,
                (false, true) => client.count_of(&format!("{name}/_history?_summary=count")).await,
                (false, false) => client.count_of(&format!("{name}?_summary=count")).await,
            }
        }
    };
    let results: Vec<SurfaceRow> = stream::iter(jobs)
        .map(|(t, versions)| {
            let (s, d) = (
                count(source, t.clone(), versions),
                count(destination, t.clone(), versions),
            );
            async move {
                let (s, d) = tokio::try_join!(s, d)?;
                Ok::<_, FhirError>(row(&t, if versions { "versions" } else { "current" }, s, d))
            }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let total = |measure: &str| {
        results
            .iter()
            .filter(|r| r.measure == measure)
            .fold((0, 0), |(s, d), r| (s + r.source_count, d + r.destination_count))
    };
    let (cs, cd) = total("current");
    let (vs, vd) = total("versions");
    let mut rows: Vec<SurfaceRow> = results
        .iter()
        .filter(|r| include_empty || r.source_count > 0 || r.destination_count > 0)
        .cloned()
        .collect();
    // With a range, a resource's current version may lie outside it at the source and inside at the
    // destination: with history, the versions are what must match.
    let current_counts = !(ranged && history);
    if !current_counts {
        rows.retain(|r| r.measure == "versions");
    }
    if current_counts {
        rows.push(row("Total", "current", cs, cd));
    }
    if history {
        rows.push(row("Total", "versions", vs, vd));
    }
    let passed = rows.iter().all(|r| r.result == "Pass");
    Ok(SurfaceReport { rows, passed })
}
