//! The versioned resource store: every version of every resource, in memory, with the server's rules for
//! version numbers, `meta.lastUpdated`, soft deletes (a deleted version) and hard deletes (all versions gone).
//!
//! One `std::sync::Mutex` guards it: operations are short and never `.await` while holding the lock. Bodies are
//! `Arc<str>`, so export and search copy pointers, not JSON, out of the lock.

mod import;
mod query;

pub use import::{ImportLine, ImportOptions, LineOutcome, parse_import_line};
pub use query::{ExportSelection, HistoryScope, Position, SearchFilter, VersionRef};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};

use crate::time::{Millis, format_ms, now_ms};

/// The extension the servers put on (and read from) soft-deleted rows in NDJSON.
pub const DELETED_STATE_URL: &str = "http://azurehealthcareapis.com/data-extensions/deleted-state";

/// How a version was written; `_history` shows it as the entry's `request.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Delete,
    /// Loaded by `$import` (history shows `PUT`, or `DELETE` for deleted versions).
    Import,
}

/// One stored version.
#[derive(Debug, Clone)]
pub struct Version {
    pub version_id: i64,
    pub last_updated: Millis,
    /// Global insertion order: breaks ties between versions with the same millisecond (the surrogate id).
    pub seq: u64,
    pub deleted: bool,
    pub method: WriteMethod,
    /// The stored JSON, including `meta.versionId` and `meta.lastUpdated`.
    pub body: Arc<str>,
}

/// A resource's versions, ordered by (lastUpdated, versionId); the last one is current.
#[derive(Debug, Clone, Default)]
pub struct Resource {
    versions: Vec<Version>,
}

impl Resource {
    /// The current version: the latest non-negative one (negative versions are always history, reference
    /// §6.3).
    pub fn current(&self) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.version_id >= 0)
            .or(self.versions.last())
    }

    pub fn versions(&self) -> &[Version] {
        &self.versions
    }

    /// The version that was current at `t` (the latest with lastUpdated < t).
    pub fn current_before(&self, t: Millis) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.last_updated < t && v.version_id >= 0)
    }

    fn insert(&mut self, v: Version) {
        let at = self
            .versions
            .partition_point(|x| (x.last_updated, x.version_id) <= (v.last_updated, v.version_id));
        self.versions.insert(at, v);
    }

    /// The number for a new ordinary write: one above the highest version.
    fn next_version(&self) -> i64 {
        self.versions.iter().map(|v| v.version_id).max().unwrap_or(0).max(0) + 1
    }
}

/// (resource type, id).
pub type Key = (Arc<str>, Arc<str>);

#[derive(Default)]
pub(crate) struct Inner {
    resources: HashMap<Key, Resource>,
    /// Every version by (lastUpdated, seq): range scans for search, history and export.
    index: BTreeMap<(Millis, u64), Key>,
    next_seq: u64,
    /// The last lastUpdated handed out to an ordinary write; keeps server-assigned times strictly increasing.
    last_assigned: Millis,
    /// Interned type names, so keys share one allocation per type.
    types: HashMap<String, Arc<str>>,
}

/// A cheap, cloneable handle on the store.
#[derive(Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

/// What a read finds.
#[derive(Debug)]
pub enum Read {
    Found(Version),
    /// The current version is a delete marker (HTTP 410).
    Gone(Version),
    Missing,
}

/// The result of a create, update or delete.
#[derive(Debug, Clone)]
pub struct Written {
    pub version: Version,
    pub created: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("Resource type in the URL must match resourceType in the resource.")]
    TypeMismatch,
    #[error("Id in the URL must match id in the resource.")]
    IdMismatch,
    #[error("The resource body must be a JSON object with a resourceType.")]
    NotAResource,
    #[error(
        "Id must be any combination of upper or lower case ASCII letters; numerals; \"-\" and \".\", with a length limit of 64 characters."
    )]
    InvalidId,
}

