//! The deep check: a sample of resources from every type with data, read from both servers and compared as
//! whole JSON documents — `id`, `meta.versionId` and `meta.lastUpdated` included, because incremental import
//! keeps them. Each difference is named by its JSON path.
//!
//! The sample per type is split between the newest and the oldest resources: the newest are the ones a
//! migration still catching up is most likely to miss, the oldest the ones the first windows carried.
//! Fields a server adds on its own are ignored only when the operator lists them in
//! `AZURE_DeepCheckIgnorePaths`; by default nothing is ignored.

use std::collections::BTreeSet;

use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Content;
use super::surface::{SurfaceReport, surface};
use crate::fhir::{FhirClient, FhirError};

/// Parallel reads per server.
const CONCURRENCY: usize = 8;
/// Differing paths named per resource; the rest are counted.
const PATHS_LISTED: usize = 10;
/// The largest sample one run takes (each sampled resource is two reads and a row in the report); the setting
/// `AZURE_DeepCheckCount` is bounded by it where it is parsed.
pub const MAX_COUNT: usize = crate::config::MAX_DEEP_CHECK_COUNT as usize;

/// One compared resource. `Resource`, `id` and `Result` are the original's names (the dashboard reads them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeepRow {
    #[serde(rename = "Resource")]
    pub resource: String,
    pub id: String,
    #[serde(rename = "versionId")]
    pub version_id: String,
    #[serde(rename = "Result")]
    pub result: String,
    /// JSON paths that differ, e.g. `name[0].family` or `meta.versionId`; `(missing at destination)` when the
    /// destination has no such resource.
    #[serde(rename = "differences", default, skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
    /// `compared`, or `not comparable (de-identified)`: then only `id`, `meta.versionId` and `meta.lastUpdated`
    /// were compared (and presence).
    #[serde(rename = "content", default)]
    pub content: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeepReport {
    pub compared: u64,
    pub failed: u64,
    pub rows: Vec<DeepRow>,
    pub passed: bool,
}

