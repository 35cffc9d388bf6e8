//! The simulated shell's rewrites of a payload, on the world's files rendered as the server writes them, with
//! the engine's own decisions: the examination of one refused for the destination's same-millisecond capacity
//! (`engine::failures::capacity`: its groups, margin and choice of what to leave out), and the scan before its
//! first POST (`engine::failures::scan`: its choice of losers among versions of one resource on one
//! millisecond). Only the I/O around them (blobs, the destination's counts) is the world's own.

use std::collections::HashSet;

use super::destination::{render, version_of};
use super::world::{Version, World};
use crate::engine::core::capacity::CapacityTrim;
use crate::engine::core::scan::Scanned;
use crate::engine::failures::files::{left_out_entry, parse};
use crate::engine::failures::{capacity, scan};
use crate::ledger::Entry;
use crate::state::Payload;

const OVER: &str = "not imported: over the destination's same-millisecond capacity";
const LOSER: &str = "not imported: another version of the resource holds its millisecond";

impl World {
    /// The examination of a payload refused for capacity, and the ledger entries of what it leaves out (the
    /// engine's own `left_out_entry`), for the caller to record with the ledger's code.
    pub fn trim_for_capacity(&mut self, payload: &Payload, container: &str) -> (CapacityTrim, Vec<Entry>) {
        let Some(bytes) = self.blobs.get(&(container.to_string(), payload.blob.clone())) else {
            return (
                CapacityTrim::CannotTrim("the payload blob is missing".into()),
                Vec::new(),
            );
        };
        let mut body: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let Some(cap) = self.faults.same_ms_capacity else {
            return (
                CapacityTrim::NothingOver("no capacity in this world".into()),
                Vec::new(),
            );
        };
        let urls = World::inputs(&body);
        let rendered: Vec<Vec<u8>> = urls
            .iter()
            .map(|u| render(self.files.get(u).map(Vec::as_slice).unwrap_or_default()))
            .collect();
        let lines = parse(&rendered);
        let cap = cap as u64;
        let margin = capacity::margin(cap, payload.capacity_trims);
        let mut left_out = Vec::new();
        let mut entries = Vec::new();
        let now = self.now;
        for ((t, ms), members) in capacity::ordered_groups(&lines).iter().take(capacity::GROUPS_CHECKED) {
            let held: HashSet<(String, String)> = self
                .destination
                .iter()
                .filter(|v| v.resource_type() == t.as_str() && v.at_ms == *ms)
                .map(|v| (format!("r{}", v.resource), v.version.to_string()))
                .collect();
            if held.len() as u64 + members.len() as u64 + margin <= cap {
                continue;
            }
            for i in capacity::left_out_of_group(&lines, members, &held, cap, margin) {
                let l = &lines[i];
                left_out.extend(version_of(&rendered[l.file][l.start..l.end]));
                entries.push(left_out_entry(payload.seq, l, &urls[l.file], OVER.into(), now));
            }
        }
        if left_out.is_empty() {
            return (CapacityTrim::NothingOver("nothing over".into()), Vec::new());
        }
        let mut kept_lines = 0;
        let mut replaced = Vec::new();
        for url in &urls {
            let versions = self.files.get(url).cloned().unwrap_or_default();
            let kept: Vec<Version> = versions.iter().filter(|v| !left_out.contains(v)).copied().collect();
            kept_lines += kept.len() as i64;
            let copy = format!("{url}.capacity-{}", payload.attempt);
            self.files.insert(copy.clone(), kept);
            replaced.push(copy);
        }
        let mut i = 0;
        for p in body["parameter"].as_array_mut().into_iter().flatten() {
            if p["name"] != "input" {
                continue;
            }
            repoint(p, &replaced[i]);
            i += 1;
        }
        let blob = format!("{}.capacity-{}", payload.blob, payload.attempt);
        self.blobs
            .insert((container.to_string(), blob.clone()), body.to_string().into_bytes());
        self.named.extend(left_out.iter().copied());
        let trim = CapacityTrim::Trimmed {
            excluded: left_out.len() as u64,
            kept_lines,
            blob,
            groups: Vec::new(),
        };
        (trim, entries)
    }

    /// Scans every file of a waiting payload at once (the simulated files are small); the ledger entries of
    /// what it leaves out, for the caller to record.
    pub fn scan_payload(&mut self, payload: &Payload, container: &str) -> (Scanned, Vec<Entry>) {
        let done = |blob: String, left_out: u64| Scanned {
            files: i64::MAX,
            done: true,
            blob,
            left_out,
            note: String::new(),
        };
        let Some(bytes) = self.blobs.get(&(container.to_string(), payload.blob.clone())) else {
            return (done(payload.blob.clone(), 0), Vec::new());
        };
        let mut body: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let mut left_out = 0;
        let mut entries = Vec::new();
        for p in body["parameter"].as_array_mut().into_iter().flatten() {
            if p["name"] != "input" {
                continue;
            }
            let Some(url) = World::inputs(&serde_json::json!({ "parameter": [p.clone()] })).pop() else {
                continue;
            };
            {
                let versions = self.files.get(&url).cloned().unwrap_or_default();
                let bytes = render(&versions);
                let lines = parse(std::slice::from_ref(&bytes));
                let losers = scan::same_millisecond_losers(&lines);
                entries.extend(
                    losers
                        .iter()
                        .map(|(i, _)| left_out_entry(payload.seq, &lines[*i], &url, LOSER.into(), self.now)),
                );
                let out: Vec<Version> = losers
                    .into_iter()
                    .filter_map(|(i, _)| version_of(&bytes[lines[i].start..lines[i].end]))
                    .collect();
                let kept: Vec<Version> = versions.iter().filter(|v| !out.contains(v)).copied().collect();
                if out.is_empty() {
                    continue;
                }
                left_out += out.len() as u64;
                let copy = format!("{url}.scanned");
                self.files.insert(copy.clone(), kept);
                repoint(p, &copy);
            }
        }
        if left_out == 0 {
            return (done(payload.blob.clone(), 0), entries);
        }
        let blob = format!("{}.scanned", payload.blob);
        self.blobs
            .insert((container.to_string(), blob.clone()), body.to_string().into_bytes());
        (done(blob, left_out), entries)
    }
}

/// Points an `input` parameter at a copy, with the copy's ETag where the original had one.
fn repoint(input: &mut serde_json::Value, copy: &str) {
    for part in input["part"].as_array_mut().into_iter().flatten() {
        if part["name"] == "url" {
            part["valueUri"] = serde_json::Value::String(copy.to_string());
        } else if part["name"] == "etag" {
            part["valueString"] = serde_json::Value::String(World::etag_of(copy));
        }
    }
}
