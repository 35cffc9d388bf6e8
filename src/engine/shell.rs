//! The I/O shell of one timer tick: load the state, ask the core for the next action, perform it, fold the
//! result back (a written row into the snapshot, a server's answer into the facts), and ask again. Writes are
//! ETag-guarded: a conflict means another invocation moved first, so the state is read again and the core
//! decides afresh. The notes of a write (log lines, telemetry, a failure for the latch) follow only its success.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::core::{self, Action, Context, Facts, Mark, Notes, PostAnswer, PostKey, Snapshot, Timer, Write};
use super::ports::{Ports, Written};
use super::{EngineError, FailPoints, TickReport, Timing};
use crate::config::MigrationSettings;
use crate::storage::tables::TableError;
use crate::telemetry::Telemetry;

pub struct Shell<'a, P: Ports> {
    pub ports: &'a P,
    pub settings: &'a MigrationSettings,
    pub timing: &'a Timing,
    pub telemetry: &'a dyn Telemetry,
    pub fail: &'a FailPoints,
    pub export_table: &'a str,
}

/// Instants are kept to the millisecond (the format the rows and the servers use), so a window planned now
/// ends exactly where the stored cursor will say it does.
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

impl<P: Ports> Shell<'_, P> {
    /// A source clock that differs from this machine's by more than half the safety lag is reported (once per
    /// starter tick): windows then end by the earlier clock, but an operator should fix the machine's time.
    fn check_skew(&self, timer: Timer, now: DateTime<Utc>, source_now: Option<DateTime<Utc>>, report: &mut TickReport) {
        let Some(server) = source_now else { return };
        let skew = now - server;
        let lag = self.settings.safety_lag;
        if timer == Timer::Starter && skew.abs() * 2 > lag {
            report.say(format!(
                "Clock skew: this machine's clock is {} s {} the source server's (more than half the {} s safety lag); windows end by the earlier clock",
                skew.num_seconds().abs(),
                if skew > TimeDelta::zero() { "ahead of" } else { "behind" },
                lag.num_seconds()
            ));
            self.telemetry.event(
                crate::telemetry::Event::new("ClockSkew")
                    .with("SkewSeconds", skew.num_seconds())
                    .with("SafetyLagSeconds", lag.num_seconds()),
            );
        }
    }

    pub async fn run(&self, timer: Timer, now: DateTime<Utc>) -> Result<TickReport, EngineError> {
        let now = to_millis(now);
        let mut report = TickReport::default();
        let mut snapshot = self.ports.load().await?;
        let mut facts = Facts::default();
        // Payload containers this tick has created (or found), so each is ensured once, not once per blob.
        let mut containers: std::collections::HashSet<String> = std::collections::HashSet::new();
        // The source's clock, read once per tick (or at its first answer in this process), so every step of the
        // tick plans against the same instant.
        let mut source_now = self.ports.source_now().map(to_millis);
        self.check_skew(timer, now, source_now, &mut report);
        let nonce = self.ports.nonce();
        let mut last = String::new();
        for _ in 0..self.timing.max_actions {
            if source_now.is_none() {
                source_now = self.ports.source_now().map(to_millis);
            }
            let ctx = Context {
                settings: self.settings,
                timing: self.timing,
                timer,
                now,
                source_now,
                export_table: self.export_table,
                nonce,
            };
            let action = core::step(&ctx, &snapshot, &facts);
            last = action.kind().to_string();
            match action {
                Action::Idle => return Ok(report),
                Action::Finish(notes) => {
                    self.notes(&notes, &mut report);
                    return Ok(report);
                }
                Action::Write { write, notes } => {
                    self.write(write, notes, &mut snapshot, &mut facts, &mut report).await?;
                }
                Action::Note(notes) => {
                    self.notes(&notes, &mut report);
                    facts.marks.extend(notes.mark);
                }
                Action::Count {
                    resource_type,
                    since,
                    till,
                } => {
                    let n = self.ports.count(resource_type.as_deref(), since, till).await?;
                    facts.counts.insert((resource_type, since, till), n);
                }
                Action::Oldest { from } => {
                    let oldest = self.ports.oldest(from).await?.map(to_millis);
                    facts.oldest.insert(from, oldest);
                }
                Action::KickOff { job, query } => {
                    let answer = self.ports.kick_off(&query).await;
                    if matches!(answer, core::Answer::Accepted { .. }) {
                        self.fail.hit("export-accepted")?;
                    }
                    facts.kickoffs.insert((job.seq, job.attempt), answer);
                }
                Action::PollExport { job, confirm } => {
                    let poll = self.ports.poll_export(&job.export_url, confirm).await;
                    let polls = if confirm {
                        &mut facts.export_confirms
                    } else {
                        &mut facts.export_polls
                    };
                    polls.insert((job.seq, job.attempt), poll);
                }
                Action::ReadEtags { seq, attempt, urls } => {
                    let lookups = self.ports.export_file_etags(&urls).await;
                    facts.etags.insert((seq, attempt), lookups);
                }
                Action::PutBlob {
                    container,
                    name,
                    body,
                    mark,
                } => {
                    let new_container = containers.insert(container.clone());
                    self.ports
                        .put_blob(&container, &name, body.to_string().into_bytes(), new_container)
                        .await?;
                    facts.marks.insert(mark);
                    self.fail.hit("payload-blobs")?;
                }
                Action::Post {
                    payload,
                    container,
                    unit_bytes,
                } => {
                    let input_source = attempt_source(&self.settings.source, &payload.post_token);
                    let answer = match self.ports.get_blob(&container, &payload.blob).await? {
                        None => PostAnswer::BlobMissing,
                        Some(bytes) => {
                            let mut body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                            if let Some(bytes) = unit_bytes
                                && let Some(params) = body["parameter"].as_array_mut()
                            {
                                params.push(
                                    serde_json::json!({ "name": "processingUnitBytesToRead", "valueInteger": bytes }),
                                );
                            }
                            if let Some(source) = input_source
                                && let Some(params) = body["parameter"].as_array_mut()
                            {
                                params.push(serde_json::json!({ "name": "inputSource", "valueUri": source }));
                            }
                            PostAnswer::Answer(self.ports.post(&body).await)
                        }
                    };
                    if matches!(answer, PostAnswer::Answer(core::Answer::Accepted { .. })) {
                        self.fail.hit("import-accepted")?;
                    }
                    facts.posts.insert(PostKey::of(&payload), answer);
                }
                Action::ScanPayload { payload, container } => {
                    let scanned = self.ports.scan_payload(&payload, &container, &tag(nonce), now).await?;
                    facts
                        .scans
                        .insert((core::PayloadKey::of(&payload), payload.scanned_files), scanned);
                }
                Action::TrimForCapacity { payload, container } => {
                    let trim = self
                        .ports
                        .trim_for_capacity(&payload, &container, &tag(nonce), now)
                        .await?;
                    facts.capacity_trims.insert(PostKey::of(&payload), trim);
                }
                Action::PollImport { payload } => {
                    let poll = self.ports.poll_import(&payload.import_url).await;
                    facts.import_polls.insert(PostKey::of(&payload), poll);
                }
                Action::RecordFailures { payload, errors } => {
                    let summary = self.ports.record_failures(payload.seq, &errors, now).await?;
                    facts.error_summaries.insert(PostKey::of(&payload), Some(summary));
                }
                Action::Cancel { url, destination } => {
                    let answer = self.ports.cancel(&url, destination).await;
                    match core::rules::cancel_outcome(&answer) {
                        Ok(None) => report.say(format!("Cancelled the job {}", crate::telemetry::id_of(&url))),
                        Ok(Some(line)) => report.say(format!("Job {}: {line}", crate::telemetry::id_of(&url))),
                        Err(e) => {
                            report.say(format!(
                                "Could not cancel the job {} (it may run on at the server; tried again next tick): {e}",
                                crate::telemetry::id_of(&url)
                            ));
                            facts.marks.insert(Mark::CancelFailed(url.clone()));
                        }
                    }
                    facts.marks.insert(Mark::Cancelled(url));
                }
                Action::Reload { mark } => {
                    snapshot = self.ports.load().await?;
                    facts.marks.insert(mark);
                }
                Action::CountTotals => {
                    facts.totals = Some(self.ports.totals().await);
                    facts.totals_counted = true;
                }
                Action::CopySearchParameters => {
                    facts.search_parameters_tried = true;
                    let clock = ctx.clock();
                    self.copy_search_parameters(&mut snapshot, &mut report, now, clock)
                        .await?;
                }
            }
        }
        report.say(format!(
            "This tick stopped after {} actions (the last: {last}); the next tick continues",
            self.timing.max_actions
        ));
        Ok(report)
    }

    async fn write(
        &self,
        write: Write,
        notes: Notes,
        snapshot: &mut Snapshot,
        facts: &mut Facts,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        match self.ports.write(&write).await {
            Ok(written) => {
                put(snapshot, written);
                self.notes(&notes, report);
                if notes.count_failure {
                    facts.failures_to_count += 1;
                }
                facts.failures_to_count -= notes.counts_failures;
                facts.claimed.extend(notes.claim);
                if notes.mark == Some(Mark::EmptySkip) {
                    facts.skips += 1;
                }
                facts.marks.extend(notes.mark);
                if let Some(point) = notes.fail_point {
                    self.fail.hit(point)?;
                }
                Ok(())
            }
            // Another invocation changed the row (or took the number) first: decide again from what is stored.
            Err(TableError::Conflict { .. } | TableError::AlreadyExists { .. }) => {
                *snapshot = self.ports.load().await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn notes(&self, notes: &Notes, report: &mut TickReport) {
        for line in &notes.lines {
            report.say(line.clone());
        }
        for event in &notes.events {
            self.telemetry.event(event.clone());
        }
        for exception in &notes.exceptions {
            self.telemetry.exception(exception.clone());
        }
    }

    /// The first copy of the custom SearchParameters, or a sync of what changed since the last one. `clock` is
    /// the source-side instant this sync covers up to (the next one looks from there, with an overlap).
    async fn copy_search_parameters(
        &self,
        snapshot: &mut Snapshot,
        report: &mut TickReport,
        now: DateTime<Utc>,
        clock: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let first = !snapshot.cursor.search_parameters_copied;
        // Without a recorded sync (the first copy, or a migration started by an older version) everything is
        // copied again: a full copy is safe to repeat.
        let since = if first {
            None
        } else {
            snapshot.cursor.search_parameters_synced_at
        };
        match self.ports.copy_search_parameters(since).await {
            Ok(done) => {
                let changed = done.written + done.deleted > 0;
                let mut cursor = snapshot.cursor.clone();
                if first {
                    report.say(format!(
                        "Custom SearchParameters copied: {} written, {} already present. Run $reindex on the destination once the migration is complete.",
                        done.written, done.unchanged
                    ));
                    cursor.search_parameter_count = done.written + done.unchanged;
                } else if changed {
                    report.say(format!(
                        "Custom SearchParameters changed at the source: {} written, {} deleted at the destination. Run $reindex on the destination again.",
                        done.written, done.deleted
                    ));
                    cursor.search_parameters_changed_at = Some(now);
                    if done.written > 0 {
                        cursor.search_parameter_count = cursor.search_parameter_count.max(1);
                    }
                }
                if done.refused > 0 {
                    report.say(format!(
                        "{} custom SearchParameter(s) were refused by the destination (each named in the log); the migration goes on, and `cutover --final` reports them until the servers agree",
                        done.refused
                    ));
                }
                cursor.search_parameters_copied = true;
                cursor.search_parameters_synced_at = Some(clock);
                match self.ports.write(&Write::Cursor(cursor)).await {
                    Ok(written) => put(snapshot, written),
                    Err(TableError::Conflict { .. }) => *snapshot = self.ports.load().await?,
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => report.say(format!(
                "Copying custom SearchParameters failed (retried next tick; until a sync covers a finished window's end, that window waits to commit): {e}"
            )),
        }
        Ok(())
    }
}

/// Names the blobs one tick writes when it rewrites a payload (copies of export files, the new body): another
/// invocation doing the same at once writes its own, and the ETag-guarded row write decides whose the payload
/// uses, so a body never names a copy another invocation overwrote (with another ETag).
fn tag(nonce: u64) -> String {
    format!("{nonce:016x}")
}

/// The `inputSource` of one import attempt: the source server's URL naming the attempt. The destination keeps
/// it in the job's definition and never reads from it (fhir-server `CreateImportRequestHandler.cs` copies it
/// into `ImportOrchestratorJobDefinition`, and nothing else uses it), but it de-duplicates registrations on a
/// hash of that definition, failed and cancelled jobs included (reference §11.7, `EnqueueJobs.sql`). A token
/// recorded before the POST makes the definition this attempt's alone: a repeated POST of the same attempt
/// (after a crash) gets its own job back, and no other migration's or attempt's job can be handed to it.
/// `None` for rows written before tokens existed (their POST is repeated as it was first sent).
pub fn attempt_source(source: &url::Url, token: &str) -> Option<String> {
    if token.is_empty() {
        return None;
    }
    let mut url = source.clone();
    url.query_pairs_mut().append_pair("_migrationAttempt", token);
    Some(url.to_string())
}

fn put(snapshot: &mut Snapshot, written: Written) {
    match written {
        Written::Cursor(c) => snapshot.cursor = c,
        Written::Job(j) => snapshot.put_job(j),
        Written::Payload(p) => snapshot.put_payload(p),
    }
}
