//! Verification: does the destination hold what the source holds?
//!
//! - [`surface`]: counts per type on both servers (and version totals when history or deletes are migrated).
//! - [`deep`]: a sample of resources from every type with data, compared as whole documents, differences named
//!   by JSON path.
//! - [`full`]: every current resource — every version, with history — compared by id, versionId,
//!   lastUpdated and a hash of its content, streamed page by page so memory stays bounded.
//!
//! With de-identified export (`AZURE_IsExportDeidentified` with `AZURE_ConfigFile`) the destination holds the
//! source's resources as the de-identification config rewrote them, so their content cannot be compared with the
//! source: the checks then compare what de-identified export keeps — ids, versionId, lastUpdated, delete state
//! and counts — and label the content [`Content::NotComparable`] instead of reporting every resource as different.
//!
//! The CLI (`fhir-migration-tool verify`) calls these directly; the `E2ETest_*` functions run the same checks as
//! persisted [`runs`] that a timer works on in slices.

pub mod deep;
pub mod full;
pub mod local;
pub mod runs;
pub mod scope;
mod stored;
pub mod surface;

use serde_json::Value;

use crate::config::MigrationSettings;

/// Whether the checks can compare resource content with the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Compared,
    /// The export is de-identified: content differs by design; ids, versions and lastUpdated are still compared.
    NotComparable,
}

impl Content {
    /// Not comparable when the migration exports through a de-identification config.
    pub fn of(settings: &MigrationSettings) -> Content {
        if settings.deidentify_config.is_some() {
            Content::NotComparable
        } else {
            Content::Compared
        }
    }

    /// The stable label the reports carry (`"content": …`).
    pub fn label(self) -> &'static str {
        match self {
            Content::Compared => "compared",
            Content::NotComparable => NOT_COMPARABLE,
        }
    }
}

/// The content label of a de-identified migration, in every report and `verify --json`.
pub const NOT_COMPARABLE: &str = "not comparable (de-identified)";

/// A resource's content reduced to a comparable hash: canonical JSON (keys sorted at every level) without
/// `meta.versionId` and `meta.lastUpdated`, which are compared separately. Nothing else is ignored: incremental
/// import keeps resources byte for byte, so any other difference is a real one.
pub fn content_hash(resource: &Value) -> u64 {
    let mut v = resource.clone();
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty()
            && let Some(map) = v.as_object_mut()
        {
            map.remove("meta");
        }
    }
    let mut text = String::new();
    canonical(&v, &mut text);
    fnv1a(text.as_bytes())
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// FNV-1a, 64 bits: stable across runs and platforms (unlike the std hasher), which a resumable check needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_hash_ignores_key_order_and_server_meta_but_not_content() {
        let a = json!({ "resourceType": "Patient", "id": "p", "meta": { "versionId": "1", "lastUpdated": "x" }, "name": [{ "family": "A" }] });
        let b = json!({ "name": [{ "family": "A" }], "id": "p", "resourceType": "Patient", "meta": { "lastUpdated": "y", "versionId": "9" } });
        assert_eq!(content_hash(&a), content_hash(&b));
        let c = json!({ "resourceType": "Patient", "id": "p", "name": [{ "family": "B" }] });
        assert_ne!(content_hash(&a), content_hash(&c));
        let tagged = json!({ "resourceType": "Patient", "id": "p", "meta": { "tag": [{ "code": "t" }] }, "name": [{ "family": "A" }] });
        assert_ne!(content_hash(&a), content_hash(&tagged), "other meta is content");
    }
}
