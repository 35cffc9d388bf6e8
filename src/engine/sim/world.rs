//! The simulated world: state tables with ETags, a source that exports `[since, till)` windows of its versions,
//! a destination that imports payloads in processing units, and a blob store, all in memory and driven by the
//! simulated clock. Server answers and job outcomes come from a seeded generator, so a schedule replays exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, TimeDelta, Utc};

use crate::engine::core::{Answer, ExportPoll, ImportPoll};
use crate::fhir::wire::{ExportFile, ExportManifest, ImportResult};
use crate::state::{Cursor, Job, Payload};
use crate::storage::tables::ETag;

pub use super::faults::{Faults, Rng};

/// The simulated source's resource types; a version's type is its resource number's parity.
pub const TYPES: [&str; 2] = ["Patient", "Observation"];

/// One resource version: its identity and lastUpdated (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub resource: u32,
    pub version: u32,
    pub at_ms: i64,
}

impl Version {
    pub fn resource_type(&self) -> &'static str {
        TYPES[(self.resource % 2) as usize]
    }
}

pub fn instant(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("in range")
}

#[derive(Debug, Clone)]
pub struct ExportJob {
    pub versions: Vec<Version>,
    pub polls_left: u32,
    pub fails: bool,
    pub hangs: bool,
    pub vanished: bool,
    pub cancelled: bool,
    pub done: bool,
    /// Whether a window row ever stored this job's status URL (the tool is answerable only for those).
    pub recorded: bool,
}

#[derive(Debug, Clone)]
pub struct ImportJob {
    pub body: String,
    /// Whether a payload row ever stored this job's status URL.
    pub recorded: bool,
    pub polls_left: u32,
    pub fails: bool,
    pub hangs: bool,
    pub cancelled: bool,
    pub finished: bool,
    pub result: Option<Result<ImportResult, String>>,
}

/// Everything outside the tool.
#[derive(Debug)]
pub struct World {
    pub rng: Rng,
    pub faults: Faults,
    pub now: DateTime<Utc>,
    // state tables: row and ETag number
    pub cursor: Option<(Cursor, u64)>,
    pub jobs: BTreeMap<i64, (Job, u64)>,
    pub payloads: BTreeMap<(i64, i64, i64), (Payload, u64)>,
    pub etags: u64,
    // servers
    pub source: Vec<Version>,
    pub exports: Vec<ExportJob>,
    pub imports: Vec<ImportJob>,
    pub destination: BTreeSet<Version>,
    /// Versions an operator removed at the destination below the cursor (until a re-drive brings them back).
    pub removed_by_operator: BTreeSet<Version>,
    /// How many times each version was written at the destination.
    pub imported: HashMap<Version, u32>,
    pub blobs: HashMap<(String, String), Vec<u8>>,
    pub files: HashMap<String, Vec<Version>>,
    pub events: Vec<crate::telemetry::Event>,
    /// Whether a parallel (`_isParallel=true`) `$export` reads `_till` inclusively, to the end of its
    /// millisecond (Azure API for FHIR's search path), instead of `[since, till)` (AHDS's parallel path).
    pub till_inclusive_parallel: bool,
    /// The same for a `_type=` export (per-type mode).
    pub till_inclusive_typed: bool,
    /// Percent of parallel exports that take AHDS's inclusive fallback path (reference §11.9:
    /// `SqlExportOrchestratorJob.cs` falls back to the search path when no ranges could be planned).
    pub inclusive_fallback: u64,
    /// Successful SearchParameter syncs.
    pub search_parameter_syncs: u64,
    /// What each successful sync was asked to carry: everything (`None`) or what changed since an instant.
    pub search_parameter_since: Vec<Option<DateTime<Utc>>>,
    /// What the next successful sync reports having done (then nothing again).
    pub search_parameter_answer: Option<crate::engine::search_parameters::SearchParameterSync>,
    /// The SearchParameters the destination holds, by id (the ledger asks; the schedules hold none).
    pub search_parameters: BTreeSet<String>,
    /// Kick-offs refused with 413 as too large.
    pub refused_too_large: usize,
    /// Versions that become visible only after their lastUpdated (reference §11.10: lastUpdated is taken
    /// before the transaction commits): the instant (ms) each becomes visible.
    pub late: HashMap<Version, i64>,
    /// Versions the tool left out of an import and named in the ledger (over the same-millisecond capacity).
    pub named: BTreeSet<Version>,
    /// The versions each import refused, by its error file's URL (the ledger's stand-in reads them).
    pub error_files: HashMap<String, Vec<Version>>,
    /// Each error file's text, as the server writes it.
    pub error_texts: HashMap<String, String>,
    /// The failure ledger's table as the tool's own code wrote it (`engine::failures`): rows by key, with
    /// their ETag numbers.
    pub ledger: BTreeMap<String, (crate::ledger::Entry, u64)>,
    /// How far the source server's clock is ahead of the tool's (negative: behind).
    pub source_skew: TimeDelta,
    /// How far the destination's clock is behind the tool's: it refuses a version whose lastUpdated is more than
    /// 10 s ahead of its clock as "in the future" (reference §5.3), which the ledger retries on its own.
    pub destination_behind: TimeDelta,
    /// How many times each file was written, by URL, for those written more than once (retry files).
    pub writes: HashMap<String, u64>,
    /// Versions an operator wrote at the destination that the source never had (their conflicts are named).
    pub foreign: BTreeSet<Version>,
    /// Versions that are soft deletions: the destination answers a read of one it holds with 410 Gone.
    pub deleted: BTreeSet<Version>,
    /// Blob URLs whose reads fail (storage unreachable for them) until removed.
    pub failing_reads: BTreeSet<String>,
    /// When the schedule's misbehaviour stopped (its settling rounds began).
    pub calm_since: Option<DateTime<Utc>>,
}

