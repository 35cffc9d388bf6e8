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

use crate::time::{Millis, Precise, SubMs, format_instant, now_ms, now_precise};

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
    /// 100-ns ticks within `last_updated`'s millisecond: kept by aapi (Cosmos DB keeps tick precision, reference
    /// §11.2), always 0 on ahds (SQL truncates to milliseconds).
    pub sub_ms: SubMs,
    /// Global insertion order: breaks ties between versions with the same millisecond (the surrogate id).
    pub seq: u64,
    pub deleted: bool,
    pub method: WriteMethod,
    /// The stored JSON, including `meta.versionId` and `meta.lastUpdated`.
    pub body: Arc<str>,
}

impl Version {
    /// `meta.lastUpdated` at full precision.
    pub fn precise(&self) -> Precise {
        (self.last_updated, self.sub_ms)
    }
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
            .partition_point(|x| (x.last_updated, x.sub_ms, x.version_id) <= (v.last_updated, v.sub_ms, v.version_id));
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
    /// The last lastUpdated handed out to an ordinary write; server-assigned times never go backwards.
    last_assigned: Precise,
    /// aapi: `lastUpdated` keeps 100-ns ticks (Cosmos DB). ahds: whole milliseconds (SQL).
    precise: bool,
    /// Rows per (resource type, millisecond): the SQL surrogate-id space that `$import` can exhaust (reference
    /// §11.1).
    per_type_ms: HashMap<(Arc<str>, Millis), u32>,
    /// While a batch is applied: the (key, seq) of every version added, so the batch can be undone.
    journal: Option<Vec<(Key, u64, Millis)>>,
    /// Writes committed late (fault `lateVisibility`, reference §11.10): invisible until their time comes.
    pending: Vec<LateWrite>,
    /// Interned type names, so keys share one allocation per type.
    types: HashMap<String, Arc<str>>,
}

