//! Recording a finished import's failed lines: read each error file and the input file it is about, name the
//! resource version of every failed line, decide its class (checking the destination where the server's word
//! alone cannot tell benign from lost), and write the ledger row. Re-reading the same error file changes
//! nothing, so a crash anywhere in here is repaired by doing it again.

use chrono::{DateTime, TimeDelta, Utc};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::Value;

use super::ports::{LedgerPorts, ReadFailed, Work};
use crate::engine::error_files::ErrorSummary;
use crate::engine::{Engine, EngineError};
use crate::fhir::VersionRead;
use crate::fhir::wire::ImportErrorFile;
use crate::ledger::locate::{ErrorLine, error_line, identity, input_line};
use crate::ledger::{Class, Entry, Kind, State};
use crate::storage::blob::BlobError;
use crate::storage::tables::TableError;
use crate::telemetry::{Event, id_of};

/// Files larger than this are not read whole (their lines are recorded by position only).
const MAX_FILE_BYTES: usize = 256 * 1024 * 1024;
/// Destination checks and ledger writes at once.
const AT_ONCE: usize = 16;
/// The soft-delete marker of exported deleted versions (reference §6.4).
const DELETED_STATE: &str = "http://azurehealthcareapis.com/data-extensions/deleted-state";

/// What reading an error file and its input file gave.
pub(super) enum Pair {
    Read(Vec<u8>, Option<Vec<u8>>),
    /// Which file is not there to read (missing, too large, or refused to the tool).
    Unreadable(String),
}

/// One failed line, before its class is decided: the entry and the input line it is about.
struct Failed {
    entry: Entry,
    input: Option<Value>,
}

impl Engine {
    /// Records every failed line of a finished import in the ledger (see [`Work::record_failures`]).
    pub async fn record_failures(
        &self,
        window: i64,
        errors: &[ImportErrorFile],
        now: DateTime<Utc>,
    ) -> Result<ErrorSummary, EngineError> {
        Work(self).record_failures(window, errors, now).await
    }

    /// Writes an entry (see [`Work::upsert`]).
    pub(super) async fn upsert(&self, fresh: Entry, now: DateTime<Utc>) -> Result<Entry, EngineError> {
        Work(self).upsert(fresh, now).await
    }

    /// Reads a blob by URL: `Ok(None)` when there is nothing the tool can read there (no such blob, an account it
    /// does not know or may not read, a file too large, a request the service refuses), an error when the read
    /// failed in a way that may pass (throttled, a timeout, a 5xx, no connection), so the caller waits for it
    /// instead of deciding on a file it has not seen.
    pub(crate) async fn read_blob(&self, url: &str) -> Result<Option<Vec<u8>>, ReadFailed> {
        let Some((store, container, name)) = url::Url::parse(url).ok().and_then(|u| self.locate_blob(&u)) else {
            return Ok(None);
        };
        match store.get(&container, &name).await {
            Ok(Some(b)) if b.len() <= MAX_FILE_BYTES => Ok(Some(b)),
            Ok(Some(_)) => {
                tracing::warn!("{container}/{name} is larger than {MAX_FILE_BYTES} bytes; not read whole");
                Ok(None)
            }
            Ok(None) => Ok(None),
            Err(e) if may_pass(&e) => Err(ReadFailed(format!("could not read {container}/{name}: {e}"))),
            // Asking again cannot help (401/403: the tool may not read the account): shown at once.
            Err(e) => {
                tracing::warn!(
                    "{e}: not read (grant the tool 'Storage Blob Data Reader' on that account if it is refused)"
                );
                Ok(None)
            }
        }
    }
}

/// Whether a failed blob read may succeed if asked again: throttling, timeouts, server errors and failures to
/// connect do; other refusals (no permission, a bad request) and an unusable endpoint do not.
fn may_pass(e: &BlobError) -> bool {
    match e {
        BlobError::Service { status, .. } => matches!(status, 408 | 429) || *status >= 500,
        BlobError::Other { .. } => true,
        BlobError::Setup(..) => false,
    }
}