impl World {
    pub fn new(seed: u64, source: Vec<Version>, now: DateTime<Utc>) -> World {
        World {
            rng: Rng::new(seed),
            faults: Faults::default(),
            now,
            cursor: None,
            jobs: BTreeMap::new(),
            payloads: BTreeMap::new(),
            etags: 0,
            source,
            exports: Vec::new(),
            imports: Vec::new(),
            destination: BTreeSet::new(),
            removed_by_operator: BTreeSet::new(),
            imported: HashMap::new(),
            blobs: HashMap::new(),
            files: HashMap::new(),
            events: Vec::new(),
            till_inclusive_parallel: false,
            till_inclusive_typed: false,
            inclusive_fallback: 0,
            search_parameter_syncs: 0,
            search_parameter_since: Vec::new(),
            search_parameter_answer: None,
            search_parameters: BTreeSet::new(),
            refused_too_large: 0,
            late: HashMap::new(),
            named: BTreeSet::new(),
            error_files: HashMap::new(),
            error_texts: HashMap::new(),
            ledger: BTreeMap::new(),
            foreign: BTreeSet::new(),
            deleted: BTreeSet::new(),
            failing_reads: BTreeSet::new(),
            calm_since: None,
            writes: HashMap::new(),
            source_skew: TimeDelta::zero(),
            destination_behind: TimeDelta::zero(),
        }
    }

    /// The ledger's row for a version, as the tool keyed it.
    pub fn ledger_entry(&self, v: &Version) -> Option<&crate::ledger::Entry> {
        let key = crate::ledger::Entry::key_of(v.resource_type(), &format!("r{}", v.resource), &v.version.to_string());
        self.ledger.get(&key).map(|(e, _)| e)
    }

    /// Whether the ledger names a version as not at the destination: open (or queued for a retry) or accepted.
    pub fn named_in_ledger(&self, v: &Version) -> bool {
        self.ledger_entry(v)
            .is_some_and(|e| e.state != crate::ledger::State::Resolved)
    }

    pub fn next_etag(&mut self) -> u64 {
        self.etags += 1;
        self.etags
    }

    pub fn etag(n: u64) -> Option<ETag> {
        Some(ETag(format!("W/\"{n}\"")))
    }

    pub fn etag_matches(row: &Option<ETag>, stored: u64) -> bool {
        row.as_ref().is_none_or(|t| t.0 == format!("W/\"{stored}\""))
    }

