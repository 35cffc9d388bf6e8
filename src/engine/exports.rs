//! Windows and exports: committing finished windows, planning the next one (sizing, halving, skipping empty
//! ranges), kicking it off, polling it, and turning its manifest into persisted import payloads.

use chrono::{DateTime, Utc};

use super::{Engine, EngineError, TickReport};
use crate::fhir::wire::{ExportFile, ExportManifest, import_parameters};
use crate::fhir::{FhirError, Poll, format_instant};
use crate::planner;
use crate::state::rows::{export_status, import_status};
use crate::state::{Cursor, Job, Payload};
use crate::storage::tables::TableError;
use crate::telemetry::{Event, id_of};

/// How soon a kick-off or POST that met a transient error is tried again.
pub(crate) const RETRY_SOON: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// When to try a deferred kick-off or POST again: when the server said (bounded to 1 s – 5 min), else soon.
pub(crate) fn retry_at(retry_after: Option<std::time::Duration>) -> DateTime<Utc> {
    let wait = retry_after
        .and_then(|d| chrono::TimeDelta::from_std(d).ok())
        .map_or(RETRY_SOON, |d| {
            d.clamp(chrono::TimeDelta::seconds(1), chrono::TimeDelta::minutes(5))
        });
    Utc::now() + wait
}

/// The blob container holding an export's `$import` payloads.
pub(crate) fn payload_container(export_id: &str) -> String {
    let id: String = export_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    format!("import-{}", if id.is_empty() { "unknown".to_string() } else { id })
}

fn is_exporting(job: &Job) -> bool {
    matches!(
        job.export_status.as_str(),
        export_status::STARTING | export_status::STARTED | export_status::RUNNING
    )
}

