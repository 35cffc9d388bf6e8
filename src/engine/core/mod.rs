//! The migration's decisions, with no I/O and no clock: [`step`] looks at the stored state (a [`Snapshot`]),
//! what this tick has learned so far ([`Facts`]: counts, poll results, server answers) and `now`, and names the
//! one next [`Action`]. The shell ([`super::shell`]) performs it, folds the result back into the snapshot or the
//! facts, and asks again, until the core answers [`Action::Idle`] or [`Action::Finish`].
//!
//! Because every decision is made here from data alone, the simulator (`engine::sim`, tests only) can drive
//! the real shell and core through crashes between any two actions, two shells at once and any server answer,
//! and check the invariants after every step.
//!
//! Layout: [`rules`] (phases, answer classification, failure streaks), [`plan`] (commit and the next window),
//! [`exports`] (kick-offs, export polls, payloads from the manifest), [`imports`] (POSTs, import polls, a
//! window's verdict), [`imported`] (a finished import's record), [`capacity`] (imports refused for the
//! destination's same-millisecond capacity), [`scan`] (versions of one resource on one millisecond), [`flow`] (what both share),
//! [`redrive`] (a range below the cursor exported and imported again).

pub mod boundaries;
pub mod capacity;
pub mod confirm;
pub mod exports;
pub mod flow;
pub mod imported;
pub mod imports;
pub mod plan;
pub mod redrive;
pub mod rules;
pub mod scan;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::config::MigrationSettings;
use crate::engine::error_files::ErrorSummary;
use crate::fhir::wire::{ExportManifest, ImportResult};
use crate::state::{Cursor, Job, Payload};
use crate::telemetry::{Event, Exception};

pub use rules::Answer;

/// Which timer is asking: each has its own share of the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `MigrationOrchestrator`: gates, the SearchParameter copy, commits and the next export.
    Starter,
    /// `ExportStatus`: export polls, payloads, imports to start.
    ExportStatus,
    /// `ImportStatus`: commits, import polls, imports to start, and the next export.
    ImportStatus,
}

/// The stored state one decision is made from: the cursor and the uncommitted windows with their payloads.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cursor: Cursor,
    pub jobs: Vec<Job>,
    pub payloads: Vec<Payload>,
}

impl Snapshot {
    pub fn job(&self, seq: i64) -> Option<&Job> {
        self.jobs.iter().find(|j| j.seq == seq)
    }

    /// The payloads of a window's current export attempt, in order.
    pub fn payloads_of<'a>(&'a self, job: &'a Job) -> impl Iterator<Item = &'a Payload> {
        self.payloads
            .iter()
            .filter(move |p| p.seq == job.seq && p.export_attempt == job.attempt)
    }

    /// Puts a row the shell just wrote (or re-read) in place of the old one.
    pub fn put_job(&mut self, job: Job) {
        match self.jobs.iter_mut().find(|j| j.seq == job.seq) {
            Some(slot) => *slot = job,
            None => {
                self.jobs.push(job);
                self.jobs.sort_by_key(|j| j.seq);
            }
        }
    }

    pub fn put_payload(&mut self, payload: Payload) {
        let key = PayloadKey::of(&payload);
        match self.payloads.iter_mut().find(|p| PayloadKey::of(p) == key) {
            Some(slot) => *slot = payload,
            None => {
                self.payloads.push(payload);
                self.payloads.sort_by_key(|p| (p.seq, p.export_attempt, p.index));
            }
        }
    }
}

/// A payload row's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadKey {
    pub seq: i64,
    pub export_attempt: i64,
    pub index: i64,
}

impl PayloadKey {
    pub fn of(p: &Payload) -> PayloadKey {
        PayloadKey {
            seq: p.seq,
            export_attempt: p.export_attempt,
            index: p.index,
        }
    }
}

/// One POST of one payload: its identity and its import attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PostKey {
    pub payload: PayloadKey,
    pub attempt: i64,
}

impl PostKey {
    pub fn of(p: &Payload) -> PostKey {
        PostKey {
            payload: PayloadKey::of(p),
            attempt: p.attempt,
        }
    }
}

/// What a poll of an export found.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportPoll {
    Running,
    Done(ExportManifest),
    Failed {
        status: u16,
        diagnostics: String,
    },
    /// The poll itself failed (unreachable, token trouble): nothing is decided from it.
    Unreachable(String),
}

/// What a poll of an import found.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportPoll {
    Running,
    Done(ImportResult),
    Failed { status: u16, diagnostics: String },
    Unreachable(String),
}