    /// The source server's clock: the simulation's, off by the source's skew. Versions carry the source's
    /// instants, and become visible by its clock.
    pub fn source_clock(&self) -> DateTime<Utc> {
        self.now + self.source_skew
    }

    fn visible(&self) -> impl Iterator<Item = &Version> {
        let now_ms = self.source_clock().timestamp_millis();
        self.source
            .iter()
            .filter(move |v| v.at_ms <= now_ms && self.late.get(v).is_none_or(|at| *at <= now_ms))
    }

    pub fn count(&self, resource_type: Option<&str>, since: DateTime<Utc>, till: DateTime<Utc>) -> u64 {
        let (s, t) = (since.timestamp_millis(), till.timestamp_millis());
        self.visible()
            .filter(|v| v.at_ms >= s && v.at_ms < t && resource_type.is_none_or(|r| r == v.resource_type()))
            .count() as u64
    }

    pub fn oldest(&self, from: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let f = from.map_or(i64::MIN, |f| f.timestamp_millis());
        self.visible().map(|v| v.at_ms).filter(|m| *m >= f).min().map(instant)
    }

    fn query_instant(query: &str, key: &str) -> DateTime<Utc> {
        let value = query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .expect("the query names the window");
        let value = value.replace("%3A", ":");
        DateTime::parse_from_rfc3339(&value)
            .expect("an instant")
            .with_timezone(&Utc)
    }

