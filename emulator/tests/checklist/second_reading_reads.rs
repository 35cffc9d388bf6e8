//! Sources as a second reading of the server's source has them (reference §11.2, §11.9, §11.10, §11.12):
//! crowded milliseconds, inclusive `_till`, late visibility, `_history` counting and timestamp text.

use std::time::Duration;

use fhir_emulator::seed::{SeedParams, generate};
use fhir_emulator::{Faults, Flavor};
use serde_json::{Value, json};

use crate::support::{Server, line, load, server, server_with_storage};

/// Every exported (id, lastUpdated text) of a manifest.
async fn exported(s: &Server, manifest: &Value) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for item in manifest["output"].as_array().unwrap() {
        for l in s.read_blob(item["url"].as_str().unwrap()).await.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            rows.push((
                v["id"].as_str().unwrap().to_string(),
                v["meta"]["lastUpdated"].as_str().unwrap().to_string(),
            ));
        }
    }
    rows.sort();
    rows
}

async fn history(s: &Server, query: &str) -> Value {
    s.get(&format!("_history?{query}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn s11_2_an_aapi_source_keeps_crowded_milliseconds_at_tick_precision() {
    let s = server(Flavor::Aapi).await;
    let params = SeedParams {
        resources: 0,
        hostile: false,
        search_parameters: 0,
        crowded_milliseconds: 2,
        end: Some(1_700_000_000_000),
        ..SeedParams::default()
    };
    load(&s, &generate(&params));
    let crowded = s.emu.store().resource("Basic", "crowded-0").unwrap();
    let v: Vec<_> = crowded
        .versions()
        .iter()
        .map(|v| (v.version_id, v.last_updated, v.sub_ms))
        .collect();
    assert_eq!(v.len(), 10);
    assert_eq!(v[8].1, v[9].1, "versions 9 and 10 share a millisecond");
    assert!(v[8].2 < v[9].2, "a fraction of a millisecond apart");
    let text: Value = serde_json::from_str(&crowded.versions()[9].body).unwrap();
    assert!(text["meta"]["lastUpdated"].as_str().unwrap().contains("."), "{text}");
    let digits = text["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .split('+')
        .next()
        .unwrap()
        .len();
    assert_eq!(digits, 7, "{text}");
    // Ordinary writes on aapi may share a millisecond too.
    let mut stamps = Vec::new();
    for i in 0..20 {
        let body = json!({ "resourceType": "Patient", "id": format!("w{i}") });
        let r = s
            .http
            .put(s.url(&format!("Patient/w{i}")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let v: Value = r.json().await.unwrap();
        stamps.push(v["meta"]["lastUpdated"].as_str().unwrap().to_string());
    }
    let mut sorted = stamps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "every write has its own tick");
}

#[tokio::test]
async fn s11_9_inclusive_till_runs_to_the_end_of_its_precision_and_the_sql_fallback() {
    let aapi = server_with_storage(Flavor::Aapi).await;
    load(
        &aapi,
        &[
            line("Patient", "sub", 1, "2024-01-01T00:00:00.0005Z", json!({})),
            line("Patient", "next", 1, "2024-01-01T00:00:00.001Z", json!({})),
        ],
    );
    let m = aapi.export_manifest("$export?_till=2024-01-01T00:00:00.000Z").await;
    let ids: Vec<String> = exported(&aapi, &m).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, ["sub"], "the whole millisecond, sub-millisecond values included");

    let ahds = server_with_storage(Flavor::Ahds).await;
    load(
        &ahds,
        &[line("Patient", "edge", 1, "2024-01-01T00:00:00.001Z", json!({}))],
    );
    let q = "$export?_isParallel=true&_till=2024-01-01T00:00:00.001Z";
    assert!(
        exported(&ahds, &ahds.export_manifest(q).await).await.is_empty(),
        "[since, till)"
    );
    ahds.emu.set_faults(Faults {
        export_sql_fallback: true,
        ..Default::default()
    });
    let rows = exported(&ahds, &ahds.export_manifest(q).await).await;
    assert_eq!(rows.len(), 1, "the fallback path includes the millisecond of _till");
}

#[tokio::test]
async fn s11_10_a_late_commit_becomes_visible_after_its_window_was_exported() {
    let s = server_with_storage(Flavor::Ahds).await;
    let resp: Value = s
        .http
        .post(s.url("_admin/late"))
        .json(&json!({ "resource": { "resourceType": "Patient", "id": "late" }, "ageMs": 2000, "hiddenMs": 1500 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last_updated = resp["lastUpdated"].as_str().unwrap().to_string();
    // The window covering its lastUpdated is exported (and searched) while it is not yet visible.
    let m = s.export_manifest("$export?_type=Patient").await;
    assert!(exported(&s, &m).await.is_empty());
    assert_eq!(history(&s, "_summary=count").await["total"], 0);
    assert_eq!(s.get("Patient/late").send().await.unwrap().status(), 404);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let rows = exported(&s, &s.export_manifest("$export?_type=Patient").await).await;
    assert_eq!(
        rows,
        [("late".to_string(), last_updated)],
        "visible now, with a lastUpdated in the past"
    );
}

#[tokio::test]
async fn s11_12_history_count_and_timestamp_text() {
    let s = server(Flavor::Ahds).await;
    load(
        &s,
        &[
            line("Patient", "a", 1, "2024-01-01T00:00:00.100Z", json!({})),
            line("Patient", "b", 1, "2024-01-01T00:00:01.000Z", json!({})),
        ],
    );
    let counted = history(&s, "_summary=count").await;
    assert_eq!(counted["total"], 2);
    assert!(counted["entry"].is_null());
    let paged = history(&s, "_summary=count&_count=1").await;
    assert_eq!(
        paged["entry"].as_array().map(Vec::len),
        Some(1),
        "_count > 0 wins: {paged}"
    );
    assert_eq!(history(&s, "_count=0").await["total"], 2);
    let a: Value = s.get("Patient/a").send().await.unwrap().json().await.unwrap();
    assert_eq!(
        a["meta"]["lastUpdated"], "2024-01-01T00:00:00.1+00:00",
        "SQL trims trailing zeros"
    );
    let b: Value = s.get("Patient/b").send().await.unwrap().json().await.unwrap();
    assert_eq!(b["meta"]["lastUpdated"], "2024-01-01T00:00:01+00:00");
    let aapi = server(Flavor::Aapi).await;
    load(
        &aapi,
        &[line("Patient", "c", 1, "2024-01-01T00:00:00.1234560Z", json!({}))],
    );
    let c: Value = aapi.get("Patient/c").send().await.unwrap().json().await.unwrap();
    assert_eq!(
        c["meta"]["lastUpdated"], "2024-01-01T00:00:00.123456+00:00",
        "Cosmos: up to 7 digits"
    );
}
