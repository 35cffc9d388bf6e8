//! The cut-over assistant: is it safe to point the applications at the destination now?
//!
//! Without `final`, it reports the lag: how far the migration trails, how many source versions are newer than
//! the migrated-through time, and what is still in flight. With `final` (after the operator has stopped writes
//! to the source), it:
//!
//! 1. waits until the source has had no write for the quiet period;
//! 2. drives the last windows right up to the last write (the short tail a caught-up migration would
//!    otherwise wait for);
//! 3. runs the full check and a reconciliation dry run;
//! 4. answers READY, or NOT READY with every reason.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::app::App;
use crate::engine::{EngineError, Timing};
use crate::fhir::{FhirError, format_instant};

/// How often the quiet period's countdown is said.
const WAIT_LINE_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Options {
    /// Wait for quiet, drive the tail, check.
    pub final_check: bool,
    /// How long the source must have had no write (at least the safety lag).
    pub quiet: Duration,
    /// Give up after this long.
    pub timeout: Duration,
    /// Pause between ticks while driving the tail.
    pub poll: Duration,
    /// The operator named the configured (narrower) scope (`--scope configured`): READY may then rest on that
    /// part alone, with whole-server totals that differ.
    pub scope_configured: bool,
    /// Called with a line while waiting (the quiet period's countdown).
    pub on_wait: Option<fn(&str)>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What was checked: `scope: the whole server (…)` or the part the configuration migrates.
    pub scope: String,
    /// Whole-server version totals (current resources without history), source and destination, when the
    /// scope is part of the server and the final check ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole_server_totals: Option<(u64, u64)>,
    pub ready: bool,
    pub reasons: Vec<String>,
    pub migrated_through: Option<String>,
    pub last_source_write: Option<String>,
    /// Source versions (current resources without history) newer than the migrated-through time.
    pub pending_source_versions: u64,
    pub windows_in_flight: usize,
    pub full_check_compared: Option<u64>,
    pub full_check_passed: Option<bool>,
    pub reconcile_clean: Option<bool>,
    /// The failure ledger: cut-over is NOT READY while any version an import refused is neither at the
    /// destination nor accepted by an operator.
    pub import_failures: crate::ledger::Summary,
    /// The accepted losses, each with its reason (they do not block, but every report names them).
    pub accepted_failures: Vec<String>,
    /// With de-identified export: `not comparable (de-identified)` — the full check compared ids, versions,
    /// lastUpdated and delete state, not content. Absent when content was compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CutoverError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error(transparent)]
    Reconcile(#[from] crate::reconcile::ReconcileError),
}

fn parse(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

pub async fn cutover(app: &App, options: &Options) -> Result<Report, CutoverError> {
    let engine = app.engine();
    let settings = engine.settings();
    let history = settings.export_with_history || settings.export_with_delete;
    let scope = crate::verify::scope::Scope::of(settings);
    let mut report = Report {
        scope: scope.line(),
        ..Report::default()
    };
    let started = Instant::now();

    // A specific run ends at its end date: writes after it are outside the migration, so nothing waits for them.
    if options.final_check && scope.till.is_some() {
        report.last_source_write = None;
    } else if options.final_check {
        // 1. Quiet: no source write for the quiet period (never less than the safety lag, so the frontier
        //    passes the last write).
        let mut said: Option<Instant> = None;
        let quiet = TimeDelta::from_std(options.quiet)
            .unwrap_or(TimeDelta::zero())
            .max(settings.safety_lag);
        loop {
            let last = engine.source().newest_last_updated(history).await?;
            if last.is_none_or(|t| Utc::now() - t >= quiet) {
                break;
            }
            if started.elapsed() >= options.timeout {
                report.reasons.push(format!(
                    "the source is still being written (last write {}); stop writes, then run --final again",
                    last.map(format_instant).unwrap_or_default()
                ));
                return finish(app, report, history, &scope).await;
            }
            if let (Some(say), Some(t)) = (options.on_wait, last)
                && said.is_none_or(|at: Instant| at.elapsed() >= WAIT_LINE_EVERY)
            {
                said = Some(Instant::now());
                let left = (quiet - (Utc::now() - t)).num_seconds().max(0);
                say(&format!(
                    "waiting for {} without a write at the source (last write {}): {} left; gives up in {}",
                    crate::engine::progress::duration_text(quiet.num_seconds()),
                    format_instant(t),
                    crate::engine::progress::duration_text(left),
                    crate::engine::progress::duration_text(
                        options.timeout.saturating_sub(started.elapsed()).as_secs() as i64
                    )
                ));
            }
            tokio::time::sleep(options.poll).await;
        }
    }
    if options.final_check {
        // 2. Drive the last windows up to the last write, tail included.
        let last = match scope.till {
            Some(end) => Some(end - TimeDelta::milliseconds(1)),
            None => engine.source().newest_last_updated(history).await?,
        };
        let tail = engine.clone().with_timing(Timing {
            min_tail: TimeDelta::zero(),
            ..engine.timing().clone()
        });
        loop {
            let now = Utc::now();
            for result in [
                tail.starter_tick(now).await.map(|_| ()),
                tail.export_status_tick(now).await.map(|_| ()),
                tail.import_status_tick(now).await.map(|_| ()),
            ] {
                if let Err(e) = result
                    && !e.is_conflict()
                {
                    report
                        .reasons
                        .push(format!("a tick failed while driving the tail: {e}"));
                }
            }
            let status = tail.status(Utc::now()).await?;
            let through = parse(status.migrated_through.as_deref());
            let done = status.windows_in_flight.is_empty()
                && (last.is_none_or(|l| through.is_some_and(|t| t > l))
                    || status.progress.state == crate::engine::progress::State::Finished);
            if done || status.halted {
                break;
            }
            if started.elapsed() >= options.timeout {
                report.reasons.push("the last windows did not finish in time".into());
                break;
            }
            tokio::time::sleep(options.poll).await;
        }
        // 3. The checks.
        // De-identified content differs from the source by design: readiness rests on ids, versions and times.
        let content = crate::verify::Content::of(settings);
        // Versions whose loss an operator accepted are named in the report, not counted against readiness.
        let accepted = accepted_losses(engine).await?;
        let full = crate::verify::full::full_except(
            engine.source(),
            engine.destination(),
            &settings.resource_types,
            history,
            content,
            accepted,
            scope.millis(),
        )
        .await?;
        // Part of the server: the rest must match too (it may have been carried another way), unless the operator
        // named the narrower scope.
        if !scope.is_whole() {
            let (s, d) = tokio::try_join!(engine.source().total(history), engine.destination().total(history))?;
            report.whole_server_totals = Some((s, d));
            if s != d && !options.scope_configured {
                report.reasons.push(format!(
                    "whole-server totals differ: the source holds {s} {what}, the destination {d}, and this configuration migrates only part of the source ({}). If only that part is to move, run `cutover --final --scope configured`",
                    scope.line().trim_start_matches("scope: part of the server, as configured: "),
                    what = if history { "versions" } else { "resources" }
                ));
            }
        }
        if content == crate::verify::Content::NotComparable {
            report.content = Some(content.label().to_string());
        }
        report.full_check_compared = Some(full.compared);
        report.full_check_passed = Some(full.passed);
        if !full.passed {
            report.reasons.push(format!(
                "the full check found {} missing, {} extra and {} different versions",
                full.missing, full.extra, full.different
            ));
        }
        let reconciled = crate::reconcile::reconcile(
            engine.source(),
            engine.destination(),
            &crate::reconcile::Options {
                types: settings.resource_types.clone(),
                apply: false,
                max_deletes: 0,
            },
            None,
            app.telemetry().as_ref(),
        )
        .await?;
        let search_parameters = engine.compare_search_parameters().await?;
        if !search_parameters.is_empty() {
            report.reasons.push(format!(
                "custom SearchParameters differ ({}); the starter carries changes within minutes",
                search_parameters.join("; ")
            ));
        }
        let clean = reconciled.clean() && reconciled.pending_soft_deletes == 0;
        report.reconcile_clean = Some(clean);
        if reconciled.hard_deleted_at_source > 0 {
            report.reasons.push(format!(
                "{} resources hard-deleted at the source are still at the destination: run `reconcile --apply`",
                reconciled.hard_deleted_at_source
            ));
        }
    }
    finish(app, report, history, &scope).await
}

/// Fills in the lag figures and the verdict.
async fn finish(
    app: &App,
    mut report: Report,
    history: bool,
    scope: &crate::verify::scope::Scope,
) -> Result<Report, CutoverError> {
    let engine = app.engine();
    let status = engine.status(Utc::now()).await?;
    report.migrated_through = status.migrated_through.clone();
    report.windows_in_flight = status.windows_in_flight.len();
    // Within the scope's range: a write after a specific run's end date is not for this migration.
    let last = match scope.till {
        Some(end) => Some(end - TimeDelta::milliseconds(1)),
        None => engine.source().newest_last_updated(history).await?,
    };
    report.last_source_write = match scope.till {
        Some(_) => Some(format!(
            "(not asked: the range ends at {})",
            format_instant(scope.till.unwrap_or_default())
        )),
        None => last.map(format_instant),
    };
    let through = parse(status.migrated_through.as_deref());
    report.pending_source_versions = match (through, last) {
        // Asked only when the newest write is at or after the migrated-through point: before it nothing is
        // pending, and a range whose start is past its end is never asked.
        (Some(t), Some(l)) if l >= t => pending(engine, scope, history, t).await?,
        (None, Some(_)) => {
            let since = scope.since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            pending(engine, scope, history, since).await?
        }
        _ => 0,
    };
    if status.halted {
        report
            .reasons
            .push("the migration is halted: see MigrationStatus_Http".into());
    }
    let ledger = engine.ledger().list(None).await.map_err(EngineError::from)?;
    report.import_failures = crate::ledger::Summary::of(&ledger);
    report.accepted_failures = ledger
        .iter()
        .filter(|e| e.state == crate::ledger::State::Accepted)
        .map(|e| format!("{}: {}", e.describe(), e.resolution))
        .collect();
    let f = &report.import_failures;
    if f.permanent_unresolved > 0 {
        report.reasons.push(format!(
            "{} resource version(s) an import refused are not at the destination: list them with `failures`, fix the cause and `failures retry`, or `failures accept` them with a reason",
            f.permanent_unresolved
        ));
    }
    if f.transient_pending > 0 {
        report.reasons.push(format!(
            "{} resource version(s) are waiting for their automatic retry (see `failures`)",
            f.transient_pending
        ));
    }
    if report.pending_source_versions > 0 {
        report.reasons.push(format!(
            "{} source versions are newer than the migrated-through time",
            report.pending_source_versions
        ));
    }
    if report.windows_in_flight > 0 {
        report
            .reasons
            .push(format!("{} windows are still in flight", report.windows_in_flight));
    }
    if report.full_check_passed.is_none() {
        report
            .reasons
            .push("not checked: stop writes to the source, then run with --final".into());
    }
    report.ready = report.reasons.is_empty();
    Ok(report)
}

/// Source versions from `since` to the scope's end (none: to now, writes after the newest seen included), of
/// the scope's types (every type when it has none).
async fn pending(
    engine: &crate::engine::Engine,
    scope: &crate::verify::scope::Scope,
    history: bool,
    since: DateTime<Utc>,
) -> Result<u64, FhirError> {
    let types: Vec<Option<&str>> = match &scope.types {
        None => vec![None],
        Some(types) => types.iter().map(|t| Some(t.as_str())).collect(),
    };
    let mut n = 0;
    for t in types {
        n += if history {
            let till = crate::fhir::history_end(scope.till, Utc::now());
            engine.source().history_count(t, since, till).await?
        } else {
            engine.source().count(t, since, scope.till).await?
        };
    }
    Ok(n)
}

/// The report as text for the CLI.
pub fn describe(r: &Report) -> String {
    let mut out = format!(
        "{}\nmigrated through:      {}\nlast source write:     {}\nsource versions newer: {}\nwindows in flight:     {}\n",
        r.scope,
        r.migrated_through.as_deref().unwrap_or("-"),
        r.last_source_write.as_deref().unwrap_or("-"),
        r.pending_source_versions,
        r.windows_in_flight
    );
    if let (Some(n), Some(passed)) = (r.full_check_compared, r.full_check_passed) {
        out.push_str(&format!(
            "full check:            {} ({n} versions)\n",
            if passed { "passed" } else { "FAILED" }
        ));
    }
    if let Some(content) = &r.content {
        out.push_str(&format!(
            "content:               {content}: ids, versions and lastUpdated compared\n"
        ));
    }
    if let Some(clean) = r.reconcile_clean {
        out.push_str(&format!(
            "reconciliation:        {}\n",
            if clean { "nothing to do" } else { "differences" }
        ));
    }
    if let Some((s, d)) = r.whole_server_totals {
        out.push_str(&format!(
            "whole server:          {s} at the source, {d} at the destination\n"
        ));
    }
    let f = &r.import_failures;
    if f.total > 0 {
        out.push_str(&format!("import failures:       {}\n", f.line()));
    }
    for accepted in &r.accepted_failures {
        out.push_str(&format!("  accepted loss: {accepted}\n"));
    }
    if r.ready && r.content.is_some() {
        out.push_str("\nREADY: the destination holds every resource and version the source holds, de-identified (content not comparable); point the applications at it.\n");
    } else if r.ready && !r.scope.starts_with("scope: the whole server") {
        out.push_str("\nREADY for the configured scope (above): the destination holds every version of it that the source holds; the rest of the source was not checked.\n");
    } else if r.ready {
        out.push_str("\nREADY: the destination holds everything the source holds; point the applications at it.\n");
    } else {
        out.push_str("\nNOT READY:\n");
        for reason in &r.reasons {
            out.push_str(&format!("  - {reason}\n"));
        }
    }
    out
}

/// What operators accepted as lost, for the full check: named versions by key, and for each accepted loss the
/// ledger could not name (an error file short of its count, or unreadable), the versions of the export file it
/// is about with the count of its failed lines. An export file that cannot be read any more covers nothing:
/// those versions then show as missing, as before.
async fn accepted_losses(engine: &crate::engine::Engine) -> Result<crate::verify::full::Accepted, EngineError> {
    let mut accepted = crate::verify::full::Accepted::default();
    // Losses about one export file (two units' error files, say) pool their counts.
    let mut unnamed: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for e in engine.ledger().list(Some(crate::ledger::State::Accepted)).await? {
        if e.unnamed_lines == 0 {
            accepted.keys.insert(e.key);
        } else {
            *unnamed.entry(e.input_file).or_default() += e.unnamed_lines;
        }
    }
    for (input_file, count) in unnamed {
        // A read that may pass fails the check (run it again), rather than showing accepted versions as missing.
        let read = engine.read_blob(&input_file).await.map_err(|e| {
            crate::engine::failures::ports::ReadFailed(format!(
                "{e}; an accepted loss is about this file, so the check cannot count it: run the check again"
            ))
        })?;
        let Some(bytes) = read else {
            continue;
        };
        let keys = String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| crate::ledger::locate::identity(l.trim().as_bytes()))
            .filter(|(t, id, v, _)| !t.is_empty() && !id.is_empty() && !v.is_empty())
            .map(|(t, id, v, _)| crate::ledger::Entry::key_of(&t, &id, &v))
            .collect();
        accepted.unnamed.push((keys, count));
    }
    Ok(accepted)
}