/// The answer to an `$import` POST, or why it could not be made.
#[derive(Debug, Clone, PartialEq)]
pub enum PostAnswer {
    Answer(Answer),
    /// The payload's blob is gone: nothing can be posted, so the window must be exported again.
    BlobMissing,
}

/// Whole-server totals for the `Import` events (the dashboard's resource-count tile); `" "` when a count failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub source: String,
    pub destination: String,
    pub source_error: String,
    pub destination_error: String,
}

impl Totals {
    pub fn add_to(&self, event: Event) -> Event {
        event
            .with("SourceResourceCount", &self.source)
            .with("DestinationResourceCount", &self.destination)
            .with("SourceError", &self.source_error)
            .with("DestinationError", &self.destination_error)
    }
}

/// A claim this tick won: only the invocation whose claim write succeeded makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Claim {
    Export { seq: i64, attempt: i64 },
    Post(PostKey),
}

/// Something this tick already did that must not be done again in the same tick.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mark {
    ExportPollHandled {
        seq: i64,
        attempt: i64,
    },
    KickOffHandled {
        seq: i64,
        attempt: i64,
    },
    PostHandled(PostKey),
    ImportPollHandled(PostKey),
    Blob {
        seq: i64,
        attempt: i64,
        index: i64,
    },
    Cancelled(String),
    /// The cancel of this job could not be made (the server unreachable or failing): it may still run.
    CancelFailed(String),
    Reported(String),
    EmptySkip,
    /// The state was read again after a POST claim, to see every other claim made meanwhile.
    Reloaded(PostKey),
    TotalsSaved,
}

/// A count's question: one type (or all) in `[since, till)`.
pub type CountKey = (Option<String>, DateTime<Utc>, DateTime<Utc>);

/// What this tick has learned and done so far. Starts empty every tick.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Resources (or versions) in `[since, till)` of one type or all.
    pub counts: HashMap<CountKey, u64>,
    /// The oldest lastUpdated at or after an instant (`None`: from the start); `None` when there is none.
    pub oldest: HashMap<Option<DateTime<Utc>>, Option<DateTime<Utc>>>,
    pub kickoffs: HashMap<(i64, i64), Answer>,
    pub export_polls: HashMap<(i64, i64), ExportPoll>,
    /// The confirming second poll of an export the first poll found complete.
    pub export_confirms: HashMap<(i64, i64), ExportPoll>,
    /// The blob ETags of a confirmed export's files, in the manifest's order.
    pub etags: HashMap<(i64, i64), Vec<confirm::EtagLookup>>,
    pub posts: HashMap<PostKey, PostAnswer>,
    pub import_polls: HashMap<PostKey, ImportPoll>,
    /// Error-file summaries (`None`: the files could not be read with the tool's access).
    pub error_summaries: HashMap<PostKey, Option<ErrorSummary>>,
    pub totals: Option<Totals>,
    /// Whether `totals` were counted by this tick (and so are saved on the cursor for later ticks).
    pub totals_counted: bool,
    pub claimed: HashSet<Claim>,
    pub marks: HashSet<Mark>,
    /// Empty ranges skipped this tick.
    pub skips: u32,
    pub search_parameters_tried: bool,
    /// Failures this tick recorded that the retry latch (the cursor's count) does not hold yet.
    pub failures_to_count: i64,
    /// What the shell found examining payloads refused for the destination's same-millisecond capacity.
    pub capacity_trims: HashMap<PostKey, capacity::CapacityTrim>,
    /// What scanning a waiting payload's files found, by the payload and the file it started from.
    pub scans: HashMap<(PayloadKey, i64), scan::Scanned>,
}

/// A row write. Every update is conditional on the ETag the row was read with.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Cursor(Cursor),
    InsertJob(Job),
    Job(Job),
    InsertPayload(Payload),
    Payload(Payload),
}

impl Write {
    fn kind(&self) -> String {
        match self {
            Write::Cursor(_) => "cursor".into(),
            Write::InsertJob(j) => format!("new window {}", j.seq),
            Write::Job(j) => format!("window {}", j.seq),
            Write::InsertPayload(p) => format!("new payload {}/{}", p.seq, p.index),
            Write::Payload(p) => format!("payload {}/{}", p.seq, p.index),
        }
    }
}

/// What goes with a write, and happens only if the write succeeds: lines for the log, telemetry, a failure for
/// the retry latch, a claim or mark for the rest of the tick, and the test fail point that follows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notes {
    pub lines: Vec<String>,
    pub events: Vec<Event>,
    pub exceptions: Vec<Exception>,
    pub count_failure: bool,
    /// This write adds that many failures to the retry latch (the counted ones leave `Facts::failures_to_count`).
    pub counts_failures: i64,
    pub claim: Option<Claim>,
    pub mark: Option<Mark>,
    pub fail_point: Option<&'static str>,
}

