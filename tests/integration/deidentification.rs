//! The de-identification assets under `infra/Anonymization/`: the upload scripts use the config blob name the tool
//! requests, and the demo config's rules never change a number's magnitude (a truncation that did would make
//! imports succeed with wrong values).

use std::process::Command;

use fhir_migration_tool::config::{Settings, SettingsSource};

use crate::infra::root;

/// The config blob name the tool requests for an `AZURE_ConfigFile` value.
fn requested(config_file: &str) -> String {
    let mut s = SettingsSource::default();
    s.extend([
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
        ("AZURE_SourceUri", "https://src.example"),
        ("AZURE_DestinationUri", "https://dst.example"),
        ("AZURE_IsExportDeidentified", "true"),
        ("AZURE_ConfigFile", config_file),
    ]);
    Settings::from_source(&s).unwrap().migration.deidentify_config.unwrap()
}

#[test]
fn the_upload_script_uses_the_name_the_tool_requests() {
    let script = root().join("infra/Anonymization/upload-config.sh");
    for file in [
        "DemoTruncate.json",
        "/tmp/configs/Custom.Rules.json",
        "relative/NoExtension",
    ] {
        let out = Command::new("bash")
            .arg(&script)
            .args(["--dry-run", "--file", file])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let printed = text
            .lines()
            .find_map(|l| l.strip_prefix("AZURE_ConfigFile: "))
            .expect("the script prints the setting value");
        assert_eq!(printed, requested(printed), "{file}: the printed value is stable");
        assert_eq!(printed, requested(file), "{file}: the tool requests the uploaded blob");
        assert!(text.contains(&format!("blob:             anonymization/{printed}")));
    }
    // The PowerShell twin computes the name the same way.
    let ps = std::fs::read_to_string(root().join("infra/Anonymization/upload-config.ps1")).unwrap();
    assert!(ps.contains("GetFileName($File)") && ps.contains("$blob = \"$stem.json\""));
    assert!(ps.contains("--container-name anonymization"));
}

#[test]
fn the_demo_deidentification_config_never_changes_a_numbers_magnitude() {
    let text = std::fs::read_to_string(root().join("infra/Anonymization/DemoTruncate.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["fhirVersion"], "R4");
    let rules = config["fhirPathRules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["path"].as_str().unwrap().contains("Observation")),
        "the demo still acts on Observation quantities"
    );
    // Numbers from tiny to beyond what the destination indexes (decimal(36,18): under 10^18).
    let samples = [
        0.0,
        0.000_4,
        -12.5,
        98.6,
        123_456_789_012_345_678.0,
        -9.99e17,
        1e18,
        -1e18,
        1_234_567_890_123_456_789_012.5,
        -3e30,
    ];
    for rule in rules {
        for x in samples {
            match deidentified(rule, x) {
                // Kept: exactly; removed: only what the destination cannot index anyway.
                Some(y) => assert!(y == x && x.abs() < 1e18, "{rule}: {x} becomes {y}"),
                None => assert!(x.abs() >= 1e18, "{rule}: {x} is removed although it can be indexed"),
            }
        }
    }
}

/// What a de-identification rule makes of the number `x` (`None`: removed), for the rule forms whose effect on
/// numbers is known; any other form fails the check, since it might change magnitudes (`perturb` rounds
/// `0.0004` to `0` with its default two decimals; the old `substring` generalization cut `1.2e21` to `1.2e17`).
fn deidentified(rule: &serde_json::Value, x: f64) -> Option<f64> {
    match rule["method"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "keep" => Some(x),
        "redact" => None,
        "generalize" => {
            for (condition, value) in rule["cases"].as_object().expect("generalize has cases") {
                if holds(condition, x) {
                    assert_eq!(value, "$this", "{rule}: only the identity keeps every magnitude");
                    return Some(x);
                }
            }
            match rule["otherValues"].as_str().unwrap_or("redact") {
                "keep" => Some(x),
                "redact" => None,
                other => panic!("{rule}: otherValues '{other}'"),
            }
        }
        other => panic!("{rule}: the method '{other}' may change a number's magnitude; keep or redact numbers instead"),
    }
}

/// A FHIRPath condition of the form `$this <op> <number>` joined by `and`.
fn holds(condition: &str, x: f64) -> bool {
    condition.split(" and ").all(|part| {
        let words: Vec<&str> = part.split_whitespace().collect();
        let [this, op, bound] = words[..] else {
            panic!("condition '{condition}' is not of the form `$this <op> <number>`")
        };
        assert_eq!(this, "$this", "{condition}");
        let bound: f64 = bound.parse().unwrap_or_else(|_| panic!("'{bound}' in '{condition}'"));
        match op {
            "<" => x < bound,
            "<=" => x <= bound,
            ">" => x > bound,
            ">=" => x >= bound,
            _ => panic!("operator '{op}' in '{condition}'"),
        }
    })
}

#[test]
fn the_magnitude_check_refuses_the_old_truncation_rule() {
    // The rule the demo used to ship: 1234567890123456789012.5 became 123456789012345678.
    let old = serde_json::json!({
        "path": "(nodesByType('Observation').value as Quantity).value",
        "method": "generalize",
        "cases": { "$this.toString().length > 18": "$this.toString().substring(0, 18).toDecimal()" },
        "otherValues": "keep"
    });
    assert!(std::panic::catch_unwind(|| deidentified(&old, 1_234_567_890_123_456_789_012.5)).is_err());
}