impl Engine {
    /// Moves the cursor through every window, in order, whose payloads all imported; then over any empty
    /// range planned after them.
    pub(crate) async fn commit(&self, report: &mut TickReport) -> Result<(), EngineError> {
        for _ in 0..1000 {
            let mut cursor = self.state.cursor().await?;
            if cursor.committed_job < cursor.next_job {
                let Some(job) = self.state.job(cursor.committed_job).await? else {
                    report.say(format!(
                        "The row of window {} is missing or unreadable, so the cursor cannot move past it: inspect row {} of the export table",
                        cursor.committed_job,
                        crate::state::rows::job_key(&self.settings.row_key, cursor.committed_job)
                    ));
                    return Ok(());
                };
                if !job.processed {
                    return Ok(());
                }
                // A per-type window's parts commit one by one; `since` moves to the window's end once its last
                // part commits (and through `planned_till` below when nothing is outstanding).
                if job.resource_type.is_empty() {
                    cursor.since = Some(job.till);
                } else if let Some(window_till) = self.per_type_window_complete(&cursor, &job).await? {
                    cursor.since = Some(window_till);
                }
                cursor.committed_job += 1;
                // Success resets the latch, unless the next window is itself failing right now (with overlap,
                // this window's success says nothing about that one).
                let next_failing = self
                    .state
                    .job(cursor.committed_job)
                    .await?
                    .is_some_and(|j| !j.processed && j.export_status == export_status::FAILED);
                if !next_failing {
                    cursor.failures = 0;
                }
                match self.state.save_cursor(&cursor).await {
                    Ok(_) => {
                        self.fail.hit("committed")?;
                        report.say(format!(
                            "Window {} to {} migrated; cursor advanced",
                            format_instant(job.since),
                            format_instant(job.till)
                        ));
                        self.emit(Event::new("ImportTill").with("Till", format_instant(job.till)));
                    }
                    Err(TableError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                // No window outstanding: ranges planned as empty are committed too.
                match (cursor.planned_till, cursor.since) {
                    (Some(planned), Some(since)) if planned > since => {
                        cursor.since = Some(planned);
                        match self.state.save_cursor(&cursor).await {
                            Ok(_) => self.emit(Event::new("ImportTill").with("Till", format_instant(planned))),
                            Err(TableError::Conflict { .. }) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    _ => return Ok(()),
                }
            }
        }
        Ok(())
    }

    /// Re-kicks a failed or stalled window, or plans and kicks off the next one, when the pipeline has room.
    pub(crate) async fn start_next_export(
        &self,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        for _ in 0..=self.timing.max_empty_skips {
            let cursor = self.state.cursor().await?;
            let active = self.state.active(&cursor).await?;
            // A row the cursor does not know about: its planner stopped between inserting it and moving the
            // cursor. Rebuild the cursor from the row itself (never from a fresh plan) before anything else.
            if let Some(row) = active.job(cursor.next_job) {
                self.repair_cursor(&cursor, row, report).await?;
                continue;
            }
            // A halted window (import errors under the Halt policy) stops everything until acknowledged.
            if let Some(j) = active.jobs.iter().find(|j| j.import_status == "Halted") {
                report.say(format!(
                    "Migration halted at window {} to {}: {}",
                    format_instant(j.since),
                    format_instant(j.till),
                    j.failure_reason
                ));
                return Ok(());
            }
            // One export at a time; a kick-off whose lease ran out was interrupted and is repaired.
            if let Some(job) = active.jobs.iter().find(|j| is_exporting(j)) {
                if job.export_status == export_status::STARTING && job.lease_until.is_none_or(|l| l < now) {
                    report.say(format!(
                        "Repairing window {}: its kick-off was never confirmed",
                        job.seq
                    ));
                    return self.kick_off(job.clone(), now, report).await;
                }
                return Ok(());
            }
            // A failed window is exported again before anything new.
            if let Some(job) = active.jobs.iter().find(|j| j.export_status == export_status::FAILED) {
                report.say(format!(
                    "Exporting window {} to {} again (attempt {})",
                    format_instant(job.since),
                    format_instant(job.till),
                    job.attempt + 1
                ));
                return self.kick_off(job.clone(), now, report).await;
            }
            let uncommitted = (cursor.next_job - cursor.committed_job).max(0) as usize;
            // Windows in flight at most: one without overlap; with it, several, so the next windows export while
            // earlier ones import (they still commit in order).
            if uncommitted >= self.settings.windows_in_flight {
                return Ok(());
            }
            // Per-type mode, and any per-type window still being planned after a switch to parallel mode.
            let planned = if !self.settings.is_parallel || cursor.global_till.is_some() {
                self.plan_per_type(&cursor, now, report).await?
            } else {
                self.plan(&cursor, now, report).await?
            };
            match planned {
                Planned::Job(job) => return self.kick_off(*job, now, report).await,
                Planned::Skipped => continue,
                Planned::Nothing => return Ok(()),
            }
        }
        Ok(())
    }

    /// Decides the next window and records it (a job row, or an empty range on the cursor).
    /// Where the next window starts: after the last one planned, else `AZURE_StartDate`, else the source's
    /// oldest resource (of any version when history or deletes are exported).
    pub(crate) async fn next_window_start(
        &self,
        cursor: &Cursor,
        report: &mut TickReport,
    ) -> Result<Option<DateTime<Utc>>, EngineError> {
        let history = self.settings.export_with_history || self.settings.export_with_delete;
        Ok(match cursor.next_since().or(self.settings.start_date) {
            Some(s) => Some(s),
            None => {
                let first = self.source.oldest_last_updated(history, None).await?;
                if first.is_none() {
                    report.say("The source server has no resources yet; nothing to export");
                }
                first
            }
        })
    }

    async fn plan(&self, cursor: &Cursor, now: DateTime<Utc>, report: &mut TickReport) -> Result<Planned, EngineError> {
        let history = self.settings.export_with_history || self.settings.export_with_delete;
        let Some(since) = self.next_window_start(cursor, report).await? else {
            return Ok(Planned::Nothing);
        };
        let Some(mut till) = planner::window_end_with(&self.settings, since, now, self.timing.min_tail) else {
            return Ok(Planned::Nothing);
        };
        let mut count = self.window_count(None, since, till).await?;
        while count > self.settings.chunk_limit {
            match planner::halve(since, till) {
                Some(shorter) => {
                    till = shorter;
                    count = self.window_count(None, since, till).await?;
                }
                None => break,
            }
        }
        if count == 0 {
            // Skip straight to the next resource (or the frontier) without an export.
            let next = self.source.oldest_last_updated(history, Some(till)).await?;
            let frontier = planner::frontier(&self.settings, now);
            let skip_to = next.map_or(frontier, |n| n.min(frontier)).max(till);
            if skip_to <= since {
                return Ok(Planned::Nothing);
            }
            let mut updated = cursor.clone();
            updated.planned_till = Some(skip_to);
            if updated.since.is_none() {
                updated.since = Some(since);
            }
            return match self.state.save_cursor(&updated).await {
                Ok(_) => {
                    report.say(format!(
                        "No data from {} to {}; skipped without an export",
                        format_instant(since),
                        format_instant(skip_to)
                    ));
                    self.emit(
                        Event::new("WindowSkipped")
                            .with("Since", format_instant(since))
                            .with("Till", format_instant(skip_to))
                            .with("Reason", "the source has no resources in this range"),
                    );
                    Ok(Planned::Skipped)
                }
                Err(TableError::Conflict { .. }) => Ok(Planned::Nothing),
                Err(e) => Err(e.into()),
            };
        }
        let seq = cursor.next_job;
        let mut job = Job::planned(seq, since, till, "");
        job.lease_until = Some(now + self.timing.lease);
        let Some(job) = self
            .record_planned(cursor, job, |c, j| c.planned_till = Some(j.till))
            .await?
        else {
            return Ok(Planned::Nothing);
        };
        report.say(format!(
            "Planned window {seq}: {} to {} ({count} resources)",
            format_instant(since),
            format_instant(till)
        ));
        Ok(Planned::Job(Box::new(job)))
    }

    /// Records a planned window: inserts its row, then moves the cursor past it (`advance` sets the mode's own
    /// cursor fields from the job). `None` when the number was taken by another planner: plan again later.
    pub(crate) async fn record_planned(
        &self,
        cursor: &Cursor,
        job: Job,
        advance: impl Fn(&mut Cursor, &Job),
    ) -> Result<Option<Job>, EngineError> {
        let seq = job.seq;
        let job = match self.state.insert_job(&job).await {
            Ok(job) => job,
            // Another planner (or one that stopped early) took this number: the next pass rebuilds the
            // cursor from its row.
            Err(TableError::AlreadyExists { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.fail.hit("planned-job")?;
        let mut updated = cursor.clone();
        updated.next_job = seq + 1;
        if updated.since.is_none() {
            updated.since = Some(job.since);
        }
        advance(&mut updated, &job);
        match self.state.save_cursor(&updated).await {
            Ok(_) => self.fail.hit("planned-cursor")?,
            // Another invocation moved the cursor; the row is ours all the same (its kick-off is ETag-claimed)
            // and the next pass rebuilds the cursor from it.
            Err(TableError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(job))
    }

    /// Moves the cursor past a row a planner inserted without recording it on the cursor: `next_job`, and the
    /// mode's position, from the row's own columns.
    async fn repair_cursor(&self, cursor: &Cursor, row: &Job, report: &mut TickReport) -> Result<(), EngineError> {
        let mut repaired = cursor.clone();
        repaired.next_job = row.seq + 1;
        if repaired.since.is_none() {
            repaired.since = Some(row.window_since.unwrap_or(row.since));
        }
        match (row.resource_type.is_empty(), row.window_since, row.window_till) {
            (false, Some(ws), Some(wt)) => per_type_position(
                &mut repaired,
                &self.settings.resource_types,
                ws,
                wt,
                &row.resource_type,
                row.till,
            ),
            _ => repaired.planned_till = Some(repaired.planned_till.map_or(row.till, |p| p.max(row.till))),
        }
        match self.state.save_cursor(&repaired).await {
            Ok(_) => report.say(format!("Cursor repaired to include window {}", row.seq)),
            Err(TableError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// For a per-type part being committed: the end of its window when this part is the window's last.
    async fn per_type_window_complete(&self, cursor: &Cursor, job: &Job) -> Result<Option<DateTime<Utc>>, EngineError> {
        let Some(window_till) = job.window_till else {
            return Ok(None);
        };
        let later_part_of_same_window =
            |other: &Job| !other.resource_type.is_empty() && other.window_till == Some(window_till);
        match self.state.job(job.seq + 1).await? {
            Some(next) => Ok((!later_part_of_same_window(&next)).then_some(window_till)),
            // Nothing planned after this part: complete only if planning has finished the window.
            None => Ok((cursor.global_till != Some(window_till)).then_some(window_till)),
        }
    }

    /// Resources (versions, when history or deletes are exported) with lastUpdated in `[since, till)`, of one
    /// type or all.
    pub(crate) async fn window_count(
        &self,
        resource_type: Option<&str>,
        since: DateTime<Utc>,
        till: DateTime<Utc>,
    ) -> Result<u64, EngineError> {
        let history = self.settings.export_with_history || self.settings.export_with_delete;
        Ok(if history {
            self.source.history_count(resource_type, since, till).await?
        } else {
            self.source.count(resource_type, since, till).await?
        })
    }

    /// The `$export` query for a window.
    pub(crate) fn export_query(&self, job: &Job) -> String {
        let enc = crate::storage::encode_component;
        let mut q = vec![if job.resource_type.is_empty() {
            "_isParallel=true".to_string()
        } else {
            format!("_type={}", enc(&job.resource_type))
        }];
        if let Some(config) = &self.settings.deidentify_config {
            q.push(format!("_container=anonymization&_anonymizationConfig={}", enc(config)));
        }
        if let Some(assoc) = self.settings.associated_data() {
            q.push(format!("includeAssociatedData={assoc}"));
        }
        q.push(format!("_since={}", enc(&format_instant(job.since))));
        q.push(format!("_till={}", enc(&format_instant(job.till))));
        if let Some(n) = self.settings.max_count {
            q.push(format!("_maxCount={n}"));
        }
        q.join("&")
    }

    /// Claims the window (ETag), calls `$export`, records the status URL or the rejection.
    pub(crate) async fn kick_off(
        &self,
        mut job: Job,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        let _ = now;
        job.attempt += 1;
        job.export_status = export_status::STARTING.into();
        // The lease runs from the claim itself, not from the start of a tick that may have been slow.
        job.lease_until = Some(Utc::now() + self.timing.lease);
        job.failure_reason.clear();
        job.export_url.clear();
        job.export_id.clear();
        job.payloads = 0;
        job.processed = false;
        job.import_status = import_status::NOT_STARTED.into();
        job.import_request.clear();
        let mut job = match self.state.save_job(&job).await {
            Ok(j) => j,
            Err(TableError::Conflict { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.fail.hit("export-claimed")?;
        let query = self.export_query(&job);
        let (since, till) = (format_instant(job.since), format_instant(job.till));
        match self.source.export(&query).await {
            Ok(accepted) => {
                self.fail.hit("export-accepted")?;
                job.export_id = id_of(&accepted.status_url);
                job.export_url = accepted.status_url;
                job.export_status = export_status::STARTED.into();
                job.start_time = Some(Utc::now());
                job.lease_until = None;
                self.state.save_job(&job).await?;
                report.say(format!("Export {} started for {since} to {till}", job.export_id));
                self.emit(
                    Event::new("Export")
                        .with("ExportId", &job.export_id)
                        .with("StatusUrl", &job.export_url)
                        .with("ExportStatus", "Started")
                        .with("Since", &since)
                        .with("Till", &till),
                );
                Ok(())
            }
            // Throttled or a server-side hiccup: try again soon with the same window, without a failure.
            Err(FhirError::Rejected {
                status,
                diagnostics,
                retry_after,
                ..
            }) if crate::fhir::is_transient(status) => {
                job.lease_until = Some(retry_at(retry_after));
                job.failure_reason = format!("$export answered HTTP {status} ({diagnostics}); retrying");
                self.state.save_job(&job).await?;
                report.say(format!(
                    "Export kick-off for {since} to {till} deferred: {}",
                    job.failure_reason
                ));
                Ok(())
            }
            Err(FhirError::Rejected {
                status, diagnostics, ..
            }) => {
                job.export_status = export_status::FAILED.into();
                job.failure_reason = format!("$export refused with HTTP {status}: {diagnostics}");
                job.lease_until = None;
                self.state.save_job(&job).await?;
                self.count_failure().await?;
                report.say(format!(
                    "Export kick-off for {since} to {till} failed: {}",
                    job.failure_reason
                ));
                self.emit_failure(
                    Event::new("Export")
                        .with("ExportId", "")
                        .with("StatusUrl", "")
                        .with("ExportStatus", "Failed")
                        .with("Since", &since)
                        .with("Till", &till)
                        .with("FailureReason", &job.failure_reason),
                    job.since,
                    job.till,
                );
                Ok(())
            }
            // Unreachable server or token trouble: the lease expires and a later tick tries again.
            Err(e) => {
                job.lease_until = Some(Utc::now() + RETRY_SOON);
                job.failure_reason = format!("$export could not be sent: {e}");
                self.state.save_job(&job).await?;
                report.say(format!("Export kick-off for {since} to {till} could not be sent: {e}"));
                self.count_failure().await?;
                Ok(())
            }
        }
    }

    /// Polls every running export once. One export's trouble is reported and the others are still polled.
    pub(crate) async fn poll_exports(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<(), EngineError> {
        let cursor = self.state.cursor().await?;
        let active = self.state.active(&cursor).await?;
        for job in active.jobs.iter().filter(|j| {
            matches!(
                j.export_status.as_str(),
                export_status::STARTED | export_status::RUNNING
            )
        }) {
            let overdue = job.start_time.is_some_and(|t| now - t > self.settings.job_timeout);
            if overdue {
                let hours = self.settings.job_timeout.num_hours();
                let result = self
                    .export_failed(
                        job.clone(),
                        0,
                        format!("no result after {hours} hours; exporting the window again"),
                        report,
                    )
                    .await;
                if let Err(e) = result
                    && !e.is_conflict()
                {
                    return Err(e);
                }
                continue;
            }
            let result = match self.poll_confirmed(&job.export_url).await {
                Ok(Poll::Running(_)) => self.export_running(job.clone()).await,
                Ok(Poll::Done(manifest)) => self.export_done(job.clone(), manifest, now, report).await,
                Ok(Poll::Failed { status, diagnostics }) => {
                    self.export_failed(job.clone(), status, diagnostics, report).await
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_conflict() => report.say(format!(
                    "Window {} was updated by another invocation; left to it",
                    job.seq
                )),
                Err(EngineError::Injected(point)) => return Err(EngineError::Injected(point)),
                Err(e) => report.say(format!(
                    "Export {} of window {} could not be polled: {e}",
                    job.export_id, job.seq
                )),
            }
        }
        Ok(())
    }

    /// One poll, and when it reports completion a second one after the confirmation delay: servers can report
    /// 200 and then 202 again, so a completion counts only when it repeats.
    async fn poll_confirmed(&self, url: &str) -> Result<Poll<ExportManifest>, FhirError> {
        let poll = self.source.export_status(url).await?;
        if !matches!(poll, Poll::Done(_)) {
            return Ok(poll);
        }
        tokio::time::sleep(self.timing.confirm_delay).await;
        Ok(match self.source.export_status(url).await? {
            Poll::Done(m) => Poll::Done(m),
            _ => Poll::Running(None),
        })
    }

    async fn export_running(&self, mut job: Job) -> Result<(), EngineError> {
        if job.export_status != export_status::RUNNING {
            job.export_status = export_status::RUNNING.into();
            self.state.save_job(&job).await?;
        }
        self.emit(
            Event::new("Export")
                .with("ExportId", &job.export_id)
                .with("StatusUrl", &job.export_url)
                .with("ExportStatus", "Running")
                .with("Since", "")
                .with("Till", ""),
        );
        Ok(())
    }

    async fn export_failed(
        &self,
        mut job: Job,
        status: u16,
        diagnostics: String,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        job.export_status = export_status::FAILED.into();
        job.failure_reason = if status == 0 {
            format!("export failed: {diagnostics}")
        } else {
            format!("export failed with HTTP {status}: {diagnostics}")
        };
        self.state.save_job(&job).await?;
        self.count_failure().await?;
        report.say(format!("Export {} failed: {}", job.export_id, job.failure_reason));
        self.emit_failure(
            Event::new("Export")
                .with("ExportId", &job.export_id)
                .with("StatusUrl", &job.export_url)
                .with("ExportStatus", "Failed")
                .with("Since", "")
                .with("Till", "")
                .with("TotalResources", "")
                .with("FailureReason", &job.failure_reason),
            job.since,
            job.till,
        );
        Ok(())
    }

    /// Persists the payloads (blobs first, then rows), then marks the export complete.
    async fn export_done(
        &self,
        mut job: Job,
        manifest: ExportManifest,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        let total: u64 = manifest.output.iter().map(|f| f.count).sum();
        if !manifest.error.is_empty() {
            let failed: Vec<String> = manifest
                .error
                .iter()
                .map(|e| format!("{}:{}", e.resource_type, e.count))
                .collect();
            return self
                .export_failed(
                    job,
                    200,
                    format!("the manifest lists export errors ({})", failed.join(", ")),
                    report,
                )
                .await;
        }
        let (search_parameters, files): (Vec<ExportFile>, Vec<ExportFile>) = manifest
            .output
            .into_iter()
            .partition(|f| f.resource_type == "SearchParameter");
        job.search_parameter_count = search_parameters.iter().map(|f| f.count as i64).sum();
        // As the original: an export with nothing to import reports an empty total.
        let reported_total = if files.is_empty() {
            String::new()
        } else {
            total.to_string()
        };
        job.exported = total as i64;
        job.export_end_time = Some(now);
        job.export_status = export_status::COMPLETED.into();
        if files.is_empty() {
            job.import_request = "No".into();
            job.import_status = import_status::COMPLETED.into();
            job.processed = true;
            job.end_time = Some(now);
            self.state.save_job(&job).await?;
            report.say(format!("Export {} finished with nothing to import", job.export_id));
        } else {
            let container = payload_container(&job.export_id);
            // The same split on every run: files of one type come in no set order, and a repeated run (after a
            // crash) must write the same payloads.
            let mut files = files;
            files.sort_by(|a, b| a.url.cmp(&b.url));
            self.blobs.ensure_container(&container).await?;
            let chunks: Vec<&[ExportFile]> = files.chunks(self.settings.file_count).collect();
            for (k, chunk) in chunks.iter().enumerate() {
                let name = format!("import_payload_{}.json", k + 1);
                let body = import_parameters(&self.settings.import_mode, chunk, None);
                self.blobs.put(&container, &name, body.to_string().into_bytes()).await?;
                self.fail.hit("payload-blobs")?;
                self.state
                    .insert_payload(&Payload::new(job.seq, job.attempt, k as i64 + 1, name))
                    .await?;
            }
            self.fail.hit("payload-rows")?;
            job.payloads = chunks.len() as i64;
            job.import_request = "Yes".into();
            self.state.save_job(&job).await?;
            report.say(format!(
                "Export {} finished: {total} resources in {} file(s), {} import payload(s)",
                job.export_id,
                files.len(),
                chunks.len()
            ));
        }
        self.emit(
            Event::new("Export")
                .with("ExportId", &job.export_id)
                .with("StatusUrl", &job.export_url)
                .with("ExportStatus", "Completed")
                .with("Since", "")
                .with("Till", "")
                .with("TotalResources", reported_total)
                .with("SearchParameterCount", job.search_parameter_count)
                .with("FailedExportCount", 0)
                .with("FailedExportType", ""),
        );
        Ok(())
    }
}

/// Per-type position after planning `resource_type` up to `planned_to` in the window `[since, till)`: the same
/// type again from there if its share was split, else it joins the window's done types.
pub(crate) fn per_type_position(
    cursor: &mut Cursor,
    types: &[String],
    since: DateTime<Utc>,
    till: DateTime<Utc>,
    resource_type: &str,
    planned_to: DateTime<Utc>,
) {
    if cursor.global_till != Some(till) || cursor.global_since != Some(since) {
        cursor.types_done.clear();
    }
    cursor.global_since = Some(since);
    cursor.global_till = Some(till);
    if planned_to < till {
        cursor.type_name = resource_type.to_string();
        cursor.sub_since = Some(planned_to);
    } else {
        if !cursor.types_done.iter().any(|t| t == resource_type) {
            cursor.types_done.push(resource_type.to_string());
        }
        cursor.type_name.clear();
        cursor.sub_since = None;
    }
    // The original's position column, kept for runbooks.
    cursor.type_index = types.iter().position(|t| t == resource_type).map_or(0, |i| i as i64);
}

/// What planning decided.
pub(crate) enum Planned {
    Job(Box<Job>),
    Skipped,
    Nothing,
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    #[test]
    fn deferred_calls_wait_as_the_server_asked_within_bounds() {
        let wait = |hint: Option<std::time::Duration>| (retry_at(hint) - Utc::now()).num_milliseconds();
        assert!(
            (900..=1000).contains(&wait(Some(std::time::Duration::from_millis(150)))),
            "at least a second"
        );
        assert!((19_900..=20_000).contains(&wait(Some(std::time::Duration::from_secs(20)))));
        assert!(
            (299_900..=300_000).contains(&wait(Some(std::time::Duration::from_secs(3600)))),
            "at most 5 min"
        );
        assert!((29_900..=30_000).contains(&wait(None)), "no hint: soon");
    }
}
