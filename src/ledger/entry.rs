//! One ledger row: which version failed, why, what kind of failure it is, and where it stands.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::storage::tables::{ETag, Entity, TableError};

/// What the server said about the line (reference §5.3 messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// Lost an in-batch de-duplication: another line with the same id and lastUpdated (or version) won.
    Duplicate,
    /// The destination holds a different version under this id and version or lastUpdated.
    Conflict,
    /// The id is missing or not `[A-Za-z0-9-.]{1,64}`.
    InvalidId,
    /// The line's type is not the input's type.
    WrongType,
    /// SearchParameters cannot be imported; the tool copies them through the REST API.
    SearchParameter,
    /// lastUpdated more than 10 s ahead of the destination's clock.
    Future,
    /// Any other refusal (invalid JSON or FHIR).
    Invalid,
    /// The error file itself could not be read: how many lines failed is known, not which.
    Unreadable,
    /// Left out of an import by the tool: the destination cannot hold more versions of this type on this
    /// millisecond (reference §11.1), so importing it would fail the whole job every time.
    SameMillisecond,
}

impl Kind {
    /// Sorts a server message.
    pub fn of(message: &str) -> Kind {
        let m = message.to_ascii_lowercase();
        if m.contains("duplicate resource") {
            Kind::Duplicate
        } else if m.contains("version conflict") {
            Kind::Conflict
        } else if m.contains("invalid resource id") {
            Kind::InvalidId
        } else if m.contains("resource type not match") {
            Kind::WrongType
        } else if m.contains("searchparameter resources cannot be processed") {
            Kind::SearchParameter
        } else if m.contains("cannot be in the future") {
            Kind::Future
        } else {
            Kind::Invalid
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Duplicate => "Duplicate",
            Kind::Conflict => "Conflict",
            Kind::InvalidId => "InvalidId",
            Kind::WrongType => "WrongType",
            Kind::SearchParameter => "SearchParameter",
            Kind::Future => "Future",
            Kind::Invalid => "Invalid",
            Kind::Unreadable => "Unreadable",
            Kind::SameMillisecond => "SameMillisecond",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        [
            Kind::Duplicate,
            Kind::Conflict,
            Kind::InvalidId,
            Kind::WrongType,
            Kind::SearchParameter,
            Kind::Future,
            Kind::Invalid,
            Kind::Unreadable,
            Kind::SameMillisecond,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// What the failure means for the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Class {
    /// Nothing is missing (the identical version is at the destination, or the tool copies it otherwise).
    Benign,
    /// Will succeed later: retried automatically.
    Transient,
    /// Will not succeed until someone fixes the cause.
    Permanent,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Benign => "Benign",
            Class::Transient => "Transient",
            Class::Permanent => "Permanent",
        }
    }

    fn parse(s: &str) -> Option<Class> {
        [Class::Benign, Class::Transient, Class::Permanent]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    /// Waiting for an operator (permanent).
    Open,
    /// Queued for a retry (transient ones when due, or asked for by an operator), or being retried.
    Retrying,
    /// The version is at the destination (or never needed to be).
    Resolved,
    /// An operator accepted the loss, with a reason.
    Accepted,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Open => "Open",
            State::Retrying => "Retrying",
            State::Resolved => "Resolved",
            State::Accepted => "Accepted",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [State::Open, State::Retrying, State::Resolved, State::Accepted]
            .into_iter()
            .find(|c| c.as_str() == s)
    }

    /// Still stands between the migration and cut-over.
    pub fn unresolved(self) -> bool {
        matches!(self, State::Open | State::Retrying)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The row key: `{type}|{id}|{versionId}`, or `line|{file hash}|{offset}|{line}` when unknown.
    pub key: String,
    pub window: i64,
    pub resource_type: String,
    pub id: String,
    pub version_id: String,
    pub last_updated: String,
    pub kind: Kind,
    pub class: Class,
    pub state: State,
    /// The server's message (and, after a retry, the latest one).
    pub message: String,
    pub error_file: String,
    pub input_file: String,
    /// The processing unit's start byte and the line's 1-based index in it (reference §5.3).
    pub offset: u64,
    pub line: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Import attempts that refused this version.
    pub attempts: i64,
    /// Why it was resolved or accepted.
    pub resolution: String,
    /// The retry import in flight for it (status URL), empty when none.
    pub retry_import: String,
    /// When a queued retry may start.
    pub next_attempt: Option<DateTime<Utc>>,
    /// For an entry that stands for lines the tool could not name (an unreadable or short error file): how
    /// many the server counted.
    pub unnamed_lines: u64,
    #[serde(skip)]
    pub etag: Option<ETag>,
}

/// A key part: characters Table storage refuses in keys (`/ \ # ?`, control characters), the separator `|`,
/// `%`, `,` (the list separator of `--ids`) and spaces as `%XX`; cut at about `max` characters (a key is at
/// most 1 KiB).
pub fn key_part(value: &str, max: usize) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if c.is_control() || matches!(c, '/' | '\\' | '#' | '?' | '|' | '%' | ',' | ' ' | '\'') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
        if out.len() >= max {
            out.push('~');
            break;
        }
    }
    out
}