    pub fn kick_off(&mut self, query: &str) -> Answer {
        let f = self.faults.clone();
        if self.rng.chance(f.kick_off_unsent) {
            return Answer::Unsent {
                error: "connection refused".into(),
            };
        }
        if self.rng.chance(f.kick_off_throttled) {
            return Answer::Refused {
                status: 429,
                diagnostics: "Too many requests".into(),
                retry_after: Some(std::time::Duration::from_secs(5)),
            };
        }
        if self.rng.chance(f.kick_off_5xx) {
            return Answer::Refused {
                status: 503,
                diagnostics: "Service unavailable".into(),
                retry_after: None,
            };
        }
        let (since, till) = (
            Self::query_instant(query, "_since"),
            Self::query_instant(query, "_till"),
        );
        let only = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("_type="))
            .map(str::to_string);
        let inclusive = if only.is_some() {
            self.till_inclusive_typed
        } else {
            self.till_inclusive_parallel || self.rng.chance(self.inclusive_fallback)
        };
        let (s, t) = (since.timestamp_millis(), till.timestamp_millis() + i64::from(inclusive));
        let versions: Vec<Version> = self
            .visible()
            .filter(|v| v.at_ms >= s && v.at_ms < t && only.as_deref().is_none_or(|r| r == v.resource_type()))
            .copied()
            .collect();
        // Too large: refused at kick-off half the time, else as the job's failure (reference §2.1, both seen).
        if self.faults.export_max_versions.is_some_and(|max| versions.len() > max) && self.rng.chance(50) {
            self.refused_too_large += 1;
            return Answer::Refused {
                status: 413,
                diagnostics: "Timespan in export request contains too much data to export in a single request.".into(),
                retry_after: None,
            };
        }
        let job = ExportJob {
            versions,
            polls_left: self.rng.below(3) as u32,
            fails: self.rng.chance(f.export_job_fails),
            hangs: self.rng.chance(f.export_job_hangs),
            vanished: false,
            cancelled: false,
            done: false,
            recorded: false,
        };
        self.exports.push(job);
        Answer::Accepted {
            status_url: format!("https://source/_operations/export/{}", self.exports.len() - 1),
        }
    }

    fn id_of(url: &str) -> usize {
        url.rsplit('/').next().and_then(|n| n.parse().ok()).expect("a job id")
    }

    pub fn poll_export(&mut self, url: &str) -> ExportPoll {
        let vanishes = self.rng.chance(self.faults.export_job_vanishes);
        let flaps = self.rng.chance(self.faults.export_flaps);
        let id = Self::id_of(url);
        let job = &mut self.exports[id];
        if job.vanished || job.cancelled || (vanishes && !job.done) {
            job.vanished = true;
            return ExportPoll::Failed {
                status: 404,
                diagnostics: format!("The requested job \"{id}\" was not found."),
            };
        }
        if job.hangs {
            return ExportPoll::Running;
        }
        if job.polls_left > 0 {
            job.polls_left -= 1;
            return ExportPoll::Running;
        }
        if job.fails {
            job.done = true;
            return ExportPoll::Failed {
                status: 500,
                diagnostics: "Unknown Error.".into(),
            };
        }
        if self
            .faults
            .export_max_versions
            .is_some_and(|max| job.versions.len() > max)
        {
            job.done = true;
            return ExportPoll::Failed {
                status: 413,
                diagnostics: "export operation failed for reason: Timespan in export request contains too much data to export in a single request. Please try reducing the time range and try again.".into(),
            };
        }
        if flaps {
            // Finished, and answering 202 again (the confirming poll must catch it).
            return ExportPoll::Running;
        }
        job.done = true;
        let versions = job.versions.clone();
        let mut output = Vec::new();
        // One file per type, and a second one per type past 20 versions, as a parallel export writes several.
        for resource_type in TYPES {
            let of_type: Vec<Version> = versions
                .iter()
                .filter(|v| v.resource_type() == resource_type)
                .copied()
                .collect();
            for (k, part) in of_type.chunks(20).enumerate() {
                let file = format!("https://exports/{id}/{resource_type}-{k}.ndjson");
                self.files.insert(file.clone(), part.to_vec());
                output.push(ExportFile {
                    resource_type: resource_type.into(),
                    url: file,
                    count: part.len() as u64,
                    etag: None,
                });
            }
        }
        ExportPoll::Done(ExportManifest {
            transaction_time: None,
            request: None,
            output,
            error: Vec::new(),
        })
    }

    pub fn post(&mut self, body: &serde_json::Value) -> Answer {
        let f = self.faults.clone();
        if self.rng.chance(f.post_unsent) {
            return Answer::Unsent {
                error: "connection reset".into(),
            };
        }
        if self.rng.chance(f.post_throttled) {
            return Answer::Refused {
                status: 429,
                diagnostics: "Too many requests".into(),
                retry_after: self
                    .rng
                    .chance(50)
                    .then(|| std::time::Duration::from_secs(1 + self.rng.below(90))),
            };
        }
        let text = body.to_string();
        // The server de-duplicates an identical definition: the same job comes back.
        if let Some(id) = self.imports.iter().position(|j| j.body == text) {
            return Answer::Accepted {
                status_url: format!("https://destination/_operations/import/{id}"),
            };
        }
        let job = ImportJob {
            body: text,
            recorded: false,
            polls_left: self.rng.below(3) as u32,
            fails: self.rng.chance(f.import_job_fails),
            hangs: self.rng.chance(f.import_job_hangs),
            cancelled: false,
            finished: false,
            result: None,
        };
        self.imports.push(job);
        Answer::Accepted {
            status_url: format!("https://destination/_operations/import/{}", self.imports.len() - 1),
        }
    }

    /// The input URLs of an `$import` body (read as the engine reads them).
    pub(super) fn inputs(body: &serde_json::Value) -> Vec<String> {
        crate::engine::failures::files::input_urls(body)
    }

    /// Each export covers exactly its row's `[since, till)`: a version outside the window whose export wrote
    /// the file being imported (a boundary read the wrong way) is named.
    pub fn outside_its_window(&self, body: &serde_json::Value) -> Option<String> {
        for url in Self::inputs(body) {
            let export = url.split('/').nth(3).unwrap_or_default();
            let status_url = format!("https://source/_operations/export/{export}");
            let Some((row, _)) = self.jobs.values().find(|(j, _)| j.export_url == status_url) else {
                continue;
            };
            let (s, t) = (row.since.timestamp_millis(), row.till.timestamp_millis());
            if let Some(v) = self
                .files
                .get(&url)
                .into_iter()
                .flatten()
                .find(|v| !(s..t).contains(&v.at_ms))
            {
                return Some(format!(
                    "window {} [{}, {}) imports {v:?} from {url}, outside the window",
                    row.seq, row.since, row.till
                ));
            }
        }
        None
    }

    pub fn poll_import(&mut self, url: &str) -> ImportPoll {
        let id = Self::id_of(url);
        if self.imports[id].cancelled {
            return ImportPoll::Failed {
                status: 400,
                diagnostics: "User requested cancellation of operation.".into(),
            };
        }
        if let Some(result) = &self.imports[id].result {
            return match result {
                Ok(r) => ImportPoll::Done(r.clone()),
                Err(e) => ImportPoll::Failed {
                    status: 400,
                    diagnostics: e.clone(),
                },
            };
        }
        let job = &mut self.imports[id];
        if job.hangs {
            return ImportPoll::Running;
        }
        if job.polls_left > 0 {
            job.polls_left -= 1;
            return ImportPoll::Running;
        }
        job.finished = true;
        if job.fails {
            job.result = Some(Err("import operation failed for reason: InternalServerError".into()));
            return ImportPoll::Failed {
                status: 500,
                diagnostics: "import operation failed for reason: InternalServerError".into(),
            };
        }
        let body: serde_json::Value = serde_json::from_str(&job.body).expect("a body the tool wrote");
        // The input ETag is compared exactly (reference §11.6).
        if self.etag_mismatch(&body) {
            let reason = "import operation failed for reason: Input file Etag not match".to_string();
            self.imports[id].result = Some(Err(reason.clone()));
            return ImportPoll::Failed {
                status: 400,
                diagnostics: reason,
            };
        }
        let inputs = Self::inputs(&body);
        let files: Vec<(String, Vec<Version>)> = inputs
            .iter()
            .map(|url| (url.clone(), self.files.get(url).cloned().unwrap_or_default()))
            .collect();
        match self.apply_import(id, &files) {
            Ok(result) => {
                self.imports[id].result = Some(Ok(result.clone()));
                ImportPoll::Done(result)
            }
            Err(reason) => {
                let diagnostics = format!("import operation failed for reason: {reason}");
                self.imports[id].result = Some(Err(diagnostics.clone()));
                ImportPoll::Failed {
                    status: 400,
                    diagnostics,
                }
            }
        }
    }

    /// A cancel as the servers answer it: a running job is cancelled (202); one that already finished answers
    /// 409, and a lost export 404 (reference §2.5, §5.5).
    pub fn cancel(&mut self, url: &str, destination: bool) -> crate::engine::core::rules::CancelAnswer {
        use crate::engine::core::rules::CancelAnswer;
        let id = Self::id_of(url);
        let refused = |status: u16| CancelAnswer::Refused {
            status,
            diagnostics: "The job cannot be cancelled".into(),
        };
        if destination {
            let job = &mut self.imports[id];
            if job.result.is_some() {
                return refused(409);
            }
            job.cancelled = true;
        } else {
            let job = &mut self.exports[id];
            if job.vanished {
                return refused(404);
            }
            if job.done {
                return refused(409);
            }
            job.cancelled = true;
        }
        CancelAnswer::Accepted
    }

    /// Jobs still running at either server that nobody cancelled.
    pub fn running_jobs(&self) -> (usize, usize) {
        let exports = self
            .exports
            .iter()
            .filter(|j| !j.done && !j.cancelled && !j.vanished)
            .count();
        let imports = self
            .imports
            .iter()
            .filter(|j| j.result.is_none() && !j.cancelled)
            .count();
        (exports, imports)
    }

    /// Running imports no row ever recorded: accepted, then the tool stopped before it wrote the answer down,
    /// and the payload was superseded (its window exported again) before a repeated POST of the same definition
    /// could find the job again. Harmless to the data (the same versions), and nobody can name them.
    pub fn orphan_imports(&self) -> usize {
        self.imports
            .iter()
            .filter(|j| j.result.is_none() && !j.cancelled && !j.recorded)
            .count()
    }

    /// Running exports no row ever recorded: accepted, then the tool stopped before it could write the answer
    /// down. No API lists export jobs, so nobody can find or cancel them.
    pub fn orphan_exports(&self) -> usize {
        self.exports
            .iter()
            .filter(|j| !j.done && !j.cancelled && !j.vanished && !j.recorded)
            .count()
    }

    pub fn advance(&mut self, by: TimeDelta) {
        self.now += by;
    }
}
