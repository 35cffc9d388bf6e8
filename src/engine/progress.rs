//! Progress at a glance: the three questions an operator asks first — how much is done, how fast it goes, when
//! it will be caught up — and the one state the migration is in. Computed from the cursor (which counts the
//! versions of committed windows and keeps a few recent samples) without asking any server.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::config::MigrationSettings;
use crate::state::Cursor;

/// The migration's state, one of eight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    NotStarted,
    Running,
    Paused,
    Halted,
    /// No timer tick has run for [`STALL_AFTER`]: the Function App (or `run`) is stopped or failing to start.
    Stalled,
    /// Ticks fail, or calls are deferred, because a server does not answer usefully (throttling, 5xx, no
    /// connection); `stateDetail` names the server, its answer, since when and how many times.
    Waiting,
    /// Continuous mode, migrated up to (about) the frontier: new writes follow within minutes.
    CaughtUp,
    /// A specific run has reached its end date.
    Finished,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::NotStarted => "not started",
            State::Running => "running",
            State::Paused => "paused",
            State::Halted => "HALTED",
            State::Stalled => "STALLED",
            State::Waiting => "waiting",
            State::CaughtUp => "caught up",
            State::Finished => "finished",
        }
    }
}

/// The stable JSON of `status --json` and `MigrationStatus_Http` (`progress`); docs/operate describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub state: State,
    /// Why halted or waiting, until when paused, since when stalled, or empty.
    pub state_detail: String,
    /// Versions at the destination: those exported by the committed windows, less the ones the failure ledger
    /// holds as not there (open, retried or accepted).
    pub migrated_versions: i64,
    /// The source's whole-server count (versions with history), when one was made; and when.
    pub source_versions: Option<i64>,
    pub source_counted_at: Option<String>,
    /// migrated / source, 0 to 100.
    pub percent_versions: Option<f64>,
    /// How much of the time range (first window start to the frontier) is migrated, 0 to 100.
    pub percent_time: Option<f64>,
    /// Versions migrated per hour, over (up to) the last hour; none until a few minutes of samples exist.
    pub versions_per_hour: Option<f64>,
    /// Time to caught up (or finished) at that rate; none while halted, stalled or waiting.
    pub eta_seconds: Option<i64>,
    /// Versions exported by the committed windows (what `migratedVersions` meant before).
    pub exported_versions: i64,
}

/// No tick for this long and the migration is stalled: two periods of the default starter timer (5 minutes),
/// and many of the status timers (30 seconds).
pub const STALL_AFTER: TimeDelta = TimeDelta::minutes(10);

/// The shortest span of samples a rate is measured over.
const MIN_RATE_SPAN: TimeDelta = TimeDelta::minutes(5);

/// What the status knows besides the cursor.
pub struct Facts<'a> {
    pub settings: &'a MigrationSettings,
    pub now: DateTime<Utc>,
    /// The earlier of `now` and the source's clock.
    pub clock: DateTime<Utc>,
    pub halted: Option<String>,
    pub windows_in_flight: usize,
    /// When a timer tick last ran (recorded by the timers on the cursor).
    pub last_tick_at: Option<DateTime<Utc>>,
    /// Why calls are being deferred: server, answer, since when, how many.
    pub waiting: Option<String>,
    /// Versions of committed windows the failure ledger holds as not at the destination.
    pub not_at_destination: i64,
}

