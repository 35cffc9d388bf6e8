//! What the simulated destination does with an import's versions, after the server (reference §11.1, §11.2,
//! §6.2): the same-millisecond capacity per (type, ms) counting what it holds (units that fit keep their data,
//! and the job fails); the in-batch de-duplication on (id, ms) that keeps the version sorting highest **as
//! text**; and a version on a millisecond where the destination already holds another version of the resource
//! is a conflict. Refused versions go to an error file the ledger's stand-in reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::world::{Version, World};
use crate::fhir::wire::{ImportErrorFile, ImportOutput, ImportResult};

const IDS: &str = "Unable to generate internal IDs. If the lastUpdated meta element is provided as input, reduce the number of resources with the same up to millisecond lastUpdated below 10,000.";

impl World {
    /// A file's blob ETag: fixed by its URL (every file is written once).
    pub fn etag_of(url: &str) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in url.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("\"0x{h:016X}\"")
    }

    /// A file's ETag now: a file written again (a retry import's, under the same name) has a new one, as Blob
    /// storage gives every write.
    pub fn etag_now(&self, url: &str) -> String {
        match self.writes.get(url) {
            Some(n) if *n > 1 => Self::etag_of(&format!("{url}#{n}")),
            _ => Self::etag_of(url),
        }
    }

    /// Whether an input names an ETag other than its file's.
    pub(super) fn etag_mismatch(&self, body: &serde_json::Value) -> bool {
        body["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "input")
            .any(|p| {
                let part = |name: &str| {
                    p["part"]
                        .as_array()
                        .and_then(|ps| ps.iter().find(|x| x["name"] == name))
                        .map(|x| {
                            x["valueUri"]
                                .as_str()
                                .or(x["valueString"].as_str())
                                .unwrap_or_default()
                                .to_string()
                        })
                };
                matches!((part("url"), part("etag")), (Some(url), Some(etag)) if etag != self.etag_now(&url))
            })
    }

    /// Applies import `id` of `files`; the server's reason when the job fails.
    pub(super) fn apply_import(&mut self, id: usize, files: &[(String, Vec<Version>)]) -> Result<ImportResult, String> {
        // Lines refused as they are read, before any batch is formed: lastUpdated more than 10 s ahead of the
        // destination's clock (reference §5.3).
        let limit = (self.now - self.destination_behind).timestamp_millis() + 10_000;
        let future: BTreeSet<Version> = files
            .iter()
            .flat_map(|(_, vs)| vs)
            .filter(|v| v.at_ms > limit)
            .copied()
            .collect();
        let all = || files.iter().flat_map(|(_, vs)| vs).filter(|v| !future.contains(*v));
        let mut per_ms: HashMap<i64, usize> = HashMap::new();
        for v in all() {
            *per_ms.entry(v.at_ms).or_default() += 1;
        }
        if self
            .faults
            .id_refusals_over
            .is_some_and(|max| per_ms.values().any(|n| *n > max))
        {
            return Err(IDS.into());
        }
        // Per (type, ms): what the destination holds plus what this import adds.
        let mut rows: HashMap<(&str, i64), usize> = HashMap::new();
        for v in self.destination.iter() {
            *rows.entry((v.resource_type(), v.at_ms)).or_default() += 1;
        }
        for v in all() {
            if !self.destination.contains(v) {
                *rows.entry((v.resource_type(), v.at_ms)).or_default() += 1;
            }
        }
        let full: BTreeSet<(&str, i64)> = self
            .faults
            .same_ms_capacity
            .map(|cap| rows.iter().filter(|(_, n)| **n > cap).map(|(k, _)| *k).collect())
            .unwrap_or_default();
        // In-batch de-duplication on (id, ms): the highest version as text wins.
        let mut winners: BTreeMap<(u32, i64), u32> = BTreeMap::new();
        for v in all() {
            let w = winners.entry((v.resource, v.at_ms)).or_insert(v.version);
            if v.version.to_string() > w.to_string() {
                *w = v.version;
            }
        }
        let mut output = Vec::new();
        let mut refused = Vec::new();
        for (url, versions) in files {
            let before = refused.len();
            for v in versions
                .iter()
                .filter(|v| !full.contains(&(v.resource_type(), v.at_ms)))
            {
                if future.contains(v) {
                    refused.push((*v, FUTURE));
                    continue;
                }
                let taken = self
                    .destination
                    .range(
                        Version {
                            resource: v.resource,
                            version: 0,
                            at_ms: i64::MIN,
                        }..,
                    )
                    .take_while(|d| d.resource == v.resource)
                    .any(|d| d.at_ms == v.at_ms && d.version != v.version);
                if winners[&(v.resource, v.at_ms)] != v.version {
                    refused.push((*v, DUPLICATE));
                    continue;
                }
                if taken {
                    refused.push((*v, CONFLICT));
                    continue;
                }
                self.destination.insert(*v);
                *self.imported.entry(*v).or_default() += 1;
            }
            output.push(ImportOutput {
                resource_type: versions.first().map(|v| v.resource_type().to_string()),
                count: (versions.len() - (refused.len() - before)) as u64,
                input_url: Some(url.clone()),
            });
        }
        if !full.is_empty() {
            return Err(IDS.into());
        }
        // One error file per input file with refused lines, in the server's format: each line names its unit's
        // offset and its number in the unit, as `ReadLines` owns lines (reference §11.4), for a unit size that
        // sometimes puts an offset exactly on a line start; CRLF and a restarted unit's repeats at times (§11.5).
        let mut error = Vec::new();
        for (k, (url, versions)) in files.iter().enumerate() {
            let mine: Vec<(Version, &str)> = versions
                .iter()
                .filter_map(|v| refused.iter().find(|(r, _)| r == v).copied())
                .collect();
            if mine.is_empty() {
                continue;
            }
            let bytes = render(versions);
            let first_line = bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len()) + 1;
            let unit = [first_line, first_line * 2, 97, 10_000_000][self.rng.below(4) as usize];
            let mut lines: Vec<String> = mine
                .iter()
                .map(|(v, message)| {
                    let at = versions.iter().position(|x| x == v).expect("in its file");
                    let (offset, number) = unit_position(&bytes, at, unit);
                    error_line(v, message, offset, number)
                })
                .collect();
            if self.rng.chance(20) {
                let again = lines.clone();
                lines.extend(again);
            }
            let newline = if self.rng.chance(30) { "\r\n" } else { "\n" };
            let error_url = format!("https://errors/{id}-{k}.ndjson");
            error.push(ImportErrorFile {
                resource_type: versions.first().map(|v| v.resource_type().to_string()),
                count: mine.len() as u64,
                input_url: Some(url.clone()),
                url: error_url.clone(),
            });
            self.error_texts
                .insert(error_url.clone(), lines.join(newline) + newline);
            self.error_files
                .insert(error_url, mine.into_iter().map(|(v, _)| v).collect());
        }
        Ok(ImportResult {
            transaction_time: None,
            output,
            error,
        })
    }
}

