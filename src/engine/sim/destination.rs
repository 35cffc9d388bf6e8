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

    /// Whether an input names an ETag other than its file's.
    pub(super) fn etag_mismatch(body: &serde_json::Value) -> bool {
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
                matches!((part("url"), part("etag")), (Some(url), Some(etag)) if etag != Self::etag_of(&url))
            })
    }

    /// Applies import `id` of `files`; the server's reason when the job fails.
    pub(super) fn apply_import(&mut self, id: usize, files: &[(String, Vec<Version>)]) -> Result<ImportResult, String> {
        let all = || files.iter().flat_map(|(_, vs)| vs);
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
                if winners[&(v.resource, v.at_ms)] != v.version || taken {
                    refused.push(*v);
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
        let mut error = Vec::new();
        if !refused.is_empty() {
            let url = format!("https://errors/{id}.ndjson");
            error.push(ImportErrorFile {
                resource_type: None,
                count: refused.len() as u64,
                input_url: None,
                url: url.clone(),
            });
            self.error_files.insert(url, refused);
        }
        Ok(ImportResult {
            transaction_time: None,
            output,
            error,
        })
    }
}
