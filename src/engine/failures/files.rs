//! Export files as the tool reads and rewrites them: each non-empty line with the version it holds, numbered
//! as the failure ledger counts lines (reference §11.4), and copies without some lines, written next to the
//! originals (on the account the destination imports from) under names fixed by the caller, so a repeat after
//! a crash writes the same again.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::engine::{Engine, EngineError};
use crate::ledger::{Entry, Kind};

impl Engine {
    /// Writes a copy of `file` (read from `url`) without the lines in `out`, named after the original with
    /// `suffix`; its URL and ETag, or `None` when the tool cannot write to the file's account (unknown to it,
    /// or refusing it: read access only).
    pub(super) async fn write_copy(
        &self,
        url: &str,
        f: usize,
        file: &[u8],
        lines: &[Line],
        out: &HashSet<usize>,
        suffix: &str,
    ) -> Result<Option<(String, Option<String>)>, EngineError> {
        let Some((store, c, name)) = url::Url::parse(url).ok().and_then(|u| self.locate_blob(&u)) else {
            return Ok(None);
        };
        let mut kept = Vec::new();
        for (i, l) in lines.iter().enumerate().filter(|(_, l)| l.file == f) {
            if !out.contains(&i) {
                kept.extend_from_slice(&file[l.start..l.end]);
                kept.push(b'\n');
            }
        }
        let copy = format!("{}.{suffix}.ndjson", name.trim_end_matches(".ndjson"));
        match store.put(&c, &copy, kept).await {
            Ok(()) => {}
            // Read access only: the caller goes on without the copy, and says what to grant.
            Err(crate::storage::blob::BlobError::Service { status: 401 | 403, .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let etag = store.etag(&c, &copy).await?;
        Ok(Some((store.blob_url(&c, &copy), etag)))
    }
}

/// One exported line: where it is and which version it is.
pub(crate) struct Line {
    pub file: usize,
    /// Byte range in its file.
    pub start: usize,
    pub end: usize,
    /// 1-based among the file's non-empty lines (a unit at offset 0, as the ledger counts them: reference §11.4).
    pub number: u64,
    pub resource_type: String,
    pub id: String,
    pub version: String,
    pub last_updated: String,
}

/// The input URLs of an `$import` body, in order.
pub(crate) fn input_urls(body: &Value) -> Vec<String> {
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
pub(super) fn rewrite_inputs(body: &mut Value, replaced: &BTreeMap<usize, (String, Option<String>)>) {
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
pub(crate) fn parse(files: &[Vec<u8>]) -> Vec<Line> {
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
pub(crate) fn millisecond(last_updated: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(last_updated)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The size at which the server starts a new export file (fhir-server `ExportJobConfiguration.RollingFileSizeInMB`,
/// 64 MB by default), what the tool's byte bounds are measured against. Approximate: the server closes a file at
/// the end of the search page (up to `MaximumNumberOfResourcesPerQuery`, 10,000 resources) that takes it past
/// the size (`ExportFileManager.CommitFullFiles`), so files are often smaller, and larger by up to one page.
#[cfg(test)]
pub(crate) const SERVER_FILE_BYTES: usize = 64 * 1024 * 1024;

pub(crate) fn version_number(v: &str) -> i64 {
    v.parse().unwrap_or(i64::MIN)
}

/// A ledger entry for an exported line the tool left out of an import (kind `SameMillisecond`, permanent).
pub(crate) fn left_out_entry(window: i64, l: &Line, input_url: &str, message: String, now: DateTime<Utc>) -> Entry {
    Entry {
        resource_type: l.resource_type.clone(),
        id: l.id.clone(),
        version_id: l.version.clone(),
        last_updated: l.last_updated.clone(),
        // Not from an error file: a repeat of the same examination finds its own entry and changes nothing.
        error_file: String::new(),
        input_file: input_url.to_string(),
        line: l.number,
        ..Entry::open(
            Entry::key_of(&l.resource_type, &l.id, &l.version),
            window,
            Kind::SameMillisecond,
            message,
            now,
        )
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
        // A file that starts with an empty line, and ends with a carriage return no line feed follows (content,
        // not a line ending): the ranges are still the ledger's.
        let files = vec![b"\n{\"id\":\"d\"}\r\n{\"id\":\"e\"}\r".to_vec()];
        let lines = parse(&files);
        let ids: Vec<_> = lines.iter().map(|l| (l.id.as_str(), l.number)).collect();
        assert_eq!(ids, [("d", 1), ("e", 2)]);
        for l in &lines {
            let read = crate::ledger::locate::input_line(&files[0], 0, l.number).unwrap();
            assert_eq!(read, &files[0][l.start..l.end]);
        }
        assert_eq!(lines[1].end, files[0].len());
    }

    /// A version the tool leaves out of an import is named in the ledger by its identity and where it was
    /// exported, permanent, with no error file (a repeat of the same examination finds its own entry).
    #[test]
    fn a_left_out_version_is_named_by_what_it_is_and_where_it_was() {
        let files = vec![b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"meta\":{\"versionId\":\"9\",\"lastUpdated\":\"2026-01-01T00:00:00.002Z\"}}".to_vec()];
        let lines = parse(&files);
        let now = Utc::now();
        let e = left_out_entry(4, &lines[0], "https://a/c/P-1.ndjson", "why".into(), now);
        assert_eq!(
            (
                e.key.as_str(),
                e.resource_type.as_str(),
                e.id.as_str(),
                e.version_id.as_str()
            ),
            ("Patient|a|9", "Patient", "a", "9")
        );
        assert_eq!(
            (e.last_updated.as_str(), e.input_file.as_str(), e.line, e.window),
            ("2026-01-01T00:00:00.002Z", "https://a/c/P-1.ndjson", 1, 4)
        );
        assert_eq!(
            (e.kind, e.class, e.state),
            (
                Kind::SameMillisecond,
                crate::ledger::Class::Permanent,
                crate::ledger::State::Open
            )
        );
        assert!(e.error_file.is_empty() && e.message == "why");
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