impl<P: LedgerPorts> Work<'_, P> {
    /// Records every failed line of a finished import in the ledger and returns the counts by kind and class.
    /// Files are handled one at a time (an export file is read, used and dropped), and a line recorded from
    /// the same error file before (a replay after a crash or a timeout) is not decided again, so a long list
    /// of refusals progresses across ticks instead of starting over.
    pub async fn record_failures(
        &self,
        window: i64,
        errors: &[ImportErrorFile],
        now: DateTime<Utc>,
    ) -> Result<ErrorSummary, EngineError> {
        self.0.ledger_ensure().await?;
        let mut summary = ErrorSummary::default();
        for file in errors {
            // A read that failed fails the recording, like a destination that cannot be asked: the import's
            // completion waits for the next tick (up to the job timeout, then the import is done again), so its
            // window never commits before its refusals are named.
            match self.read_pair(file).await? {
                Pair::Read(bytes, input) => {
                    self.record_file(window, file, &bytes, input, now, &mut summary).await?;
                }
                Pair::Unreadable(what) => {
                    summary.add(&self.upsert(unreadable(window, file, &what, now), now).await?);
                }
            }
        }
        Ok(summary)
    }

    /// An error file and the input file it is about, or which of them is not there to read; an error when a read
    /// failed and may pass. Without its input file an error file's lines could be named by position only, so
    /// they are one entry counting them, which a retry names once the file can be read.
    pub(super) async fn read_pair(&self, file: &ImportErrorFile) -> Result<Pair, ReadFailed> {
        let Some(bytes) = self.0.read_blob(&file.url).await? else {
            return Ok(Pair::Unreadable(format!("the error file {}", id_of(&file.url))));
        };
        let input = match file.input_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => match self.0.read_blob(url).await? {
                Some(input) => Some(input),
                None => return Ok(Pair::Unreadable(format!("the export file {} it is about", id_of(url)))),
            },
            None => None,
        };
        Ok(Pair::Read(bytes, input))
    }

    /// Records the lines of one error file and its input file (both already read); the server's count for it that
    /// the file does not account for is recorded as unnamed lines. Returns how many lines the file names.
    pub(crate) async fn record_file(
        &self,
        window: i64,
        file: &ImportErrorFile,
        bytes: &[u8],
        input: Option<Vec<u8>>,
        now: DateTime<Utc>,
        summary: &mut ErrorSummary,
    ) -> Result<u64, EngineError> {
        let input_url = file.input_url.clone().unwrap_or_default();
        let text = String::from_utf8_lossy(bytes);
        // Lines end at `\n` or `\r\n` (a Windows host writes CRLF), and a processing unit that restarts writes its
        // error lines again, so the same line can stand twice (reference §11.5): each distinct positioned line is
        // one entry.
        let failed: Vec<Failed> = failed_lines(&text)
            .into_iter()
            .map(|(i, line)| line_entry(window, file, &input_url, input.as_deref(), line, i, now))
            .collect();
        // The server's count is the last run's (a restarted unit appends its lines again, but its count is
        // replaced), so repeats do not count towards it: a short file stays a shortfall.
        let named = failed.len() as u64;
        // The input file can be large: only the lines it was read for are kept.
        drop(input);
        let entries: Vec<Entry> = stream::iter(failed)
            .map(|f| async move {
                // Read once: a line recorded from this very file is not decided again, and the row read is what
                // the write is guarded by.
                let stored = self.0.ledger_get(&f.entry.key).await?;
                if let Some(old) = &stored
                    && old.error_file == f.entry.error_file
                {
                    return Ok(old.clone());
                }
                let entry = self.classify(f.entry, f.input.as_ref(), now).await?;
                self.upsert_over(entry, stored, now).await
            })
            .buffered(AT_ONCE)
            .try_collect()
            .await?;
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if seen.insert(e.key.clone()) {
                summary.add(e);
            }
        }
        if named < file.count {
            summary.add(
                &self
                    .upsert(shortfall(window, file, named, file.count - named, now), now)
                    .await?,
            );
        }
        Ok(named)
    }

    /// The class of a failed line. Duplicates and conflicts are benign only when the destination holds the very
    /// same version (same lastUpdated, same content); otherwise that version is missing there. A SearchParameter
    /// is benign once the destination has it (the starter's sync copies them), transient until then. A
    /// destination that cannot be asked fails the recording (tried again next tick), never a guess.
    async fn classify(&self, mut e: Entry, input: Option<&Value>, now: DateTime<Utc>) -> Result<Entry, EngineError> {
        e.class = match e.kind {
            Kind::Future => Class::Transient,
            Kind::SearchParameter => {
                if !e.id.is_empty() && self.0.has_search_parameter(&e.id).await? {
                    Class::Benign
                } else {
                    e.next_attempt = Some(now + TimeDelta::minutes(5));
                    Class::Transient
                }
            }
            Kind::Duplicate | Kind::Conflict => match input {
                Some(line) if self.identical_at_destination(line).await? => Class::Benign,
                _ => Class::Permanent,
            },
            Kind::InvalidId | Kind::WrongType | Kind::Invalid | Kind::Unreadable | Kind::SameMillisecond => {
                Class::Permanent
            }
        };
        e.state = match e.class {
            Class::Benign => State::Resolved,
            Class::Transient => State::Retrying,
            Class::Permanent => State::Open,
        };
        e.resolution = match e.kind {
            Kind::SearchParameter if e.class == Class::Benign => {
                "the SearchParameter is at the destination (copied through the REST API)".into()
            }
            _ if e.class == Class::Benign => "the identical version is already at the destination".into(),
            _ => String::new(),
        };
        Ok(e)
    }

    /// Whether the destination holds this exported line's version as it is (a deleted version as deleted).
    pub(crate) async fn identical_at_destination(&self, line: &Value) -> Result<bool, EngineError> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let (t, id, vid) = (
            text(&line["resourceType"]),
            text(&line["id"]),
            text(&line["meta"]["versionId"]),
        );
        if t.is_empty() || id.is_empty() || vid.is_empty() {
            return Ok(false);
        }
        let deleted = line["meta"]["extension"]
            .as_array()
            .is_some_and(|x| x.iter().any(|e| e["url"] == DELETED_STATE));
        Ok(match self.0.vread(&t, &id, &vid).await? {
            VersionRead::Found(stored) if !deleted => {
                same_instant(&stored["meta"]["lastUpdated"], &line["meta"]["lastUpdated"])
                    && without_server_meta(&stored) == without_server_meta(line)
            }
            VersionRead::Gone => deleted,
            _ => false,
        })
    }

    /// Writes an entry: a new one as it is; over an existing one, a failure from another error file is one
    /// more attempt, the same file again changes nothing (a re-read after a crash). Returns what is stored.
    pub(crate) async fn upsert(&self, fresh: Entry, now: DateTime<Utc>) -> Result<Entry, EngineError> {
        let stored = self.0.ledger_get(&fresh.key).await?;
        self.upsert_over(fresh, stored, now).await
    }

    /// [`Work::upsert`] over the row as already read; a lost race reads it again.
    async fn upsert_over(
        &self,
        fresh: Entry,
        mut stored: Option<Entry>,
        now: DateTime<Utc>,
    ) -> Result<Entry, EngineError> {
        loop {
            let entry = match &stored {
                None => fresh.clone(),
                Some(old) if old.error_file == fresh.error_file => return Ok(old.clone()),
                Some(old) => Entry {
                    first_seen: old.first_seen,
                    attempts: old.attempts + 1,
                    last_seen: now,
                    etag: old.etag.clone(),
                    // An operator's acceptance stands; anything else follows the latest failure.
                    state: if old.state == State::Accepted {
                        State::Accepted
                    } else {
                        fresh.state
                    },
                    resolution: if old.state == State::Accepted {
                        old.resolution.clone()
                    } else {
                        fresh.resolution.clone()
                    },
                    ..fresh.clone()
                },
            };
            match self.0.ledger_save(&entry).await {
                Ok(()) => {
                    self.0.emit(event(&entry));
                    return Ok(entry);
                }
                // Another invocation wrote it meanwhile: read again and decide again.
                Err(TableError::Conflict { .. } | TableError::AlreadyExists { .. }) => {
                    stored = self.0.ledger_get(&fresh.key).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The `ImportFailure` event: one per ledger entry recorded or changed.
pub(crate) fn event(e: &Entry) -> Event {
    Event::new("ImportFailure")
        .with("ResourceType", &e.resource_type)
        .with("ResourceId", &e.id)
        .with("VersionId", &e.version_id)
        .with("LastUpdated", &e.last_updated)
        .with("Kind", e.kind.as_str())
        .with("Class", e.class.as_str())
        .with("State", e.state.as_str())
        .with("Window", e.window)
        .with("Attempts", e.attempts)
        .with("Message", e.message.chars().take(1000).collect::<String>())
        .with("ErrorFile", id_of(&e.error_file))
}

/// The resource without `meta.versionId` and `meta.lastUpdated` (compared on their own); JSON objects compare
/// regardless of key order.
fn without_server_meta(resource: &Value) -> Value {
    let mut v = resource.clone();
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
    }
    if v["meta"].as_object().is_some_and(|m| m.is_empty())
        && let Some(map) = v.as_object_mut()
    {
        map.remove("meta");
    }
    v
}

/// A row key naming a file position: the file's URL escaped as any key part is.
fn file_key(prefix: &str, url: &str, rest: &str) -> String {
    format!("{prefix}|{}{rest}", crate::ledger::key_part(url, 700))
}

pub(super) fn same_instant(a: &Value, b: &Value) -> bool {
    let ms = |v: &Value| {
        v.as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
    };
    ms(a).is_some() && ms(a) == ms(b)
}

/// An entry for one error-file line, named by its input line when that can be found.
fn line_entry(
    window: i64,
    file: &ImportErrorFile,
    input_url: &str,
    input: Option<&[u8]>,
    text: &str,
    index: usize,
    now: DateTime<Utc>,
) -> Failed {
    let said = error_line(text);
    let (offset, line) = said.position.unwrap_or_default();
    let raw = exported_line(&said, input);
    let (resource_type, id, version_id, last_updated) = raw.and_then(identity).unwrap_or_default();
    let key = if id.is_empty() || version_id.is_empty() {
        // Named by position; a line without one by its place in the error file, so none collapse into one.
        match said.position {
            Some(_) => file_key("line", &file.url, &format!("|{offset}|{line}")),
            None => file_key("line", &file.url, &format!("|e{index}")),
        }
    } else {
        Entry::key_of(&resource_type, &id, &version_id)
    };
    let kind = Kind::of(&said.message);
    // A line ahead of the destination's clock is retried once that instant has passed.
    let next_attempt = (kind == Kind::Future).then(|| {
        DateTime::parse_from_rfc3339(&last_updated)
            .map(|t| t.with_timezone(&Utc) + TimeDelta::seconds(30))
            .unwrap_or(now)
            .max(now + TimeDelta::minutes(1))
    });
    Failed {
        entry: Entry {
            resource_type: if resource_type.is_empty() {
                file.resource_type.clone().unwrap_or_default()
            } else {
                resource_type
            },
            id,
            version_id,
            last_updated,
            error_file: file.url.clone(),
            input_file: input_url.to_string(),
            offset,
            line,
            next_attempt,
            ..Entry::open(key, window, kind, said.message, now)
        },
        input: raw.and_then(|l| serde_json::from_slice(l).ok()),
    }
}

/// An error file the tool could not read: how many lines failed is known, not which.
fn unreadable(window: i64, file: &ImportErrorFile, what: &str, now: DateTime<Utc>) -> Entry {
    Entry {
        resource_type: file.resource_type.clone().unwrap_or_default(),
        error_file: file.url.clone(),
        input_file: file.input_url.clone().unwrap_or_default(),
        unnamed_lines: file.count,
        ..Entry::open(
            file_key("file", &file.url, ""),
            window,
            Kind::Unreadable,
            format!(
                "{} line(s) failed, but {what} cannot be read (missing, too large, or refused to the tool): grant the tool 'Storage Blob Data Reader' on the export account (AZURE_IntegrationStorageUri), then retry; if the file is gone, re-export the window or accept the loss",
                file.count
            ),
            now,
        )
    }
}

/// The failed lines an error file names, each with its index among the file's non-empty lines: each distinct
/// line with a position once (a restarted unit writes its lines again), every line without one (two identical
/// lines without a position may be two failures). Lines end at `\n` or `\r\n` (reference §11.5).
pub(crate) fn failed_lines(text: &str) -> Vec<(usize, &str)> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .filter(|(_, l)| crate::ledger::locate::error_line(l).position.is_none() || seen.insert(*l))
        .collect()
}

/// How many failed lines an error file names.
pub(super) fn distinct_lines(text: &str) -> u64 {
    failed_lines(text).len() as u64
}

/// The exported line an error-file line is about, found by the unit offset and line number it names in the
/// input file, as the server's `ReadLines` owns lines (reference §11.4); `None` when it names no position or
/// the file does not hold it.
pub(crate) fn exported_line<'a>(said: &ErrorLine, input: Option<&'a [u8]>) -> Option<&'a [u8]> {
    let (offset, line) = said.position?;
    input_line(input?, offset, line)
}