pub fn progress(cursor: &Cursor, f: &Facts) -> Progress {
    let s = f.settings;
    let frontier = crate::planner::frontier(s, f.clock);
    let through = cursor.since;
    let source_versions = cursor.source_total.trim().parse::<i64>().ok();
    let migrated = (cursor.migrated_versions - f.not_at_destination).max(0);
    let percent_versions = source_versions
        .filter(|n| *n > 0)
        .map(|n| (migrated as f64 * 100.0 / n as f64).min(100.0));
    let start = s.start_date.or(cursor.first_since);
    let percent_time = match (start, through) {
        (Some(start), Some(through)) if frontier > start => Some(
            ((through - start).num_seconds() as f64 * 100.0 / (frontier - start).num_seconds() as f64)
                .clamp(0.0, 100.0),
        ),
        _ => None,
    };
    // Measured up to now: a migration that stopped committing shows its rate falling, not its last one.
    let mut samples = cursor.progress_samples.clone();
    if samples.last().is_some_and(|(t, _)| *t < f.now) {
        samples.push((f.now, cursor.migrated_versions));
    }
    let versions_per_hour = rate(&samples, f.now);
    let finished = crate::planner::specific_run_finished(s, through);
    let caught_up = f.windows_in_flight == 0
        && through.is_some_and(|t| frontier - t <= crate::planner::MIN_TAIL + TimeDelta::minutes(2));
    let stalled = f.last_tick_at.filter(|t| f.now - *t > STALL_AFTER);
    let (state, state_detail) = if let Some(why) = &f.halted {
        (State::Halted, why.clone())
    } else if finished && (f.windows_in_flight == 0 || stalled.is_none()) {
        // A finished specific run with rows still in flight (a re-drive recorded afterwards) and no tick for a
        // while is stalled: nothing will carry those rows out.
        (State::Finished, "the end date is reached".into())
    } else if let Some(last) = stalled {
        (
            State::Stalled,
            format!(
                "no timer tick since {}, {} ago: start the Function App (or `run`) and check its log",
                crate::fhir::format_instant(last),
                duration_text((f.now - last).num_seconds())
            ),
        )
    } else if let Some(why) = &f.waiting {
        (State::Waiting, why.clone())
    } else if crate::planner::paused(s.pause, f.now) {
        let until = s
            .pause
            .map(|p| format!("until {:02}:00 UTC", p.end_hour))
            .unwrap_or_default();
        (State::Paused, until)
    } else if through.is_none() && f.windows_in_flight == 0 {
        (State::NotStarted, String::new())
    } else if caught_up {
        (State::CaughtUp, String::new())
    } else {
        (State::Running, String::new())
    };
    let eta_seconds = match state {
        State::Running | State::Paused => eta(cursor, source_versions, versions_per_hour, percent_time, f),
        State::CaughtUp | State::Finished => Some(0),
        _ => None,
    };
    Progress {
        state,
        state_detail,
        migrated_versions: migrated,
        source_versions,
        source_counted_at: cursor.totals_at.map(crate::fhir::format_instant),
        percent_versions,
        percent_time,
        versions_per_hour,
        eta_seconds,
        exported_versions: cursor.migrated_versions,
    }
}

/// Versions per hour between the newest sample and the one about an hour before it (or the oldest kept).
pub fn rate(samples: &[(DateTime<Utc>, i64)], now: DateTime<Utc>) -> Option<f64> {
    let newest = *samples.last()?;
    let hour_ago = now - TimeDelta::hours(1);
    let base = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= hour_ago)
        .or_else(|| samples.first())
        .copied()?;
    let span = newest.0 - base.0;
    (span >= MIN_RATE_SPAN).then(|| (newest.1 - base.1) as f64 * 3600.0 / span.num_seconds() as f64)
}

/// Time to caught up: remaining versions at the version rate when the source's total is known; otherwise the
/// remaining time range at the pace the range has been covered since the first window.
fn eta(
    cursor: &Cursor,
    source: Option<i64>,
    per_hour: Option<f64>,
    percent_time: Option<f64>,
    f: &Facts,
) -> Option<i64> {
    if let (Some(total), Some(rate)) = (source, per_hour)
        && rate > 0.0
    {
        let left = (total - cursor.migrated_versions + f.not_at_destination).max(0) as f64;
        return Some((left / rate * 3600.0).round() as i64);
    }
    let (Some(first), Some(pct)) = (cursor.progress_samples.first(), percent_time) else {
        return None;
    };
    let elapsed = (f.now - first.0).num_seconds() as f64;
    (pct > 0.0 && pct < 100.0 && elapsed > 0.0).then(|| (elapsed * (100.0 - pct) / pct).round() as i64)
}

