//! The seeding path over HTTP (`POST /_admin/load`, what `fhir-emulator seed` calls) and the live writer.

use std::time::Duration;

use fhir_emulator::Flavor;
use fhir_emulator::seed::{SeedParams, generate};
use fhir_emulator::writer::{WriterParams, run};
use serde_json::Value;

use crate::support::server;

#[tokio::test]
async fn admin_load_keeps_meta_and_accepts_search_parameters() {
    let s = server(Flavor::Aapi).await;
    let lines = generate(&SeedParams {
        resources: 300,
        end: Some(1_700_000_000_000),
        ..SeedParams::default()
    });
    let resp = s
        .http
        .post(s.url("_admin/load"))
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["loaded"].as_u64().unwrap() as usize, lines.len(), "{report}");
    assert_eq!(report["errors"], serde_json::json!([]));
    // Loading the same lines again changes nothing.
    let again: Value = s
        .http
        .post(s.url("_admin/load"))
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["unchanged"].as_u64().unwrap() as usize, lines.len());
    let sp: Value = s
        .get("SearchParameter?_summary=count")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sp["total"], 3);
    let stats: Value = s.get("_admin/stats").send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["versions"].as_u64().unwrap() as usize, lines.len());
}

#[tokio::test]
async fn the_writer_creates_updates_and_deletes_and_reports_hard_deletes() {
    let s = server(Flavor::Aapi).await;
    let params = WriterParams {
        target: s.emu.base_url.clone(),
        rate: 400.0,
        seed: 9,
        types: vec![],
        token: None,
        hard_deletes: true,
    };
    let report = run(params, tokio::time::sleep(Duration::from_millis(1500))).await;
    assert_eq!(report.failed, 0);
    assert!(
        report.created > 50 && report.updated > 20 && report.soft_deleted > 0,
        "{report:?}"
    );
    for id in &report.hard_deleted {
        assert_eq!(
            s.get(&format!("{id}/_history")).send().await.unwrap().status(),
            404,
            "{id} is gone with its history"
        );
    }
    let (resources, _) = s.emu.store().size();
    assert_eq!(resources, report.created - report.hard_deleted.len());
}
