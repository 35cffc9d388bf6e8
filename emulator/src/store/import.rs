//! Incremental `$import` merge rules (reference §6): which NDJSON lines become new versions, which are no-ops,
//! and which are reported as duplicates or conflicts. Everything here works on one batch of one processing
//! unit, under the store lock, so a batch is applied atomically.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{DELETED_STATE_URL, Inner, Key, Resource, Store, Version, WriteMethod, set_meta, valid_id};
use crate::time::{Millis, parse_instant_ms};

/// Lines further in the future than this are refused.
const FUTURE_TOLERANCE_MS: Millis = 10_000;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub allow_negative_versions: bool,
    /// The input's `type` part, if it had one: lines of other types are errors.
    pub input_type: Option<String>,
    pub now: Millis,
}

/// One parsed NDJSON line.
#[derive(Debug, Clone)]
pub struct ImportLine {
    /// 1-based index among the unit's non-empty lines.
    pub line: usize,
    pub resource_type: String,
    pub id: String,
    pub last_updated: Option<Millis>,
    /// Kept only when lastUpdated is present and the versionId parses as a 32-bit integer.
    pub version: Option<i64>,
    pub deleted: bool,
    /// The resource without `meta.versionId`, `meta.lastUpdated` and the deleted-state extension.
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// A new version was stored.
    Loaded,
    /// The same version was already stored: success, nothing written.
    Unchanged,
    /// The line was not written; the text is the error file's `details.text`.
    Error(String),
}

impl LineOutcome {
    pub fn is_success(&self) -> bool {
        !matches!(self, LineOutcome::Error(_))
    }
}

/// Parses and normalises one line (reference §6.1). An `Err` is the line's error text.
pub fn parse_import_line(text: &str, line: usize, opts: &ImportOptions) -> Result<ImportLine, String> {
    let mut body: Value = serde_json::from_str(text).map_err(|e| format!("Failed to parse resource: {e}"))?;
    let map = body
        .as_object_mut()
        .ok_or("Failed to parse resource: the line is not a JSON object.")?;
    let resource_type = map
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or("Failed to parse resource: resourceType is missing.")?
        .to_string();
    let id = map.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    if !valid_id(&id) {
        return Err(format!(
            "Invalid resource id: '{id}'. Id must be any combination of upper or lower case ASCII letters; numerals; \"-\" and \".\", with a length limit of 64 characters."
        ));
    }
    if !crate::resource_types::is_resource_type(&resource_type) {
        return Err(format!(
            "Failed to parse resource: '{resource_type}' is not a known resource type."
        ));
    }
    if resource_type == "SearchParameter" {
        return Err("SearchParameter resources cannot be processed by import.".into());
    }
    if opts.input_type.as_deref().is_some_and(|t| t != resource_type) {
        return Err("Resource type not match.".into());
    }
    let mut last_updated = None;
    let mut version_text = None;
    let mut deleted = false;
    if let Some(Value::Object(meta)) = map.get_mut("meta") {
        last_updated = match meta.get("lastUpdated") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(parse_instant_ms)
                    .ok_or("Failed to parse resource: meta.lastUpdated is not a valid instant.")?,
            ),
        };
        version_text = match meta.get("versionId") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        meta.remove("lastUpdated");
        meta.remove("versionId");
        if let Some(Value::Array(extensions)) = meta.get_mut("extension") {
            let before = extensions.len();
            extensions.retain(|e| {
                !(e.get("url").and_then(Value::as_str) == Some(DELETED_STATE_URL)
                    && e.get("valueString").and_then(Value::as_str) == Some("soft-deleted"))
            });
            deleted = extensions.len() != before;
            if extensions.is_empty() {
                meta.remove("extension");
            }
        }
        if meta.is_empty() {
            map.remove("meta");
        }
    }
    if last_updated.is_some_and(|t| t > opts.now + FUTURE_TOLERANCE_MS) {
        return Err("LastUpdated in the resource cannot be in the future.".into());
    }
    // An explicit version counts only together with lastUpdated, and only if it is a 32-bit integer.
    let version = last_updated
        .and(version_text)
        .and_then(|v| v.parse::<i32>().ok())
        .map(i64::from);
    Ok(ImportLine {
        line,
        resource_type,
        id,
        last_updated,
        version,
        deleted,
        body,
    })
}

