//! The deployment assets under `infra/`: every JSON file parses, and the de-identification upload scripts put
//! the config where the tool will ask for it.

use std::path::{Path, PathBuf};
use std::process::Command;

use fhir_migration_tool::config::{Settings, SettingsSource};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_json_file_under_infra_parses() {
    let mut files = Vec::new();
    walk(&root().join("infra"), &mut files);
    let json: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(!json.is_empty());
    for path in json {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            panic!("{}: {e}", path.display());
        }
    }
}

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
fn the_demo_truncate_config_truncates_long_observation_values() {
    let text = std::fs::read_to_string(root().join("infra/Anonymization/DemoTruncate.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(config["fhirVersion"], "R4");
    let rule = &config["fhirPathRules"][0];
    assert_eq!(rule["method"], "generalize");
    assert!(rule["path"].as_str().unwrap().contains("Observation"));
    assert!(
        rule["cases"]
            .as_object()
            .unwrap()
            .values()
            .any(|v| v.as_str().unwrap().contains("substring(0, 18)"))
    );
}
