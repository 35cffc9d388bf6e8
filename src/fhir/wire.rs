//! The bulk-data documents the tool reads and writes. Parsing is lenient where servers differ (missing or
//! null arrays, extra keys, `type: null`), strict where correctness depends on it (urls and counts).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// An export manifest (the 200 body of an export status URL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportManifest {
    #[serde(default)]
    pub transaction_time: Option<String>,
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub output: Vec<ExportFile>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub error: Vec<ExportFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub url: String,
    #[serde(default)]
    pub count: u64,
    /// Not in the manifest: the file's blob ETag, read by the tool before it builds the `$import` body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// An import result (200, or a 202 partial).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    #[serde(default)]
    pub transaction_time: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub output: Vec<ImportOutput>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub error: Vec<ImportErrorFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportOutput {
    #[serde(rename = "type", default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub input_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportErrorFile {
    #[serde(rename = "type", default)]
    pub resource_type: Option<String>,
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub input_url: Option<String>,
    pub url: String,
}

impl ImportResult {
    pub fn imported(&self) -> u64 {
        self.output.iter().map(|o| o.count).sum()
    }
    pub fn failed(&self) -> u64 {
        self.error.iter().map(|e| e.count).sum()
    }
}

/// The `$import` body for some export files (reference §4.2). `unit_bytes` varies per attempt: registration is
/// idempotent on the whole definition, so a retry must differ from the failed attempt to be a new job.
pub fn import_parameters(mode: &str, files: &[ExportFile], unit_bytes: Option<u64>) -> Value {
    let mut parameter = vec![
        json!({ "name": "inputFormat", "valueString": "application/fhir+ndjson" }),
        json!({ "name": "mode", "valueString": mode }),
    ];
    if let Some(bytes) = unit_bytes {
        parameter.push(json!({ "name": "processingUnitBytesToRead", "valueInteger": bytes }));
    }
    for f in files {
        let mut part = vec![
            json!({ "name": "type", "valueString": f.resource_type }),
            json!({ "name": "url", "valueUri": f.url }),
        ];
        // The server checks the file still has this ETag, and the ETag makes the definition (which the server
        // de-duplicates on) differ from any older job that named the same URL.
        if let Some(etag) = &f.etag {
            part.push(json!({ "name": "etag", "valueString": etag }));
        }
        parameter.push(json!({ "name": "input", "part": part }));
    }
    json!({ "resourceType": "Parameters", "parameter": parameter })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    #[test]
    fn the_reference_fixtures_parse() {
        let m: ExportManifest = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/mock_export_status_response.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m.output.len(), 3);
        assert_eq!(m.output.iter().map(|o| o.count).sum::<u64>(), 32536 + 25268 + 15598);
        let r: ImportResult = serde_json::from_str(
            &std::fs::read_to_string(format!("{FIXTURES}/mock_import_status_response.json")).unwrap(),
        )
        .unwrap();
        assert_eq!((r.imported(), r.failed()), (3706 + 3706 + 3709, 2));
    }

    #[test]
    fn null_or_missing_arrays_are_empty() {
        let m: ExportManifest = serde_json::from_str(r#"{"output":null}"#).unwrap();
        assert!(m.output.is_empty() && m.error.is_empty());
        let r: ImportResult = serde_json::from_str(r#"{"output":[{"type":null,"count":3,"inputUrl":"u"}]}"#).unwrap();
        assert_eq!(r.output[0].resource_type, None);
    }

    #[test]
    fn import_parameters_have_the_servers_shape() {
        let files = [
            ExportFile {
                resource_type: "Patient".into(),
                url: "https://a/b.ndjson".into(),
                count: 1,
                etag: None,
            },
            ExportFile {
                resource_type: "Patient".into(),
                url: "https://a/c.ndjson".into(),
                count: 1,
                etag: Some("\"0x8DC\"".into()),
            },
        ];
        let p = import_parameters("IncrementalLoad", &files, Some(9_999_999));
        assert_eq!(p["parameter"][0]["valueString"], "application/fhir+ndjson");
        assert_eq!(p["parameter"][1]["valueString"], "IncrementalLoad");
        assert_eq!(p["parameter"][2]["valueInteger"], 9_999_999);
        assert_eq!(p["parameter"][3]["part"][1]["valueUri"], "https://a/b.ndjson");
        assert_eq!(
            p["parameter"][3]["part"].as_array().unwrap().len(),
            2,
            "no etag part without an ETag"
        );
        // The server reads the etag part as a string (fhir-server ImportRequestExtensions: TryGetStringValue).
        assert_eq!(
            p["parameter"][4]["part"][2],
            json!({ "name": "etag", "valueString": "\"0x8DC\"" })
        );
    }
}