fn conflict(line: &ImportLine) -> LineOutcome {
    LineOutcome::Error(format!(
        "Failed to import resource with version conflict, resource id: {}, line: {}",
        line.id, line.line
    ))
}

fn duplicate(line: &ImportLine) -> LineOutcome {
    LineOutcome::Error(format!(
        "Failed to import duplicate resource, resource id: {}, line: {}",
        line.id, line.line
    ))
}

impl Store {
    /// Applies one batch of parsed lines. Returns an outcome per line, keyed by its line number.
    pub fn import_batch(&self, lines: Vec<ImportLine>, opts: &ImportOptions) -> BTreeMap<usize, LineOutcome> {
        let mut outcomes = BTreeMap::new();
        let survivors = dedup_batch(lines, opts, &mut outcomes);
        let mut by_resource: BTreeMap<(String, String), Vec<ImportLine>> = BTreeMap::new();
        for line in survivors {
            by_resource
                .entry((line.resource_type.clone(), line.id.clone()))
                .or_default()
                .push(line);
        }
        let mut inner = self.lock();
        for ((resource_type, id), mut lines) in by_resource {
            // Oldest first; lines without lastUpdated ("now") last.
            lines.sort_by_key(|l| (l.last_updated.is_none(), l.last_updated, l.line));
            let key = inner.key(&resource_type, &id);
            inner.merge_resource(key, lines, opts, &mut outcomes);
        }
        outcomes
    }
}

/// In-batch de-duplication (reference §6.2, §6.3): returns the lines that go on to the database rules.
fn dedup_batch(
    lines: Vec<ImportLine>,
    opts: &ImportOptions,
    outcomes: &mut BTreeMap<usize, LineOutcome>,
) -> Vec<ImportLine> {
    // 1. Same (id, lastUpdated): keep the highest version, compared as text as the server does; an exact
    //    repeat loses to the earlier line.
    let mut by_instant: HashMap<(String, String, Option<Millis>), ImportLine> = HashMap::new();
    let mut order = Vec::new();
    for line in lines {
        let k = (line.resource_type.clone(), line.id.clone(), line.last_updated);
        match by_instant.get(&k) {
            Some(kept) => {
                let text = |l: &ImportLine| l.version.map(|v| v.to_string()).unwrap_or_default();
                if text(&line) > text(kept) {
                    let loser = by_instant.insert(k, line).expect("present");
                    outcomes.insert(loser.line, duplicate(&loser));
                } else {
                    outcomes.insert(line.line, duplicate(&line));
                }
            }
            None => {
                order.push(k.clone());
                by_instant.insert(k, line);
            }
        }
    }
    let survivors: Vec<ImportLine> = order.into_iter().filter_map(|k| by_instant.remove(&k)).collect();

    // 2. Same (id, explicit version): keep the latest lastUpdated.
    let mut by_version: HashMap<(String, String, i64), usize> = HashMap::new();
    let mut keep = vec![true; survivors.len()];
    for (i, line) in survivors.iter().enumerate() {
        let Some(v) = line.version else { continue };
        let k = (line.resource_type.clone(), line.id.clone(), v);
        match by_version.get(&k).copied() {
            Some(j) if survivors[j].last_updated >= line.last_updated => keep[i] = false,
            Some(j) => {
                keep[j] = false;
                by_version.insert(k, i);
            }
            None => {
                by_version.insert(k, i);
            }
        }
    }
    let mut remaining = Vec::new();
    for (line, kept) in survivors.into_iter().zip(keep) {
        if kept {
            remaining.push(line);
        } else {
            outcomes.insert(line.line, duplicate(&line));
        }
    }

    // 3. Explicit versions of one id, newest first, must strictly decrease; negative ones only if allowed.
    let mut per_id: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, l) in remaining.iter().enumerate() {
        if l.version.is_some() {
            per_id
                .entry((l.resource_type.clone(), l.id.clone()))
                .or_default()
                .push(i);
        }
    }
    let mut rejected = vec![false; remaining.len()];
    for indices in per_id.values_mut() {
        indices.sort_by_key(|&i| std::cmp::Reverse(remaining[i].last_updated));
        let mut previous: Option<i64> = None;
        for &i in indices.iter() {
            let v = remaining[i].version.expect("explicit");
            if v < 0 {
                rejected[i] = !opts.allow_negative_versions;
                continue;
            }
            if previous.is_some_and(|p| v >= p) {
                rejected[i] = true;
            } else {
                previous = Some(v);
            }
        }
    }
    remaining
        .into_iter()
        .zip(rejected)
        .filter_map(|(line, bad)| {
            if bad {
                outcomes.insert(line.line, conflict(&line));
                None
            } else {
                Some(line)
            }
        })
        .collect()
}

