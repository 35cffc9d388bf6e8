//! The columns a re-drive adds to its window rows: which re-drive the row belongs to and the request as the
//! operator made it (the row's own `Since`/`Till` move on as its parts are exported, so the request is kept
//! apart, and recognised when the same command is run again).

use chrono::{DateTime, Utc};

use super::{read_time_str, time_str};
use crate::storage::tables::Entity;

/// A re-drive request: `[since, till)` of lastUpdated, of some types (none: every type), exported and imported
/// again through the normal engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// `Redrive`: the re-drive's number, the sequence number of its first row.
    pub id: i64,
    /// `RedriveSince`, `RedriveTill`: the range asked for.
    pub since: DateTime<Utc>,
    pub till: DateTime<Utc>,
    /// `RedriveTypes`: the types asked for, sorted, comma-separated in the row; empty: every type.
    pub types: Vec<String>,
}

impl Redrive {
    pub(super) fn write(&self, e: &mut Entity) {
        e.set_i64("Redrive", self.id);
        time_str(e, "RedriveSince", Some(self.since));
        time_str(e, "RedriveTill", Some(self.till));
        e.set_str("RedriveTypes", self.types.join(","));
    }

    pub(super) fn read(e: &Entity) -> Option<Redrive> {
        Some(Redrive {
            id: e.get_i64("Redrive")?,
            since: read_time_str(e, "RedriveSince")?,
            till: read_time_str(e, "RedriveTill")?,
            types: e
                .get_str("RedriveTypes")
                .unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// Whether this is the same request (range and types), whatever its number.
    pub fn same_request(&self, since: DateTime<Utc>, till: DateTime<Utc>, types: &[String]) -> bool {
        self.since == since && self.till == till && self.types == types
    }

    /// Whether a request for `[since, till)` of `types` would export some of what this one does.
    pub fn overlaps(&self, since: DateTime<Utc>, till: DateTime<Utc>, types: &[String]) -> bool {
        let in_time = since < self.till && self.since < till;
        let in_types = self.types.is_empty() || types.is_empty() || types.iter().any(|t| self.types.contains(t));
        in_time && in_types
    }

    /// `every resource type` or `Observation, Patient`.
    pub fn types_text(&self) -> String {
        if self.types.is_empty() {
            "every resource type".into()
        } else {
            self.types.join(", ")
        }
    }
}
