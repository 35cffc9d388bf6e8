//! A Table storage row: its keys, its properties with their OData types, and the ETag it was read with.
//!
//! Properties are kept as JSON together with their `@odata.type` annotations, so a row read and written back
//! keeps every column's type, including columns this version of the tool does not know about.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::TableError;

/// An entity tag: the version of a row as the service last reported it. Writes made "if match" this tag fail
/// with [`TableError::Conflict`] when anyone changed the row in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(pub(crate) String);

impl ETag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The precondition of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// Write only if the row still has this ETag.
    ETag(ETag),
    /// Write whatever the row's version (it must still exist).
    Any,
}

impl IfMatch {
    pub(crate) fn header_value(&self) -> &str {
        match self {
            IfMatch::ETag(tag) => tag.as_str(),
            IfMatch::Any => "*",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    partition_key: String,
    row_key: String,
    properties: Map<String, Value>,
    /// Set on rows read from the service; `None` on rows built in memory.
    etag: Option<ETag>,
    /// The service's last-modified time (read-only; ignored on writes).
    timestamp: Option<DateTime<Utc>>,
}

const EDM: &str = "@odata.type";

/// Table storage's limit for one string property: 64 KiB of UTF-16.
pub const MAX_STRING_UTF16: usize = 32_768;

/// `text` cut so that it, with a marker saying how many characters were cut, is at most `max` UTF-16 code units.
pub fn clip_utf16(text: &str, max: usize) -> String {
    if text.encode_utf16().count() <= max {
        return text.to_string();
    }
    // Room for the marker ("… [clipped N chars]" is under 32 code units for any N a string can have).
    let budget = max.saturating_sub(32);
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    let cut = text[end..].chars().count();
    format!("{}… [clipped {cut} chars]", &text[..end])
}

impl Entity {
    /// A new row. Keys are checked here so a bad key fails before any request is made.
    pub fn new(partition_key: impl Into<String>, row_key: impl Into<String>) -> Result<Entity, TableError> {
        let (partition_key, row_key) = (partition_key.into(), row_key.into());
        check_key("PartitionKey", &partition_key)?;
        check_key("RowKey", &row_key)?;
        Ok(Entity {
            partition_key,
            row_key,
            properties: Map::new(),
            etag: None,
            timestamp: None,
        })
    }

    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    pub fn row_key(&self) -> &str {
        &self.row_key
    }

    pub fn etag(&self) -> Option<&ETag> {
        self.etag.as_ref()
    }

    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        self.timestamp
    }

    /// The precondition for writing this row back: its ETag if it was read, otherwise "any version".
    pub fn if_match(&self) -> IfMatch {
        self.etag.clone().map_or(IfMatch::Any, IfMatch::ETag)
    }

    /// Records the ETag a write returned, so the next conditional write of this row uses it.
    pub fn set_etag(&mut self, etag: ETag) {
        self.etag = Some(etag);
    }

    /// A string property. Table storage refuses a string over 64 KiB (32,768 UTF-16 code units), which would fail
    /// the whole write: a longer value is cut, visibly (it ends with "… [clipped N chars]"), and a warning says so.
    pub fn set_str(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        let value = if value.encode_utf16().count() > MAX_STRING_UTF16 {
            let clipped = clip_utf16(&value, MAX_STRING_UTF16);
            tracing::warn!(
                property = name,
                chars = value.chars().count(),
                "a string property is over Table storage's 64 KiB and was clipped"
            );
            clipped
        } else {
            value
        };
        self.put(name, Value::String(value), None)
    }

    pub fn set_bool(&mut self, name: &str, value: bool) -> &mut Self {
        self.put(name, Value::Bool(value), None)
    }

    pub fn set_i32(&mut self, name: &str, value: i32) -> &mut Self {
        self.put(name, Value::from(value), None)
    }

    /// Int64 travels as a string with an `Edm.Int64` annotation: JSON numbers lose precision past 2^53.
    pub fn set_i64(&mut self, name: &str, value: i64) -> &mut Self {
        self.put(name, Value::String(value.to_string()), Some("Edm.Int64"))
    }

    pub fn set_f64(&mut self, name: &str, value: f64) -> &mut Self {
        self.put(name, Value::from(value), Some("Edm.Double"))
    }

    /// Written with millisecond precision and a literal `Z`: the real service rejects other forms Azurite accepts.
    pub fn set_datetime(&mut self, name: &str, value: DateTime<Utc>) -> &mut Self {
        let text = value.to_rfc3339_opts(SecondsFormat::Millis, true);
        self.put(name, Value::String(text), Some("Edm.DateTime"))
    }

    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.properties.remove(name);
        self.properties.remove(&format!("{name}{EDM}"));
        self
    }

