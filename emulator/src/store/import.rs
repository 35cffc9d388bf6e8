//! Incremental `$import` merge rules (reference §6): which NDJSON lines become new versions, which are no-ops,
//! and which are reported as duplicates or conflicts. Everything here works on one batch of one processing
//! unit, under the store lock, so a batch is applied atomically.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::{DELETED_STATE_URL, Inner, Key, Resource, Store, Version, WriteMethod, set_meta, valid_id};
use crate::time::{Millis, Precise, SubMs, parse_instant_precise};

/// Lines further in the future than this are refused.
const FUTURE_TOLERANCE_MS: Millis = 10_000;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub allow_negative_versions: bool,
    /// The input's `type` part, if it had one: lines of other types are errors.
    pub input_type: Option<String>,
    pub now: Millis,
    /// At most this many rows of one resource type on one millisecond (reference §11.1); `None`: no limit (a
    /// Cosmos DB source, or seeding).
    pub same_ms_capacity: Option<u32>,
}

impl ImportOptions {
    /// Options for seeding a store: negative versions allowed, no type check, no capacity limit.
    pub fn seeding(now: Millis) -> ImportOptions {
        ImportOptions {
            allow_negative_versions: true,
            input_type: None,
            now,
            same_ms_capacity: None,
        }
    }
}

/// A batch would put more rows of one type on one millisecond than the surrogate ids allow: the SQL merge runs out
/// of retries and the whole processing unit fails (reference §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameMillisecondFull {
    pub resource_type: String,
    pub ms: Millis,
}

