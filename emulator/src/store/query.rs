//! Reading many versions at once: search over current versions, history, and the selection rules of `$export`
//! (reference §3.1–3.3).

use std::collections::HashSet;
use std::ops::Bound;

use super::{Inner, Key, Resource, Store, Version};
use crate::time::Millis;

/// A version together with the resource it belongs to.
#[derive(Debug, Clone)]
pub struct VersionRef {
    pub key: Key,
    pub version: Version,
}

impl VersionRef {
    pub fn resource_type(&self) -> &str {
        &self.key.0
    }
    pub fn id(&self) -> &str {
        &self.key.1
    }
}

/// Which resources a search covers and in what order. Bounds are on `meta.lastUpdated`, `[from, to)`.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// `None`: every type.
    pub types: Option<HashSet<String>>,
    pub ids: Option<HashSet<String>>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    pub descending: bool,
}

/// Where a page starts: the (lastUpdated, seq) position after which (or before which, descending) to continue.
pub type Position = (Millis, u64);

#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

/// What a `$export` job selects (reference §3).
#[derive(Debug, Clone)]
pub struct ExportSelection {
    pub since: Option<Millis>,
    pub till: Millis,
    /// The non-parallel search path uses `lastUpdated <= till`; the parallel path `< till`.
    pub inclusive_till: bool,
    /// On the inclusive path: where `_till`'s precision ends (exclusive), so `_till=…T00:00:00.000Z` takes that
    /// whole millisecond (every sub-millisecond value in it) and `_till=2026-01-02` the whole day
    /// (`fs:src/Microsoft.Health.Fhir.Core/Features/Search/Expressions/Parsers/SearchValueExpressionBuilderHelper.cs`;
    /// reference §11.9). `None`: the millisecond of `till`.
    pub inclusive_end: Option<Millis>,
    /// Parallel path without `_history`: export each resource as it was at `till`.
    pub snapshot: bool,
    pub history: bool,
    pub deleted: bool,
    pub types: Option<HashSet<String>>,
}

impl Store {
    /// One page of current, non-deleted versions matching `filter`, starting after `after`. Returns the page and
    /// whether more matches exist.
    pub fn search_page(&self, filter: &SearchFilter, after: Option<Position>, limit: usize) -> (Vec<VersionRef>, bool) {
        let inner = self.lock();
        let mut page = Vec::new();
        let mut more = false;
        for (pos, key) in inner.scan(filter, after) {
            if !filter.accepts(key) {
                continue;
            }
            let Some(current) = inner.resources.get(key).and_then(Resource::current) else {
                continue;
            };
            if current.seq != pos.1 || current.deleted {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(VersionRef {
                key: key.clone(),
                version: current.clone(),
            });
        }
        (page, more)
    }

    /// How many current, non-deleted resources match.
    pub fn count(&self, filter: &SearchFilter) -> usize {
        let inner = self.lock();
        if filter.from.is_none() && filter.to.is_none() && filter.ids.is_none() {
            // Fast path: no time bounds, count resources rather than scanning versions.
            return inner
                .resources
                .iter()
                .filter(|(k, r)| filter.accepts(k) && r.current().is_some_and(|c| !c.deleted))
                .count();
        }
        inner
            .scan(filter, None)
            .filter(|(pos, key)| {
                filter.accepts(key)
                    && inner
                        .resources
                        .get(*key)
                        .and_then(Resource::current)
                        .is_some_and(|c| c.seq == pos.1 && !c.deleted)
            })
            .count()
    }

    /// One page of versions (any state) in `scope` with lastUpdated in `[from, to)`, newest first unless
    /// `ascending`.
    pub fn history_page(
        &self,
        scope: &HistoryScope,
        from: Option<Millis>,
        to: Option<Millis>,
        ascending: bool,
        after: Option<Position>,
        limit: usize,
    ) -> (Vec<VersionRef>, bool) {
        let filter = scope.filter(from, to, !ascending);
        let inner = self.lock();
        let mut page = Vec::new();
        for (pos, key) in inner.scan(&filter, after) {
            if !filter.accepts(key) {
                continue;
            }
            if page.len() == limit {
                return (page, true);
            }
            if let Some(v) = inner
                .resources
                .get(key)
                .and_then(|r| r.versions().iter().find(|v| v.seq == pos.1))
            {
                page.push(VersionRef {
                    key: key.clone(),
                    version: v.clone(),
                });
            }
        }
        (page, false)
    }

    /// How many versions (including delete markers) are in `scope`.
    pub fn history_count(&self, scope: &HistoryScope, from: Option<Millis>, to: Option<Millis>) -> usize {
        let filter = scope.filter(from, to, false);
        let inner = self.lock();
        if from.is_none() && to.is_none() {
            return inner
                .resources
                .iter()
                .filter(|(k, _)| filter.accepts(k))
                .map(|(_, r)| r.versions().len())
                .sum();
        }
        inner.scan(&filter, None).filter(|(_, key)| filter.accepts(key)).count()
    }

    /// Whether the instance exists at all (any version).
    pub fn exists(&self, resource_type: &str, id: &str) -> bool {
        self.lock().get(resource_type, id).is_some()
    }

    /// The versions an export selects, sorted by type, then (lastUpdated, seq).
    pub fn export(&self, sel: &ExportSelection) -> Vec<VersionRef> {
        let inner = self.lock();
        let upper = if sel.inclusive_till {
            sel.inclusive_end.unwrap_or(sel.till + 1).max(sel.till + 1)
        } else {
            sel.till
        };
        let lower = sel.since.unwrap_or(Millis::MIN);
        if lower >= upper {
            return Vec::new();
        }
        let in_window = |v: &Version| v.last_updated >= lower && v.last_updated < upper;
        let type_ok = |key: &Key| sel.types.as_ref().is_none_or(|t| t.contains(&*key.0));
        let mut out = Vec::new();
        let mut seen: HashSet<&Key> = HashSet::new();
        for (_, key) in inner
            .index
            .range((Bound::Included((lower, 0)), Bound::Excluded((upper, 0))))
        {
            if !type_ok(key) || !seen.insert(key) {
                continue;
            }
            let Some(resource) = inner.resources.get(key) else {
                continue;
            };
            let chosen: Vec<&Version> = if sel.history {
                // Every version in the window; delete markers only with _deleted.
                resource
                    .versions()
                    .iter()
                    .filter(|v| in_window(v) && (!v.deleted || sel.deleted))
                    .collect()
            } else if sel.snapshot {
                resource
                    .current_before(upper)
                    .filter(|v| in_window(v) && (!v.deleted || sel.deleted))
                    .into_iter()
                    .collect()
            } else {
                resource
                    .current()
                    .filter(|v| in_window(v) && (!v.deleted || sel.deleted))
                    .into_iter()
                    .collect()
            };
            out.extend(chosen.into_iter().map(|v| VersionRef {
                key: key.clone(),
                version: v.clone(),
            }));
        }
        out.sort_by(|a, b| {
            (a.resource_type(), a.version.last_updated, a.version.seq).cmp(&(
                b.resource_type(),
                b.version.last_updated,
                b.version.seq,
            ))
        });
        out
    }
}

impl SearchFilter {
    fn accepts(&self, key: &Key) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(&*key.0)) && self.ids.as_ref().is_none_or(|i| i.contains(&*key.1))
    }
}

