//! Deterministic synthetic data: resources of many types with references between them, several versions per
//! resource, soft deletes, `lastUpdated` spread over a span of days (so windowing matters), custom
//! SearchParameters, and a few hostile records. The same parameters and seed always give the same lines.
//!
//! Lines carry their own `meta.versionId` and `meta.lastUpdated` (deleted versions the deleted-state
//! extension), so they can be loaded with the incremental-import rules: into an emulator's store directly, or
//! over HTTP through the emulator-only `POST /_admin/load` (an aapi source has no `$import`).

use serde_json::{Value, json};

use crate::store::{DELETED_STATE_URL, ImportLine, ImportOptions, LineOutcome, Store, parse_import_line};
use crate::time::{Millis, Precise, format_instant, format_ms, now_ms};

/// The default mix: 18 types, weighted towards clinical data as real servers are.
pub const DEFAULT_TYPES: &[(&str, u32)] = &[
    ("Patient", 10),
    ("Practitioner", 2),
    ("Organization", 1),
    ("Location", 1),
    ("Encounter", 10),
    ("Observation", 30),
    ("Condition", 8),
    ("Procedure", 6),
    ("MedicationRequest", 6),
    ("Medication", 2),
    ("AllergyIntolerance", 3),
    ("Immunization", 3),
    ("DiagnosticReport", 5),
    ("CarePlan", 2),
    ("Claim", 4),
    ("DocumentReference", 3),
    ("Device", 1),
    ("Goal", 2),
];

#[derive(Debug, Clone)]
pub struct SeedParams {
    /// Distinct resources (SearchParameters and hostile records come on top).
    pub resources: usize,
    /// Types to generate (weights from [`DEFAULT_TYPES`], 1 for others); empty means the default mix.
    pub types: Vec<String>,
    /// Share of resources that get more than one version (2 to 5 in all).
    pub history_ratio: f64,
    /// Share of resources whose latest version is a soft delete.
    pub delete_ratio: f64,
    pub span_days: u32,
    /// The span ends here (default: now minus one minute).
    pub end: Option<Millis>,
    pub seed: u64,
    /// Unicode and large records (on by default).
    pub hostile: bool,
    /// An Observation whose quantity has more than 18 integer digits: it sinks an import unit unless the
    /// export is de-identified, so it is opt-in.
    pub overflow_decimal: bool,
    /// Custom SearchParameter resources.
    pub search_parameters: usize,
    /// Crowded milliseconds, as a real source has them (reference §11.2): each puts on one millisecond two
    /// versions of one resource a fraction of a millisecond apart (versions 9 and 10 of `Basic/crowded-<k>`, whose
    /// versions 1–8 come just before), and three more resources of two types. An aapi store keeps the 100-ns
    /// ticks; on ahds the two versions collapse onto one millisecond.
    pub crowded_milliseconds: usize,
}

impl Default for SeedParams {
    fn default() -> Self {
        SeedParams {
            resources: 1000,
            types: Vec::new(),
            history_ratio: 0.3,
            delete_ratio: 0.05,
            span_days: 30,
            end: None,
            seed: 42,
            hostile: true,
            overflow_decimal: false,
            search_parameters: 3,
            crowded_milliseconds: 0,
        }
    }
}

