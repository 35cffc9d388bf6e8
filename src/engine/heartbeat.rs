//! What the timers record about themselves after each tick, for `status` (a separate process) to tell the truth:
//! when a tick last ran, why ticks are failing (which server, what answer, since when, how many in a row), and
//! the source clock skew they measured. Written on the cursor row, ETag-guarded, and only when something changed
//! (at most about once a minute while all is well), so the timers' own writes rarely meet it.

use chrono::{DateTime, TimeDelta, Utc};

use super::{Engine, EngineError, TickReport};
use crate::fhir::FhirError;
use crate::state::Cursor;
use crate::storage::tables::TableError;

/// A healthy tick refreshes `LastTickAt` when the stored one is older than this.
const REFRESH_EVERY: TimeDelta = TimeDelta::seconds(60);

/// Failed ticks in a row that count one failure toward the retry latch (as six deferred kick-offs do).
pub const FAILED_TICKS_PER_FAILURE: i64 = crate::engine::core::rules::DEFERRALS_PER_FAILURE;

/// Which server an error is about, and a short form of its answer.
fn deferral(engine: &Engine, error: &EngineError) -> Option<(String, String)> {
    let server_of = |url: &str| {
        let s = engine.settings();
        if url.starts_with(s.source.as_str().trim_end_matches('/')) {
            "source"
        } else if url.starts_with(s.destination.as_str().trim_end_matches('/')) {
            "destination"
        } else {
            "a FHIR server"
        }
    };
    match error {
        // Storage cannot be written when it is what fails: nothing to record.
        EngineError::Table(_) => None,
        EngineError::Blob(e) => Some(("storage (blobs)".into(), short(&e.to_string()))),
        EngineError::Read(e) => Some(("storage (blobs)".into(), short(&e.to_string()))),
        EngineError::Fhir(e) => Some(match e {
            FhirError::Rejected { status, url, .. } => (server_of(url).into(), format!("HTTP {status}")),
            FhirError::Transport { url, message } => (server_of(url).into(), format!("no answer: {}", short(message))),
            FhirError::InvalidResponse { url, detail } => (
                server_of(url).into(),
                format!("an unreadable answer: {}", short(detail)),
            ),
            FhirError::Token(t) => ("identity (token)".into(), short(&t.to_string())),
            other => ("a FHIR server".into(), short(&other.to_string())),
        }),
        #[cfg(feature = "fail-points")]
        EngineError::Injected(_) => None,
    }
}

fn short(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

/// Records a tick's outcome on the cursor. Never fails the tick: a lost record is retried by the next tick.
pub(super) async fn record(engine: &Engine, now: DateTime<Utc>, outcome: &Result<TickReport, EngineError>) {
    let failed = match outcome {
        Ok(_) => None,
        // Another invocation's turn: a tick did run.
        Err(e) if e.is_conflict() => None,
        Err(e) => match deferral(engine, e) {
            Some(d) => Some(d),
            None => return,
        },
    };
    let skew = engine.source.server_now().map(|s| (now - s).num_seconds());
    for _ in 0..3 {
        let Ok(mut cursor) = engine.state.cursor().await else {
            return;
        };
        if !update(&mut cursor, now, failed.as_ref(), skew) {
            return;
        }
        if failed.is_some() && cursor.deferred_ticks > 0 && cursor.deferred_ticks % FAILED_TICKS_PER_FAILURE == 0 {
            cursor.failures += 1;
            tracing::warn!(
                "{} ticks in a row failed on the {} ({}) since {}: counted as one failure ({} counted)",
                cursor.deferred_ticks,
                cursor.deferred_server,
                cursor.deferred_answer,
                cursor
                    .deferred_since
                    .map(crate::fhir::format_instant)
                    .unwrap_or_default(),
                cursor.failures
            );
        }
        match engine.state.save_cursor(&cursor).await {
            Ok(_) => return,
            Err(TableError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::debug!("could not record the tick (the next one will): {e}");
                return;
            }
        }
    }
}

/// Applies a tick's outcome; false when nothing worth a write changed.
fn update(cursor: &mut Cursor, now: DateTime<Utc>, failed: Option<&(String, String)>, skew: Option<i64>) -> bool {
    let mut changed = cursor.last_tick_at.is_none_or(|t| now - t >= REFRESH_EVERY || t > now);
    cursor.last_tick_at = Some(now);
    match failed {
        Some((server, answer)) => {
            if cursor.deferred_ticks == 0 || cursor.deferred_server != *server {
                cursor.deferred_since = Some(now);
                cursor.deferred_ticks = 0;
            }
            cursor.deferred_server = server.clone();
            cursor.deferred_answer = answer.clone();
            cursor.deferred_ticks += 1;
            changed = true;
        }
        None if cursor.deferred_ticks != 0 || !cursor.deferred_server.is_empty() => {
            cursor.deferred_server.clear();
            cursor.deferred_answer.clear();
            cursor.deferred_since = None;
            cursor.deferred_ticks = 0;
            changed = true;
        }
        None => {}
    }
    if let Some(skew) = skew {
        let moved = cursor.source_skew_seconds.is_none_or(|k| (k - skew).abs() >= 2);
        let stale = cursor
            .skew_measured_at
            .is_none_or(|t| now - t >= TimeDelta::minutes(10));
        if moved || stale {
            cursor.source_skew_seconds = Some(skew);
            cursor.skew_measured_at = Some(now);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_tick_writes_at_most_once_a_minute_and_failures_count_in_a_row() {
        let t0 = Utc::now();
        let mut c = Cursor::new();
        assert!(update(&mut c, t0, None, None), "the first tick is recorded");
        // Nothing written: the next tick reads the stored row again.
        assert!(!update(&mut c.clone(), t0 + TimeDelta::seconds(30), None, None));
        assert!(update(&mut c, t0 + TimeDelta::seconds(61), None, None));
        let failed = ("source".to_string(), "HTTP 503".to_string());
        for k in 1..=3 {
            assert!(update(&mut c, t0 + TimeDelta::seconds(61 + k), Some(&failed), None));
        }
        assert_eq!(c.deferred_ticks, 3);
        assert_eq!(c.deferred_since, Some(t0 + TimeDelta::seconds(62)));
        assert!(update(&mut c, t0 + TimeDelta::seconds(70), None, Some(4)));
        assert_eq!(
            (c.deferred_ticks, c.deferred_since, c.source_skew_seconds),
            (0, None, Some(4))
        );
    }
}
