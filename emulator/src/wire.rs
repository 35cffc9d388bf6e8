//! Typed shapes of the bulk-data documents (reference §2.2, §4.2, §5.2). The emulator writes its manifests and
//! import results through them, and the reference fixtures parse with them, so both sides agree on the wire.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The export completion manifest: exactly these six keys, in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportManifest {
    pub transaction_time: String,
    pub request: String,
    pub requires_access_token: bool,
    pub output: Vec<ExportOutput>,
    pub error: Vec<Value>,
    pub issues: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportOutput {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub url: String,
    pub count: u64,
}

/// The import result (200, or 202 while units run): no `requiresAccessToken`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportResult {
    pub transaction_time: String,
    pub request: String,
    pub output: Vec<ImportOutput>,
    pub error: Vec<ImportError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportOutput {
    /// The input's `type`, or null when the input had none.
    #[serde(rename = "type")]
    pub resource_type: Option<String>,
    pub count: u64,
    pub input_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportError {
    #[serde(rename = "type")]
    pub resource_type: Option<String>,
    pub count: u64,
    pub input_url: String,
    /// The error file.
    pub url: String,
}

/// A FHIR `Parameters` resource (the `$import` body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parameters {
    pub resource_type: String,
    #[serde(default)]
    pub parameter: Vec<Parameter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub name: String,
    #[serde(rename = "valueString", default, skip_serializing_if = "Option::is_none")]
    pub value_string: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part: Vec<Parameter>,
}

/// A Bundle, as far as search, history and batch use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub resource_type: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub bundle_type: String,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub link: Vec<Link>,
    #[serde(default)]
    pub entry: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub relation: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(default)]
    pub full_url: Option<String>,
    #[serde(default)]
    pub resource: Option<Value>,
    #[serde(default)]
    pub search: Option<Value>,
    #[serde(default)]
    pub request: Option<Value>,
    #[serde(default)]
    pub response: Option<Value>,
}

impl Bundle {
    pub fn next(&self) -> Option<&str> {
        self.link.iter().find(|l| l.relation == "next").map(|l| l.url.as_str())
    }
}
