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
}