    fn put(&mut self, name: &str, value: Value, edm: Option<&str>) -> &mut Self {
        self.properties.insert(name.to_string(), value);
        match edm {
            Some(edm) => self
                .properties
                .insert(format!("{name}{EDM}"), Value::String(edm.into())),
            None => self.properties.remove(&format!("{name}{EDM}")),
        };
        self
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.properties.get(name)?.as_str()
    }

    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match self.properties.get(name)? {
            Value::Bool(b) => Some(*b),
            // Rows written by other tools sometimes hold booleans as text.
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Reads Int32 and Int64 columns alike (Int64 arrives as a string).
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        match self.properties.get(name)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn get_f64(&self, name: &str) -> Option<f64> {
        match self.properties.get(name)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    pub fn get_datetime(&self, name: &str) -> Option<DateTime<Utc>> {
        let text = self.properties.get(name)?.as_str()?;
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
    }

    /// Names of the row's own columns (not keys, not type annotations).
    pub fn property_names(&self) -> impl Iterator<Item = &str> {
        self.properties.keys().filter(|k| !k.contains('@')).map(String::as_str)
    }

    /// The JSON body for inserts and updates.
    pub(crate) fn to_body(&self) -> Value {
        let mut body = self.properties.clone();
        body.insert("PartitionKey".into(), Value::String(self.partition_key.clone()));
        body.insert("RowKey".into(), Value::String(self.row_key.clone()));
        Value::Object(body)
    }

    /// Parses one row of a `minimalmetadata` response: keys, `odata.etag`, `Timestamp` and typed properties.
    pub(crate) fn from_wire(mut row: Map<String, Value>, etag: Option<ETag>) -> Result<Entity, String> {
        let mut take_key = |name: &str| match row.remove(name) {
            Some(Value::String(s)) => Ok(s),
            _ => Err(format!("a row without a string {name}")),
        };
        let partition_key = take_key("PartitionKey")?;
        let row_key = take_key("RowKey")?;
        let etag = etag.or_else(|| match row.get("odata.etag") {
            Some(Value::String(s)) => Some(ETag(s.clone())),
            _ => None,
        });
        let timestamp = row
            .remove("Timestamp")
            .and_then(|v| v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()))
            .map(|t| t.with_timezone(&Utc));
        row.retain(|k, _| !k.starts_with("odata.") && k != "Timestamp@odata.type");
        Ok(Entity {
            partition_key,
            row_key,
            properties: row,
            etag,
            timestamp,
        })
    }
}

fn check_key(which: &'static str, value: &str) -> Result<(), TableError> {
    let bad_char = |c: char| matches!(c, '/' | '\\' | '#' | '?') || c.is_control();
    if value.len() > 1024 || value.chars().any(bad_char) {
        return Err(TableError::InvalidKey {
            which,
            value: value.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn typed_properties_round_trip_through_the_wire_form() {
        let when = Utc.with_ymd_and_hms(2023, 1, 31, 0, 0, 0).unwrap();
        let mut e = Entity::new("p", "r").unwrap();
        e.set_str("status", "Running")
            .set_i64("total", 9_007_199_254_740_993)
            .set_i32("retries", 3)
            .set_bool("paused", true)
            .set_f64("ratio", 0.5)
            .set_datetime("since", when);
        let body = e.to_body();
        assert_eq!(body["total"], "9007199254740993");
        assert_eq!(body["total@odata.type"], "Edm.Int64");
        assert_eq!(body["since"], "2023-01-31T00:00:00.000Z");

        let back = Entity::from_wire(body.as_object().unwrap().clone(), None).unwrap();
        assert_eq!(back.get_i64("total"), Some(9_007_199_254_740_993));
        assert_eq!(back.get_i64("retries"), Some(3));
        assert_eq!(back.get_bool("paused"), Some(true));
        assert_eq!(back.get_f64("ratio"), Some(0.5));
        assert_eq!(back.get_datetime("since"), Some(when));
        assert_eq!(back.get_str("status"), Some("Running"));
        let mut names: Vec<_> = back.property_names().collect();
        names.sort();
        assert_eq!(names, ["paused", "ratio", "retries", "since", "status", "total"]);
    }

    #[test]
    fn overwriting_with_another_type_drops_the_old_annotation() {
        let mut e = Entity::new("p", "r").unwrap();
        e.set_i64("x", 1).set_str("x", "one");
        assert!(!e.to_body().as_object().unwrap().contains_key("x@odata.type"));
        e.remove("x");
        assert_eq!(e.property_names().count(), 0);
    }

    #[test]
    fn a_string_over_the_table_limit_is_clipped_visibly_and_fits() {
        // 'é' is one UTF-16 unit, '😀' two: the limit counts UTF-16, not bytes or characters.
        let long = "é😀".repeat(20_000);
        let mut e = Entity::new("p", "r").unwrap();
        e.set_str("FailureReason", long.clone());
        let stored = e.get_str("FailureReason").unwrap();
        assert!(stored.encode_utf16().count() <= MAX_STRING_UTF16);
        assert!(
            stored.encode_utf16().count() > MAX_STRING_UTF16 - 40,
            "keeps as much as fits"
        );
        let kept = stored.split('…').next().unwrap();
        assert!(long.starts_with(kept));
        let cut = long.chars().count() - kept.chars().count();
        assert!(
            stored.ends_with(&format!("… [clipped {cut} chars]")),
            "{}",
            &stored[stored.len() - 40..]
        );
        // At the limit: untouched.
        let exact = "a".repeat(MAX_STRING_UTF16);
        e.set_str("Exact", exact.clone());
        assert_eq!(e.get_str("Exact"), Some(exact.as_str()));
    }

    #[test]
    fn keys_with_forbidden_characters_are_refused_before_any_request() {
        for bad in ["a/b", "a\\b", "a#b", "a?b", "a\u{1}b"] {
            assert!(matches!(
                Entity::new(bad, "r"),
                Err(TableError::InvalidKey {
                    which: "PartitionKey",
                    ..
                })
            ));
        }
        assert!(Entity::new("p", "x".repeat(1025)).is_err());
        assert!(Entity::new("it's ok", "ünïcode ✓").is_ok());
    }

    #[test]
    fn wire_rows_without_keys_are_rejected() {
        let row = serde_json::json!({"RowKey": "r"}).as_object().unwrap().clone();
        assert!(Entity::from_wire(row, None).unwrap_err().contains("PartitionKey"));
    }
}
