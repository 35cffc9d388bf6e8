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

/// One timer's tick, logged inside a span naming the function: the engine logs each line of its report once
/// (printing the report again made every message appear twice). A conflict is another invocation's turn.
async fn tick<F>(function: &'static str, work: F)
where
    F: std::future::Future<Output = Result<TickReport, crate::engine::EngineError>>,
{
    use tracing::Instrument as _;
    let span = tracing::info_span!("function", name = function);
    async {
        match work.await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => tracing::warn!("failed (the next tick tries again): {e}"),
        }
    }
    .instrument(span)
    .await
}

/// Drives the three timers like the Functions host would, until stopped (Ctrl-C), caught up, or timed out.
/// Returns the final status. Like the timers under the host, it rides out outages of storage or of a server:
/// a failed tick or status read is logged and tried again on the next round; only the deadline, a stop, or
/// (with `until_caught_up`) a halted migration end it.
pub async fn run(
    app: &App,
    options: &RunOptions,
    mut stop: impl std::future::Future<Output = ()> + Unpin,
) -> Result<MigrationStatus, String> {
    let engine = app.engine();
    let started = Instant::now();
    let deadline = options.max_duration.map(|d| started + d);
    let mut next_starter = Instant::now();
    let mut last_status = None;
    loop {
        let now = Utc::now();
        if Instant::now() >= next_starter {
            tick("MigrationOrchestrator", engine.starter_tick(now)).await;
            next_starter = Instant::now() + options.starter_every;
        }
        tick("ExportStatus", engine.export_status_tick(now)).await;
        tick("ImportStatus", engine.import_status_tick(now)).await;
        match engine.status(Utc::now()).await {
            Ok(status) => {
                if options.until_caught_up && caught_up(app, &status) {
                    return Ok(status);
                }
                if status.halted && options.until_caught_up {
                    return Err("the migration is halted; see `status` for the failing window, fix the cause, then run `clear-retries`".into());
                }
                last_status = Some(status);
            }
            Err(e) => tracing::warn!("could not read the migration's status (tried again next round): {e}"),
        }
        let pause = match deadline {
            Some(d) if Instant::now() >= d => {
                return last_status.ok_or_else(|| {
                    "stopped at --max-seconds without ever reading the migration's status (storage unreachable?)"
                        .to_string()
                });
            }
            Some(d) => options.poll_every.min(d - Instant::now()),
            None => options.poll_every,
        };
        tokio::select! {
            _ = &mut stop => {
                return last_status.ok_or_else(|| "stopped before the migration's status could be read".to_string());
            }
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Nothing in flight and migrated through at least where the next window would end.
fn caught_up(app: &App, status: &MigrationStatus) -> bool {
    let engine = app.engine();
    let frontier = crate::planner::frontier(engine.settings(), engine.clock(Utc::now())) - crate::planner::MIN_TAIL;
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
    let f = &s.import_failures;
    if f.total > 0 {
        out.push(format!(
            "import failures:   {} not at the destination ({} permanent, {} retried automatically); {} resolved, {} benign, {} accepted{}",
            f.unresolved(),
            f.permanent_unresolved,
            f.transient_pending,
            f.resolved,
            f.benign,
            f.accepted,
            if f.permanent_unresolved > 0 {
                " — see `failures`"
            } else {
                ""
            }
        ));
    }
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
    if let Some(skew) = s.source_clock_skew_seconds.filter(|k| k.abs() >= 5) {
        out.push(format!(
            "clock:             this machine is {} s {} the source server",
            skew.abs(),
            if skew > 0 { "ahead of" } else { "behind" }
        ));
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
