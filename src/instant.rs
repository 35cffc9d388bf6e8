//! The tool's one time format, shared by the FHIR queries (`_since`, `_till`) and the state rows: RFC 3339
//! with milliseconds and a literal `Z`, as the servers and the original tool write it.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn format_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