/// `3 h 10 min`, `2 days 4 h`, `45 s`.
pub fn duration_text(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} days {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        crate::engine::sim::t0() + TimeDelta::minutes(minutes)
    }

    #[test]
    fn the_rate_is_measured_over_the_last_hour() {
        // 1,000 versions every 10 minutes for two hours: 6,000 an hour.
        let samples: Vec<_> = (0..=12).map(|k| (t(k * 10), k * 1000)).collect();
        assert_eq!(rate(&samples, t(120)), Some(6000.0));
        // Only the last hour counts: the first hour was slow.
        let mut slow_then_fast: Vec<_> = (0..=6).map(|k| (t(k * 10), k * 100)).collect();
        slow_then_fast.extend((7..=12).map(|k| (t(k * 10), 600 + (k - 6) * 1000)));
        assert_eq!(rate(&slow_then_fast, t(120)), Some(6000.0));
        // Too short a span says nothing.
        assert_eq!(rate(&[(t(0), 0), (t(2), 500)], t(2)), None);
        assert_eq!(rate(&[], t(2)), None);
    }

    #[test]
    fn eta_is_the_remaining_versions_at_the_rate() {
        let settings = crate::engine::sim::settings(&[]);
        let mut cursor = Cursor::new();
        cursor.since = Some(t(-60 * 24 * 30));
        cursor.first_since = Some(t(-60 * 24 * 365));
        cursor.migrated_versions = 4000;
        cursor.source_total = "10000".into();
        cursor.progress_samples = (0..=6).map(|k| (t(k * 10), k * 500)).collect();
        let f = Facts {
            settings: &settings,
            now: t(60),
            clock: t(60),
            halted: None,
            windows_in_flight: 1,
            last_tick_at: Some(t(60)),
            waiting: None,
            not_at_destination: 0,
        };
        let p = progress(&cursor, &f);
        assert_eq!(p.state, State::Running);
        assert_eq!(p.versions_per_hour, Some(3000.0));
        assert_eq!(p.percent_versions, Some(40.0));
        // 6,000 left at 3,000 an hour.
        assert_eq!(p.eta_seconds, Some(7200));
        // Without a source count: the time range's pace (about 92% of a year in the hour sampled).
        cursor.source_total = String::new();
        let p = progress(&cursor, &f);
        let pct = p.percent_time.unwrap();
        assert!((91.0..93.0).contains(&pct), "{pct}");
        let expected = (3600.0 * (100.0 - pct) / pct).round() as i64;
        assert_eq!(p.eta_seconds, Some(expected));
    }

    #[test]
    fn each_state_is_told_apart() {
        let settings = crate::engine::sim::settings(&[]);
        let f = |halted: Option<&str>, in_flight| Facts {
            settings: &settings,
            now: t(0),
            clock: t(0),
            halted: halted.map(str::to_string),
            windows_in_flight: in_flight,
            last_tick_at: None,
            waiting: None,
            not_at_destination: 0,
        };
        let mut cursor = Cursor::new();
        assert_eq!(progress(&cursor, &f(None, 0)).state, State::NotStarted);
        cursor.since = Some(t(-600));
        assert_eq!(progress(&cursor, &f(None, 1)).state, State::Running);
        let halted = progress(&cursor, &f(Some("window 3: refused 3 times"), 1));
        assert_eq!(
            (halted.state, halted.state_detail.as_str()),
            (State::Halted, "window 3: refused 3 times")
        );
        cursor.since = Some(t(0) - settings.safety_lag - TimeDelta::minutes(1));
        assert_eq!(progress(&cursor, &f(None, 0)).state, State::CaughtUp);
        let specific =
            crate::engine::sim::settings(&[("AZURE_SpecificRun", "true"), ("AZURE_EndDate", "2020-01-01T00:00:00Z")]);
        cursor.since = specific.end_date;
        let done = Facts {
            settings: &specific,
            ..f(None, 0)
        };
        assert_eq!(progress(&cursor, &done).state, State::Finished);
        // Finished, and quiet for good: still finished; with a re-drive recorded afterwards in flight: stalled.
        let quiet_done = Facts {
            last_tick_at: Some(t(-11)),
            ..done
        };
        assert_eq!(progress(&cursor, &quiet_done).state, State::Finished);
        let redrive_waits = Facts {
            windows_in_flight: 1,
            ..quiet_done
        };
        assert_eq!(progress(&cursor, &redrive_waits).state, State::Stalled);
        // Caught up, but no tick for eleven minutes: stalled, saying since when.
        cursor.since = Some(t(0) - settings.safety_lag - TimeDelta::minutes(1));
        let quiet = Facts {
            last_tick_at: Some(t(-11)),
            ..f(None, 0)
        };
        let p = progress(&cursor, &quiet);
        assert_eq!(p.state, State::Stalled);
        assert!(p.state_detail.contains("11 min ago"), "{}", p.state_detail);
        let waiting = Facts {
            last_tick_at: Some(t(0)),
            waiting: Some("the source answers HTTP 503".into()),
            ..f(None, 1)
        };
        let p = progress(&cursor, &waiting);
        assert_eq!((p.state, p.eta_seconds), (State::Waiting, None));
    }

    /// `migratedVersions` counts versions at the destination: exported ones less those the ledger holds.
    #[test]
    fn migrated_means_at_the_destination() {
        let settings = crate::engine::sim::settings(&[]);
        let mut cursor = Cursor::new();
        cursor.since = Some(t(-600));
        cursor.migrated_versions = 5516;
        cursor.source_total = "5516".into();
        let f = Facts {
            settings: &settings,
            now: t(0),
            clock: t(0),
            halted: None,
            windows_in_flight: 1,
            last_tick_at: Some(t(0)),
            waiting: None,
            not_at_destination: 1,
        };
        let p = progress(&cursor, &f);
        assert_eq!((p.migrated_versions, p.exported_versions), (5515, 5516));
        assert!(p.percent_versions.unwrap() < 100.0);
    }
}