/// The largest message kept per entry (a server message is short; a parser's may not be).
const MESSAGE_CHARS: usize = 2000;

impl Entry {
    /// A new open, permanent entry seen once at `now`, naming nothing yet (no resource, file or position):
    /// the fields a failure knows are set over it.
    pub fn open(key: String, window: i64, kind: Kind, message: String, now: DateTime<Utc>) -> Entry {
        Entry {
            key,
            window,
            resource_type: String::new(),
            id: String::new(),
            version_id: String::new(),
            last_updated: String::new(),
            kind,
            class: Class::Permanent,
            state: State::Open,
            message,
            error_file: String::new(),
            input_file: String::new(),
            offset: 0,
            line: 0,
            first_seen: now,
            last_seen: now,
            attempts: 1,
            resolution: String::new(),
            retry_import: String::new(),
            next_attempt: None,
            unnamed_lines: 0,
            etag: None,
        }
    }

    /// The row key of a resource version: `Type|id|versionId`, each part escaped so that anything a refused
    /// line holds (an invalid id with `/`, `#` or control characters, a very long value) still makes a valid
    /// Table storage key.
    pub fn key_of(resource_type: &str, id: &str, version_id: &str) -> String {
        format!(
            "{}|{}|{}",
            key_part(resource_type, 300),
            key_part(id, 300),
            key_part(version_id, 300)
        )
    }

    pub fn to_entity(&self, partition: &str) -> Result<Entity, TableError> {
        let mut e = Entity::new(partition, &self.key)?;
        e.set_i64("Window", self.window)
            .set_str("ResourceType", &self.resource_type)
            .set_str("ResourceId", &self.id)
            .set_str("VersionId", &self.version_id)
            .set_str("LastUpdated", &self.last_updated)
            .set_str("Kind", self.kind.as_str())
            .set_str("Class", self.class.as_str())
            .set_str("State", self.state.as_str())
            .set_str("Message", self.message.chars().take(MESSAGE_CHARS).collect::<String>())
            .set_str("ErrorFile", &self.error_file)
            .set_str("InputFile", &self.input_file)
            .set_i64("Offset", self.offset as i64)
            .set_i64("Line", self.line as i64)
            .set_datetime("FirstSeen", self.first_seen)
            .set_datetime("LastSeen", self.last_seen)
            .set_i64("Attempts", self.attempts)
            .set_str("Resolution", &self.resolution)
            .set_str("RetryImport", &self.retry_import);
        if let Some(t) = self.next_attempt {
            e.set_datetime("NextAttempt", t);
        }
        if self.unnamed_lines > 0 {
            e.set_i64("UnnamedLines", self.unnamed_lines as i64);
        }
        if let Some(tag) = &self.etag {
            e.set_etag(tag.clone());
        }
        Ok(e)
    }