impl Inner {
    /// Applies the surviving lines of one resource against what is stored (reference §6.2–6.4).
    fn merge_resource(
        &mut self,
        key: Key,
        lines: Vec<ImportLine>,
        opts: &ImportOptions,
        outcomes: &mut BTreeMap<usize, LineOutcome>,
    ) {
        let mut i = 0;
        while i < lines.len() {
            let line = &lines[i];
            let existing = self.resources.get(&key).cloned().unwrap_or_default();
            let outcome = match (line.last_updated, line.version) {
                (Some(t), Some(v)) => self.merge_explicit(&key, &existing, line, t, v),
                (Some(t), None) => {
                    // Implicit versions falling into the same gap are numbered together, so collect them.
                    let upper = existing.versions().iter().find(|x| x.last_updated > t).cloned();
                    let mut group = vec![i];
                    if let Some(upper) = &upper {
                        while let Some(next) = lines.get(i + group.len()) {
                            match (next.last_updated, next.version) {
                                (Some(nt), None) if nt < upper.last_updated => group.push(i + group.len()),
                                _ => break,
                            }
                        }
                    }
                    let results = self.merge_implicit(
                        &key,
                        &existing,
                        &group.iter().map(|&g| &lines[g]).collect::<Vec<_>>(),
                        upper.as_ref(),
                        opts,
                    );
                    for (&g, outcome) in group.iter().zip(results) {
                        outcomes.insert(lines[g].line, outcome);
                    }
                    i += group.len();
                    continue;
                }
                (None, _) => self.merge_now(&key, &existing, line, opts),
            };
            outcomes.insert(line.line, outcome);
            i += 1;
        }
    }

    fn merge_explicit(&mut self, key: &Key, existing: &Resource, line: &ImportLine, t: Millis, v: i64) -> LineOutcome {
        if let Some(same_instant) = existing.versions().iter().find(|x| x.last_updated == t) {
            return if same_instant.version_id == v && same_content(same_instant, line, v, t) {
                LineOutcome::Unchanged
            } else {
                conflict(line)
            };
        }
        if existing.versions().iter().any(|x| x.version_id == v) {
            return conflict(line);
        }
        if v >= 0 {
            // Version order must agree with time order against the neighbours.
            let positive = existing.versions().iter().filter(|x| x.version_id >= 0);
            let lower = positive.clone().rfind(|x| x.last_updated < t);
            let upper = positive.clone().find(|x| x.last_updated > t);
            if lower.is_some_and(|l| l.version_id >= v) || upper.is_some_and(|u| u.version_id <= v) {
                return conflict(line);
            }
        }
        self.store_line(key.clone(), line, v, t);
        LineOutcome::Loaded
    }