impl Notes {
    pub fn line(line: impl Into<String>) -> Notes {
        Notes {
            lines: vec![line.into()],
            ..Notes::default()
        }
    }

    pub fn and_line(mut self, line: impl Into<String>) -> Notes {
        self.lines.push(line.into());
        self
    }

    pub fn event(mut self, event: Event) -> Notes {
        self.events.push(event);
        self
    }

    pub fn mark(mut self, mark: Mark) -> Notes {
        self.mark = Some(mark);
        self
    }

    pub fn claim(mut self, claim: Claim) -> Notes {
        self.claim = Some(claim);
        self
    }

    pub fn fail_point(mut self, point: &'static str) -> Notes {
        self.fail_point = Some(point);
        self
    }

    pub fn failure(mut self) -> Notes {
        self.count_failure = true;
        self
    }

    /// A job's `Failed` event with the matching `ExportFailed`/`ImportFailed` exception (the dashboard's
    /// exception tile and the alert key on it), with the window and the job id when there is one.
    pub fn failed_event(mut self, event: Event, since: DateTime<Utc>, till: DateTime<Utc>) -> Notes {
        let id_key = format!("{}Id", event.name);
        let mut exception = Exception::new(
            &format!("{}Failed", event.name),
            event.get("FailureReason").unwrap_or_default(),
        );
        if let Some(id) = event.get(&id_key).filter(|id| !id.is_empty()) {
            exception = exception.with(&id_key, id);
        }
        self.exceptions.push(
            exception
                .with("Since", crate::fhir::format_instant(since))
                .with("Till", crate::fhir::format_instant(till)),
        );
        self.events.push(event);
        self
    }
}

/// The one next thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Count the source's resources (versions with history or deletes) in `[since, till)`.
    Count {
        resource_type: Option<String>,
        since: DateTime<Utc>,
        till: DateTime<Utc>,
    },
    /// Find the source's oldest lastUpdated at or after `from` (from the start when `None`).
    Oldest {
        from: Option<DateTime<Utc>>,
    },
    Write {
        write: Write,
        notes: Notes,
    },
    /// Telemetry and lines with no state change.
    Note(Notes),
    /// Call `$export` for a window this tick claimed.
    KickOff {
        job: Job,
        query: String,
    },
    /// Poll a running export; `confirm`: the second poll after a completion, made after the confirmation delay.
    PollExport {
        job: Job,
        confirm: bool,
    },
    /// Read the blob ETags of a confirmed export's files.
    ReadEtags {
        seq: i64,
        attempt: i64,
        urls: Vec<String>,
    },
    /// Write one `$import` payload's body (idempotent: the same name and bytes on every run).
    PutBlob {
        container: String,
        name: String,
        body: serde_json::Value,
        mark: Mark,
    },
    /// POST a claimed payload, with the processing unit to ask for.
    Post {
        payload: Payload,
        container: String,
        unit_bytes: Option<i64>,
    },
    PollImport {
        payload: Payload,
    },
    /// Scan the next share of a waiting payload's export files for versions of one resource on one millisecond
    /// (see [`scan`]).
    ScanPayload {
        payload: Payload,
        container: String,
    },
    /// Examine a payload refused for the destination's same-millisecond capacity: leave out (and name in the
    /// ledger) the versions that cannot fit, and write the payload's new body (see [`capacity`]).
    TrimForCapacity {
        payload: Payload,
        container: String,
    },
    /// Record a finished import's failed lines in the failure ledger (which reads the error files and sorts
    /// each line into benign, transient or permanent).
    RecordFailures {
        payload: Payload,
        errors: Vec<crate::fhir::wire::ImportErrorFile>,
    },
    /// Cancel a job on a server (best effort: a job that already ended is fine).
    Cancel {
        url: String,
        destination: bool,
    },
    /// Count both whole servers for the `Import` events.
    CountTotals,
    CopySearchParameters,
    /// End the tick after these notes.
    Finish(Notes),
    /// Read the state again (after a claim, to see other invocations' claims).
    Reload {
        mark: Mark,
    },
    /// Nothing more to do this tick.
    Idle,
}

/// Everything a decision may read besides the state.
pub struct Context<'a> {
    pub settings: &'a MigrationSettings,
    pub timing: &'a crate::engine::Timing,
    pub timer: Timer,
    pub now: DateTime<Utc>,
    /// The source server's clock, when one of its answers has told it: windows end before what the server
    /// has written, not before what this machine's clock says (which may run ahead of it).
    pub source_now: Option<DateTime<Utc>>,
    /// The window table's name, for the operator-facing halt event.
    pub export_table: &'a str,
    /// A value no other tick (of this or any migration) shares: it makes each import attempt's definition one
    /// the destination has never seen (see `imports`).
    pub nonce: u64,
}

