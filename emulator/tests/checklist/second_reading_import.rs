//! `$import` as a second reading of the server's source has it (reference §11.1–§11.8). Test names start with
//! the §11 item they prove.

use fhir_emulator::wire::ImportResult;
use fhir_emulator::{EmulatorConfig, Faults, Flavor};
use serde_json::{Value, json};

use crate::import_kickoff::parameters;
use crate::support::{Server, blob_config, diagnostics, line, server_with, server_with_storage};

const T1: &str = "2024-01-01T00:00:00.001Z";
const T2: &str = "2024-01-01T00:00:00.002Z";

async fn start(s: &Server, inputs: &[(&str, Option<&str>, Option<&str>)], extra: &[Value]) -> String {
    let resp = s.import(&parameters(inputs, extra)).await;
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    resp.headers()["content-location"].to_str().unwrap().to_string()
}

async fn result(s: &Server, location: &str) -> ImportResult {
    let resp = s.finish(location).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

fn patients(resource_type: &str, n: usize, from: usize, t: &str) -> Vec<String> {
    (from..from + n)
        .map(|i| line(resource_type, &format!("r{i}"), 1, t, json!({})))
        .collect()
}

async fn small_capacity(capacity: u32) -> Server {
    let config = EmulatorConfig {
        same_ms_capacity: capacity,
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    server_with(config, true).await
}

/// (line, offset) of every error line of an error file.
fn error_positions(text: &str) -> Vec<(usize, usize, String)> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let diag = v["issue"][0]["diagnostics"].as_str().unwrap().to_string();
            let line_no = diag
                .split("line: ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let offset = diag.rsplit(' ').next().unwrap().parse().unwrap();
            (
                line_no,
                offset,
                v["issue"][0]["details"]["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn s11_1_ten_thousand_and_one_on_one_millisecond_import_fine() {
    let s = server_with_storage(Flavor::Ahds).await;
    let url = s
        .write_blob("import", "same-ms.ndjson", &patients("Basic", 10_001, 0, T1).join("\n"))
        .await;
    let r = result(&s, &start(&s, &[(&url, None, None)], &[]).await).await;
    assert_eq!(r.output[0].count, 10_001);
    assert!(r.error.is_empty());
}

#[tokio::test]
async fn s11_1_same_millisecond_capacity_per_type_across_the_store() {
    let s = small_capacity(100).await;
    // 60 Patients + 60 Observations on one millisecond: fine.
    let mut mixed = patients("Patient", 60, 0, T1);
    mixed.extend(patients("Observation", 60, 0, T1));
    let url = s.write_blob("import", "mixed.ndjson", &mixed.join("\n")).await;
    result(&s, &start(&s, &[(&url, None, None)], &[]).await).await;
    // 41 more Patients on that millisecond: 101 with the 60 stored. The unit fails with the server's text; a
    // smaller unit does not help.
    let url = s
        .write_blob("import", "more.ndjson", &patients("Patient", 41, 60, T1).join("\n"))
        .await;
    let extra = [json!({ "name": "processingUnitBytesToRead", "valueInteger": 500 })];
    let (status, _, text) = diagnostics(s.finish(&start(&s, &[(&url, None, None)], &extra).await).await).await;
    assert_eq!(status, 400);
    assert!(
        text.contains("reduce the number of resources with the same up to millisecond lastUpdated below 10,000"),
        "{text}"
    );
    // Units are transactions of their own: the ones before the full millisecond stay committed, up to the limit.
    let stored = (0..200)
        .filter(|i| s.emu.store().exists("Patient", &format!("r{i}")))
        .count();
    assert!((60..=100).contains(&stored), "{stored}");
    // 101 of one type in one unit of a fresh store fail too.
    let fresh = small_capacity(100).await;
    let url = fresh
        .write_blob("import", "b.ndjson", &patients("Basic", 101, 0, T2).join("\n"))
        .await;
    let (status, _, _) = diagnostics(fresh.finish(&start(&fresh, &[(&url, None, None)], &[]).await).await).await;
    assert_eq!(status, 400);
    assert_eq!(fresh.emu.store().size(), (0, 0), "the failed batch left nothing");
}

#[tokio::test]
async fn s11_2_versions_a_fraction_of_a_millisecond_apart_collapse_and_nine_beats_ten() {
    let s = server_with_storage(Flavor::Ahds).await;
    let lines = [
        line("Patient", "p1", 10, "2024-01-01T00:00:00.0015Z", json!({})),
        line("Patient", "p1", 9, "2024-01-01T00:00:00.0011234Z", json!({})),
    ];
    let url = s.write_blob("import", "crowded.ndjson", &lines.join("\n")).await;
    let r = result(&s, &start(&s, &[(&url, None, None)], &[]).await).await;
    assert_eq!(r.output[0].count, 1);
    let errors = error_positions(&s.read_blob(&r.error[0].url).await);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 1, "the loser is version 10, line 1");
    assert_eq!(
        errors[0].2,
        "Failed to import duplicate resource, resource id: p1, line: 1"
    );
    let stored = s.emu.store().resource("Patient", "p1").unwrap();
    assert_eq!(stored.versions()[0].version_id, 9);
}

#[tokio::test]
async fn s11_4_a_line_starting_at_a_unit_offset_belongs_to_the_previous_unit() {
    let s = server_with_storage(Flavor::Ahds).await;
    // Equal-length lines, so unit offsets fall exactly on line starts.
    let stored = line("Patient", "c0", 1, T2, json!({}));
    let fresh: Vec<String> = (0..6)
        .map(|i| line("Patient", &format!("c{i}"), 1, T1, json!({})))
        .collect();
    let width = fresh[0].len() + 1;
    assert!(fresh.iter().all(|l| l.len() + 1 == width));
    fhir_emulator::seed::load_into(s.emu.store(), &[stored]);
    // Lines 0, 2, 4 conflict (c0 already has version 1 at another instant; c2 and c4 are made to conflict too).
    let mut content = fresh.clone();
    content[2] = line("Patient", "c0", 1, T1, json!({}));
    content[4] = line("Patient", "c0", 1, "2024-01-01T00:00:00.003Z", json!({}));
    let url = s
        .write_blob("import", "aligned.ndjson", &(content.join("\n") + "\n"))
        .await;
    let unit = 2 * width; // offsets 0, 2w, 4w: exactly the starts of lines 2 and 4
    let extra = [json!({ "name": "processingUnitBytesToRead", "valueInteger": unit })];
    let r = result(&s, &start(&s, &[(&url, None, None)], &extra).await).await;
    let mut all = Vec::new();
    for e in &r.error {
        all.extend(error_positions(&s.read_blob(&e.url).await));
    }
    all.sort();
    // Unit 0 owns lines 0..=2 (line 2 starts exactly at its end), unit 2w owns lines 3..=4, unit 4w line 5.
    let positions: Vec<(usize, usize)> = all.iter().map(|(l, o, _)| (*l, *o)).collect();
    assert_eq!(positions, [(1, 0), (2, unit), (3, 0)], "{all:?}");
}

#[tokio::test]
async fn s11_5_crlf_error_files_restarts_and_random_unit_order() {
    let config = EmulatorConfig {
        import_order_seed: Some(7),
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    let s = server_with(config, true).await;
    s.emu.set_faults(Faults {
        error_file_crlf: true,
        import_unit_restart: Some(0),
        ..Default::default()
    });
    let mut lines = patients("Patient", 30, 0, T1);
    lines.push("{broken".into());
    let url = s.write_blob("import", "faults.ndjson", &lines.join("\n")).await;
    let extra = [json!({ "name": "processingUnitBytesToRead", "valueInteger": 300 })];
    let r = result(&s, &start(&s, &[(&url, None, None)], &extra).await).await;
    assert_eq!(r.output[0].count, 30, "every line once, whatever the unit order");
    assert_eq!(s.emu.store().size().0, 30);
    let text = s.read_blob(&r.error[0].url).await;
    assert!(
        text.ends_with("\r\n") && !text.replace("\r\n", "").contains('\n'),
        "{text:?}"
    );
    let error_lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(error_lines.len(), 2, "the restarted unit wrote its error line twice");
    assert_eq!(error_lines[0], error_lines[1]);
    assert_eq!(r.error[0].count, 1);
}

#[tokio::test]
async fn s11_6_the_input_etag_is_compared_exactly() {
    let s = server_with_storage(Flavor::Ahds).await;
    let url = s
        .write_blob("import", "a.ndjson", &line("Patient", "p1", 1, T1, json!({})))
        .await;
    let client = fhir_emulator::blob::BlobClient::new(blob_config(s.azurite.as_ref().unwrap())).unwrap();
    let etag = client.get("import", "a.ndjson").await.unwrap().etag;
    assert!(etag.starts_with('"'), "{etag}");
    let unquoted = etag.trim_matches('"');
    let (status, _, text) = diagnostics(s.finish(&start(&s, &[(&url, None, Some(unquoted))], &[]).await).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        text,
        format!("import operation failed for reason: Input file Etag not match. {url}")
    );
    result(&s, &start(&s, &[(&url, None, Some(&etag))], &[]).await).await;
}

#[tokio::test]
async fn s11_7_s11_8_definitions_are_the_raw_request_values() {
    let s = server_with_storage(Flavor::Ahds).await;
    let missing = format!("{}/import/missing.ndjson", s.azurite.as_ref().unwrap().blob_endpoint());
    let id = |loc: &str| loc.rsplit('/').next().unwrap().to_string();
    let plain = start(&s, &[(&missing, None, None)], &[]).await;
    // The job fails (404); the same definition still maps to it.
    assert_eq!(s.finish(&plain).await.status(), 404);
    assert_eq!(id(&start(&s, &[(&missing, None, None)], &[]).await), id(&plain));
    // An explicit default container is another definition; so is an inputSource or another unit size.
    let container = [json!({ "name": "errorContainerName", "valueString": "fhirlogs" })];
    let source = [json!({ "name": "inputSource", "valueUri": "https://source.example.org/fhir" })];
    let unit = |v: &str| [json!({ "name": "processingUnitBytesToRead", "valueString": v })];
    let others = [
        start(&s, &[(&missing, None, None)], &container).await,
        start(&s, &[(&missing, None, None)], &source).await,
        start(&s, &[(&missing, None, None)], &unit("5000")).await,
        start(&s, &[(&missing, None, None)], &unit("6000")).await,
    ];
    let mut ids: Vec<String> = others.iter().map(|l| id(l)).collect();
    ids.push(id(&plain));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "{ids:?}");
    // §11.8: an unparsable size is ignored (the job runs with the default), and 0 means the default: both are
    // the definition without a size.
    assert_eq!(
        id(&start(&s, &[(&missing, None, None)], &unit("lots")).await),
        id(&plain)
    );
    assert_eq!(id(&start(&s, &[(&missing, None, None)], &unit("0")).await), id(&plain));
    let url = s
        .write_blob("import", "ok.ndjson", &line("Patient", "p1", 1, T1, json!({})))
        .await;
    let r = result(&s, &start(&s, &[(&url, None, None)], &unit("lots")).await).await;
    assert_eq!(r.output[0].count, 1);
    // inputSource does not change what is imported.
    let r = result(&s, &start(&s, &[(&url, None, None)], &source).await).await;
    assert_eq!(r.output[0].count, 1);
    assert_eq!(s.emu.store().size(), (1, 1));
}
