//! FHIR date/time values as the server reads and writes them.
//!
//! The store keeps `meta.lastUpdated` as whole milliseconds since the Unix epoch: the real servers truncate to
//! milliseconds (their surrogate ids are built from it), and integer keys make range scans cheap. Search and
//! export parameters accept FHIR partial dates (`2024`, `2024-03`, `2024-03-01T10:00Z`, …), which stand for a
//! range: `ge2024` means from the start of 2024, `le2024` up to its end.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// A parsed FHIR date/time: the instants it covers, `[start, end)` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub start: Millis,
    pub end: Millis,
}

pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

/// `2024-03-01T10:00:00.123+00:00`: the form the servers write in `meta.lastUpdated` and manifests.
pub fn format_ms(ms: Millis) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    t.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// Parses an instant with an offset (as found in `meta.lastUpdated`), truncated to milliseconds.
pub fn parse_instant_ms(text: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// 100-ns ticks within a millisecond: 0..=9999. Azure API for FHIR (Cosmos DB) keeps `lastUpdated` at .NET tick
/// precision (reference §11.2); the SQL server truncates to milliseconds.
pub type SubMs = u16;

/// An instant at tick precision: whole milliseconds and the 100-ns ticks within the millisecond.
pub type Precise = (Millis, SubMs);

/// Parses an instant with an offset into (milliseconds, ticks within the millisecond). Digits beyond the 7th are
/// dropped, as .NET does.
pub fn parse_instant_precise(text: &str) -> Option<Precise> {
    let t = DateTime::parse_from_rfc3339(text).ok()?;
    let ticks = (t.timestamp_subsec_nanos() % 1_000_000) / 100;
    Some((t.timestamp_millis(), ticks as SubMs))
}

/// Now at 100-ns precision.
pub fn now_precise() -> Precise {
    let t = Utc::now();
    (
        t.timestamp_millis(),
        ((t.timestamp_subsec_nanos() % 1_000_000) / 100) as SubMs,
    )
}

/// `meta.lastUpdated` as the servers write it: the fraction with trailing zeros trimmed, no fraction at all when
/// it is zero, and `+00:00` (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Storage/SqlServerFhirDataStore.cs`,
/// `RemoveTrailingZerosFromMillisecondsForAGivenDate`; Cosmos DB via the FHIR serializer's `FFFFFFF` format),
/// reference §11.12. `sub_ms` is always 0 on ahds (0–3 digits); aapi has 0–7 digits.
pub fn format_instant(ms: Millis, sub_ms: SubMs) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    let whole = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let ticks = u32::try_from(ms.rem_euclid(1000)).unwrap_or(0) * 10_000 + u32::from(sub_ms);
    let digits = format!("{ticks:07}");
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() {
        format!("{whole}+00:00")
    } else {
        format!("{whole}.{trimmed}+00:00")
    }
}

/// Parses a FHIR partial date or dateTime into the range of instants it denotes. Strict: a trailing space, or
/// a `+` that a query string decoded into a space, is refused, as the real server refuses it.
pub fn parse_partial(text: &str) -> Option<DateRange> {
    if text.is_empty() || text.trim() != text || text.contains(' ') {
        return None;
    }
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let fields: Vec<&str> = date_part.split('-').collect();
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let year = num(fields.first()?, 4)? as i32;
    match (fields.len(), time_part) {
        (1, None) => {
            let start = NaiveDate::from_ymd_opt(year, 1, 1)?;
            let end = NaiveDate::from_ymd_opt(year + 1, 1, 1)?;
            Some(day_range(start, end))
        }
        (2, None) => {
            let month = num(fields[1], 2)?;
            let start = NaiveDate::from_ymd_opt(year, month, 1)?;
            let end = if month == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, month + 1, 1)?
            };
            Some(day_range(start, end))
        }
        (3, None) => {
            let start = NaiveDate::from_ymd_opt(year, num(fields[1], 2)?, num(fields[2], 2)?)?;
            Some(day_range(start, start.succ_opt()?))
        }
        (3, Some(time)) => parse_datetime(date_part, time),
        _ => None,
    }
}

fn day_range(start: NaiveDate, end: NaiveDate) -> DateRange {
    let ms = |d: NaiveDate| {
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).expect("midnight exists"))
            .timestamp_millis()
    };
    DateRange {
        start: ms(start),
        end: ms(end),
    }
}