/// Ids the servers accept.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written resource (every mutation is a single
        // insert or remove), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// PUT: update, or create with the given id.
    pub fn put(&self, resource_type: &str, id: &str, mut body: Value) -> Result<Written, WriteError> {
        check_body(&body, resource_type, Some(id))?;
        let mut inner = self.lock();
        let key = inner.key(resource_type, id);
        let existing = inner.resources.get(&key);
        let created = existing.and_then(Resource::current).is_none_or(|c| c.deleted);
        let version_id = existing.map_or(1, Resource::next_version);
        let last_updated = inner.next_timestamp();
        set_meta(&mut body, version_id, last_updated);
        let method = if created { WriteMethod::Post } else { WriteMethod::Put };
        let version = inner.add(key, version_id, last_updated, false, method, body.to_string());
        Ok(Written { version, created })
    }

    /// POST: create with a server-assigned id.
    pub fn create(&self, resource_type: &str, mut body: Value) -> Result<Written, WriteError> {
        check_body(&body, resource_type, None)?;
        let id = new_id();
        body["id"] = Value::String(id.clone());
        let mut inner = self.lock();
        let key = inner.key(resource_type, &id);
        let last_updated = inner.next_timestamp();
        set_meta(&mut body, 1, last_updated);
        let version = inner.add(key, 1, last_updated, false, WriteMethod::Post, body.to_string());
        Ok(Written { version, created: true })
    }

    /// Soft delete: a new, deleted version. `None` when there was nothing live to delete.
    pub fn delete(&self, resource_type: &str, id: &str) -> Option<Version> {
        let mut inner = self.lock();
        let key = inner.key(resource_type, id);
        let resource = inner.resources.get(&key)?;
        if resource.current()?.deleted {
            return None;
        }
        let version_id = resource.next_version();
        let last_updated = inner.next_timestamp();
        let stub = deleted_stub(resource_type, id, version_id, last_updated);
        Some(inner.add(key, version_id, last_updated, true, WriteMethod::Delete, stub))
    }

    /// Hard delete: every version removed. Returns how many versions were removed.
    pub fn hard_delete(&self, resource_type: &str, id: &str) -> usize {
        let mut inner = self.lock();
        let key = inner.key(resource_type, id);
        let Some(resource) = inner.resources.remove(&key) else {
            return 0;
        };
        for v in &resource.versions {
            inner.index.remove(&(v.last_updated, v.seq));
        }
        resource.versions.len()
    }

    pub fn read(&self, resource_type: &str, id: &str) -> Read {
        let inner = self.lock();
        match inner.get(resource_type, id).and_then(Resource::current) {
            Some(v) if v.deleted => Read::Gone(v.clone()),
            Some(v) => Read::Found(v.clone()),
            None => Read::Missing,
        }
    }

    pub fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Read {
        let inner = self.lock();
        let found = inner
            .get(resource_type, id)
            .and_then(|r| r.versions.iter().find(|v| v.version_id.to_string() == version_id));
        match found {
            Some(v) if v.deleted => Read::Gone(v.clone()),
            Some(v) => Read::Found(v.clone()),
            None => Read::Missing,
        }
    }

    /// A copy of one resource's versions (tests and verification).
    pub fn resource(&self, resource_type: &str, id: &str) -> Option<Resource> {
        self.lock().get(resource_type, id).cloned()
    }

    /// Every (type, id) with its versions, for comparing two stores. Sorted for stable output.
    pub fn snapshot(&self) -> Vec<(Key, Resource)> {
        let inner = self.lock();
        let mut all: Vec<_> = inner.resources.iter().map(|(k, r)| (k.clone(), r.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Number of resources (any state) and of versions.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.resources.len(), inner.index.len())
    }
}

impl Inner {
    fn key(&mut self, resource_type: &str, id: &str) -> Key {
        let t = match self.types.get(resource_type) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(resource_type);
                self.types.insert(resource_type.to_string(), t.clone());
                t
            }
        };
        (t, Arc::from(id))
    }

    pub(crate) fn get(&self, resource_type: &str, id: &str) -> Option<&Resource> {
        // Keys are compared by content, so a temporary key finds the interned one.
        self.resources.get(&(Arc::from(resource_type), Arc::from(id)))
    }

    /// A server timestamp for an ordinary write: now, but strictly after the previous one, so two writes never
    /// share a millisecond (the real server's surrogate ids guarantee the same order).
    fn next_timestamp(&mut self) -> Millis {
        let t = now_ms().max(self.last_assigned + 1);
        self.last_assigned = t;
        t
    }

    pub(crate) fn add(
        &mut self,
        key: Key,
        version_id: i64,
        last_updated: Millis,
        deleted: bool,
        method: WriteMethod,
        body: String,
    ) -> Version {
        self.next_seq += 1;
        let version = Version {
            version_id,
            last_updated,
            seq: self.next_seq,
            deleted,
            method,
            body: Arc::from(body),
        };
        self.index.insert((last_updated, version.seq), key.clone());
        self.resources.entry(key).or_default().insert(version.clone());
        version
    }
}

fn check_body(body: &Value, resource_type: &str, id: Option<&str>) -> Result<(), WriteError> {
    let t = body
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(WriteError::NotAResource)?;
    if t != resource_type {
        return Err(WriteError::TypeMismatch);
    }
    if let Some(id) = id {
        if !valid_id(id) {
            return Err(WriteError::InvalidId);
        }
        match body.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id != id => return Err(WriteError::IdMismatch),
            _ => {}
        }
    }
    Ok(())
}

/// Sets `meta.versionId` (a string, as FHIR requires) and `meta.lastUpdated`, keeping other meta fields, and
/// puts `id` and `meta` right after `resourceType` as the servers do.
pub(crate) fn set_meta(body: &mut Value, version_id: i64, last_updated: Millis) {
    let Some(map) = body.as_object_mut() else { return };
    let mut meta = match map.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version_id.to_string()));
    meta.insert("lastUpdated".into(), Value::String(format_ms(last_updated)));
    let mut ordered = Map::new();
    for key in ["resourceType", "id"] {
        if let Some(v) = map.remove(key) {
            ordered.insert(key.into(), v);
        }
    }
    ordered.insert("meta".into(), Value::Object(meta));
    ordered.append(map);
    *map = ordered;
}

/// The body the servers store for a soft-deleted version.
pub(crate) fn deleted_stub(resource_type: &str, id: &str, version_id: i64, last_updated: Millis) -> String {
    json!({
        "resourceType": resource_type,
        "id": id,
        "meta": { "versionId": version_id.to_string(), "lastUpdated": format_ms(last_updated) }
    })
    .to_string()
}

/// The NDJSON form of a deleted version in an export: the stub with the deleted-state extension first in meta.
pub fn export_deleted_line(version_body: &str) -> String {
    let mut body: Value = serde_json::from_str(version_body).unwrap_or(Value::Null);
    if let Some(meta) = body.get_mut("meta").and_then(Value::as_object_mut) {
        let mut with_ext = Map::new();
        with_ext.insert(
            "extension".into(),
            json!([{ "url": DELETED_STATE_URL, "valueString": "soft-deleted" }]),
        );
        with_ext.append(meta);
        *meta = with_ext;
    }
    body.to_string()
}

/// A server-assigned id: 32 hex digits, unique within the process.
fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:016x}{:016x}", t as u64, n ^ (std::process::id() as u64) << 40)
}

#[cfg(test)]
mod tests;
