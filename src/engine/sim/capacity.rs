//! The simulated shell's examination of a payload refused for the destination's same-millisecond capacity: the
//! same decision as `engine::failures::capacity` (count each (type, ms) of the payload against what the
//! destination holds, leave out what cannot fit, keeping each resource's newest versions), on the world's files.

use std::collections::BTreeMap;

use super::world::{Version, World};
use crate::engine::core::capacity::CapacityTrim;
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
}
