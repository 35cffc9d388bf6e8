//! The shell's side of [`crate::engine::core::capacity`]: a payload refused because the destination cannot hold
//! more versions of one type on one millisecond (reference §11.1). Its export files are read, their versions
//! grouped by (type, millisecond); the largest groups are counted at the destination (which may already hold
//! some of them: a failed unit's earlier batches stay, §5.4), and the versions that cannot fit are left out of
//! new copies of the files and named in the ledger (kind `SameMillisecond`, permanent). The payload's new body
//! points at the copies. Everything is written under names fixed by the payload and its attempt, and every
//! choice is made in a fixed order, so a repeat after a crash writes the same again.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::engine::core::capacity::CapacityTrim;
use crate::engine::{Engine, EngineError};
use crate::fhir::format_instant;
use crate::ledger::{Class, Entry, Kind, State};
use crate::state::Payload;

/// (type, millisecond) groups counted at the destination per examination, largest first: each costs a count
/// (and, when over, a listing). A crowd spread thinner than this is not found, and the refusal then takes the
/// ordinary path (retried, re-exported, halted with its reason).
const GROUPS_CHECKED: usize = 100;
/// History entries per page when listing what the destination holds on one millisecond.
const PAGE: usize = 1000;

/// One exported line: where it is and which version it is.
struct Line {
    file: usize,
    /// Byte range in its file.
    start: usize,
    end: usize,
    /// 1-based among the file's non-empty lines (a unit at offset 0, as the ledger counts them: reference §11.4).
    number: u64,
    resource_type: String,
    id: String,
    version: String,
    last_updated: String,
}