/// A version whose transaction commits late: its `lastUpdated` lies in the past, and it becomes visible (is
/// inserted) only at `visible_at`.
#[derive(Debug, Clone)]
struct LateWrite {
    key: Key,
    at: Precise,
    visible_at: Millis,
    body: Value,
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
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.promote_late_writes(now_ms());
        inner
    }

    /// Whether `lastUpdated` keeps 100-ns ticks (aapi, Cosmos DB) or whole milliseconds (ahds, SQL). Set by
    /// [`crate::spawn_with_store`] from the flavor; a bare store keeps milliseconds.
    pub fn set_precise(&self, precise: bool) {
        self.lock().precise = precise;
    }

    /// Whether this store keeps sub-millisecond `lastUpdated`.
    pub fn is_precise(&self) -> bool {
        self.lock().precise
    }

    /// Writes a new version of `Type/id` whose `lastUpdated` is `age_ms` in the past but which stays invisible
    /// (to read, search, history and export) for `hidden_ms`: a transaction that took the clock before it
    /// committed (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Search/SqlServerSearchService.cs` has no
    /// visibility check; reference §11.10). Its version number is given when it becomes visible. Returns the
    /// `lastUpdated` it will carry.
    pub fn write_late(
        &self,
        resource_type: &str,
        id: &str,
        body: Value,
        age_ms: u64,
        hidden_ms: u64,
    ) -> Result<String, WriteError> {
        check_body(&body, resource_type, Some(id))?;
        let mut inner = self.lock();
        let key = inner.key(resource_type, id);
        let (ms, sub) = inner.next_timestamp();
        let at = (ms - age_ms as Millis, sub);
        inner.pending.push(LateWrite {
            key,
            at,
            visible_at: now_ms() + hidden_ms as Millis,
            body,
        });
        Ok(format_instant(at.0, at.1))
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
            inner.count_row(&key.0, v.last_updated, false);
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

    /// A server timestamp for an ordinary write. Many writes share one millisecond on a real server (SQL: up to
    /// 80,000 surrogate ids per millisecond, `fs:src/Microsoft.Health.Fhir.SqlServer/Features/Schema/Sql/Sprocs/MergeResourcesBeginTransaction.sql`;
    /// reference §11.2), so the only rule is that time never goes backwards. aapi keeps 100-ns ticks, strictly
    /// increasing (two writes one tick apart still share a millisecond); ahds gives whole milliseconds.
    fn next_timestamp(&mut self) -> Precise {
        let t = if self.precise {
            let (ms, sub) = self.last_assigned;
            let after = if sub >= 9_999 { (ms + 1, 0) } else { (ms, sub + 1) };
            now_precise().max(after)
        } else {
            (now_ms().max(self.last_assigned.0), 0)
        };
        self.last_assigned = t;
        t
    }

    /// How many rows (versions) of `resource_type` the store holds on millisecond `ms`.
    pub(crate) fn rows_at(&self, resource_type: &str, ms: Millis) -> u32 {
        self.per_type_ms
            .get(&(Arc::from(resource_type), ms))
            .copied()
            .unwrap_or(0)
    }

    fn count_row(&mut self, resource_type: &Arc<str>, ms: Millis, added: bool) {
        let k = (resource_type.clone(), ms);
        let n = self.per_type_ms.entry(k.clone()).or_default();
        if added {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_type_ms.remove(&k);
            }
        }
    }

    /// Starts recording added versions, so that [`Inner::rollback`] can undo a failed batch.
    pub(crate) fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Stops recording; returns what was added.
    pub(crate) fn commit(&mut self) -> Vec<(Key, u64, Millis)> {
        self.journal.take().unwrap_or_default()
    }

    /// Removes every version added since [`Inner::begin`] (a transaction that failed).
    pub(crate) fn rollback(&mut self) {
        for (key, seq, ms) in self.commit() {
            self.index.remove(&(ms, seq));
            self.count_row(&key.0, ms, false);
            if let Some(r) = self.resources.get_mut(&key) {
                r.versions.retain(|v| v.seq != seq);
                if r.versions.is_empty() {
                    self.resources.remove(&key);
                }
            }
        }
    }

    /// Inserts the late writes whose time has come.
    fn promote_late_writes(&mut self, now: Millis) {
        if self.pending.iter().all(|p| p.visible_at > now) {
            return;
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.visible_at <= now);
        self.pending = waiting;
        for mut late in due {
            let version_id = self.resources.get(&late.key).map_or(1, Resource::next_version);
            let method = if version_id == 1 {
                WriteMethod::Post
            } else {
                WriteMethod::Put
            };
            set_meta(&mut late.body, version_id, late.at);
            let body = late.body.to_string();
            self.add(late.key, version_id, late.at, false, method, body);
        }
    }

    pub(crate) fn add(
        &mut self,
        key: Key,
        version_id: i64,
        (last_updated, sub_ms): Precise,
        deleted: bool,
        method: WriteMethod,
        body: String,
    ) -> Version {
        self.next_seq += 1;
        let sub_ms = if self.precise { sub_ms } else { 0 };
        let version = Version {
            version_id,
            last_updated,
            sub_ms,
            seq: self.next_seq,
            deleted,
            method,
            body: Arc::from(body),
        };
        self.index.insert((last_updated, version.seq), key.clone());
        self.count_row(&key.0, last_updated, true);
        if let Some(journal) = &mut self.journal {
            journal.push((key.clone(), version.seq, last_updated));
        }
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
pub(crate) fn set_meta(body: &mut Value, version_id: i64, (last_updated, sub_ms): Precise) {
    let Some(map) = body.as_object_mut() else { return };
    let mut meta = match map.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.insert("versionId".into(), Value::String(version_id.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(format_instant(last_updated, sub_ms)),
    );
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
pub(crate) fn deleted_stub(resource_type: &str, id: &str, version_id: i64, (last_updated, sub_ms): Precise) -> String {
    json!({
        "resourceType": resource_type,
        "id": id,
        "meta": { "versionId": version_id.to_string(), "lastUpdated": format_instant(last_updated, sub_ms) }
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
#[cfg(test)]
mod tests_second_reading;
