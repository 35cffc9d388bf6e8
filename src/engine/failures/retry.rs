//! Retrying ledger entries: transient ones when due, permanent ones when an operator asks (queued by
//! [`super::requests`], after fixing the cause). The versions' exported lines are gathered into one NDJSON file
//! next to their export files and imported again; when that import ends, each entry is settled by looking at the
//! destination itself, so the outcome is right whatever the import reported.
//!
//! Crash safety: the retry import's status URL is recorded on each entry after the POST. A crash before that
//! leaves the entries due, and the next tick posts a new file: the versions are imported twice at worst, and
//! importing an identical version again changes nothing (reference §6.2).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::ports::{LedgerPorts, ReadFailed, Work};
use super::record::{Pair, event};
use crate::engine::{Engine, EngineError};
use crate::fhir::Poll;
use crate::fhir::wire::ImportErrorFile;
use crate::ledger::locate::{error_line, identity, input_line};
use crate::ledger::{Class, Entry, Kind, State};
use crate::storage::tables::TableError;
use crate::telemetry::id_of;

/// Versions per retry import.
const BATCH: usize = 1000;

impl Engine {
    /// The ledger's share of the ImportStatus timer (see [`Work::ledger_tick`]).
    pub async fn ledger_tick(&self, now: DateTime<Utc>) -> Result<Vec<String>, EngineError> {
        Work(self).ledger_tick(now).await
    }
}