/// `hh:mm[:ss[.fff…]]` followed by `Z` or `±hh:mm`. The precision given sets the width of the range.
fn parse_datetime(date: &str, time: &str) -> Option<DateRange> {
    let zone_at = time.find(['Z', '+', '-'])?;
    let (clock, zone) = time.split_at(zone_at);
    let parts: Vec<&str> = clock.split(':').collect();
    let (seconds, width_ms): (String, i64) = match parts.len() {
        2 => ("00".to_string(), 60_000),
        3 => match parts[2].split_once('.') {
            Some((s, frac)) if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) => (
                format!("{s}.{frac}"),
                if frac.len() >= 3 {
                    1
                } else {
                    10i64.pow(3 - frac.len() as u32)
                },
            ),
            Some(_) => return None,
            None => (parts[2].to_string(), 1000),
        },
        _ => return None,
    };
    let canonical = format!(
        "{date}T{}:{}:{seconds}{}",
        parts[0],
        parts[1],
        if zone == "Z" { "+00:00" } else { zone }
    );
    let start = DateTime::parse_from_rfc3339(&canonical).ok()?.timestamp_millis();
    Some(DateRange {
        start,
        end: start + width_ms,
    })
}

/// `yyyyMMddTHHmmss` of an instant (UTC): the folder prefix of exports into a named container.
pub fn compact_stamp(ms: Millis) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    format!("{:04}{:02}{:02}T{}", t.year(), t.month(), t.day(), t.format("%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Millis {
        parse_instant_ms(text).unwrap()
    }

    #[test]
    fn partial_dates_cover_their_whole_period() {
        let y = parse_partial("2024").unwrap();
        assert_eq!(
            (y.start, y.end),
            (ms("2024-01-01T00:00:00Z"), ms("2025-01-01T00:00:00Z"))
        );
        let m = parse_partial("2024-12").unwrap();
        assert_eq!(m.end, ms("2025-01-01T00:00:00Z"));
        let d = parse_partial("2024-02-29").unwrap();
        assert_eq!(d.end - d.start, 86_400_000);
    }

    #[test]
    fn date_times_take_their_precision_and_offset() {
        let t = parse_partial("2021-06-13T10:00:00.123Z").unwrap();
        assert_eq!(
            (t.start, t.end),
            (ms("2021-06-13T10:00:00.123Z"), ms("2021-06-13T10:00:00.124Z"))
        );
        let t = parse_partial("2021-06-13T10:00:00.1234567+02:00").unwrap();
        assert_eq!(t.start, ms("2021-06-13T08:00:00.123Z"));
        assert_eq!(
            parse_partial("2021-06-13T10:00Z").unwrap().end - parse_partial("2021-06-13T10:00Z").unwrap().start,
            60_000
        );
        assert_eq!(
            parse_partial("2021-06-13T10:00:01Z").unwrap().end,
            ms("2021-06-13T10:00:02Z")
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "time",
            "2021-06-13T00:00:00Z ",
            "2021-06-13T00:00:00 02:00",
            "21-06-13",
            "2021-13",
            "2021-06-13T10Z",
            "2021-06-13T10:00:00",
        ] {
            assert_eq!(parse_partial(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_with_milliseconds_and_offset() {
        assert_eq!(
            format_ms(ms("2024-03-01T10:00:00.123Z")),
            "2024-03-01T10:00:00.123+00:00"
        );
        assert_eq!(compact_stamp(ms("2026-05-01T10:00:00.999Z")), "20260501T100000");
    }

    #[test]
    fn last_updated_is_written_with_trailing_zeros_trimmed() {
        let t = ms("2024-03-01T10:00:00.100Z");
        assert_eq!(format_instant(t, 0), "2024-03-01T10:00:00.1+00:00");
        assert_eq!(format_instant(t - 100, 0), "2024-03-01T10:00:00+00:00");
        assert_eq!(format_instant(t - 31, 0), "2024-03-01T10:00:00.069+00:00");
        assert_eq!(format_instant(t, 4567), "2024-03-01T10:00:00.1004567+00:00");
        let (m, sub) = parse_instant_precise("2024-03-01T10:00:00.1234567+00:00").unwrap();
        assert_eq!((m, sub), (ms("2024-03-01T10:00:00.123Z"), 4567));
        assert_eq!(format_instant(m, sub), "2024-03-01T10:00:00.1234567+00:00");
        assert_eq!(parse_instant_precise("2024-03-01T10:00:00Z").unwrap().1, 0);
    }
}
