//! The CLI's operations beyond `serve`: run the timers without a Functions host, show progress, preview the
//! plan. They call the same engine the Functions call.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::app::App;
use crate::engine::{MigrationStatus, TickReport};

/// How `run` paces the three timers.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The starter (`MigrationOrchestrator`) interval.
    pub starter_every: Duration,
    /// The `ExportStatus` and `ImportStatus` interval.
    pub poll_every: Duration,
    /// Stop once everything up to the frontier is migrated and nothing is in flight.
    pub until_caught_up: bool,
    /// Stop after this long in any case.
    pub max_duration: Option<Duration>,
}

fn print_report(function: &str, report: &TickReport) {
    for line in &report.lines {
        println!("[{function}] {line}");
    }
}

/// Drives the three timers like the Functions host would, until stopped (Ctrl-C), caught up, or timed out.
/// Returns the final status.
pub async fn run(
    app: &App,
    options: &RunOptions,
    mut stop: impl std::future::Future<Output = ()> + Unpin,
) -> Result<MigrationStatus, String> {
    let engine = app.engine();
    let started = Instant::now();
    let mut next_starter = Instant::now();
    loop {
        let now = Utc::now();
        if Instant::now() >= next_starter {
            match engine.starter_tick(now).await {
                Ok(r) => print_report("MigrationOrchestrator", &r),
                Err(e) if e.is_conflict() => {}
                Err(e) => println!("[MigrationOrchestrator] failed: {e}"),
            }
            next_starter = Instant::now() + options.starter_every;
        }
        for (name, result) in [
            ("ExportStatus", engine.export_status_tick(now).await),
            ("ImportStatus", engine.import_status_tick(now).await),
        ] {
            match result {
                Ok(r) => print_report(name, &r),
                Err(e) if e.is_conflict() => {}
                Err(e) => println!("[{name}] failed: {e}"),
            }
        }
        let status = engine.status(Utc::now()).await.map_err(|e| e.to_string())?;
        if options.until_caught_up && caught_up(app, &status) {
            return Ok(status);
        }
        if status.halted && options.until_caught_up {
            return Err("the migration is halted; see the status for the failing window, fix the cause, then clear the latch (ClearMaxExportRetries_Http)".into());
        }
        if options.max_duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(status);
        }
        tokio::select! {
            _ = &mut stop => return Ok(status),
            _ = tokio::time::sleep(options.poll_every) => {}
        }
    }
}

/// Nothing in flight and migrated through at least where the next window would end.
fn caught_up(app: &App, status: &MigrationStatus) -> bool {
    let frontier = crate::planner::frontier(app.engine().settings(), Utc::now()) - crate::planner::MIN_TAIL;
    status.windows_in_flight.is_empty()
        && status
            .migrated_through
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .is_some_and(|t| t >= frontier)
}

/// A human-readable status.
pub fn format_status(s: &MigrationStatus) -> String {
    let mut out = vec![
        format!("source:            {}", s.source),
        format!("destination:       {}", s.destination),
        format!(
            "migrated through:  {}",
            s.migrated_through.as_deref().unwrap_or("(not started)")
        ),
    ];
    if let Some(lag) = s.lag_seconds {
        out.push(format!("behind now by:     {}", humanize(lag)));
    }
    out.push(format!("windows committed: {}", s.windows_committed));
    out.push(format!(
        "failures:          {}{}",
        s.failures,
        s.max_failures.map(|m| format!(" (halts at {m})")).unwrap_or_default()
    ));
    out.push(format!(
        "state:             {}",
        if s.halted {
            "HALTED"
        } else if s.paused {
            "paused (pause window)"
        } else {
            "running"
        }
    ));
    if s.windows_in_flight.is_empty() {
        out.push("in flight:         nothing".into());
    }
    for w in &s.windows_in_flight {
        out.push(format!(
            "window {:>5}  {} .. {}  export {} ({}){}  import {}",
            w.sequence,
            w.since,
            w.till,
            w.export_status,
            if w.export_id.is_empty() { "-" } else { &w.export_id },
            if w.export_attempt > 1 {
                format!(" attempt {}", w.export_attempt)
            } else {
                String::new()
            },
            w.import_status
        ));
        if !w.failure_reason.is_empty() {
            out.push(format!("              failure: {}", w.failure_reason));
        }
        for p in &w.payloads {
            out.push(format!(
                "              payload {} {} (attempt {}): {} imported, {} failed lines",
                p.index, p.status, p.attempt, p.imported, p.failed_lines
            ));
        }
    }
    if let Some(r) = &s.reminder {
        out.push(format!("reminder:          {r}"));
    }
    out.join("\n")
}

fn humanize(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