impl<P: LedgerPorts> Work<'_, P> {
    /// The ledger's share of the ImportStatus timer: settles finished retry imports and starts the next one.
    /// Returns lines for the tick's report.
    pub async fn ledger_tick(&self, now: DateTime<Utc>) -> Result<Vec<String>, EngineError> {
        let queued = self.0.ledger_list(Some(State::Retrying)).await?;
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        let mut lines = Vec::new();
        let mut in_flight: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let mut due = Vec::new();
        for e in queued {
            if !e.retry_import.is_empty() {
                in_flight.entry(e.retry_import.clone()).or_default().push(e);
            } else if e.next_attempt.is_none_or(|t| t <= now) {
                due.push(e);
            }
        }
        for (url, group) in in_flight {
            // When the retry import was posted (see `start_retry`): past the job timeout it is given up on.
            let posted = group.iter().map(|e| e.last_seen).max().unwrap_or(now);
            let overdue = now - posted > self.0.job_timeout();
            match self.0.import_status(&url).await {
                Ok(Poll::Running(_)) if overdue => lines.push(self.give_up_on(&url, group, now).await?),
                Ok(Poll::Running(_)) => {}
                Ok(Poll::Done(result)) => match self.said(&result.error).await {
                    Ok(said) => lines.push(self.settle(group, said, None, now).await?),
                    // Settled on a later tick, when the files can be read; past the job timeout, by what the
                    // destination holds alone.
                    Err(_) if overdue => lines.push(self.settle(group, HashMap::new(), None, now).await?),
                    Err(why) => lines.push(format!(
                        "Failure ledger: the retry import {}'s error files could not be read yet (settled on a later tick): {why}",
                        id_of(&url)
                    )),
                },
                Ok(Poll::Failed { status, diagnostics }) => {
                    let why = format!("the retry import failed: HTTP {status}: {diagnostics}");
                    lines.push(self.settle(group, HashMap::new(), Some(&why), now).await?);
                }
                // Unanswered past the job timeout: given up on too (its cancel is tried; the versions are queued
                // again), never polled for ever.
                Err(_) if overdue => lines.push(self.give_up_on(&url, group, now).await?),
                Err(e) => lines.push(format!(
                    "Could not poll the retry import {url} (next tick tries again): {e}"
                )),
            }
        }
        let mut to_import = Vec::new();
        for e in due {
            match e.kind {
                Kind::Unreadable => lines.push(self.reread(e, now).await?),
                // SearchParameters travel through the REST API (the starter's sync): only check they arrived.
                Kind::SearchParameter => lines.push(self.search_parameter_arrived(e, now).await?),
                _ => to_import.push(e),
            }
        }
        // Versions left out over the same-millisecond capacity fail a whole import while that millisecond is full:
        // they are retried in an import of their own, after the others, never holding those back.
        let (crowded, others): (Vec<Entry>, Vec<Entry>) =
            to_import.into_iter().partition(|e| e.kind == Kind::SameMillisecond);
        let batch = if others.is_empty() {
            one_per_millisecond(crowded)
        } else {
            others
        };
        if !batch.is_empty() {
            lines.push(self.start_retry(batch.into_iter().take(BATCH).collect(), now).await?);
        }
        Ok(lines)
    }

    /// The exported lines of these entries, read one export file at a time (each dropped after use), in
    /// the entries' order; `None` for a line that cannot be read any more.
    async fn exported_lines(&self, entries: &[Entry]) -> Vec<Option<Value>> {
        let mut by_file: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_file.entry(e.input_file.as_str()).or_default().push(i);
        }
        let mut out = vec![None; entries.len()];
        for (file, indexes) in by_file {
            let Ok(Some(bytes)) = self.0.read_blob(file).await else {
                continue;
            };
            for i in indexes {
                out[i] =
                    input_line(&bytes, entries[i].offset, entries[i].line).and_then(|l| serde_json::from_slice(l).ok());
            }
        }
        out
    }

    /// Posts one import of the due entries' exported lines. The file is named after the versions in it, so a
    /// repeated attempt overwrites it rather than leaving another behind; a refused POST is backed off.
    async fn start_retry(&self, due: Vec<Entry>, now: DateTime<Utc>) -> Result<String, EngineError> {
        let lines = self.exported_lines(&due).await;
        let mut body = String::new();
        let mut posted = Vec::new();
        for (mut e, line) in due.into_iter().zip(lines) {
            match line {
                Some(l) => {
                    body.push_str(&l.to_string());
                    body.push('\n');
                    posted.push(e);
                }
                None => {
                    // Nothing to import from this time: the storage read failed, or the export file is gone (then
                    // only a new export can bring it, and the bound below shows it open).
                    let why = format!(
                        "cannot retry yet: the exported line could not be read from {} (tried again later; if the file is gone, re-export its window)",
                        e.input_file
                    );
                    requeue(&mut e, now, why);
                    self.save_quietly(&e).await?;
                }
            }
        }
        let Some(first) = posted.first() else {
            return Ok("Failure ledger: nothing could be retried (see `failures`)".into());
        };
        let name = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            // Each queueing of an entry (an attempt, an operator's retry) names a new file, so the definition is
            // new even where the file's ETag cannot be sent (reference §11.7: the destination de-duplicates on the
            // raw definition, finished jobs included). A repeat of this attempt (a crash before the status URL was
            // recorded) writes the same file again, which gives it a new ETag and so a new job: the earlier one
            // runs on unrecorded and imports the same versions, which changes nothing (reference §6.2).
            for e in &posted {
                (&e.key, e.attempts, e.next_attempt.map(|t| t.timestamp_micros())).hash(&mut h);
            }
            format!("ledger-retry/{:016x}.ndjson", h.finish())
        };
        // Next to the export files, on the account the destination imports from.
        let Some((url, etag)) = self
            .0
            .write_retry_file(&first.input_file, &name, body.into_bytes())
            .await?
        else {
            let why = format!(
                "cannot retry: the account of {} is not one the tool can write its retry file to (AZURE_IntegrationStorageUri); re-export the window, or accept it",
                first.input_file
            );
            for mut e in posted {
                e.state = State::Open;
                e.class = Class::Permanent;
                e.message = why.clone();
                self.save_quietly(&e).await?;
            }
            return Ok(format!("Failure ledger: {why}"));
        };
        let mut part = vec![json!({ "name": "url", "valueUri": url })];
        if let Some(etag) = etag {
            part.push(json!({ "name": "etag", "valueString": etag }));
        }
        let parameters = json!({ "resourceType": "Parameters", "parameter": [
            { "name": "inputFormat", "valueString": "application/fhir+ndjson" },
            { "name": "mode", "valueString": self.0.import_mode() },
            { "name": "input", "part": part },
        ]});
        let count = posted.len();
        let status_url = match self.0.post_import(&parameters).await {
            Ok(url) => url,
            Err(refused) => {
                // The entries stay queued, a little later each time, with the reason shown (bounded).
                for mut e in posted {
                    requeue(
                        &mut e,
                        now,
                        format!("the retry import was not accepted (tried again later): {refused}"),
                    );
                    self.save_quietly(&e).await?;
                }
                return Ok(format!(
                    "Failure ledger: a retry import of {count} version(s) was refused: {refused}"
                ));
            }
        };
        for mut e in posted {
            e.retry_import = status_url.clone();
            // When the retry import was posted: it is cancelled and tried again past the job timeout.
            e.last_seen = now;
            self.save_quietly(&e).await?;
        }
        Ok(format!(
            "Failure ledger: retrying {count} version(s) in import {}",
            crate::telemetry::id_of(&status_url)
        ))
    }

    /// What a finished retry import's error files say, by version; an error when a file could not be read and may
    /// be read later (a file not there to read says nothing).
    async fn said(&self, errors: &[ImportErrorFile]) -> Result<HashMap<String, String>, ReadFailed> {
        let mut said = HashMap::new();
        for file in errors {
            let (Some(lines), Some(input)) = (
                self.0.read_blob(&file.url).await?,
                self.0.read_blob(file.input_url.as_deref().unwrap_or_default()).await?,
            ) else {
                continue;
            };
            for text in String::from_utf8_lossy(&lines).lines().filter(|l| !l.trim().is_empty()) {
                let e = error_line(text);
                if let Some((offset, n)) = e.position
                    && let Some((t, id, vid, _)) = input_line(&input, offset, n).and_then(identity)
                {
                    said.insert(Entry::key_of(&t, &id, &vid), e.message);
                }
            }
        }
        Ok(said)
    }

    /// Settles the entries of a finished retry import by what the destination now holds. A failed job (as
    /// opposed to a refused line) leaves each entry's kind and class as they were.
    async fn settle(
        &self,
        group: Vec<Entry>,
        said: HashMap<String, String>,
        failure: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<String, EngineError> {
        let exported = self.exported_lines(&group).await;
        let (mut resolved, mut failed) = (0, 0);
        for (mut e, line) in group.into_iter().zip(exported) {
            let there = match &line {
                Some(l) => self.identical_at_destination(l).await?,
                // The export file is gone: the stored version with the same instant is the best evidence.
                None => self.same_version_at_destination(&e).await?,
            };
            e.retry_import.clear();
            e.last_seen = now;
            if there {
                e.state = State::Resolved;
                e.resolution = format!("imported on retry (attempt {})", e.attempts + 1);
                resolved += 1;
            } else {
                let job_failed = failure.is_some() && !said.contains_key(&e.key);
                if let Some(message) = said.get(&e.key) {
                    e.kind = Kind::of(message);
                }
                let why = said
                    .get(&e.key)
                    .cloned()
                    .or(failure.map(str::to_string))
                    .unwrap_or_else(|| e.message.clone());
                if job_failed {
                    if failure.is_some_and(|f| f.contains(crate::engine::core::capacity::CAPACITY_TEXT)) {
                        // Retried as the versions left out over the capacity are: one per millisecond an import.
                        e.kind = Kind::SameMillisecond;
                    }
                    // The job failed as a whole, which says nothing sure about this version (the server failed,
                    // another instance rewrote the file, or the same-millisecond message, which the server also
                    // gives after repeated SQL conflicts): the retry, automatic or an operator's, goes on later,
                    // within the bound.
                    requeue(&mut e, now, why);
                } else if e.kind == Kind::Future {
                    e.class = Class::Transient;
                    requeue(&mut e, now, why);
                } else {
                    e.attempts += 1;
                    e.message = why;
                    e.class = Class::Permanent;
                    e.state = State::Open;
                }
                failed += 1;
            }
            self.save_quietly(&e).await?;
        }
        Ok(format!(
            "Failure ledger: a retry import ended: {resolved} version(s) now at the destination, {failed} still failing"
        ))
    }

    /// A retry import that ran past the job timeout: cancelled, and its entries queued again (with a new
    /// attempt, so a new definition). While the cancel cannot reach the server the import is kept, and cancelled
    /// again on the next tick: it is never left running unrecorded.
    async fn give_up_on(&self, url: &str, group: Vec<Entry>, now: DateTime<Utc>) -> Result<String, EngineError> {
        let answer = self.0.cancel_import(url).await;
        if let Err(why) = crate::engine::core::rules::cancel_outcome(&answer) {
            return Ok(format!(
                "Failure ledger: the retry import {url} ran past the job timeout, and could not be cancelled (tried again next tick): {why}"
            ));
        }
        let count = group.len();
        for mut e in group {
            e.retry_import.clear();
            let why = format!(
                "the retry import {} ran past the job timeout and was cancelled (tried again later)",
                crate::telemetry::id_of(url)
            );
            requeue(&mut e, now, why);
            self.save_quietly(&e).await?;
        }
        Ok(format!(
            "Failure ledger: cancelled the retry import {url} (past the job timeout); its {count} version(s) are queued again"
        ))
    }

    /// Whether the destination holds an entry's version with the entry's lastUpdated (when its exported line
    /// cannot be read any more).
    async fn same_version_at_destination(&self, e: &Entry) -> Result<bool, EngineError> {
        if e.id.is_empty() || e.version_id.is_empty() {
            return Ok(false);
        }
        Ok(match self.0.vread(&e.resource_type, &e.id, &e.version_id).await? {
            crate::fhir::VersionRead::Found(stored) => {
                super::record::same_instant(&stored["meta"]["lastUpdated"], &Value::String(e.last_updated.clone()))
            }
            _ => false,
        })
    }

    /// A SearchParameter entry: resolved once the destination has it (the starter's sync copies them).
    async fn search_parameter_arrived(&self, mut e: Entry, now: DateTime<Utc>) -> Result<String, EngineError> {
        if !e.id.is_empty() && self.0.has_search_parameter(&e.id).await? {
            e.state = State::Resolved;
            e.class = Class::Benign;
            e.resolution = "the SearchParameter is at the destination (copied through the REST API)".into();
            self.save_quietly(&e).await?;
            return Ok(format!(
                "Failure ledger: SearchParameter/{} is at the destination",
                e.id
            ));
        }
        let why = "the SearchParameter is not at the destination yet (the tool's SearchParameter sync copies it; see `status`)".to_string();
        requeue(&mut e, now, why);
        self.save_quietly(&e).await?;
        Ok(format!(
            "Failure ledger: SearchParameter/{} is not at the destination yet",
            e.id
        ))
    }

    /// An error file that could not be read before: read it again (once; the lines are recorded from what was
    /// read), and resolve its placeholder when the file could be read.
    async fn reread(&self, mut e: Entry, now: DateTime<Utc>) -> Result<String, EngineError> {
        let mut file = ImportErrorFile {
            resource_type: Some(e.resource_type.clone()).filter(|t| !t.is_empty()),
            count: e.unnamed_lines,
            input_url: Some(e.input_file.clone()).filter(|u| !u.is_empty()),
            url: e.error_file.clone(),
        };
        let (bytes, input) = match self.read_pair(&file).await {
            Ok(Pair::Read(bytes, input)) => (bytes, input),
            Ok(Pair::Unreadable(what)) => {
                e.state = State::Open;
                e.attempts += 1;
                e.last_seen = now;
                self.save_quietly(&e).await?;
                return Ok(format!(
                    "Failure ledger: for the error file {}, {what} is still not readable",
                    id_of(&e.error_file)
                ));
            }
            // Storage may answer later: waited for, within the bound every automatic retry has.
            Err(why) => {
                let why = format!(
                    "{} line(s) failed, and their files could not be read yet ({why})",
                    e.unnamed_lines
                );
                requeue(&mut e, now, why);
                e.last_seen = now;
                self.save_quietly(&e).await?;
                return Ok(format!(
                    "Failure ledger: the error file {} could not be read yet (tried again later)",
                    id_of(&e.error_file)
                ));
            }
        };
        // A shortfall: the file was read, and held fewer lines than the server counted. Reading it again names
        // the missing lines only if the file now holds them all; otherwise they stay open (never resolved by a
        // re-read that cannot name them).
        if let Some(named_before) = super::record::shortfall_of(&e) {
            let held = super::record::distinct_lines(&String::from_utf8_lossy(&bytes));
            // An older entry does not say how many lines its file held: it can only be accepted or re-exported.
            let expected = named_before.map_or(u64::MAX, |n| n + e.unnamed_lines);
            if held < expected {
                e.state = State::Open;
                e.attempts += 1;
                e.last_seen = now;
                self.save_quietly(&e).await?;
                return Ok(format!(
                    "Failure ledger: the error file {} still lacks {} failed line(s) the server counted (it holds {held}); they cannot be named: re-export the window, or accept them",
                    e.error_file, e.unnamed_lines
                ));
            }
            file.count = expected;
        }
        let mut summary = crate::engine::error_files::ErrorSummary::default();
        // Lines the file does not hold are recorded as a shortfall of their own, so this placeholder can go.
        let named = self
            .record_file(e.window, &file, &bytes, input, now, &mut summary)
            .await?;
        e.state = State::Resolved;
        e.resolution = format!(
            "the error file was read: its {named} line(s) are recorded one by one{}",
            if named < e.unnamed_lines {
                format!(", and the {} it lacks as a shortfall", e.unnamed_lines - named)
            } else {
                String::new()
            }
        );
        self.save_quietly(&e).await?;
        Ok(format!(
            "Failure ledger: read the error file {} ({} permanent, {} transient, {} benign)",
            e.error_file, summary.permanent, summary.transient, summary.benign
        ))
    }

    /// Saves an entry as read; a conflict means another invocation handled it, which is fine.
    async fn save_quietly(&self, e: &Entry) -> Result<(), EngineError> {
        match self.0.ledger_save(e).await {
            Ok(()) => {
                self.0.emit(event(e));
                Ok(())
            }
            Err(TableError::Conflict { .. } | TableError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

/// Automatic retries of one entry before it is shown as open for an operator (with the backoff below, about a
/// day of retrying).
const MAX_AUTOMATIC_RETRIES: i64 = 30;

/// Of entries left out over the same-millisecond capacity, one per resource type and millisecond: a retry import
/// then adds at most one row to any millisecond, so it fails for the capacity only where that millisecond is
/// full at the destination (a batch of several could overflow one that has room for some).
fn one_per_millisecond(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|e| {
            let ms = DateTime::parse_from_rfc3339(&e.last_updated).map_or(i64::MIN, |t| t.timestamp_millis());
            seen.insert((e.resource_type.clone(), ms))
        })
        .collect()
}

/// Queues an entry again after a retry that did not bring it, a little later each time, with the reason; past
/// [`MAX_AUTOMATIC_RETRIES`] it is shown as open with its last reason instead, never retried for ever.
fn requeue(e: &mut Entry, now: DateTime<Utc>, why: String) {
    e.attempts += 1;
    if e.attempts > MAX_AUTOMATIC_RETRIES {
        e.class = Class::Permanent;
        e.state = State::Open;
        e.message = format!(
            "gave up after {MAX_AUTOMATIC_RETRIES} retries; the last: {why}: fix the cause, then retry it (`failures retry`), or accept it"
        );
    } else {
        e.message = why;
        e.next_attempt = Some(now + backoff(e.attempts));
    }
}

/// The wait before an entry's next automatic retry: 5 minutes per attempt, at most an hour.
fn backoff(attempts: i64) -> TimeDelta {
    TimeDelta::minutes(5 * attempts.clamp(1, 12))
}