/// SplitMix64: tiny, fast, and the same everywhere (no dependency needed for test data).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Generates the NDJSON lines (one per version), oldest version of each resource first.
pub fn generate(params: &SeedParams) -> Vec<String> {
    let mut rng = Rng(params.seed);
    let end = params.end.unwrap_or_else(|| now_ms() - 60_000);
    let span = i64::from(params.span_days.max(1)) * 86_400_000;
    let start = end - span;
    let mix: Vec<(String, u32)> = if params.types.is_empty() {
        DEFAULT_TYPES.iter().map(|(t, w)| (t.to_string(), *w)).collect()
    } else {
        params
            .types
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    DEFAULT_TYPES.iter().find(|(d, _)| d == t).map_or(1, |(_, w)| *w),
                )
            })
            .collect()
    };
    let total_weight: u32 = mix.iter().map(|(_, w)| w).sum();
    let patient_count = (params.resources / 10).max(1);
    let mut lines = Vec::new();
    for n in 0..params.resources {
        // The first tenth are Patients (when Patient is in the mix), so others can reference them.
        let resource_type = if n < patient_count && mix.iter().any(|(t, _)| t == "Patient") {
            "Patient".to_string()
        } else {
            let mut pick = rng.below(u64::from(total_weight)) as u32;
            mix.iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(t, _)| t.clone())
                .expect("weights cover the range")
        };
        let id = format!("{}-{:06}", resource_type.to_ascii_lowercase(), n);
        let patient = format!("patient-{:06}", rng.below(patient_count as u64));
        let versions = if rng.chance(params.history_ratio) {
            2 + rng.below(4) as i64
        } else {
            1
        };
        let deleted = rng.chance(params.delete_ratio);
        // Versions sit at increasing instants inside the span.
        let mut t = start + rng.below(span as u64 * 3 / 4) as i64;
        for v in 1..=versions {
            let body = resource(&resource_type, &id, &patient, v, &mut rng);
            lines.push(with_meta(body, v, t, false));
            t += 1 + rng.below((end - t).max(2) as u64 / 4) as i64;
        }
        if deleted {
            lines.push(with_meta(
                json!({ "resourceType": resource_type, "id": id }),
                versions + 1,
                t.min(end),
                true,
            ));
        }
    }
    for k in 0..params.search_parameters {
        let t = start + rng.below(span as u64) as i64;
        let body = json!({
            "resourceType": "SearchParameter",
            "id": format!("custom-sp-{k}"),
            "url": format!("http://example.org/fhir/SearchParameter/custom-{k}"),
            "name": format!("custom{k}"),
            "status": "active",
            "description": format!("Custom search parameter {k} for the migration tests"),
            "code": format!("custom{k}"),
            "base": ["Patient"],
            "type": "token",
            "expression": format!("Patient.extension.where(url='http://example.org/ext/{k}').value")
        });
        lines.push(with_meta(body, 1, t, false));
    }
    if params.hostile {
        lines.extend(hostile(start, span, &mut rng));
    }
    for k in 0..params.crowded_milliseconds {
        let m = start + 1_000 + rng.below(span as u64 / 2) as i64;
        let id = format!("crowded-{k}");
        for v in 1..=10i64 {
            let at = if v <= 8 {
                (m - 9 + v, 0)
            } else {
                (m, if v == 9 { 1_234 } else { 5_678 })
            };
            let body = resource("Basic", &id, "patient-000000", v, &mut rng);
            lines.push(with_meta_precise(body, v, at, false));
        }
        for (suffix, resource_type, sub) in [("a", "Patient", 0), ("b", "Observation", 0), ("c", "Patient", 7)] {
            let body = resource(resource_type, &format!("{id}-{suffix}"), "patient-000000", 1, &mut rng);
            lines.push(with_meta_precise(body, 1, (m, sub), false));
        }
    }
    if params.overflow_decimal {
        // Written as text: JSON numbers of this size only survive with arbitrary precision.
        let t = format_ms(start + rng.below(span as u64) as i64);
        lines.push(format!(
            r#"{{"resourceType":"Observation","id":"overflow-decimal","meta":{{"versionId":"1","lastUpdated":"{t}"}},"status":"final","code":{{"text":"huge"}},"valueQuantity":{{"value":1234567890123456789012.5,"unit":"mg"}}}}"#
        ));
    }
    lines
}

fn with_meta(body: Value, version: i64, t: Millis, deleted: bool) -> String {
    with_meta_text(body, version, format_ms(t), deleted)
}

/// A line whose lastUpdated keeps 100-ns ticks (0–7 fraction digits).
fn with_meta_precise(body: Value, version: i64, (ms, sub): Precise, deleted: bool) -> String {
    with_meta_text(body, version, format_instant(ms, sub), deleted)
}