#[cfg(test)]
impl<'a> Context<'a> {
    /// A unit test's context: no source clock yet, the `export` table, nonce 1.
    pub fn for_test(
        settings: &'a MigrationSettings,
        timing: &'a crate::engine::Timing,
        timer: Timer,
        now: DateTime<Utc>,
    ) -> Context<'a> {
        Context {
            settings,
            timing,
            timer,
            now,
            source_now: None,
            export_table: "export",
            nonce: 1,
        }
    }
}

impl Context<'_> {
    /// The instant the frontier is measured from: the earlier of this machine's clock and the source's.
    pub fn clock(&self) -> DateTime<Utc> {
        self.source_now.map_or(self.now, |s| s.min(self.now))
    }

    /// Whether the retry latch has tripped (new work is refused until an operator clears it).
    pub fn latched(&self, cursor: &Cursor) -> bool {
        self.settings
            .max_export_retries
            .is_some_and(|max| cursor.failures >= i64::from(max))
    }

    pub fn paused(&self) -> bool {
        crate::planner::paused(self.settings.pause, self.now)
    }
}

impl Action {
    /// The action's name, for the line a tick that stops at its action limit leaves.
    pub fn kind(&self) -> String {
        match self {
            Action::Write { write, .. } => format!("write {}", write.kind()),
            Action::Count {
                resource_type,
                since,
                till,
            } => {
                format!(
                    "count {resource_type:?} {} to {}",
                    crate::fhir::format_instant(*since),
                    crate::fhir::format_instant(*till)
                )
            }
            other => format!("{other:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// The next action for `timer`, from the state, the tick's facts and `now`.
pub fn step(ctx: &Context, snapshot: &Snapshot, facts: &Facts) -> Action {
    // A failure recorded this tick is added to the retry latch first: one conditional write of the cursor, made
    // again from a fresh read after a conflict, so concurrent failures all count and none is given up.
    if facts.failures_to_count > 0 {
        let mut cursor = snapshot.cursor.clone();
        cursor.failures += facts.failures_to_count;
        return Action::Write {
            write: Write::Cursor(cursor),
            notes: Notes {
                counts_failures: facts.failures_to_count,
                ..Notes::default()
            },
        };
    }
    let cursor = &snapshot.cursor;
    match ctx.timer {
        Timer::Starter => {
            if ctx.latched(cursor) {
                return Action::Finish(flow::halt_notes(ctx, snapshot));
            }
            if crate::planner::specific_run_finished(ctx.settings, cursor.since) {
                return Action::Finish(Notes::line("Execution skipped: Specific time range date is reached"));
            }
            if ctx.paused() {
                return Action::Finish(Notes::line(
                    "Execution skipped: Current time is within the restricted window",
                ));
            }
            if !facts.search_parameters_tried && rules::search_parameters_due(ctx, cursor) {
                return Action::CopySearchParameters;
            }
            plan::commit(ctx, snapshot, facts)
                .or_else(|| flow::cancel_superseded(snapshot, facts))
                .or_else(|| plan::advance(ctx, snapshot, facts))
                .unwrap_or(Action::Idle)
        }
        Timer::ExportStatus => flow::cancel_superseded(snapshot, facts)
            .or_else(|| exports::poll_exports(ctx, snapshot, facts))
            .or_else(|| capacity::trim_payloads(ctx, snapshot, facts))
            .or_else(|| imports::settle_windows(ctx, snapshot, facts))
            .or_else(|| scan::scan_payloads(ctx, snapshot, facts))
            .or_else(|| imports::post_payloads(ctx, snapshot, facts))
            .unwrap_or(Action::Idle),
        Timer::ImportStatus => plan::commit(ctx, snapshot, facts)
            .or_else(|| flow::cancel_superseded(snapshot, facts))
            .or_else(|| imports::poll_imports(ctx, snapshot, facts))
            .or_else(|| capacity::trim_payloads(ctx, snapshot, facts))
            .or_else(|| imports::settle_windows(ctx, snapshot, facts))
            .or_else(|| scan::scan_payloads(ctx, snapshot, facts))
            .or_else(|| imports::post_payloads(ctx, snapshot, facts))
            .or_else(|| {
                (!ctx.latched(cursor) && !ctx.paused())
                    .then(|| plan::advance(ctx, snapshot, facts))
                    .flatten()
            })
            .unwrap_or(Action::Idle),
    }
}

#[cfg(test)]
mod tests;
