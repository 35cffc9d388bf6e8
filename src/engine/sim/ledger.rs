//! The simulator's side of [`LedgerPorts`]: the failure ledger's table in memory (compare-and-swap on ETags,
//! with the schedule's storage faults and crash points), the world's files read by URL, the destination's
//! versions, and retry imports through the simulated destination. So the tool's own recording, automatic
//! retry, operator retry and acceptance run in the schedules.

use chrono::TimeDelta;
use serde_json::Value;

use super::destination::{render, version_of};
use super::ports::{INJECTED, SimPorts, conflict, exists};
use super::world::{Version, World};
use crate::engine::EngineError;
use crate::engine::core::rules::CancelAnswer;
use crate::engine::core::{Answer, ImportPoll};
use crate::engine::failures::ports::{LedgerPorts, ReadFailed, Work};
use crate::fhir::wire::ImportResult;
use crate::fhir::{Poll, VersionRead};
use crate::ledger::{Entry, State};
use crate::storage::tables::TableError;
use crate::telemetry::Event;

impl SimPorts {
    /// A stored row as a read returns it: with its ETag.
    fn row(e: &Entry, n: u64) -> Entry {
        Entry {
            etag: World::etag(n),
            ..e.clone()
        }
    }

    /// Records the versions a rewrite left out, with the ledger's own code (as the engine's examination does).
    pub(super) async fn record_left_out(&self, entries: Vec<Entry>) -> Result<(), EngineError> {
        let now = self.world().now;
        for e in entries {
            Work(self).upsert(e, now).await?;
        }
        Ok(())
    }
}

impl LedgerPorts for SimPorts {
    async fn ledger_ensure(&self) -> Result<(), TableError> {
        Ok(())
    }

    async fn ledger_get(&self, key: &str) -> Result<Option<Entry>, TableError> {
        self.enter().await;
        self.storage_fault("ledger get")?;
        let w = self.world();
        Ok(w.ledger.get(key).map(|(e, n)| Self::row(e, *n)))
    }

    async fn ledger_list(&self, state: Option<State>) -> Result<Vec<Entry>, TableError> {
        self.enter().await;
        self.storage_fault("ledger list")?;
        let w = self.world();
        let mut rows: Vec<Entry> = w
            .ledger
            .values()
            .filter(|(e, _)| state.is_none_or(|s| e.state == s))
            .map(|(e, n)| Self::row(e, *n))
            .collect();
        rows.sort_by(|a, b| (a.window, &a.key).cmp(&(b.window, &b.key)));
        Ok(rows)
    }

    async fn ledger_save(&self, entry: &Entry) -> Result<(), TableError> {
        self.enter().await;
        self.storage_fault("ledger save")?;
        let result = {
            let mut w = self.world();
            let stored = w.ledger.get(&entry.key).map(|(_, n)| *n);
            let fits = match (&entry.etag, stored) {
                (None, None) => Ok(()),
                (None, Some(_)) => Err(exists()),
                (Some(_), None) => Err(conflict()),
                (Some(_), Some(n)) if World::etag_matches(&entry.etag, n) => Ok(()),
                (Some(_), Some(_)) => Err(conflict()),
            };
            if fits.is_ok() {
                let n = w.next_etag();
                w.ledger.insert(entry.key.clone(), (entry.clone(), n));
                // A retry import an entry names is the tool's to answer for.
                if let Some(id) = import_id(&entry.retry_import) {
                    w.imports[id].recorded = true;
                }
            }
            fits
        };
        self.leave().await;
        self.maybe_timed_out(result)
    }

    async fn read_blob(&self, url: &str) -> Result<Option<Vec<u8>>, ReadFailed> {
        self.enter().await;
        let mut w = self.world();
        // Blob storage failing a read: the recording fails and is done again on a later tick.
        let p = w.faults.blob_unavailable;
        if w.rng.chance(p) || w.failing_reads.contains(url) {
            return Err(ReadFailed(format!(
                "could not read {url}: HTTP 503 ServerBusy: {INJECTED}"
            )));
        }
        if let Some(versions) = w.files.get(url) {
            return Ok(Some(render(versions)));
        }
        Ok(w.error_texts.get(url).map(|t| t.clone().into_bytes()))
    }

    async fn vread(&self, resource_type: &str, id: &str, version_id: &str) -> Result<VersionRead, EngineError> {
        self.enter().await;
        // The destination failing a read as often as Table storage fails a call: the recording or the retry's
        // settling fails and is done again on a later tick.
        self.storage_fault("vread")?;
        let (Some(resource), Ok(version)) = (
            id.strip_prefix('r').and_then(|n| n.parse::<u32>().ok()),
            version_id.parse::<u32>(),
        ) else {
            return Ok(VersionRead::Missing);
        };
        let w = self.world();
        let held = w
            .destination
            .range(
                Version {
                    resource,
                    version,
                    at_ms: i64::MIN,
                }..,
            )
            .take_while(|v| v.resource == resource && v.version == version)
            .find(|v| v.resource_type() == resource_type)
            .copied();
        Ok(match held {
            Some(v) if w.deleted.contains(&v) => VersionRead::Gone,
            Some(v) => VersionRead::Found(serde_json::from_slice(&render(&[v])).expect("a rendered line")),
            None => VersionRead::Missing,
        })
    }

    async fn has_search_parameter(&self, id: &str) -> Result<bool, EngineError> {
        self.enter().await;
        Ok(self.world().search_parameters.contains(id))
    }