    pub fn from_entity(e: &Entity) -> Option<Entry> {
        let text = |n: &str| e.get_str(n).unwrap_or_default().to_string();
        Some(Entry {
            key: e.row_key().to_string(),
            window: e.get_i64("Window").unwrap_or_default(),
            resource_type: text("ResourceType"),
            id: text("ResourceId"),
            version_id: text("VersionId"),
            last_updated: text("LastUpdated"),
            kind: Kind::parse(e.get_str("Kind")?)?,
            class: Class::parse(e.get_str("Class")?)?,
            state: State::parse(e.get_str("State")?)?,
            message: text("Message"),
            error_file: text("ErrorFile"),
            input_file: text("InputFile"),
            offset: e.get_i64("Offset").unwrap_or_default().max(0) as u64,
            line: e.get_i64("Line").unwrap_or_default().max(0) as u64,
            first_seen: e.get_datetime("FirstSeen")?,
            last_seen: e.get_datetime("LastSeen")?,
            attempts: e.get_i64("Attempts").unwrap_or_default(),
            resolution: text("Resolution"),
            retry_import: text("RetryImport"),
            next_attempt: e.get_datetime("NextAttempt"),
            unnamed_lines: e.get_i64("UnnamedLines").unwrap_or(0).max(0) as u64,
            etag: e.etag().cloned(),
        })
    }

    /// `Patient/p1 version 3 (2024-01-01T00:00:00.000Z)`, or the file position when the resource is unknown.
    pub fn describe(&self) -> String {
        if self.id.is_empty() {
            format!("line {} at offset {} of {}", self.line, self.offset, self.error_file)
        } else {
            format!(
                "{}/{} version {} ({})",
                self.resource_type, self.id, self.version_id, self.last_updated
            )
        }
    }
}

/// Counts by class and state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub total: usize,
    /// Permanent entries still open or being retried: cut-over is NOT READY while this is above zero.
    pub permanent_unresolved: usize,
    /// Transient entries waiting for their automatic retry.
    pub transient_pending: usize,
    pub resolved: usize,
    pub benign: usize,
    pub accepted: usize,
}

impl Summary {
    pub fn of(entries: &[Entry]) -> Summary {
        let mut s = Summary {
            total: entries.len(),
            ..Summary::default()
        };
        for e in entries {
            match (e.class, e.state) {
                (_, State::Accepted) => s.accepted += 1,
                (Class::Benign, _) => s.benign += 1,
                (_, State::Resolved) => s.resolved += 1,
                (Class::Transient, _) => s.transient_pending += 1,
                (Class::Permanent, _) => s.permanent_unresolved += 1,
            }
        }
        s
    }

    /// Anything left that is not at the destination and not accepted.
    pub fn unresolved(&self) -> usize {
        self.permanent_unresolved + self.transient_pending
    }

