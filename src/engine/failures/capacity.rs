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

use super::files::{Line, input_urls, left_out_entry, millisecond, parse, rewrite_inputs, version_number};
use crate::engine::core::capacity::CapacityTrim;
use crate::engine::{Engine, EngineError};
use crate::fhir::format_instant;
use crate::state::Payload;

/// (type, millisecond) groups counted at the destination per examination, largest first: each costs a count
/// (and, when over, a listing). A crowd spread thinner than this is not found, and the refusal then takes the
/// ordinary path (retried, re-exported, halted with its reason).
pub(crate) const GROUPS_CHECKED: usize = 100;
/// Export file bytes one examination holds at most (with each line's identity besides): sixteen of the server's
/// 64 MB export files.
pub(crate) const BYTES_EXAMINED: usize = 1024 * 1024 * 1024;
/// History entries per page when listing what the destination holds on one millisecond.
const PAGE: usize = 1000;

impl Engine {
    /// Examines `payload` (refused for the same-millisecond capacity) and, when versions cannot fit, writes
    /// the payload's new body and names them in the ledger.
    pub async fn trim_for_capacity(
        &self,
        payload: &Payload,
        container: &str,
        tag: &str,
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
        let mut read = 0usize;
        for url in &urls {
            // A read that may pass fails the action (the next tick examines again), never spending an attempt.
            match self.read_blob(url).await? {
                Some(b) if read + b.len() > self.timing.capacity_bytes_examined => {
                    // Held whole with every line's identity, a larger payload could exhaust the process's memory
                    // (killed, nothing recorded): said instead, so the window ends in a named state.
                    return Ok(CapacityTrim::CannotTrim(format!(
                        "the payload's export files are larger than the {} MB the tool examines at once; lower AZURE_ChunkLimit (smaller windows, smaller payloads), then clear the halt",
                        self.timing.capacity_bytes_examined / (1024 * 1024)
                    )));
                }
                Some(b) => {
                    read += b.len();
                    files.push(b);
                }
                None => {
                    return Ok(CapacityTrim::CannotTrim(format!(
                        "the export file {} cannot be read with the tool's storage access (grant it read and write access to the export account, AZURE_IntegrationStorageUri)",
                        crate::telemetry::id_of(url)
                    )));
                }
            }
        }
        let lines = parse(&files);
        let ordered = ordered_groups(&lines);
        let cap = u64::from(self.settings.same_ms_capacity);
        let margin = margin(cap, payload.capacity_trims);
        let mut excluded: Vec<usize> = Vec::new();
        let mut described = Vec::new();
        let mut largest = String::from("the payload holds no versions with lastUpdated");
        for (n, ((resource_type, ms), members)) in ordered.iter().take(GROUPS_CHECKED).enumerate() {
            let at = DateTime::from_timestamp_millis(*ms).unwrap_or_default();
            let stored = self
                .destination
                .history_count(Some(resource_type), at, Some(at + TimeDelta::milliseconds(1)))
                .await?;
            if n == 0 {
                largest = format!(
                    "the largest: {} {resource_type} on {} in the payload, {stored} at the destination, capacity {cap}",
                    members.len(),
                    format_instant(at)
                );
            }
            if stored + members.len() as u64 + margin <= cap {
                continue;
            }
            let held = self.versions_on(resource_type, at).await?;
            let left_out = left_out_of_group(&lines, members, &held, cap, margin);
            if left_out.is_empty() {
                continue;
            }
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
            let suffix = format!("capacity-{attempt}-{tag}");
            let Some(copy) = self.write_copy(url, f, &files[f], &lines, &out, &suffix).await? else {
                return Ok(CapacityTrim::CannotTrim(format!(
                    "the tool cannot write next to {} (grant its identity 'Storage Blob Data Contributor' on the export account, AZURE_IntegrationStorageUri)",
                    crate::telemetry::id_of(url)
                )));
            };
            replaced.insert(f, copy);
        }
        self.ledger.ensure_table().await?;
        for i in &excluded {
            let message = format!(
                "not imported: the destination holds at most {cap} versions of one resource type on one millisecond (its row ids are millisecond * 80000 + a sequence), and this millisecond is full; accept the loss with a reason, or write the resource through the REST API (it then gets a new lastUpdated)"
            );
            let entry = left_out_entry(payload.seq, &lines[*i], &urls[lines[*i].file], message, now);
            self.upsert(entry, now).await?;
        }
        rewrite_inputs(&mut body, &replaced);
        let blob = format!("{}.capacity-{attempt}-{tag}", payload.blob.trim_end_matches(".json"));
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

/// The payload's (type, millisecond) groups, largest first (then by key, so the order is fixed).
pub(crate) fn ordered_groups(lines: &[Line]) -> Vec<((String, i64), Vec<usize>)> {
    let mut groups: BTreeMap<(String, i64), Vec<usize>> = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(ms) = millisecond(&l.last_updated) {
            groups.entry((l.resource_type.clone(), ms)).or_default().push(i);
        }
    }
    let mut ordered: Vec<_> = groups.into_iter().collect();
    ordered.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    ordered
}

/// How far below the capacity a group is filled. The free row ids of a crowded millisecond are fragmented:
/// each batch takes a run of ids from one global sequence and retries `80000 / batch` times (fhir-server
/// `SqlServerFhirDataStore.cs`), so the real limit lies below the capacity. A margin of one batch (1,000 of
/// 80,000), widened by another batch for each earlier trim whose repost was refused again: bounded, and each
/// step leaves out at least one more version.
pub(crate) fn margin(cap: u64, trims: i64) -> u64 {
    cap / 80 * (trims.max(0) as u64 + 1)
}

/// The members of one group to leave out, given the (id, version) pairs the destination holds on its
/// millisecond: the new ones beyond the room left below the capacity and margin, keeping each resource's newest
/// version first (then by version, then id), so what is left out is history where it can be.
pub(crate) fn left_out_of_group(
    lines: &[Line],
    members: &[usize],
    held: &HashSet<(String, String)>,
    cap: u64,
    margin: u64,
) -> Vec<usize> {
    let mut new: Vec<usize> = members
        .iter()
        .copied()
        .filter(|i| !held.contains(&(lines[*i].id.clone(), lines[*i].version.clone())))
        .collect();
    let room = usize::try_from(cap.saturating_sub(held.len() as u64 + margin)).unwrap_or(usize::MAX);
    if new.len() <= room {
        return Vec::new();
    }
    let mut newest: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for i in &new {
        let top = newest.entry(lines[*i].id.as_str()).or_insert(i64::MIN);
        *top = (*top).max(version_number(&lines[*i].version));
    }
    let rank = |i: &usize| i64::from(version_number(&lines[*i].version) != newest[lines[*i].id.as_str()]);
    new.sort_by(|a, b| {
        let (la, lb) = (&lines[*a], &lines[*b]);
        rank(a)
            .cmp(&rank(b))
            .then(version_number(&lb.version).cmp(&version_number(&la.version)))
            .then(la.id.cmp(&lb.id))
            .then(la.version.cmp(&lb.version))
    });
    new.split_off(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A margin of one batch per 80,000 of capacity (1,000 at the server's), one batch wider for each earlier
    /// trim refused again; a count below zero (never written) is taken as none.
    #[test]
    fn the_margin_is_one_batch_and_widens_with_each_trim_refused_again() {
        assert_eq!(margin(80_000, 0), 1_000);
        assert_eq!(margin(80_000, 1), 2_000);
        assert_eq!(margin(80_000, 3), 4_000);
        assert_eq!(margin(80_000, -2), 1_000);
    }

    /// Room is what the capacity leaves after the versions held and the margin; of the new versions, each
    /// resource's newest is kept first, then history by version (newest first), so what is left out is history
    /// where it can be.
    #[test]
    fn a_crowded_group_leaves_out_history_beyond_the_room_below_capacity_and_margin() {
        let line = |id: &str, v: &str| {
            format!(
                r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"{v}","lastUpdated":"2026-01-01T00:00:00.001Z"}}}}"#
            )
        };
        let file = [
            line("a", "1"),
            line("a", "3"),
            line("b", "1"),
            line("a", "2"),
            line("b", "2"),
            line("s", "1"),
        ]
        .join("\n");
        let lines = parse(&[file.into_bytes()]);
        let members: Vec<usize> = (0..lines.len()).collect();
        // `s` 1 is already stored, and one more version of another resource: two held of a capacity of six.
        let held: HashSet<(String, String)> = [("s", "1"), ("t", "4")]
            .iter()
            .map(|(i, v)| (i.to_string(), v.to_string()))
            .collect();
        let named = |out: Vec<usize>| -> Vec<(String, String)> {
            out.iter()
                .map(|i| (lines[*i].id.clone(), lines[*i].version.clone()))
                .collect()
        };
        let pair = |i: &str, v: &str| (i.to_string(), v.to_string());
        // Room for 6 − (2 + 1) = 3 of the five new: a 3 and b 2 (newest), then a 2; a 1 and b 1 left out.
        assert_eq!(
            named(left_out_of_group(&lines, &members, &held, 6, 1)),
            [pair("a", "1"), pair("b", "1")]
        );
        // Room for all five: nothing left out.
        assert!(left_out_of_group(&lines, &members, &held, 7, 0).is_empty());
        // Room for one: only the highest of the newest.
        assert_eq!(
            named(left_out_of_group(&lines, &members, &held, 4, 1)),
            [pair("b", "2"), pair("a", "2"), pair("a", "1"), pair("b", "1")]
        );
    }
}