/// A simulated export file as the server writes it: one NDJSON line per version.
pub fn render(versions: &[Version]) -> Vec<u8> {
    let mut out = String::new();
    for v in versions {
        out.push_str(&format!(
            r#"{{"resourceType":"{}","id":"r{}","meta":{{"versionId":"{}","lastUpdated":"{}"}}}}"#,
            v.resource_type(),
            v.resource,
            v.version,
            crate::fhir::format_instant(super::world::instant(v.at_ms))
        ));
        out.push('\n');
    }
    out.into_bytes()
}

/// The version a rendered line names (the inverse of [`render`]).
pub fn version_of(line: &[u8]) -> Option<Version> {
    let (_, id, version, at) = crate::ledger::locate::identity(line)?;
    Some(Version {
        resource: id.strip_prefix('r')?.parse().ok()?,
        version: version.parse().ok()?,
        at_ms: chrono::DateTime::parse_from_rfc3339(&at).ok()?.timestamp_millis(),
    })
}

/// Where the server reports line `index` of a file split into units of `unit` bytes: the unit at offset
/// `j * unit` owns the lines that start after its offset up to `unit` bytes on (a line starting exactly at an
/// offset is the previous unit's), the first unit also the line at 0; lines are numbered from 1 in their unit.
/// Written here from the server's rule, apart from the ledger's reading of it (`ledger::locate`).
fn unit_position(bytes: &[u8], index: usize, unit: usize) -> (usize, usize) {
    let mut starts = vec![0];
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' && i + 1 < bytes.len() {
            starts.push(i + 1);
        }
    }
    let owner = |s: usize| if s == 0 { 0 } else { (s - 1) / unit };
    let j = owner(starts[index]);
    let number = starts[..=index].iter().filter(|s| owner(**s) == j).count();
    (j * unit, number)
}

/// The server's messages for the lines it refuses (reference §5.3: the in-batch loser on one millisecond is a
/// duplicate; another version already on the millisecond a conflict).
const DUPLICATE: &str = "Failed to import duplicate resource";
const CONFLICT: &str = "Failed to import resource with version conflict";
const FUTURE: &str = "LastUpdated in the resource cannot be in the future.";

fn error_line(v: &Version, message: &str, offset: usize, number: usize) -> String {
    let text = if message == FUTURE {
        message.to_string()
    } else {
        format!("{message}, resource id: r{}, line: {number}", v.resource)
    };
    serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
        "details": { "text": text },
        "diagnostics": format!("Failed to process resource at line: {number} with stream start offset: {offset}") }] })
    .to_string()
}