    /// One line for status, verify and cut-over reports.
    pub fn line(&self) -> String {
        format!(
            "{} not at the destination ({} permanent, {} retried automatically); {} resolved, {} benign, {} accepted",
            self.unresolved(),
            self.permanent_unresolved,
            self.transient_pending,
            self.resolved,
            self.benign,
            self.accepted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_sorted_into_kinds() {
        for (message, kind) in [
            (
                "Failed to import duplicate resource, resource id: p2, line: 4",
                Kind::Duplicate,
            ),
            (
                "Failed to import resource with version conflict, resource id: p1, line: 3",
                Kind::Conflict,
            ),
            (
                "Invalid resource id: 'a b'. Id must be any combination of …",
                Kind::InvalidId,
            ),
            ("Resource type not match.", Kind::WrongType),
            (
                "SearchParameter resources cannot be processed by import.",
                Kind::SearchParameter,
            ),
            ("LastUpdated in the resource cannot be in the future.", Kind::Future),
            ("Unexpected character at line 1", Kind::Invalid),
        ] {
            assert_eq!(Kind::of(message), kind, "{message}");
        }
    }

    #[test]
    fn an_entry_survives_its_row() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        let entry = Entry {
            key: Entry::key_of("Patient", "p1", "3"),
            window: 7,
            resource_type: "Patient".into(),
            id: "p1".into(),
            version_id: "3".into(),
            last_updated: "2026-01-01T00:00:00.000Z".into(),
            kind: Kind::Conflict,
            class: Class::Permanent,
            state: State::Open,
            message: "conflict".into(),
            error_file: "https://a/fhirlogs/x.ndjson".into(),
            input_file: "https://a/c/Patient-1.ndjson".into(),
            offset: 10_000_000,
            line: 4,
            first_seen: now,
            last_seen: now,
            attempts: 1,
            resolution: String::new(),
            retry_import: String::new(),
            next_attempt: Some(now),
            unnamed_lines: 0,
            etag: None,
        };
        let back = Entry::from_entity(&entry.to_entity("pk").unwrap()).unwrap();
        assert_eq!(back, entry);
        // An entry for lines the ledger could not name keeps their count; no retry time stays none.
        let unnamed = Entry {
            key: "file|x".into(),
            unnamed_lines: 5,
            next_attempt: None,
            ..entry
        };
        assert_eq!(Entry::from_entity(&unnamed.to_entity("pk").unwrap()).unwrap(), unnamed);
    }

    /// How status, cut-over and the import events name an entry: the version, or the file position when the
    /// resource is unknown.
    #[test]
    fn an_entry_is_named_by_its_version_or_its_place_in_the_error_file() {
        let now = Utc::now();
        let mut e = Entry::open("Patient|p1|3".into(), 1, Kind::Conflict, "m".into(), now);
        e.resource_type = "Patient".into();
        e.id = "p1".into();
        e.version_id = "3".into();
        e.last_updated = "2026-01-01T00:00:00.000Z".into();
        assert_eq!(e.describe(), "Patient/p1 version 3 (2026-01-01T00:00:00.000Z)");
        e.id.clear();
        e.line = 4;
        e.offset = 97;
        e.error_file = "https://a/fhirlogs/x.ndjson".into();
        assert_eq!(e.describe(), "line 4 at offset 97 of https://a/fhirlogs/x.ndjson");
    }

    /// Whatever a refused line holds, its key is a valid Table storage key (an invalid id is exactly what gets
    /// refused).
    #[test]
    fn keys_are_valid_whatever_the_line_holds() {
        for id in [
            "p1",
            "a/b#c?d\\e",
            "x|y",
            "with space",
            "tab\tnew\nline",
            &"z".repeat(5000),
            "a,b",
            "%41",
        ] {
            let key = Entry::key_of("Patient", id, "1");
            assert!(Entity::new("pk", &key).is_ok(), "{key}");
            assert!(!key.contains(','), "{key}");
        }
        assert_eq!(Entry::key_of("Patient", "p1", "3"), "Patient|p1|3");
        assert_ne!(
            Entry::key_of("Patient", "a|b", "1"),
            Entry::key_of("Patient", "a", "b|1")
        );
    }

    #[test]
    fn the_summary_counts_what_blocks_cut_over() {
        let mut e = Entry::from_entity(&{
            let mut x = Entity::new("pk", "k").unwrap();
            x.set_str("Kind", "Conflict")
                .set_str("Class", "Permanent")
                .set_str("State", "Open")
                .set_datetime("FirstSeen", Utc::now())
                .set_datetime("LastSeen", Utc::now());
            x
        })
        .unwrap();
        let open = e.clone();
        e.state = State::Accepted;
        let accepted = e.clone();
        e.class = Class::Benign;
        e.state = State::Resolved;
        let benign = e.clone();
        e.class = Class::Permanent;
        let resolved = e.clone();
        e.class = Class::Transient;
        e.state = State::Retrying;
        let transient = e;
        let s = Summary::of(&[open, accepted, benign, resolved, transient]);
        assert_eq!(
            (
                s.total,
                s.permanent_unresolved,
                s.accepted,
                s.benign,
                s.resolved,
                s.transient_pending
            ),
            (5, 1, 1, 1, 1, 1)
        );
        assert_eq!(s.unresolved(), 2);
        // What stands between the migration and cut-over (and what "retry every open entry" picks).
        let unresolved: Vec<State> = [State::Open, State::Retrying, State::Resolved, State::Accepted]
            .into_iter()
            .filter(|s| s.unresolved())
            .collect();
        assert_eq!(unresolved, [State::Open, State::Retrying]);
    }
}