/// The key prefix of a shortfall that records how many lines its file did hold (`Entry::line`).
const SHORTFALL: &str = "shortfall";
/// The prefix shortfalls had before that count was kept: how many lines their file held is unknown.
const OLD_SHORTFALL: &str = "short";

/// Whether an entry stands for lines the server counted that its (readable) error file did not hold; `Some`
/// with how many lines the file held, `None` inside when that is unknown (an entry from an older release).
pub(super) fn shortfall_of(e: &Entry) -> Option<Option<u64>> {
    if e.key.starts_with(&format!("{SHORTFALL}|")) {
        Some(Some(e.line))
    } else if e.key.starts_with(&format!("{OLD_SHORTFALL}|")) {
        Some(None)
    } else {
        None
    }
}

/// Lines the server counted that the error file does not hold (a partial write): recorded as unnamed, so the
/// count of failures never shrinks silently.
fn shortfall(window: i64, file: &ImportErrorFile, named: u64, missing: u64, now: DateTime<Utc>) -> Entry {
    Entry {
        key: file_key(SHORTFALL, &file.url, ""),
        // How many lines the file did hold, so a later read can tell whether it holds the missing ones now.
        line: named,
        message: format!(
            "the server counted {missing} more failed line(s) than its error file holds: they cannot be named; re-export the window to import them again"
        ),
        unnamed_lines: missing,
        ..unreadable(window, file, "the error file", now)
    }
}

#[cfg(test)]
mod tests;
