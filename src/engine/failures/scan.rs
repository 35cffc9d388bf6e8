//! The shell's side of [`crate::engine::core::scan`]: before a payload's first POST, its export files are read
//! (from where the row says the last action stopped, up to a bounded number of bytes per action), and where
//! several versions of one resource share one millisecond, the numerically highest is kept and the others are
//! left out of a copy of the file and named in the ledger. The destination would keep the one that sorts
//! highest as text (reference §11.2), so its current version could be an older one.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::files::{Line, input_urls, left_out_entry, millisecond, parse, rewrite_inputs, version_number};
use crate::engine::core::scan::Scanned;
use crate::engine::{Engine, EngineError};
use crate::state::Payload;

/// Bytes of export files after which a scan action stops reading (it reads at least one file, and whole files): a
/// share that fits well inside a timer's run, so a large payload is scanned over several actions and ticks. Eight
/// of the server's 64 MB files.
pub(crate) const BYTES_PER_ACTION: usize = 512 * 1024 * 1024;

impl Engine {
    pub async fn scan_payload(
        &self,
        payload: &Payload,
        container: &str,
        tag: &str,
        now: DateTime<Utc>,
    ) -> Result<Scanned, EngineError> {
        let Some(bytes) = self.blobs.get(container, &payload.blob).await? else {
            // The row is written after its body, so this is a body removed by hand: the POST will say so.
            return Ok(finished(payload, "the payload's body is missing; not scanned".into()));
        };
        let mut body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let urls = input_urls(&body);
        let first = usize::try_from(payload.scanned_files.max(0)).unwrap_or(usize::MAX);
        // This action's share of the files, read together: versions of one resource in two of them are seen
        // together (a resource's versions can land in different files of one export: reference §3.2).
        let mut read = 0usize;
        let mut next = first;
        let mut indexes: Vec<usize> = Vec::new();
        let mut files: Vec<Vec<u8>> = Vec::new();
        let mut notes = Vec::new();
        while next < urls.len() && (next == first || read < self.timing.scan_bytes_per_action) {
            // A read that may pass fails the action (nothing written yet; the next tick scans again), so a file is
            // never imported unscanned for a moment's failure.
            match self.read_blob(&urls[next]).await? {
                Some(file) => {
                    read += file.len();
                    indexes.push(next);
                    files.push(file);
                }
                None => notes.push(format!(
                    "{} cannot be read with the tool's storage access, so it is imported unscanned (versions of one resource on one millisecond in it are named by the import's error file instead)",
                    crate::telemetry::id_of(&urls[next])
                )),
            }
            next += 1;
        }
        let lines = parse(&files);
        let losers = same_millisecond_losers(&lines);
        let mut replaced = BTreeMap::new();
        let mut left_out = 0u64;
        let out: HashSet<usize> = losers.iter().map(|(i, _)| *i).collect();
        for (f, (index, file)) in indexes.iter().zip(&files).enumerate() {
            let mine: Vec<&(usize, String)> = losers.iter().filter(|(i, _)| lines[*i].file == f).collect();
            if mine.is_empty() {
                continue;
            }
            let url = &urls[*index];
            let Some(copy) = self
                .write_copy(url, f, file, &lines, &out, &format!("scanned-{tag}"))
                .await?
            else {
                notes.push(format!(
                    "{} holds versions of one resource on one millisecond, but the tool cannot write a copy next to it (grant its identity 'Storage Blob Data Contributor' on the export account, AZURE_IntegrationStorageUri), so it is imported as is and the import's error file names the version it refuses",
                    crate::telemetry::id_of(url)
                ));
                continue;
            };
            self.ledger.ensure_table().await?;
            for (i, kept) in mine {
                let l = &lines[*i];
                let message = format!(
                    "not imported: version {} shares its millisecond ({}) with version {kept} of the same resource, and the destination holds one version per resource and millisecond; the tool imports version {kept} (the later), so this version is not at the destination: accept the loss with a reason",
                    l.version, l.last_updated
                );
                self.upsert(left_out_entry(payload.seq, l, url, message, now), now)
                    .await?;
                left_out += 1;
            }
            replaced.insert(*index, copy);
        }
        let mut blob = payload.blob.clone();
        if !replaced.is_empty() {
            rewrite_inputs(&mut body, &replaced);
            blob = format!("{}.scanned-{next}-{tag}", payload.blob.trim_end_matches(".json"));
            self.blobs.put(container, &blob, body.to_string().into_bytes()).await?;
        }
        if left_out > 0 {
            notes.insert(
                0,
                format!(
                    "{left_out} version(s) share a millisecond with a later version of the same resource; the later ones are imported, these are named in the failure ledger (kind SameMillisecond)"
                ),
            );
        }
        Ok(Scanned {
            files: next as i64,
            done: next >= urls.len(),
            blob,
            left_out,
            note: notes.join("; "),
        })
    }
}