impl Engine {
    /// Examines `payload` (refused for the same-millisecond capacity) and, when versions cannot fit, writes
    /// the payload's new body and names them in the ledger.
    pub async fn trim_for_capacity(
        &self,
        payload: &Payload,
        container: &str,
        now: DateTime<Utc>,
    ) -> Result<CapacityTrim, EngineError> {
        let Some(bytes) = self.blobs.get(container, &payload.blob).await? else {
            return Ok(CapacityTrim::CannotTrim(format!(
                "the payload blob {container}/{} is missing",
                payload.blob
            )));
        };
        let mut body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let urls = input_urls(&body);
        let mut files = Vec::new();
        for url in &urls {
            match self.read_blob(url).await {
                Some(b) => files.push(b),
                None => {
                    return Ok(CapacityTrim::CannotTrim(format!(
                        "the export file {} cannot be read with the tool's storage access (grant it read and write access to the export account, AZURE_IntegrationStorageUri)",
                        crate::telemetry::id_of(url)
                    )));
                }
            }
        }
        let lines = parse(&files);
        let mut groups: BTreeMap<(String, i64), Vec<usize>> = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            if let Some(ms) = millisecond(&l.last_updated) {
                groups.entry((l.resource_type.clone(), ms)).or_default().push(i);
            }
        }
        let mut ordered: Vec<_> = groups.into_iter().collect();
        ordered.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let cap = u64::from(self.settings.same_ms_capacity);
        let mut excluded: Vec<usize> = Vec::new();
        let mut described = Vec::new();
        let mut largest = String::from("the payload holds no versions with lastUpdated");
        for (n, ((resource_type, ms), members)) in ordered.iter().take(GROUPS_CHECKED).enumerate() {
            let at = DateTime::from_timestamp_millis(*ms).unwrap_or_default();
            let stored = self
                .destination
                .history_count(Some(resource_type), at, at + TimeDelta::milliseconds(1))
                .await?;
            if n == 0 {
                largest = format!(
                    "the largest: {} {resource_type} on {} in the payload, {stored} at the destination, capacity {cap}",
                    members.len(),
                    format_instant(at)
                );
            }
            if stored + members.len() as u64 <= cap {
                continue;
            }
            let held = self.versions_on(resource_type, at).await?;
            let mut new: Vec<usize> = members
                .iter()
                .copied()
                .filter(|i| !held.contains(&(lines[*i].id.clone(), lines[*i].version.clone())))
                .collect();
            let room = usize::try_from(cap.saturating_sub(held.len() as u64)).unwrap_or(usize::MAX);
            if new.len() <= room {
                continue;
            }
            // Keep each resource's newest versions first, so what is left out is history where it can be.
            new.sort_by(|a, b| {
                let (a, b) = (&lines[*a], &lines[*b]);
                version_number(&b.version)
                    .cmp(&version_number(&a.version))
                    .then(a.id.cmp(&b.id))
                    .then(a.version.cmp(&b.version))
            });
            let left_out = new.split_off(room);
            described.push(format!(
                "{resource_type} on {}: {} in the payload, {} at the destination, {} left out",
                format_instant(at),
                members.len(),
                held.len(),
                left_out.len()
            ));
            excluded.extend(left_out);
        }
        if excluded.is_empty() {
            return Ok(CapacityTrim::NothingOver(largest));
        }
        let out: HashSet<usize> = excluded.iter().copied().collect();
        let attempt = payload.attempt;
        // New copies of the files that lose lines, next to them (on the account the destination imports from).
        let mut replaced: BTreeMap<usize, (String, Option<String>)> = BTreeMap::new();
        for (f, url) in urls.iter().enumerate() {
            if !lines.iter().enumerate().any(|(i, l)| l.file == f && out.contains(&i)) {
                continue;
            }
            let Some((store, c, name)) = url::Url::parse(url).ok().and_then(|u| self.locate_blob(&u)) else {
                return Ok(CapacityTrim::CannotTrim(format!(
                    "the export account of {} is not one the tool can write to (AZURE_IntegrationStorageUri)",
                    crate::telemetry::id_of(url)
                )));
            };
            let mut kept = Vec::new();
            for (i, l) in lines.iter().enumerate().filter(|(_, l)| l.file == f) {
                if !out.contains(&i) {
                    kept.extend_from_slice(&files[f][l.start..l.end]);
                    kept.push(b'\n');
                }
            }
            let copy = format!("{}.capacity-{attempt}.ndjson", name.trim_end_matches(".ndjson"));
            store.put(&c, &copy, kept).await?;
            let etag = store.etag(&c, &copy).await?;
            replaced.insert(f, (store.blob_url(&c, &copy), etag));
        }
        self.ledger.ensure_table().await?;
        for i in &excluded {
            let entry = left_out_entry(payload.seq, &lines[*i], &urls[lines[*i].file], cap, now);
            self.upsert(entry, now).await?;
        }
        rewrite_inputs(&mut body, &replaced);
        let blob = format!("{}.capacity-{attempt}", payload.blob.trim_end_matches(".json"));
        self.blobs.put(container, &blob, body.to_string().into_bytes()).await?;
        Ok(CapacityTrim::Trimmed {
            excluded: excluded.len() as u64,
            kept_lines: (lines.len() - excluded.len()) as i64,
            blob,
            groups: described,
        })
    }

    /// The (id, versionId) pairs the destination holds of one type on one millisecond, every page.
    async fn versions_on(
        &self,
        resource_type: &str,
        at: DateTime<Utc>,
    ) -> Result<HashSet<(String, String)>, EngineError> {
        let enc = crate::storage::encode_component;
        let first = format!(
            "{}/_history?_since={}&_before={}&_count={PAGE}",
            enc(resource_type),
            enc(&format_instant(at)),
            enc(&format_instant(at + TimeDelta::milliseconds(1)))
        );
        let mut held = HashSet::new();
        let mut next = Some(self.destination.url(&first)?);
        while let Some(url) = next {
            let page = self.destination.page(&url).await?;
            for e in page["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                held.insert((text(&r["id"]), text(&r["meta"]["versionId"])));
            }
            next = self.destination.next_page(&page)?;
        }
        Ok(held)
    }
}

