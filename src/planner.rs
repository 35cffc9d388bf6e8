//! Pure decisions about time: the pause window, where the next window ends, and how a window shrinks when it
//! holds too many resources. No I/O and no clock: `now` is always an argument, so tests drive time.

use chrono::{DateTime, TimeDelta, Timelike, Utc};

use crate::config::{MigrationSettings, PauseWindow};

/// The shortest window halving produces.
pub const MIN_WINDOW: TimeDelta = TimeDelta::minutes(1);

/// Whether `now` falls in the pause window: UTC hours, `start` inclusive, `end` exclusive, wrapping past
/// midnight when `start > end` (22 → 6 pauses from 22:00 to 05:59:59). The original's undocumented margins
/// (an hour before, half an hour after) are not kept: the window is exactly what the operator typed.
pub fn paused(pause: Option<PauseWindow>, now: DateTime<Utc>) -> bool {
    let Some(p) = pause else { return false };
    let h = now.hour();
    if p.start_hour < p.end_hour {
        (p.start_hour..p.end_hour).contains(&h)
    } else {
        h >= p.start_hour || h < p.end_hour
    }
}

/// The latest instant a window may end: `now − safety lag`, and `EndDate` in a specific run. Resources are
/// committed with a `lastUpdated` slightly before their commit, so the newest seconds are left for later.
pub fn frontier(settings: &MigrationSettings, now: DateTime<Utc>) -> DateTime<Utc> {
    let lagged = now - settings.safety_lag;
    match (settings.specific_run, settings.end_date) {
        (true, Some(end)) => lagged.min(end),
        _ => lagged,
    }
}

/// The shortest tail window worth an export once the migration has caught up: continuous mode then exports
/// at most about once a minute instead of chasing the frontier millisecond by millisecond.
pub const MIN_TAIL: TimeDelta = TimeDelta::seconds(60);

/// The end of the window starting at `since`: one chunk later, capped at the frontier. `None` when there is
/// nothing worth exporting yet (caught up).
pub fn window_end(settings: &MigrationSettings, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    window_end_with(settings, since, now, MIN_TAIL)
}

/// [`window_end`] with another shortest tail (the cut-over drives the last, short tail with none).
pub fn window_end_with(
    settings: &MigrationSettings,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    min_tail: TimeDelta,
) -> Option<DateTime<Utc>> {
    let full = since + settings.chunk_span();
    let frontier = frontier(settings, now);
    let till = full.min(frontier);
    if till <= since {
        return None;
    }
    let ends_specific_run = settings.specific_run && settings.end_date == Some(till);
    (till == full || ends_specific_run || till - since >= min_tail).then_some(till)
}

/// The next, smaller window when `[since, till)` holds more than the chunk limit: half as long, never shorter
/// than [`MIN_WINDOW`]. `None` when it cannot shrink further (then the window is exported as it is).
pub fn halve(since: DateTime<Utc>, till: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let span = till - since;
    if span <= MIN_WINDOW {
        return None;
    }
    let half = TimeDelta::milliseconds(span.num_milliseconds() / 2).max(MIN_WINDOW);
    Some(since + half)
}