fn finished(payload: &Payload, note: String) -> Scanned {
    Scanned {
        files: payload.scanned_files,
        done: true,
        blob: payload.blob.clone(),
        left_out: 0,
        note,
    }
}

/// The lines to leave out, each with the version kept in its place: of the distinct versions of one resource
/// on one millisecond, all but the numerically highest (a repeated identical version is not a loser: the
/// server imports it once).
pub(crate) fn same_millisecond_losers(lines: &[Line]) -> Vec<(usize, String)> {
    let mut groups: BTreeMap<(&str, &str, i64), Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if l.id.is_empty() || l.version.is_empty() {
            continue;
        }
        if let Some(ms) = millisecond(&l.last_updated) {
            groups.entry((&l.resource_type, &l.id, ms)).or_default().push(i);
        }
    }
    let mut losers = Vec::new();
    for members in groups.values().filter(|m| m.len() > 1) {
        let Some(top) = members
            .iter()
            .map(|i| &lines[*i].version)
            .max_by_key(|v| version_number(v))
        else {
            continue;
        };
        losers.extend(
            members
                .iter()
                .filter(|i| lines[**i].version != *top)
                .map(|i| (*i, top.clone())),
        );
    }
    losers.sort();
    losers
}

#[cfg(test)]
mod tests {
    use super::super::files::SERVER_FILE_BYTES;
    use super::*;

    /// The defaults are set by the server's export file size: a scan action reads several whole files (fewer
    /// ticks per payload), and the capacity trim holds a payload of many (a smaller bound would halt real
    /// migrations whose windows export more than it holds, naming AZURE_ChunkLimit for no reason).
    #[test]
    fn the_default_byte_bounds_hold_many_of_the_servers_export_files() {
        let timing = crate::engine::Timing::default();
        assert!(timing.scan_bytes_per_action >= 4 * SERVER_FILE_BYTES);
        assert!(timing.capacity_bytes_examined >= 8 * SERVER_FILE_BYTES);
        assert!(timing.capacity_bytes_examined >= timing.scan_bytes_per_action);
    }

    #[test]
    fn of_versions_on_one_millisecond_the_numerically_highest_is_kept() {
        let line = |id: &str, v: &str, at: &str| {
            format!(r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"{v}","lastUpdated":"{at}"}}}}"#)
        };
        let file = [
            line("a", "8", "2026-01-01T00:00:00.001Z"),
            // The higher version first: the one kept is the numerically highest, not the last seen.
            line("a", "10", "2026-01-01T00:00:00.0025678Z"),
            line("a", "9", "2026-01-01T00:00:00.0021234Z"),
            // The same version twice is imported once: not a loser.
            line("b", "1", "2026-01-01T00:00:00.002Z"),
            line("b", "1", "2026-01-01T00:00:00.002Z"),
            // Another resource on the same millisecond: not a group with a.
            line("c", "3", "2026-01-01T00:00:00.002Z"),
            // A line without a version or an id is not judged (the import names what is wrong with it).
            line("d", "", "2026-01-01T00:00:00.003Z"),
            line("d", "4", "2026-01-01T00:00:00.003Z"),
            line("", "5", "2026-01-01T00:00:00.003Z"),
            line("", "6", "2026-01-01T00:00:00.003Z"),
        ]
        .join("\n");
        let lines = parse(&[file.into_bytes()]);
        let losers: Vec<_> = same_millisecond_losers(&lines)
            .into_iter()
            .map(|(i, kept)| (lines[i].id.clone(), lines[i].version.clone(), kept))
            .collect();
        assert_eq!(losers, [("a".to_string(), "9".to_string(), "10".to_string())]);
    }
}