/// The input URLs of an `$import` body, in order.
fn input_urls(body: &Value) -> Vec<String> {
    body["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "input")
        .filter_map(|p| {
            p["part"].as_array()?.iter().find(|part| part["name"] == "url")?["valueUri"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Points the body's inputs at the copies (with their ETags when the originals had one).
fn rewrite_inputs(body: &mut Value, replaced: &BTreeMap<usize, (String, Option<String>)>) {
    let Some(params) = body["parameter"].as_array_mut() else {
        return;
    };
    for (f, p) in params.iter_mut().filter(|p| p["name"] == "input").enumerate() {
        let Some((url, etag)) = replaced.get(&f) else { continue };
        let Some(parts) = p["part"].as_array_mut() else {
            continue;
        };
        let had_etag = parts.iter().any(|part| part["name"] == "etag");
        parts.retain(|part| part["name"] != "etag");
        for part in parts.iter_mut().filter(|part| part["name"] == "url") {
            part["valueUri"] = Value::String(url.clone());
        }
        if had_etag && let Some(etag) = etag {
            parts.push(serde_json::json!({ "name": "etag", "valueString": etag }));
        }
    }
}

/// Every non-empty line of every file, numbered as the ledger numbers lines from a file's start.
fn parse(files: &[Vec<u8>]) -> Vec<Line> {
    let mut lines = Vec::new();
    for (f, bytes) in files.iter().enumerate() {
        let mut start = 0;
        let mut number = 0;
        while start < bytes.len() {
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |p| start + p);
            let mut content_end = end;
            if end < bytes.len() && content_end > start && bytes[content_end - 1] == b'\r' {
                content_end -= 1;
            }
            if content_end > start {
                number += 1;
                let (resource_type, id, version, last_updated) =
                    crate::ledger::locate::identity(&bytes[start..content_end]).unwrap_or_default();
                lines.push(Line {
                    file: f,
                    start,
                    end: content_end,
                    number,
                    resource_type,
                    id,
                    version,
                    last_updated,
                });
            }
            start = end + 1;
        }
    }
    lines
}

/// The millisecond the server keeps of a lastUpdated (it truncates: reference §6.1).
fn millisecond(last_updated: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(last_updated)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn version_number(v: &str) -> i64 {
    v.parse().unwrap_or(i64::MIN)
}

fn left_out_entry(window: i64, l: &Line, input_url: &str, cap: u64, now: DateTime<Utc>) -> Entry {
    Entry {
        key: Entry::key_of(&l.resource_type, &l.id, &l.version),
        window,
        resource_type: l.resource_type.clone(),
        id: l.id.clone(),
        version_id: l.version.clone(),
        last_updated: l.last_updated.clone(),
        kind: Kind::SameMillisecond,
        class: Class::Permanent,
        state: State::Open,
        message: format!(
            "not imported: the destination holds at most {cap} versions of one resource type on one millisecond (its row ids are millisecond * 80000 + a sequence), and this millisecond is full; accept the loss with a reason, or write the resource through the REST API (it then gets a new lastUpdated)"
        ),
        // Not from an error file: a repeat of the same examination finds its own entry and changes nothing.
        error_file: String::new(),
        input_file: input_url.to_string(),
        offset: 0,
        line: l.number,
        first_seen: now,
        last_seen: now,
        attempts: 1,
        resolution: String::new(),
        retry_import: String::new(),
        next_attempt: None,
        unnamed_lines: 0,
        etag: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_as_the_ledger_reads_them() {
        let files = vec![b"{\"id\":\"a\"}\r\n\r\n{\"id\":\"b\"}\n{\"id\":\"c\"}".to_vec()];
        let lines = parse(&files);
        let ids: Vec<_> = lines.iter().map(|l| (l.id.as_str(), l.number)).collect();
        assert_eq!(ids, [("a", 1), ("b", 2), ("c", 3)]);
        for l in &lines {
            let read = crate::ledger::locate::input_line(&files[0], 0, l.number).unwrap();
            assert_eq!(read, &files[0][l.start..l.end]);
        }
    }

    #[test]
    fn a_sub_millisecond_instant_falls_on_its_millisecond() {
        assert_eq!(
            millisecond("2026-01-01T00:00:00.0019999Z"),
            millisecond("2026-01-01T00:00:00.001Z")
        );
        assert_eq!(millisecond("not a time"), None);
    }

    #[test]
    fn inputs_are_pointed_at_their_copies_keeping_the_etag_rule() {
        let mut body = serde_json::json!({ "parameter": [
            { "name": "mode", "valueString": "IncrementalLoad" },
            { "name": "input", "part": [{ "name": "type", "valueString": "Patient" }, { "name": "url", "valueUri": "https://a/c/P-1.ndjson" }, { "name": "etag", "valueString": "\"1\"" }] },
            { "name": "input", "part": [{ "name": "type", "valueString": "Patient" }, { "name": "url", "valueUri": "https://a/c/P-2.ndjson" }] },
        ]});
        assert_eq!(input_urls(&body), ["https://a/c/P-1.ndjson", "https://a/c/P-2.ndjson"]);
        let mut replaced = BTreeMap::new();
        replaced.insert(
            0,
            (
                "https://a/c/P-1.capacity-1.ndjson".to_string(),
                Some("\"2\"".to_string()),
            ),
        );
        replaced.insert(
            1,
            (
                "https://a/c/P-2.capacity-1.ndjson".to_string(),
                Some("\"3\"".to_string()),
            ),
        );
        rewrite_inputs(&mut body, &replaced);
        assert_eq!(
            input_urls(&body),
            ["https://a/c/P-1.capacity-1.ndjson", "https://a/c/P-2.capacity-1.ndjson"]
        );
        assert_eq!(body["parameter"][1]["part"][2]["valueString"], "\"2\"");
        assert_eq!(
            body["parameter"][2]["part"].as_array().unwrap().len(),
            2,
            "no ETag where the original had none"
        );
    }
}