    fn merge_implicit(
        &mut self,
        key: &Key,
        existing: &Resource,
        group: &[&ImportLine],
        upper: Option<&Version>,
        opts: &ImportOptions,
    ) -> Vec<LineOutcome> {
        let mut results = Vec::new();
        let mut fresh = Vec::new();
        for line in group {
            let t = line.last_updated.expect("implicit lines have lastUpdated");
            match existing.versions().iter().find(|x| x.last_updated == t) {
                Some(same) if same_content_ignoring_meta(same, line) => results.push(Some(LineOutcome::Unchanged)),
                Some(_) => results.push(Some(conflict(line))),
                None => {
                    results.push(None);
                    fresh.push((results.len() - 1, *line, t));
                }
            }
        }
        let numbers: Vec<Option<i64>> = match upper {
            // Later than everything stored: sequential after the highest version.
            None => {
                let start = existing.next_version();
                (0..fresh.len()).map(|k| Some(start + k as i64)).collect()
            }
            // Earlier than a stored version: fit below it if the gap allows, else negative or conflict.
            Some(upper) => {
                let t0 = fresh.first().map(|f| f.2).unwrap_or(0);
                let lower = existing
                    .versions()
                    .iter()
                    .filter(|x| x.version_id >= 0 && x.last_updated < t0)
                    .map(|x| x.version_id)
                    .max()
                    .unwrap_or(0);
                let n = fresh.len() as i64;
                if upper.version_id - n > lower {
                    (0..n).map(|k| Some(upper.version_id - n + k)).collect()
                } else if opts.allow_negative_versions {
                    let lowest = existing
                        .versions()
                        .iter()
                        .map(|x| x.version_id)
                        .min()
                        .unwrap_or(0)
                        .min(0);
                    (0..n).map(|k| Some(lowest - n + k)).collect()
                } else {
                    vec![None; fresh.len()]
                }
            }
        };
        for ((slot, line, t), number) in fresh.into_iter().zip(numbers) {
            results[slot] = Some(match number {
                Some(v) => {
                    self.store_line(key.clone(), line, v, t);
                    LineOutcome::Loaded
                }
                None => conflict(line),
            });
        }
        results.into_iter().map(|r| r.expect("every line decided")).collect()
    }

    fn merge_now(&mut self, key: &Key, existing: &Resource, line: &ImportLine, opts: &ImportOptions) -> LineOutcome {
        if let Some(current) = existing.current()
            && current.deleted == line.deleted
            && same_content_ignoring_meta(current, line)
        {
            return LineOutcome::Unchanged;
        }
        let t = opts
            .now
            .max(self.last_assigned + 1)
            .max(existing.current().map_or(0, |c| c.last_updated + 1));
        self.last_assigned = self.last_assigned.max(t);
        self.store_line(key.clone(), line, existing.next_version(), t);
        LineOutcome::Loaded
    }

    fn store_line(&mut self, key: Key, line: &ImportLine, version_id: i64, t: Millis) {
        let mut body = line.body.clone();
        set_meta(&mut body, version_id, t);
        self.add(key, version_id, t, line.deleted, WriteMethod::Import, body.to_string());
    }
}

/// Stored JSON equals the line's JSON with the same meta: an identical re-import.
fn same_content(stored: &Version, line: &ImportLine, v: i64, t: Millis) -> bool {
    let mut body = line.body.clone();
    set_meta(&mut body, v, t);
    stored.deleted == line.deleted && serde_json::from_str::<Value>(&stored.body).is_ok_and(|s| s == body)
}

/// Stored JSON equals the line's JSON once versionId and lastUpdated are ignored on both sides.
fn same_content_ignoring_meta(stored: &Version, line: &ImportLine) -> bool {
    let Ok(mut s) = serde_json::from_str::<Value>(&stored.body) else {
        return false;
    };
    strip_version_meta(&mut s);
    let mut l = line.body.clone();
    strip_version_meta(&mut l);
    s == l
}

fn strip_version_meta(v: &mut Value) {
    if let Some(map) = v.as_object_mut() {
        let empty = match map.get_mut("meta") {
            Some(Value::Object(meta)) => {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                meta.is_empty()
            }
            _ => false,
        };
        if empty {
            map.remove("meta");
        }
    }
}