/// One parsed NDJSON line.
#[derive(Debug, Clone)]
pub struct ImportLine {
    /// 1-based index among the unit's non-empty lines.
    pub line: usize,
    pub resource_type: String,
    pub id: String,
    pub last_updated: Option<Millis>,
    /// 100-ns ticks within `last_updated`'s millisecond (kept by a precise, aapi store only).
    pub sub_ms: SubMs,
    /// Kept only when lastUpdated is present and the versionId parses as a 32-bit integer.
    pub version: Option<i64>,
    /// The version as the server's de-duplication compares it: the text sent when kept, else `"1"`
    /// (`FirelyImportResourceParser` sets `"1"` when it does not keep the version).
    pub version_text: String,
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
    let mut last_updated: Option<Precise> = None;
    let mut version_text = None;
    let mut deleted = false;
    if let Some(Value::Object(meta)) = map.get_mut("meta") {
        last_updated = match meta.get("lastUpdated") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(parse_instant_precise)
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
    if last_updated.is_some_and(|t| t.0 > opts.now + FUTURE_TOLERANCE_MS) {
        return Err("LastUpdated in the resource cannot be in the future.".into());
    }
    // An explicit version counts only together with lastUpdated, and only if it is a 32-bit integer.
    let kept = last_updated
        .and(version_text)
        .and_then(|v| v.parse::<i32>().ok().map(|n| (i64::from(n), v)));
    let (version, version_text) = match kept {
        Some((n, text)) => (Some(n), text),
        None => (None, "1".to_string()),
    };
    Ok(ImportLine {
        line,
        resource_type,
        id,
        last_updated: last_updated.map(|t| t.0),
        sub_ms: last_updated.map_or(0, |t| t.1),
        version,
        version_text,
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

impl ImportLine {
    /// The instant the line carries, at the store's precision.
    fn at(&self) -> Option<Precise> {
        self.last_updated.map(|t| (t, self.sub_ms))
    }
}

impl Store {
    /// Applies one batch of parsed lines, without a capacity limit. Returns an outcome per line, keyed by its
    /// line number.
    pub fn import_batch(&self, lines: Vec<ImportLine>, opts: &ImportOptions) -> BTreeMap<usize, LineOutcome> {
        let opts = ImportOptions {
            same_ms_capacity: None,
            ..opts.clone()
        };
        self.try_import_batch(lines, &opts).unwrap_or_default()
    }

    /// Applies one batch of parsed lines as one transaction, in the order the SQL server's
    /// `ImportResourcesAsync` takes them (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Storage/SqlServerFhirDataStore.cs`):
    /// de-duplication on (id, lastUpdated), the match against stored versions on the same instant, then versioned
    /// lines, then unversioned ones. If the batch would exceed `opts.same_ms_capacity` rows of one type on one
    /// millisecond, nothing of it is kept and the batch fails (reference §11.1).
    pub fn try_import_batch(
        &self,
        mut lines: Vec<ImportLine>,
        opts: &ImportOptions,
    ) -> Result<BTreeMap<usize, LineOutcome>, SameMillisecondFull> {
        let mut outcomes = BTreeMap::new();
        let mut inner = self.lock();
        if !inner.precise {
            // SQL keeps milliseconds: versions a fraction of a millisecond apart collapse (reference §11.2).
            for l in &mut lines {
                l.sub_ms = 0;
            }
        }
        let survivors = dedup_instants(lines, &mut outcomes);
        let survivors = inner.match_stored_instants(survivors, &mut outcomes);
        let survivors = dedup_versions(survivors, opts, &mut outcomes);
        let mut by_resource: BTreeMap<(String, String), Vec<ImportLine>> = BTreeMap::new();
        for line in survivors {
            by_resource
                .entry((line.resource_type.clone(), line.id.clone()))
                .or_default()
                .push(line);
        }
        inner.begin();
        for ((resource_type, id), mut lines) in by_resource {
            // Versioned lines merge first, then unversioned ones with lastUpdated, then those without ("now"); each
            // group oldest first.
            lines.sort_by_key(|l| (l.version.is_none(), l.last_updated.is_none(), l.at(), l.line));
            let key = inner.key(&resource_type, &id);
            inner.merge_resource(key, lines, opts, &mut outcomes);
        }
        if let Some(cap) = opts.same_ms_capacity {
            let full = inner
                .journal
                .iter()
                .flatten()
                .find(|(key, _, ms)| inner.rows_at(&key.0, *ms) > cap)
                .map(|(key, _, ms)| SameMillisecondFull {
                    resource_type: key.0.to_string(),
                    ms: *ms,
                });
            if let Some(full) = full {
                inner.rollback();
                return Err(full);
            }
        }
        inner.commit();
        Ok(outcomes)
    }
}

/// The server's in-batch de-duplication on (id, lastUpdated): per group the highest version **compared as text**
/// (`"9"` beats `"10"`) is kept, and an equal text keeps the earlier line (a stable descending sort); the losers
/// are neither loaded nor conflicts, so they come back as duplicates
/// (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Storage/SqlServerFhirDataStore.cs`, `ImportResourcesAsync`;
/// reference §11.2). Lines without lastUpdated form one group per id.
fn dedup_instants(lines: Vec<ImportLine>, outcomes: &mut BTreeMap<usize, LineOutcome>) -> Vec<ImportLine> {
    let mut kept: HashMap<(String, String, Option<Precise>), ImportLine> = HashMap::new();
    let mut order = Vec::new();
    for line in lines {
        let k = (line.resource_type.clone(), line.id.clone(), line.at());
        match kept.get(&k) {
            Some(winner) if line.version_text.as_bytes() > winner.version_text.as_bytes() => {
                let loser = kept.insert(k, line).expect("present");
                outcomes.insert(loser.line, duplicate(&loser));
            }
            Some(_) => {
                outcomes.insert(line.line, duplicate(&line));
            }
            None => {
                order.push(k.clone());
                kept.insert(k, line);
            }
        }
    }
    order.into_iter().filter_map(|k| kept.remove(&k)).collect()
}

/// Versioned lines: one per (id, version), the latest lastUpdated winning (losers are duplicates); then, per id
/// from the newest lastUpdated down, each version must be below the one before it — compared with the previous
/// line even when that one was refused — and negative versions only with `allowNegativeVersions`
/// (`RemoveVersionOutOfSyncWithLastUpdatedConflicts` in `SqlServerFhirDataStore.cs`; reference §11.3).
fn dedup_versions(
    lines: Vec<ImportLine>,
    opts: &ImportOptions,
    outcomes: &mut BTreeMap<usize, LineOutcome>,
) -> Vec<ImportLine> {
    let mut by_version: HashMap<(String, String, i64), usize> = HashMap::new();
    let mut keep = vec![true; lines.len()];
    for (i, line) in lines.iter().enumerate() {
        let Some(v) = line.version else { continue };
        let k = (line.resource_type.clone(), line.id.clone(), v);
        match by_version.get(&k).copied() {
            Some(j) if lines[j].at() >= line.at() => keep[i] = false,
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
    for (line, kept) in lines.into_iter().zip(keep) {
        if kept {
            remaining.push(line);
        } else {
            outcomes.insert(line.line, duplicate(&line));
        }
    }
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
        indices.sort_by_key(|&i| std::cmp::Reverse(remaining[i].at()));
        let mut previous: Option<i64> = None;
        for &i in indices.iter() {
            let v = remaining[i].version.expect("explicit");
            if v < 0 {
                rejected[i] = !opts.allow_negative_versions;
                continue;
            }
            rejected[i] = previous.is_some_and(|p| v >= p);
            previous = Some(v);
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
        // Versioned lines are checked against the rows stored before the batch (the server reads them once).
        let before = self.resources.get(&key).cloned().unwrap_or_default();
        let mut i = 0;
        while i < lines.len() {
            let line = &lines[i];
            let existing = self.resources.get(&key).cloned().unwrap_or_default();
            let outcome = match (line.last_updated, line.version) {
                (Some(_), Some(v)) => self.merge_explicit(&key, &before, line, line.at().expect("has lastUpdated"), v),
                (Some(_), None) => {
                    // Implicit versions falling into the same gap are numbered together, so collect them.
                    let t = line.at().expect("has lastUpdated");
                    let upper = existing.versions().iter().find(|x| x.precise() > t).cloned();
                    let mut group = vec![i];
                    if let Some(upper) = &upper {
                        while let Some(next) = lines.get(i + group.len()) {
                            match (next.at(), next.version) {
                                (Some(nt), None) if nt < upper.precise() => group.push(i + group.len()),
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

    /// Lines with lastUpdated whose instant is already stored for the id: the same content (and the same version,
    /// when one is given) is success without a write, anything else a conflict ("Dedup on lastUpdated against
    /// database" in `SqlServerFhirDataStore.cs`). Returns the other lines.
    fn match_stored_instants(
        &self,
        lines: Vec<ImportLine>,
        outcomes: &mut BTreeMap<usize, LineOutcome>,
    ) -> Vec<ImportLine> {
        let mut rest = Vec::new();
        for line in lines {
            let stored = line.at().and_then(|at| {
                self.get(&line.resource_type, &line.id)
                    .and_then(|r| r.versions().iter().find(|x| x.precise() == at))
            });
            match stored {
                Some(s) => {
                    let same = line.version.is_none_or(|v| v == s.version_id)
                        && s.deleted == line.deleted
                        && same_content_ignoring_meta(s, &line);
                    outcomes.insert(line.line, if same { LineOutcome::Unchanged } else { conflict(&line) });
                }
                None => rest.push(line),
            }
        }
        rest
    }

    /// An explicit version (`MergeVersioned` in `SqlServerFhirDataStore.cs`, reference §11.3): a version already
    /// stored is a conflict; version 0 is neither loaded nor a conflict (it is reported as a duplicate); negative
    /// versions are history; a positive version is checked against the **current** version only — newer in time
    /// must not have a lower number, older in time not a higher one — so an older version is stored as history
    /// even where it falls between two stored history versions out of order.
    fn merge_explicit(
        &mut self,
        key: &Key,
        existing: &Resource,
        line: &ImportLine,
        at: Precise,
        v: i64,
    ) -> LineOutcome {
        if existing.versions().iter().any(|x| x.version_id == v) {
            return conflict(line);
        }
        if v == 0 {
            return duplicate(line);
        }
        if v > 0
            && let Some(current) = existing.current()
            && ((current.precise() > at && current.version_id < v)
                || (current.precise() < at && current.version_id > v))
        {
            return conflict(line);
        }
        self.store_line(key.clone(), line, v, at);
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
            let t = line.at().expect("implicit lines have lastUpdated");
            match existing.versions().iter().find(|x| x.precise() == t) {
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
                let t0 = fresh.first().map_or((0, 0), |f| f.2);
                let lower = existing
                    .versions()
                    .iter()
                    .filter(|x| x.version_id >= 0 && x.precise() < t0)
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
        // Server time, which many writes may share (reference §11.2); never before the current version.
        let t = (
            opts.now
                .max(self.last_assigned.0)
                .max(existing.current().map_or(0, |c| c.last_updated)),
            0,
        );
        self.last_assigned = self.last_assigned.max(t);
        self.store_line(key.clone(), line, existing.next_version(), t);
        LineOutcome::Loaded
    }

    fn store_line(&mut self, key: Key, line: &ImportLine, version_id: i64, t: Precise) {
        let mut body = line.body.clone();
        set_meta(&mut body, version_id, t);
        self.add(key, version_id, t, line.deleted, WriteMethod::Import, body.to_string());
    }
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
