//! De-identified export (reference §1.3 `_anonymizationConfig`): the configuration is read from the
//! `anonymization` container of the export account. The emulator applies the rules the migration's demo
//! configuration uses — truncating `Observation.valueQuantity.value` to its first N characters — and leaves
//! other rules unapplied (a real server runs the full FHIR anonymizer).

use serde_json::Value;

/// A de-identification configuration with the one rule the migration's demo uses: Observation quantities
/// longer than 18 characters are cut to 18 (so the destination can index them). Tests and the demo upload
/// it to the `anonymization` container.
pub const TRUNCATE_QUANTITIES: &str = r#"{
  "fhirVersion": "R4",
  "processingError": "raise",
  "fhirPathRules": [
    { "path": "(nodesByType('Observation').value as Quantity).value", "method": "generalize",
      "cases": { "$this.length>18": "$this.toString().substring(0,18).toDecimal()" } }
  ],
  "parameters": {}
}"#;

/// One supported rule: for resources of `resource_type`, shorten `valueQuantity.value` to `max_len` characters
/// when longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateQuantity {
    pub resource_type: String,
    pub max_len: usize,
}

/// Reads the supported rules out of an anonymizer configuration. `Err` when the file is not JSON.
pub fn parse_rules(config: &[u8]) -> Result<Vec<TruncateQuantity>, String> {
    let json: Value = serde_json::from_slice(config)
        .map_err(|e| format!("The anonymization configuration is not valid JSON: {e}"))?;
    let mut rules = Vec::new();
    for rule in json["fhirPathRules"].as_array().into_iter().flatten() {
        let path = rule["path"].as_str().unwrap_or_default();
        let Some(resource_type) = path
            .strip_prefix("(nodesByType('")
            .and_then(|rest| rest.split_once("')"))
            .filter(|(_, tail)| tail.replace(' ', "") == ".valueasQuantity).value")
            .map(|(t, _)| t.to_string())
        else {
            continue;
        };
        if rule["method"].as_str() != Some("generalize") {
            continue;
        }
        for (_, expression) in rule["cases"].as_object().into_iter().flatten() {
            let text = expression.as_str().unwrap_or_default();
            if let Some(len) = text
                .strip_prefix("$this.toString().substring(0,")
                .and_then(|r| r.split_once(')'))
                .and_then(|(n, _)| n.trim().parse().ok())
            {
                rules.push(TruncateQuantity {
                    resource_type: resource_type.clone(),
                    max_len: len,
                });
            }
        }
    }
    Ok(rules)
}

/// Applies the rules to one NDJSON line of `resource_type`.
pub fn apply(rules: &[TruncateQuantity], resource_type: &str, line: String) -> String {
    let Some(rule) = rules.iter().find(|r| r.resource_type == resource_type) else {
        return line;
    };
    let Ok(mut json) = serde_json::from_str::<Value>(&line) else {
        return line;
    };
    let Some(Value::Number(n)) = json.pointer("/valueQuantity/value") else {
        return line;
    };
    // With arbitrary precision the number keeps its original text.
    let text = n.to_string();
    if text.len() <= rule.max_len {
        return line;
    }
    let short = text[..rule.max_len].trim_end_matches('.').to_string();
    match serde_json::from_str::<Value>(&short) {
        Ok(v) => {
            json["valueQuantity"]["value"] = v;
            json.to_string()
        }
        Err(_) => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The original tool's demo configuration, vendored with the other fixtures (tests/fixtures/README.md).
    fn reference_fixture() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/DemoTruncate.json"
        ))
        .expect("the vendored fixture tests/fixtures/DemoTruncate.json")
    }

    #[test]
    fn the_demo_configuration_truncates_observation_quantities() {
        let rules = parse_rules(TRUNCATE_QUANTITIES.as_bytes()).unwrap();
        assert_eq!(
            parse_rules(reference_fixture().as_bytes()).unwrap(),
            rules,
            "the original's demo configuration has the same rule"
        );
        assert_eq!(
            rules,
            [TruncateQuantity {
                resource_type: "Observation".into(),
                max_len: 18
            }]
        );
        let line = r#"{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1234567890123456789012.5,"unit":"mg"}}"#;
        let out = apply(&rules, "Observation", line.to_string());
        assert!(out.contains(r#""value":123456789012345678,"#), "{out}");
        let small = r#"{"resourceType":"Observation","id":"o2","valueQuantity":{"value":12.5}}"#;
        assert_eq!(apply(&rules, "Observation", small.to_string()), small);
        assert_eq!(apply(&rules, "Patient", line.to_string()), line);
    }
}
