//! The simulated shell's rewrites of a payload, on the world's files: the examination of one refused for the
//! destination's same-millisecond capacity (as `engine::failures::capacity`: count each (type, ms) of the
//! payload against what the destination holds, leave out what cannot fit, keeping each resource's newest
//! versions), and the scan before its first POST (as `engine::failures::scan`: of several versions of one
//! resource on one millisecond in a file, keep the numerically highest).

use std::collections::BTreeMap;

use super::world::{Version, World};
use crate::engine::core::capacity::CapacityTrim;
use crate::engine::core::scan::Scanned;
use crate::state::Payload;

impl World {
    pub fn trim_for_capacity(&mut self, payload: &Payload, container: &str) -> CapacityTrim {
        let Some(bytes) = self.blobs.get(&(container.to_string(), payload.blob.clone())) else {
            return CapacityTrim::CannotTrim("the payload blob is missing".into());
        };
        let mut body: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let Some(cap) = self.faults.same_ms_capacity else {
            return CapacityTrim::NothingOver("no capacity in this world".into());
        };
        let urls = World::inputs(&body);
        let mut groups: BTreeMap<(&str, i64), Vec<Version>> = BTreeMap::new();
        for url in &urls {
            for v in self.files.get(url).into_iter().flatten() {
                groups.entry((v.resource_type(), v.at_ms)).or_default().push(*v);
            }
        }
        let mut left_out = Vec::new();
        for ((t, ms), members) in &groups {
            let held = self
                .destination
                .iter()
                .filter(|v| v.resource_type() == *t && v.at_ms == *ms)
                .count();
            let mut new: Vec<Version> = members
                .iter()
                .filter(|v| !self.destination.contains(v))
                .copied()
                .collect();
            let room = cap.saturating_sub(held);
            if new.len() > room {
                new.sort_by(|a, b| b.version.cmp(&a.version).then(a.resource.cmp(&b.resource)));
                left_out.extend(new.split_off(room));
            }
        }
        if left_out.is_empty() {
            return CapacityTrim::NothingOver("nothing over".into());
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
            for part in p["part"].as_array_mut().into_iter().flatten() {
                if part["name"] == "url" {
                    part["valueUri"] = serde_json::Value::String(replaced[i].clone());
                }
            }
            i += 1;
        }
        let blob = format!("{}.capacity-{}", payload.blob, payload.attempt);
        self.blobs
            .insert((container.to_string(), blob.clone()), body.to_string().into_bytes());
        self.named.extend(left_out.iter().copied());
        CapacityTrim::Trimmed {
            excluded: left_out.len() as u64,
            kept_lines,
            blob,
            groups: Vec::new(),
        }
    }

    /// Scans every file of a waiting payload at once (the simulated files are small).
    pub fn scan_payload(&mut self, payload: &Payload, container: &str) -> Scanned {
        let done = |blob: String, left_out: u64| Scanned {
            files: i64::MAX,
            done: true,
            blob,
            left_out,
            note: String::new(),
        };
        let Some(bytes) = self.blobs.get(&(container.to_string(), payload.blob.clone())) else {
            return done(payload.blob.clone(), 0);
        };
        let mut body: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let mut left_out = 0;
        for p in body["parameter"].as_array_mut().into_iter().flatten() {
            if p["name"] != "input" {
                continue;
            }
            for part in p["part"].as_array_mut().into_iter().flatten() {
                let Some(url) = part["valueUri"].as_str().map(str::to_string) else {
                    continue;
                };
                let versions = self.files.get(&url).cloned().unwrap_or_default();
                let mut top: BTreeMap<(u32, i64), u32> = BTreeMap::new();
                for v in &versions {
                    let t = top.entry((v.resource, v.at_ms)).or_insert(v.version);
                    *t = (*t).max(v.version);
                }
                let (kept, out): (Vec<Version>, Vec<Version>) =
                    versions.iter().partition(|v| top[&(v.resource, v.at_ms)] == v.version);
                if out.is_empty() {
                    continue;
                }
                left_out += out.len() as u64;
                self.ledger.extend(out);
                let copy = format!("{url}.scanned");
                self.files.insert(copy.clone(), kept);
                part["valueUri"] = serde_json::Value::String(copy);
            }
        }
        if left_out == 0 {
            return done(payload.blob.clone(), 0);
        }
        let blob = format!("{}.scanned", payload.blob);
        self.blobs
            .insert((container.to_string(), blob.clone()), body.to_string().into_bytes());
        done(blob, left_out)
    }
}