    async fn write_retry_file(
        &self,
        _next_to: &str,
        name: &str,
        body: Vec<u8>,
    ) -> Result<Option<(String, Option<String>)>, EngineError> {
        self.enter().await;
        let url = format!("https://exports/retry/{name}");
        let versions: Vec<Version> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(version_of)
            .collect();
        let etag = {
            let mut w = self.world();
            w.files.insert(url.clone(), versions);
            *w.writes.entry(url.clone()).or_default() += 1;
            w.etag_now(&url)
        };
        self.leave().await;
        Ok(Some((url, Some(etag))))
    }

    fn import_mode(&self) -> String {
        self.settings.import_mode.clone()
    }

    async fn post_import(&self, parameters: &Value) -> Result<String, String> {
        self.enter().await;
        let answer = self.world().post(parameters);
        self.leave().await;
        match answer {
            Answer::Accepted { status_url } => Ok(status_url),
            Answer::Refused {
                status, diagnostics, ..
            } => Err(format!("HTTP {status}: {diagnostics}")),
            Answer::Unsent { error } => Err(error),
        }
    }

    async fn import_status(&self, url: &str) -> Result<Poll<ImportResult>, String> {
        self.enter().await;
        let poll = {
            let mut w = self.world();
            let p = w.faults.poll_throttled;
            if w.rng.chance(p) {
                return Err(super::ports::THROTTLED.into());
            }
            w.poll_import(url)
        };
        self.leave().await;
        match poll {
            ImportPoll::Running => Ok(Poll::Running(None)),
            ImportPoll::Done(result) => Ok(Poll::Done(result)),
            ImportPoll::Failed { status, diagnostics } => Ok(Poll::Failed { status, diagnostics }),
            ImportPoll::Unreachable(e) => Err(e),
        }
    }

    async fn cancel_import(&self, url: &str) -> CancelAnswer {
        crate::engine::ports::Ports::cancel(self, url, true).await
    }

    fn job_timeout(&self) -> TimeDelta {
        self.settings.job_timeout
    }

    fn emit(&self, event: Event) {
        self.world().events.push(event);
    }
}

fn import_id(url: &str) -> Option<usize> {
    url.strip_prefix("https://destination/_operations/import/")?
        .parse()
        .ok()
}

/// What the ledger says at the end of a schedule, checked against the world: a version it calls resolved is at
/// the destination (with its lastUpdated), nothing is left waiting for a retry once the faults have stopped, and
/// every open entry's reason holds (a conflict has another version on its millisecond at the destination, a
/// duplicate or a version left out beside another of its resource has that other version at the source, a
/// version left out over the capacity has its millisecond full), unless the entry says the tool gave up
/// retrying it. An entry opened on a wrong reason would otherwise pass as "named".
pub(super) fn problems(w: &World) -> Vec<String> {
    let mut problems = Vec::new();
    for (e, _) in w.ledger.values() {
        // An error file the tool could not read: the simulator's files never go away and a failed read fails
        // the recording (done again later), so no such entry may stand at the end.
        if e.kind == crate::ledger::Kind::Unreadable {
            if e.state != State::Resolved {
                problems.push(format!(
                    "the error file {} is unread ({:?}: {})",
                    e.error_file, e.state, e.message
                ));
            }
            continue;
        }
        let Some(v) = version_of_entry(e) else {
            problems.push(format!("ledger entry {} names no version the world knows", e.key));
            continue;
        };
        match e.state {
            State::Resolved if !w.destination.contains(&v) => problems.push(format!(
                "ledger entry {} is resolved ({}), but its version is not at the destination",
                e.key, e.resolution
            )),
            State::Retrying => problems.push(format!(
                "ledger entry {} is still waiting for a retry ({})",
                e.key, e.message
            )),
            // Given up after its retries: the last reason must hold when it was the capacity.
            State::Open
                if e.message.starts_with("gave up after")
                    && e.message.contains(crate::engine::core::capacity::CAPACITY_TEXT)
                    && !reason_holds(w, crate::ledger::Kind::SameMillisecond, &v) =>
            {
                problems.push(format!(
                    "ledger entry {} gave up on the capacity ({}), but its millisecond is not full",
                    e.key, e.message
                ))
            }
            State::Open if !e.message.starts_with("gave up after") && !reason_holds(w, e.kind, &v) => {
                problems.push(format!(
                    "ledger entry {} is open as {:?} ({}), which the world does not bear out",
                    e.key, e.kind, e.message
                ))
            }
            _ => {}
        }
    }
    problems
}

fn version_of_entry(e: &Entry) -> Option<Version> {
    Some(Version {
        resource: e.id.strip_prefix('r')?.parse().ok()?,
        version: e.version_id.parse().ok()?,
        at_ms: chrono::DateTime::parse_from_rfc3339(&e.last_updated)
            .ok()?
            .timestamp_millis(),
    })
}

fn reason_holds(w: &World, kind: crate::ledger::Kind, v: &Version) -> bool {
    use crate::ledger::Kind;
    let beside = |vs: &mut dyn Iterator<Item = &Version>| {
        vs.filter(|o| o.resource == v.resource && o.at_ms == v.at_ms && o.version != v.version)
            .count()
            > 0
    };
    let full = w.faults.same_ms_capacity.is_some_and(|cap| {
        w.destination
            .iter()
            .filter(|d| d.resource_type() == v.resource_type() && d.at_ms == v.at_ms)
            .count()
            >= cap
    });
    match kind {
        Kind::Conflict => beside(&mut w.destination.iter()),
        Kind::Duplicate => beside(&mut w.source.iter()),
        Kind::SameMillisecond => full || beside(&mut w.source.iter()),
        _ => false,
    }
}