fn with_meta_text(mut body: Value, version: i64, t: String, deleted: bool) -> String {
    let mut meta = json!({ "versionId": version.to_string(), "lastUpdated": t });
    if deleted {
        meta = json!({ "extension": [{ "url": DELETED_STATE_URL, "valueString": "soft-deleted" }], "versionId": version.to_string(), "lastUpdated": t });
    }
    let map = body.as_object_mut().expect("resources are objects");
    let mut ordered = serde_json::Map::new();
    ordered.insert("resourceType".into(), map.remove("resourceType").unwrap_or_default());
    ordered.insert("id".into(), map.remove("id").unwrap_or_default());
    ordered.insert("meta".into(), meta);
    ordered.append(map);
    Value::Object(ordered).to_string()
}

/// A plausible body for one version; later versions change a field so versions differ.
fn resource(resource_type: &str, id: &str, patient: &str, version: i64, rng: &mut Rng) -> Value {
    let subject = json!({ "reference": format!("Patient/{patient}") });
    let code = json!({ "coding": [{ "system": "http://loinc.org", "code": format!("{}-{}", 1000 + rng.below(9000), rng.below(10)) }] });
    let mut body = match resource_type {
        "Patient" => json!({
            "name": [{ "family": format!("Family{}", rng.below(5000)), "given": [format!("Given{}", rng.below(5000))] }],
            "gender": if rng.chance(0.5) { "female" } else { "male" },
            "birthDate": format!("{}-{:02}-{:02}", 1930 + rng.below(90), 1 + rng.below(12), 1 + rng.below(28))
        }),
        "Observation" => json!({
            "status": "final", "code": code, "subject": subject,
            "valueQuantity": { "value": (rng.below(100_000) as f64) / 100.0, "unit": "mg" }
        }),
        "Encounter" => json!({ "status": "finished", "class": { "code": "AMB" }, "subject": subject }),
        "Condition" | "AllergyIntolerance" => json!({ "code": code, "subject": subject, "patient": subject }),
        "Procedure" | "DiagnosticReport" | "CarePlan" | "Goal" => {
            json!({ "status": "completed", "code": code, "subject": subject })
        }
        "MedicationRequest" => {
            json!({ "status": "active", "intent": "order", "subject": subject, "medicationCodeableConcept": code })
        }
        "Immunization" => {
            json!({ "status": "completed", "vaccineCode": code, "patient": subject, "occurrenceString": "2020" })
        }
        "Claim" => {
            json!({ "status": "active", "use": "claim", "patient": subject, "total": { "value": rng.below(10_000), "currency": "USD" } })
        }
        "DocumentReference" => {
            json!({ "status": "current", "subject": subject, "content": [{ "attachment": { "contentType": "text/plain", "data": "aGVsbG8=" } }] })
        }
        "Practitioner" => json!({ "name": [{ "family": format!("Doctor{}", rng.below(500)) }] }),
        "Organization" | "Location" => json!({ "name": format!("Site {}", rng.below(500)) }),
        "Device" => json!({ "status": "active", "patient": subject }),
        _ => {
            json!({ "text": { "status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">generated</div>" } })
        }
    };
    body["resourceType"] = json!(resource_type);
    body["id"] = json!(id);
    if version > 1 {
        body["extension"] = json!([{ "url": "http://example.org/ext/revision", "valueInteger": version }]);
    }
    body
}

/// Unicode in several scripts, and one large resource (~256 KB).
fn hostile(start: Millis, span: Millis, rng: &mut Rng) -> Vec<String> {
    let at = |rng: &mut Rng| start + rng.below(span as u64) as i64;
    let unicode = json!({
        "resourceType": "Patient", "id": "hostile-unicode",
        "name": [{ "family": "Ñúñez-Ærøskøbing 李 محمد", "given": ["Zoë", "👩‍⚕️", "e\u{301}", "\u{202E}reversed"] }],
        "address": [{ "text": "line1\nline2\t\"quoted\" \\ backslash" }]
    });
    let large = json!({
        "resourceType": "DocumentReference", "id": "hostile-large", "status": "current",
        "content": [{ "attachment": { "contentType": "text/plain", "data": "QUJD".repeat(64 * 1024) } }]
    });
    let long_id = json!({ "resourceType": "Basic", "id": format!("a.b-{}", "x".repeat(60)), "code": { "text": "max-length id" } });
    vec![
        with_meta(unicode, 1, at(rng), false),
        with_meta(large, 1, at(rng), false),
        with_meta(long_id, 1, at(rng), false),
    ]
}

/// Loads lines into a store in-process with the incremental-import rules. Returns (loaded, errors). Lines are
/// parsed a chunk at a time, so a large dataset never exists twice in memory as JSON trees.
pub fn load_into(store: &Store, lines: &[String]) -> (usize, Vec<String>) {
    let opts = ImportOptions::seeding(now_ms());
    let mut errors = Vec::new();
    let mut loaded = 0;
    for (chunk_no, chunk) in lines.chunks(5000).enumerate() {
        let mut parsed = Vec::with_capacity(chunk.len());
        for (i, text) in chunk.iter().enumerate() {
            match parse_seed_line(text, chunk_no * 5000 + i + 1, &opts) {
                Ok(line) => parsed.push(line),
                Err(e) => errors.push(e),
            }
        }
        for (_, outcome) in store.import_batch(parsed, &opts) {
            match outcome {
                LineOutcome::Error(e) => errors.push(e),
                _ => loaded += 1,
            }
        }
    }
    (loaded, errors)
}

/// Like an import line, but SearchParameters (which `$import` refuses) are accepted: a server stores them.
pub(crate) fn parse_seed_line(text: &str, line: usize, opts: &ImportOptions) -> Result<ImportLine, String> {
    if !text.contains("\"resourceType\":\"SearchParameter\"") {
        return parse_import_line(text, line, opts);
    }
    let masked = text.replacen("\"SearchParameter\"", "\"Basic\"", 1);
    let mut parsed = parse_import_line(&masked, line, opts)?;
    parsed.resource_type = "SearchParameter".into();
    parsed.body["resourceType"] = json!("SearchParameter");
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_data_and_another_seed_different_data() {
        let p = SeedParams {
            resources: 200,
            end: Some(1_700_000_000_000),
            ..SeedParams::default()
        };
        assert_eq!(generate(&p), generate(&p));
        assert_ne!(generate(&p), generate(&SeedParams { seed: 7, ..p.clone() }));
    }

    #[test]
    fn data_has_history_deletes_references_and_many_types() {
        let p = SeedParams {
            resources: 2000,
            end: Some(1_700_000_000_000),
            ..SeedParams::default()
        };
        let store = Store::new();
        let (loaded, errors) = load_into(&store, &generate(&p));
        assert!(errors.is_empty(), "{errors:?}");
        let (resources, versions) = store.size();
        assert_eq!(
            resources,
            2000 + 3 + 3,
            "resources + SearchParameters + hostile records"
        );
        assert_eq!(loaded, versions);
        assert!(
            versions as f64 > resources as f64 * 1.5,
            "history: {versions} versions for {resources}"
        );
        let snapshot = store.snapshot();
        let types: std::collections::HashSet<_> = snapshot.iter().map(|(k, _)| k.0.clone()).collect();
        assert!(types.len() >= 15, "{types:?}");
        let deleted = snapshot.iter().filter(|(_, r)| r.current().unwrap().deleted).count();
        assert!(deleted > 20, "{deleted} soft-deleted");
        let spread: Vec<_> = snapshot
            .iter()
            .map(|(_, r)| r.current().unwrap().last_updated)
            .collect();
        let (lo, hi) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
        assert!(hi - lo > 20 * 86_400_000, "lastUpdated spread over the span");
        let obs = snapshot.iter().find(|(k, _)| &*k.0 == "Observation").unwrap();
        assert!(obs.1.current().unwrap().body.contains("\"Patient/patient-"));
    }
}