/// Whether a specific run has reached its end date.
pub fn specific_run_finished(settings: &MigrationSettings, since: Option<DateTime<Utc>>) -> bool {
    match (settings.specific_run, settings.end_date, since) {
        (true, Some(end), Some(since)) => since >= end,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SettingsSource;
    use chrono::TimeZone;

    fn settings(pairs: &[(&str, &str)]) -> MigrationSettings {
        let mut s = SettingsSource::default();
        s.extend([
            ("AZURE_SourceUri", "http://127.0.0.1:1"),
            ("AZURE_DestinationUri", "http://127.0.0.1:2"),
        ]);
        s.extend(pairs.iter().copied());
        let mut problems = Vec::new();
        let m = MigrationSettings::from_source(&s, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        m
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0).unwrap()
    }

    #[test]
    fn pause_window_is_start_inclusive_end_exclusive() {
        let p = Some(PauseWindow {
            start_hour: 8,
            end_hour: 17,
        });
        assert!(!paused(p, at(7, 59)));
        assert!(paused(p, at(8, 0)));
        assert!(paused(p, at(16, 59)));
        assert!(!paused(p, at(17, 0)));
        assert!(!paused(None, at(12, 0)));
    }

    #[test]
    fn pause_window_wraps_past_midnight() {
        let p = Some(PauseWindow {
            start_hour: 22,
            end_hour: 6,
        });
        assert!(paused(p, at(23, 0)));
        assert!(paused(p, at(0, 30)));
        assert!(paused(p, at(5, 59)));
        assert!(!paused(p, at(6, 0)));
        assert!(!paused(p, at(21, 59)));
    }

    #[test]
    fn windows_are_one_chunk_capped_at_now_minus_the_safety_lag() {
        let s = settings(&[]);
        let now = at(12, 0);
        let since = now - TimeDelta::days(100);
        assert_eq!(window_end(&s, since, now), Some(since + TimeDelta::days(30)));
        let recent = now - TimeDelta::days(2);
        assert_eq!(window_end(&s, recent, now), Some(now - TimeDelta::seconds(300)));
        assert_eq!(
            window_end(&s, now - TimeDelta::seconds(100), now),
            None,
            "caught up: nothing older than the lag"
        );
    }

    #[test]
    fn a_specific_run_stops_at_its_end_date() {
        let s = settings(&[
            ("AZURE_SpecificRun", "true"),
            ("AZURE_StartDate", "2026-01-01"),
            ("AZURE_EndDate", "2026-01-20"),
        ]);
        let since = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap();
        assert_eq!(window_end(&s, since, at(12, 0)), Some(end));
        assert_eq!(window_end(&s, end, at(12, 0)), None);
        assert!(specific_run_finished(&s, Some(end)));
        assert!(!specific_run_finished(&s, Some(since)));
    }

    /// Caught up, a tail shorter than the shortest worth exporting waits, also in a specific run whose end date
    /// lies ahead, and in a continuous run with an end date set (only a specific run reads it); only the window
    /// that ends a specific run at its end date is exported however short. A full chunk is exported whatever the
    /// shortest tail (the cut-over sets none, a test may set one longer than a chunk).
    #[test]
    fn a_short_tail_waits_unless_it_ends_a_specific_run_or_is_a_full_chunk() {
        let now = at(12, 0);
        let frontier = now - TimeDelta::seconds(300);
        let recent = frontier - TimeDelta::seconds(10);
        let continuous = settings(&[]);
        assert_eq!(window_end(&continuous, recent, now), None);
        let ahead = settings(&[
            ("AZURE_SpecificRun", "true"),
            ("AZURE_StartDate", "2026-01-01"),
            ("AZURE_EndDate", "2027-01-01"),
        ]);
        assert_eq!(
            window_end(&ahead, recent, now),
            None,
            "the end date is not this window's end"
        );
        let ending = settings(&[
            ("AZURE_SpecificRun", "true"),
            ("AZURE_StartDate", "2026-11-01"),
            ("AZURE_EndDate", "2026-11-26"),
        ]);
        let end = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        let last = end - TimeDelta::seconds(10);
        assert_eq!(window_end(&ending, last, now), Some(end), "the run's last seconds");
        // Not a specific run, but an end date set: a short window up to it is no run's end.
        let unset = settings(&[("AZURE_EndDate", "2026-11-26")]);
        assert_eq!(window_end(&unset, last, end + TimeDelta::seconds(300)), None);
        let hourly = settings(&[("AZURE_ExportChunkDuration", "Hours"), ("AZURE_ExportChunkTime", "1")]);
        let old = now - TimeDelta::days(2);
        assert_eq!(
            window_end_with(&hourly, old, now, TimeDelta::hours(2)),
            Some(old + TimeDelta::hours(1)),
            "a full chunk, shorter than the shortest tail"
        );
        assert_eq!(
            window_end_with(&hourly, recent, now, TimeDelta::zero()),
            Some(frontier),
            "no shortest tail: up to the frontier"
        );
    }

    #[test]
    fn halving_shrinks_to_a_one_minute_floor() {
        let since = at(0, 0);
        let mut till = since + TimeDelta::days(30);
        let mut steps = 0;
        while let Some(next) = halve(since, till) {
            assert!(next < till && next - since >= MIN_WINDOW);
            till = next;
            steps += 1;
        }
        assert_eq!(till - since, MIN_WINDOW);
        assert!(steps > 10, "{steps} halvings from 30 days");
    }
}
