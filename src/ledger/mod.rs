//! The failure ledger: every resource line an `$import` refused is recorded once, with its class, and kept until
//! it is resolved, so nothing is dropped silently (issue 16).
//!
//! - Benign lines (the identical version is already at the destination; a SearchParameter, which the tool copies
//!   through the REST API) count as success: recorded as resolved, never as failures.
//! - Transient lines (lastUpdated ahead of the destination's clock) are retried automatically once that time has
//!   passed.
//! - Permanent lines (a conflicting version, the loser of two versions on one millisecond, an invalid resource)
//!   stay open, named in `status`, telemetry and cut-over, until an operator fixes the cause and retries them
//!   (`failures retry`) or accepts the loss with a reason (`failures accept`).
//!
//! This module is the ledger's data (rows, the table, reading error lines); recording and retrying are the
//! engine's work ([`crate::engine::failures`]).
//!
//! Rows are keyed by the resource version (`{type}|{id}|{versionId}`), so a version that fails again on a later
//! import attempt updates its row (attempts, last seen) instead of adding one. A line whose resource cannot be
//! told (its input file unreadable) is keyed by its error file and position.

mod entry;
pub mod locate;

pub use entry::{Class, Entry, Kind, State, Summary, key_part};

use crate::storage::tables::{TableClient, TableError, filter};

fn unreadable_row(e: &crate::storage::tables::Entity) -> TableError {
    TableError::InvalidResponse {
        operation: "read a failure ledger row",
        detail: format!(
            "row {} cannot be read (a Kind, Class, State or time is missing or unknown): restore or delete it",
            e.row_key()
        ),
    }
}

/// The human listing of `failures`: the summary, then one line per entry.
pub fn describe(summary: &Summary, entries: &[Entry]) -> String {
    let mut out = vec![summary.line()];
    if !entries.is_empty() {
        out.push(format!(
            "{:<44} {:>6} {:<15} {:<9} {:<8} {:>3}  message",
            "key", "window", "kind", "class", "state", "try"
        ));
    }
    for e in entries {
        let why = if e.resolution.is_empty() {
            &e.message
        } else {
            &e.resolution
        };
        out.push(format!(
            "{:<44} {:>6} {:<15} {:<9} {:<8} {:>3}  {}",
            e.key,
            e.window,
            e.kind.as_str(),
            e.class.as_str(),
            e.state.as_str(),
            e.attempts,
            why.chars().take(120).collect::<String>()
        ));
    }
    out.join("\n")
}

/// The ledger's table, one partition per migration (the migration's partition key).
#[derive(Clone, Debug)]
pub struct Ledger {
    table: TableClient,
    partition: String,
}

impl Ledger {
    pub fn new(table: TableClient, partition: &str) -> Ledger {
        Ledger {
            table,
            partition: partition.to_string(),
        }
    }

    pub async fn ensure_table(&self) -> Result<(), TableError> {
        self.table.create_if_missing().await
    }

    /// One entry; a row that exists but cannot be read (edited by hand, written by another version) is an
    /// error that names it, never taken for an absent one.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, TableError> {
        match self.table.get(&self.partition, key).await? {
            None => Ok(None),
            Some(e) => Entry::from_entity(&e).map(Some).ok_or_else(|| unreadable_row(&e)),
        }
    }

    /// Every entry, or those in `state`.
    pub async fn list(&self, state: Option<State>) -> Result<Vec<Entry>, TableError> {
        let mut f = filter::eq("PartitionKey", &self.partition);
        if let Some(s) = state {
            f = format!("{f} and {}", filter::eq("State", s.as_str()));
        }
        let rows = match self.table.query_all(Some(&f)).await {
            Ok(rows) => rows,
            // No failure has ever been recorded: the table does not exist yet.
            Err(e) if e.is_table_missing() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // A row that cannot be read is an error, not a row left out: left out, it would make the ledger look clean.
        let mut entries = Vec::with_capacity(rows.len());
        for row in &rows {
            entries.push(Entry::from_entity(row).ok_or_else(|| unreadable_row(row))?);
        }
        entries.sort_by(|a, b| (a.window, &a.key).cmp(&(b.window, &b.key)));
        Ok(entries)
    }

    /// Counts by class and state, for status, telemetry and cut-over.
    pub async fn summary(&self) -> Result<Summary, TableError> {
        Ok(Summary::of(&self.list(None).await?))
    }

    /// Inserts a new entry, or replaces the stored one it was read as (ETag-guarded): a concurrent writer makes
    /// this fail with [`TableError::Conflict`] or [`TableError::AlreadyExists`], and the caller re-reads.
    pub async fn save(&self, entry: &Entry) -> Result<(), TableError> {
        let entity = entry.to_entity(&self.partition)?;
        match &entry.etag {
            None => self.table.insert(&entity).await.map(|_| ()),
            Some(_) => self.table.replace(&entity, &entity.if_match()).await.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `failures` listing: the summary first, then a header and one row per entry, each with its kind,
    /// class, state and attempts, and the resolution when there is one (else the reason), cut to 120 characters.
    #[test]
    fn the_listing_shows_each_entrys_state_and_why() {
        let now = chrono::DateTime::UNIX_EPOCH;
        let mut open = Entry::open("Patient|p1|3".into(), 4, Kind::Conflict, "x".repeat(200), now);
        open.attempts = 2;
        let mut accepted = Entry::open("Patient|p2|1".into(), 5, Kind::Duplicate, "refused".into(), now);
        accepted.state = State::Accepted;
        accepted.resolution = "accepted: a test".into();
        let entries = [open, accepted];
        let text = describe(&Summary::of(&entries), &entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], Summary::of(&entries).line());
        assert!(lines[1].starts_with("key") && lines[1].ends_with("message"), "{text}");
        let row = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            row(lines[2])[..6],
            ["Patient|p1|3", "4", "Conflict", "Permanent", "Open", "2"].map(String::from)
        );
        assert!(
            lines[2].ends_with(&"x".repeat(120)) && !lines[2].contains(&"x".repeat(121)),
            "{text}"
        );
        assert!(lines[3].ends_with("accepted: a test"), "{text}");
        assert_eq!(row(lines[3])[4], "Accepted");
        // Nothing recorded: the summary alone.
        assert_eq!(describe(&Summary::default(), &[]), Summary::default().line());
    }
}