/// How many of `count` each type gets: shares as even as the types' sizes allow (a type never gets more than it
/// holds; what it cannot take goes to the others), ties to the types listed first.
pub fn allocate(types_with_counts: &[(String, u64)], count: usize) -> Vec<(String, usize)> {
    let mut plan: Vec<(String, usize, u64)> = types_with_counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| (t.clone(), 0, *n))
        .collect();
    let mut left = count;
    while left > 0 {
        let mut gave = false;
        for (_, k, n) in plan.iter_mut() {
            if left > 0 && (*k as u64) < *n {
                *k += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    plan.into_iter()
        .filter(|(_, k, _)| *k > 0)
        .map(|(t, k, _)| (t, k))
        .collect()
}

/// The deep check over `types`: samples `count` resources from the types with data, using the current counts
/// of `counts` (a surface report) or counting them first when there is none.
pub async fn check(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    counts: Option<&SurfaceReport>,
    count: usize,
    ignore: &[String],
    content: Content,
) -> Result<DeepReport, FhirError> {
    let counted;
    let counts = match counts {
        Some(c) => c,
        None => {
            counted = surface(source, destination, types, false, false).await?;
            &counted
        }
    };
    let with_counts: Vec<(String, u64)> = counts
        .rows
        .iter()
        .filter(|r| r.measure == "current" && r.resource != "Total")
        .map(|r| (r.resource.clone(), r.source_count))
        .collect();
    deep(source, destination, &allocate(&with_counts, count), ignore, content).await
}

/// Samples and compares. `plan` comes from [`allocate`]; `ignore` are JSON paths never reported. With
/// [`Content::NotComparable`] (de-identified export) only what de-identified export keeps is compared.
pub async fn deep(
    source: &FhirClient,
    destination: &FhirClient,
    plan: &[(String, usize)],
    ignore: &[String],
    content: Content,
) -> Result<DeepReport, FhirError> {
    deep_filtered(source, destination, plan, ignore, content, "").await
}

/// The deep check over part of the server ([`Scope`](super::scope::Scope)): the sample is drawn from the
/// scoped types, among resources whose current version lies in the scoped range.
pub async fn check_in(
    source: &FhirClient,
    destination: &FhirClient,
    types: &[String],
    count: usize,
    ignore: &[String],
    content: Content,
    scope: &super::scope::Scope,
) -> Result<DeepReport, FhirError> {
    let counts = super::surface::surface_in(source, destination, types, false, false, scope).await?;
    let with_counts: Vec<(String, u64)> = counts
        .rows
        .iter()
        .filter(|r| r.measure == "current" && r.resource != "Total")
        .map(|r| (r.resource.clone(), r.source_count))
        .collect();
    let enc = crate::storage::encode_component;
    let mut filter = String::new();
    if let Some(s) = scope.since {
        filter.push_str(&format!("&_lastUpdated=ge{}", enc(&crate::fhir::format_instant(s))));
    }
    if let Some(t) = scope.till {
        filter.push_str(&format!("&_lastUpdated=lt{}", enc(&crate::fhir::format_instant(t))));
    }
    deep_filtered(
        source,
        destination,
        &allocate(&with_counts, count),
        ignore,
        content,
        &filter,
    )
    .await
}

async fn deep_filtered(
    source: &FhirClient,
    destination: &FhirClient,
    plan: &[(String, usize)],
    ignore: &[String],
    content: Content,
    filter: &str,
) -> Result<DeepReport, FhirError> {
    let mut sample: Vec<Value> = Vec::new();
    for (t, k) in plan {
        sample.extend(sample_type(source, t, *k, filter).await?);
    }
    let results: Vec<Result<DeepRow, FhirError>> = stream::iter(sample)
        .map(|resource| async move { compare_one(destination, resource, ignore, content).await })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut report = DeepReport::default();
    for row in results {
        let row = row?;
        report.compared += 1;
        if row.result != "Pass" {
            report.failed += 1;
        }
        report.rows.push(row);
    }
    report.passed = report.failed == 0;
    Ok(report)
}

/// Up to `k` current resources of one type: the newest half and the oldest half, without repeats.
async fn sample_type(
    source: &FhirClient,
    resource_type: &str,
    k: usize,
    filter: &str,
) -> Result<Vec<Value>, FhirError> {
    let t = crate::storage::encode_component(resource_type);
    let newest = k.div_ceil(2);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (sort, n) in [("-_lastUpdated", newest), ("_lastUpdated", k - newest)] {
        if n == 0 {
            continue;
        }
        let page = source.get_json(&format!("{t}?_sort={sort}&_count={n}{filter}")).await?;
        for e in page["entry"].as_array().into_iter().flatten() {
            let Some(resource) = e.get("resource") else { continue };
            let Some(id) = resource["id"].as_str() else { continue };
            if out.len() < k && seen.insert(id.to_string()) {
                out.push(resource.clone());
            }
        }
    }
    Ok(out)
}

async fn compare_one(
    destination: &FhirClient,
    source: Value,
    ignore: &[String],
    content: Content,
) -> Result<DeepRow, FhirError> {
    let t = source["resourceType"].as_str().unwrap_or_default().to_string();
    let id = source["id"].as_str().unwrap_or_default().to_string();
    let version_id = source["meta"]["versionId"].as_str().unwrap_or_default().to_string();
    let path = format!(
        "{}/{}",
        crate::storage::encode_component(&t),
        crate::storage::encode_component(&id)
    );
    let differences = match destination.get_json(&path).await {
        Ok(dest) if content == Content::Compared => differing_paths(&source, &dest, ignore),
        Ok(dest) => differing_paths(&kept(&source), &kept(&dest), ignore),
        Err(FhirError::Rejected { status: 404 | 410, .. }) => vec!["(missing at destination)".to_string()],
        Err(e) => return Err(e),
    };
    Ok(DeepRow {
        resource: t,
        id,
        version_id,
        result: if differences.is_empty() { "Pass" } else { "Fail" }.to_string(),
        differences,
        content: content.label().to_string(),
    })
}

/// What de-identified export keeps of a resource, and so what can be compared with the source.
fn kept(resource: &Value) -> Value {
    json!({
        "resourceType": resource["resourceType"],
        "id": resource["id"],
        "meta": { "versionId": resource["meta"]["versionId"], "lastUpdated": resource["meta"]["lastUpdated"] },
    })
}

/// The JSON paths at which two documents differ (object member order ignored, array order significant,
/// numbers by value), skipping `ignore` and everything under it; at most [`PATHS_LISTED`] plus a count.
pub fn differing_paths(a: &Value, b: &Value, ignore: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    walk(a, b, String::new(), ignore, &mut out);
    if out.len() > PATHS_LISTED {
        let more = out.len() - PATHS_LISTED;
        out.truncate(PATHS_LISTED);
        out.push(format!("(and {more} more)"));
    }
    out
}

fn walk(a: &Value, b: &Value, path: String, ignore: &[String], out: &mut Vec<String>) {
    if ignore.contains(&path) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => walk(p, q, child, ignore, out),
                    _ if ignore.contains(&child) => {}
                    _ => out.push(child),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let child = format!("{path}[{i}]");
                match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => walk(p, q, child, ignore, out),
                    _ => out.push(child),
                }
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(if path.is_empty() { "$".into() } else { path }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_name_each_difference_and_respect_the_allow_list() {
        let a = json!({ "id": "1", "meta": { "versionId": "2", "tag": [{"code": "x"}] },
                        "name": [{ "family": "A", "given": ["B"] }], "n": 1.0 });
        let b = json!({ "id": "1", "meta": { "versionId": "3", "source": "#srv" },
                        "name": [{ "family": "Z", "given": ["B", "C"] }], "n": 1 });
        assert_eq!(
            differing_paths(&a, &b, &[]),
            vec![
                "meta.source",
                "meta.tag",
                "meta.versionId",
                "name[0].family",
                "name[0].given[1]"
            ]
        );
        assert_eq!(
            differing_paths(&a, &b, &["meta.source".into(), "name".into()]),
            vec!["meta.tag", "meta.versionId"]
        );
        assert!(differing_paths(&a, &a.clone(), &[]).is_empty());
    }

    #[test]
    fn the_sample_is_spread_over_types_with_data() {
        let types = vec![
            ("Patient".to_string(), 100),
            ("Empty".to_string(), 0),
            ("Rare".to_string(), 1),
        ];
        // Rare holds one, so Patient takes the rest of the sample.
        let plan = |n| allocate(&types, n);
        assert_eq!(plan(5), vec![("Patient".to_string(), 4), ("Rare".to_string(), 1)]);
        assert_eq!(plan(500), vec![("Patient".to_string(), 100), ("Rare".to_string(), 1)]);
        assert!(allocate(&types, 0).is_empty());
        assert_eq!(allocate(&types, 1), vec![("Patient".to_string(), 1)]);
    }
}
