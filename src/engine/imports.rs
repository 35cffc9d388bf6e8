//! Imports: posting persisted payloads (at most `AZURE_PayloadCount` running), polling every running import,
//! retrying failed ones with a new definition, and marking a window processed only when every payload of its
//! current export attempt imported successfully.

use chrono::{DateTime, Utc};

use super::{Engine, EngineError, TickReport};
use crate::config::ImportErrorPolicy;
use crate::fhir::format_instant;
use crate::fhir::wire::ImportResult;
use crate::fhir::{FhirError, Poll};
use crate::state::rows::{export_status, import_status};
use crate::state::{Active, Job, Payload};
use crate::storage::tables::TableError;
use crate::telemetry::{Event, id_of};

/// The servers' default processing-unit size; retries step just below it so each retry is a new definition.
const DEFAULT_UNIT_BYTES: u64 = 10_000_000;
const HALTED: &str = "Halted";

fn is_running(p: &Payload, now: DateTime<Utc>) -> bool {
    match p.status.as_str() {
        import_status::STARTED | import_status::RUNNING => true,
        import_status::POSTING => p.lease_until.is_some_and(|l| l >= now),
        _ => false,
    }
}

impl Engine {
    /// Starts imports for payloads that are waiting, failed with retries left, or whose POST was interrupted.
    pub(crate) async fn post_payloads(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<(), EngineError> {
        let cursor = self.state.cursor().await?;
        if self.latched(&cursor) {
            return Ok(());
        }
        if crate::planner::paused(self.settings.pause, now) && !self.settings.continue_last_import_during_pause {
            return Ok(());
        }
        let active = self.state.active(&cursor).await?;
        let mut running = active.payloads.iter().filter(|p| is_running(p, now)).count();
        for job in active
            .jobs
            .iter()
            .filter(|j| j.export_status == export_status::COMPLETED && !j.processed)
        {
            for payload in active.payloads_of(job) {
                if running >= self.settings.payload_count {
                    return Ok(());
                }
                let retry = payload.status == import_status::FAILED
                    && payload.attempt < i64::from(self.settings.max_import_retries);
                let interrupted = payload.status == import_status::POSTING && !is_running(payload, now);
                if payload.status == import_status::NOT_STARTED || retry || interrupted {
                    match self.post(job, payload.clone(), interrupted, report).await {
                        Ok(()) => running += 1,
                        Err(e) if e.is_conflict() => continue,
                        // One payload's trouble must not stop the others (an injected crash still does).
                        Err(EngineError::Injected(point)) => return Err(EngineError::Injected(point)),
                        Err(e) => report.say(format!(
                            "Import of window {} payload {} not started: {e}",
                            job.seq, payload.index
                        )),
                    }
                }
            }
        }
        Ok(())
    }

    async fn post(
        &self,
        job: &Job,
        mut payload: Payload,
        same_attempt: bool,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        // Claim first: only the invocation whose write wins posts. The lease runs from the claim itself.
        if !same_attempt {
            payload.attempt += 1;
        }
        payload.status = import_status::POSTING.into();
        payload.lease_until = Some(Utc::now() + self.timing.lease);
        payload.failure_reason.clear();
        let mut payload = self.state.save_payload(&payload).await?;
        self.fail.hit("import-claimed")?;
        let container = super::exports::payload_container(&job.export_id);
        let Some(bytes) = self.blobs.get(&container, &payload.blob).await? else {
            // Nothing to retry with: exhaust the attempts so the window is exported again.
            payload.status = import_status::FAILED.into();
            payload.attempt = payload.attempt.max(i64::from(self.settings.max_import_retries));
            payload.failure_reason = format!("the payload blob {container}/{} is missing", payload.blob);
            self.state.save_payload(&payload).await?;
            return Ok(());
        };
        let mut body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        // Registration is idempotent on the whole definition: a retry must differ, a repaired POST must not.
        if payload.attempt > 1
            && let Some(params) = body["parameter"].as_array_mut()
        {
            params.push(serde_json::json!({ "name": "processingUnitBytesToRead", "valueInteger": DEFAULT_UNIT_BYTES - payload.attempt as u64 + 1 }));
        }
        match self.destination.import(&body).await {
            Ok(accepted) => {
                self.fail.hit("import-accepted")?;
                payload.import_url = accepted.status_url;
                payload.status = import_status::STARTED.into();
                payload.start_time = Some(Utc::now());
                payload.lease_until = None;
                self.state.save_payload(&payload).await?;
                report.say(format!(
                    "Import {} started for window {} (payload {}, attempt {})",
                    id_of(&payload.import_url),
                    job.seq,
                    payload.index,
                    payload.attempt
                ));
                self.emit(
                    Event::new("Import")
                        .with("ImportId", id_of(&payload.import_url))
                        .with("StatusUrl", &payload.import_url)
                        .with("ImportStatus", "Started"),
                );
                Ok(())
            }
            // Throttled, or a gateway error after which the server may well have registered the job: post the
            // same definition again soon (the server de-duplicates it), without burning an attempt.
            Err(FhirError::Rejected {
                status,
                diagnostics,
                retry_after,
                ..
            }) if crate::fhir::is_transient(status) => {
                payload.lease_until = Some(super::exports::retry_at(retry_after));
                payload.failure_reason = format!("$import answered HTTP {status} ({diagnostics}); posting again");
                self.state.save_payload(&payload).await?;
                report.say(format!(
                    "Import of window {} payload {} deferred: {}",
                    job.seq, payload.index, payload.failure_reason
                ));
                Ok(())
            }
            Err(FhirError::Rejected {
                status, diagnostics, ..
            }) => {
                payload.status = import_status::FAILED.into();
                payload.failure_reason = format!("$import refused with HTTP {status}: {diagnostics}");
                payload.lease_until = None;
                self.state.save_payload(&payload).await?;
                self.count_failure().await?;
                report.say(format!(
                    "Import of window {} payload {} refused: {}",
                    job.seq, payload.index, payload.failure_reason
                ));
                self.emit_failure(
                    Event::new("Import")
                        .with("ImportId", "")
                        .with("StatusUrl", "")
                        .with("ImportStatus", "Failed")
                        .with("FailureReason", &payload.failure_reason),
                    job.since,
                    job.till,
                );
                Ok(())
            }
            // Not sent, or the answer was lost: post the same definition again after a short lease.
            Err(e) => {
                payload.lease_until = Some(Utc::now() + super::exports::RETRY_SOON);
                payload.failure_reason = format!("$import could not be sent: {e}");
                self.state.save_payload(&payload).await?;
                report.say(format!(
                    "Import of window {} payload {} could not be sent: {e}",
                    job.seq, payload.index
                ));
                Ok(())
            }
        }
    }

    /// Polls every running import of each window's current export attempt once. One import's trouble is
    /// reported and the others are still polled.
    pub(crate) async fn poll_imports(&self, now: DateTime<Utc>, report: &mut TickReport) -> Result<(), EngineError> {
        let cursor = self.state.cursor().await?;
        let active = self.state.active(&cursor).await?;
        let mut totals = None;
        for payload in active
            .payloads
            .iter()
            .filter(|p| matches!(p.status.as_str(), import_status::STARTED | import_status::RUNNING))
        {
            let Some(job) = active.job(payload.seq) else { continue };
            // A payload of a superseded export attempt no longer decides anything about its window.
            if payload.export_attempt != job.attempt {
                continue;
            }
            if payload.start_time.is_some_and(|t| now - t > self.settings.job_timeout) {
                let hours = self.settings.job_timeout.num_hours();
                let result = self
                    .import_failed(
                        job,
                        payload.clone(),
                        0,
                        format!("no result after {hours} hours"),
                        &mut totals,
                        report,
                    )
                    .await;
                if let Err(e) = result
                    && !e.is_conflict()
                {
                    report.say(format!(
                        "Import {} could not be marked as timed out: {e}",
                        id_of(&payload.import_url)
                    ));
                }
                continue;
            }
            let result = match self.destination.import_status(&payload.import_url).await {
                Ok(Poll::Running(_)) => self.import_running(payload.clone(), &mut totals).await,
                Ok(Poll::Done(result)) => {
                    self.import_done(job, payload.clone(), result, now, &mut totals, report)
                        .await
                }
                Ok(Poll::Failed { status, diagnostics }) => {
                    self.import_failed(job, payload.clone(), status, diagnostics, &mut totals, report)
                        .await
                }
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_conflict() => continue,
                Err(EngineError::Injected(point)) => return Err(EngineError::Injected(point)),
                Err(e) => report.say(format!(
                    "Import {} of window {} could not be polled: {e}",
                    id_of(&payload.import_url),
                    job.seq
                )),
            }
        }
        self.mark_processed(&self.state.active(&self.state.cursor().await?).await?, now)
            .await
    }

    async fn import_running(&self, mut payload: Payload, totals: &mut Option<Totals>) -> Result<(), EngineError> {
        if payload.status != import_status::RUNNING {
            payload.status = import_status::RUNNING.into();
            self.state.save_payload(&payload).await?;
        }
        let event = Event::new("Import")
            .with("ImportId", id_of(&payload.import_url))
            .with("StatusUrl", &payload.import_url)
            .with("ImportStatus", "Running");
        let event = self.totals(totals).await.add_to(event);
        self.emit(event);
        Ok(())
    }

    /// The whole-server totals the original put on `Import` events (the dashboard's "Total Resource Count"
    /// tile): every version with history or deletes on, else current resources. Fetched once per tick, and only
    /// when an event needs them; a failed count is reported in `SourceError`/`DestinationError`, never fatal.
    async fn totals<'a>(&self, cache: &'a mut Option<Totals>) -> &'a Totals {
        if cache.is_none() {
            let history = self.settings.export_with_history || self.settings.export_with_delete;
            let (s, d) = tokio::join!(self.source.total(history), self.destination.total(history));
            let split = |r: Result<u64, crate::fhir::FhirError>| match r {
                Ok(n) => (n.to_string(), String::new()),
                Err(e) => (" ".to_string(), e.to_string()),
            };
            let (source, source_error) = split(s);
            let (destination, destination_error) = split(d);
            *cache = Some(Totals {
                source,
                destination,
                source_error,
                destination_error,
            });
        }
        cache.get_or_insert_with(Totals::default)
    }

    async fn import_done(
        &self,
        job: &Job,
        mut payload: Payload,
        result: ImportResult,
        now: DateTime<Utc>,
        totals: &mut Option<Totals>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        payload.imported = result.imported() as i64;
        payload.failed_lines = result.failed() as i64;
        payload.failed_resources = result
            .error
            .iter()
            .map(|e| format!("{}:{}", e.resource_type.as_deref().unwrap_or(""), e.count))
            .collect::<Vec<_>>()
            .join(", ");
        payload.error_files = result
            .error
            .iter()
            .map(|e| e.url.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if !result.error.is_empty() {
            let urls: Vec<&str> = result.error.iter().map(|e| e.url.as_str()).collect();
            match self.summarize_errors(&urls).await {
                Some(summary) => {
                    payload.error_kinds = Some((summary.conflicts, summary.duplicates, summary.invalid));
                    payload.error_samples = summary.samples.join("\n");
                }
                None => {
                    payload.error_samples =
                        "error files not readable with the tool's storage access (set AZURE_IntegrationStorageUri)"
                            .into()
                }
            }
        }
        payload.end_time = Some(now);
        payload.status = import_status::COMPLETED.into();
        let halt = payload.failed_lines > 0 && self.settings.import_error_policy == ImportErrorPolicy::Halt;
        if halt {
            payload.status = HALTED.into();
            payload.failure_reason = format!(
                "{} line(s) failed to import ({}); see the error files",
                payload.failed_lines, payload.failed_resources
            );
        }
        self.state.save_payload(&payload).await?;
        self.fail.hit("import-recorded")?;
        if payload.failed_lines > 0 {
            report.say(format!(
                "Import {} of window {} finished with {} failed line(s) ({}); error files: {}",
                id_of(&payload.import_url),
                job.seq,
                payload.failed_lines,
                payload.failed_resources,
                payload.error_files.replace('\n', ", ")
            ));
        } else {
            report.say(format!(
                "Import {} of window {} finished: {} resources",
                id_of(&payload.import_url),
                job.seq,
                payload.imported
            ));
        }
        let event = Event::new("Import")
            .with("ImportId", id_of(&payload.import_url))
            .with("StatusUrl", &payload.import_url)
            .with("ImportStatus", "Completed")
            .with("TotalImportResources", payload.imported)
            .with("TotalExportResources", job.exported);
        let event = self
            .totals(totals)
            .await
            .add_to(event)
            .with("FailedImportCount", payload.failed_lines)
            .with("FailedResourceType", &payload.failed_resources)
            .with("SearchParameterCount", job.search_parameter_count)
            .with("FailedExportCount", 0)
            .with("FailedExportType", "");
        self.emit(event);
        if payload.failed_lines > 0 {
            let (conflicts, duplicates, invalid) = payload.error_kinds.unwrap_or_default();
            let unknown = |n: i64| {
                if payload.error_kinds.is_some() {
                    n.to_string()
                } else {
                    String::new()
                }
            };
            self.emit(
                Event::new("ImportErrors")
                    .with("ImportId", id_of(&payload.import_url))
                    .with("Since", format_instant(job.since))
                    .with("Till", format_instant(job.till))
                    .with("FailedImportCount", payload.failed_lines)
                    .with("FailedResourceType", &payload.failed_resources)
                    .with("Conflicts", unknown(conflicts))
                    .with("Duplicates", unknown(duplicates))
                    .with("Invalid", unknown(invalid)),
            );
        }
        Ok(())
    }

    async fn import_failed(
        &self,
        job: &Job,
        mut payload: Payload,
        status: u16,
        diagnostics: String,
        totals: &mut Option<Totals>,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        payload.status = import_status::FAILED.into();
        payload.failure_reason = if status == 0 {
            format!("import failed: {diagnostics}")
        } else {
            format!("import failed with HTTP {status}: {diagnostics}")
        };
        payload.end_time = Some(Utc::now());
        self.state.save_payload(&payload).await?;
        self.count_failure().await?;
        report.say(format!(
            "Import {} of window {} failed: {}",
            id_of(&payload.import_url),
            job.seq,
            payload.failure_reason
        ));
        let event = Event::new("Import")
            .with("ImportId", id_of(&payload.import_url))
            .with("StatusUrl", &payload.import_url)
            .with("ImportStatus", "Failed");
        let event = self
            .totals(totals)
            .await
            .add_to(event)
            .with("FailureReason", &payload.failure_reason);
        self.emit_failure(event, job.since, job.till);
        Ok(())
    }

    /// A window is processed when every payload of its current attempt completed (successes, not merely
    /// terminal states: the original's counter let a failed payload be masked by a later success).
    async fn mark_processed(&self, active: &Active, now: DateTime<Utc>) -> Result<(), EngineError> {
        for job in active
            .jobs
            .iter()
            .filter(|j| j.export_status == export_status::COMPLETED && !j.processed)
        {
            let payloads: Vec<&Payload> = active.payloads_of(job).collect();
            if payloads.is_empty() {
                continue;
            }
            let mut job = job.clone();
            // A payload out of attempts (or without its blob) fails the window, which is then exported
            // again. Decided from the stored state on every pass, so a lost write is simply redone.
            let max = i64::from(self.settings.max_import_retries);
            if let Some(p) = payloads
                .iter()
                .find(|p| p.status == import_status::FAILED && p.attempt >= max)
            {
                job.export_status = export_status::FAILED.into();
                job.import_status = import_status::FAILED.into();
                job.failure_reason = format!("payload {} failed {} time(s): {}", p.index, p.attempt, p.failure_reason);
                self.save_quietly(&job).await?;
                continue;
            }
            if payloads.iter().any(|p| p.status == HALTED) {
                if job.import_status != HALTED {
                    job.import_status = HALTED.into();
                    job.failure_reason = payloads
                        .iter()
                        .find(|p| p.status == HALTED)
                        .map(|p| p.failure_reason.clone())
                        .unwrap_or_default();
                    self.save_quietly(&job).await?;
                }
                continue;
            }
            if payloads.iter().all(|p| p.status == import_status::COMPLETED) && payloads.len() as i64 == job.payloads {
                job.processed = true;
                job.import_status = import_status::COMPLETED.into();
                job.end_time = Some(now);
                self.save_quietly(&job).await?;
                self.fail.hit("window-processed")?;
            } else if payloads
                .iter()
                .any(|p| matches!(p.status.as_str(), import_status::STARTED | import_status::RUNNING))
                && job.import_status != import_status::RUNNING
            {
                job.import_status = import_status::RUNNING.into();
                self.save_quietly(&job).await?;
            }
        }
        Ok(())
    }

    async fn save_quietly(&self, job: &Job) -> Result<(), EngineError> {
        match self.state.save_job(job).await {
            Ok(_) | Err(TableError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The operator accepted halted imports: their windows may commit.
    pub(crate) async fn acknowledge_halts(&self, active: &Active) -> Result<(), EngineError> {
        for payload in active.payloads.iter().filter(|p| p.status == HALTED) {
            let mut p = payload.clone();
            p.status = import_status::COMPLETED.into();
            p.failure_reason = format!("accepted by an operator with {} failed line(s)", p.failed_lines);
            self.state.save_payload(&p).await?;
        }
        for job in active.jobs.iter().filter(|j| j.import_status == HALTED) {
            let mut j = job.clone();
            j.import_status = import_status::RUNNING.into();
            self.save_quietly(&j).await?;
        }
        self.mark_processed(&self.state.active(&self.state.cursor().await?).await?, Utc::now())
            .await
    }
}

/// Whole-server totals for one tick's `Import` events; `" "` when a count failed (the original's marker).
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    source: String,
    destination: String,
    source_error: String,
    destination_error: String,
}

impl Totals {
    fn add_to(&self, event: Event) -> Event {
        event
            .with("SourceResourceCount", &self.source)
            .with("DestinationResourceCount", &self.destination)
            .with("SourceError", &self.source_error)
            .with("DestinationError", &self.destination_error)
    }
}
