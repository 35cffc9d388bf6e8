//! The reference fixtures parse with the emulator's own wire types (and so agree with what it emits).

use fhir_emulator::wire::{Bundle, ExportManifest, ImportResult, Parameters};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn export_manifest_fixture_parses_with_the_six_keys() {
    let m: ExportManifest = serde_json::from_str(&read("mock_export_status_response.json")).unwrap();
    assert_eq!(m.output.len(), 3);
    assert!(!m.requires_access_token);
}

#[test]
fn import_result_fixture_parses() {
    let r: ImportResult = serde_json::from_str(&read("mock_import_status_response.json")).unwrap();
    assert_eq!(r.output.len(), 3);
    assert_eq!(r.error.len(), 2);
    assert!(r.error[0].url.contains("/fhirlogs/"));
}

#[test]
fn import_request_fixture_parses_and_its_invalid_mode_is_visible() {
    let p: Parameters = serde_json::from_str(&read("mock_import_request.json")).unwrap();
    let mode = p.parameter.iter().find(|x| x.name == "mode").unwrap();
    // The original tool's fixture uses a mode the servers refuse (item 29).
    assert_eq!(mode.value_string.as_deref(), Some("IncrementalImport"));
    assert_eq!(p.parameter.iter().filter(|x| x.name == "input").count(), 3);
}

#[test]
fn search_parameter_bundles_parse() {
    let b: Bundle = serde_json::from_str(&read("mock_search_parameter.json")).unwrap();
    assert_eq!(b.bundle_type, "searchset");
    assert!(
        b.entry
            .iter()
            .all(|e| e.resource.as_ref().unwrap()["resourceType"] == "SearchParameter")
    );
    let batch: Bundle = serde_json::from_str(&read("mock_Transformed_Search_Parameters.json")).unwrap();
    assert_eq!(batch.bundle_type, "batch");
}