impl HistoryScope {
    fn filter(&self, from: Option<Millis>, to: Option<Millis>, descending: bool) -> SearchFilter {
        let (types, ids) = match self {
            HistoryScope::System => (None, None),
            HistoryScope::Type(t) => (Some(HashSet::from([t.clone()])), None),
            HistoryScope::Instance(t, id) => (Some(HashSet::from([t.clone()])), Some(HashSet::from([id.clone()]))),
        };
        SearchFilter {
            types,
            ids,
            from,
            to,
            descending,
        }
    }
}

impl Inner {
    /// Index entries within the filter's time bounds, in the filter's order, strictly after `after`.
    fn scan<'a>(
        &'a self,
        filter: &SearchFilter,
        after: Option<Position>,
    ) -> Box<dyn Iterator<Item = (&'a Position, &'a Key)> + 'a> {
        if let (Some(f), Some(t)) = (filter.from, filter.to)
            && f >= t
        {
            // An empty window (BTreeMap::range panics on inverted bounds).
            return Box::new(std::iter::empty());
        }
        let lo = filter.from.map_or(Bound::Unbounded, |f| Bound::Included((f, 0)));
        let hi = filter.to.map_or(Bound::Unbounded, |t| Bound::Excluded((t, 0)));
        let (lo, hi) = match (after, filter.descending) {
            (Some(p), true) => (lo, tighter_upper(hi, p)),
            (Some(p), false) => (tighter_lower(lo, p), hi),
            (None, _) => (lo, hi),
        };
        // A continuation token comes from the client: bounds it produces may cross, which BTreeMap::range
        // would panic on. Crossed bounds simply select nothing.
        if !valid_range(&lo, &hi) {
            return Box::new(std::iter::empty());
        }
        if filter.descending {
            Box::new(self.index.range((lo, hi)).rev())
        } else {
            Box::new(self.index.range((lo, hi)))
        }
    }
}

fn valid_range(lo: &Bound<Position>, hi: &Bound<Position>) -> bool {
    match (lo, hi) {
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b)) | (Bound::Included(a), Bound::Excluded(b)) => {
            a <= b
        }
        (Bound::Excluded(a), Bound::Excluded(b)) => a < b,
        _ => true,
    }
}

fn tighter_lower(lo: Bound<Position>, after: Position) -> Bound<Position> {
    match lo {
        Bound::Included(l) if l > after => Bound::Included(l),
        _ => Bound::Excluded(after),
    }
}

fn tighter_upper(hi: Bound<Position>, before: Position) -> Bound<Position> {
    match hi {
        Bound::Excluded(h) if h <= before => Bound::Excluded(h),
        _ => Bound::Excluded(before),
    }
}
