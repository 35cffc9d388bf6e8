//! Export status, manifest, files, window semantics, failures and cancel: items 14–26.

use std::time::Duration;

use fhir_emulator::wire::ExportManifest;
use fhir_emulator::{CancelMode, EmulatorConfig, Flavor, JobFailure};
use fhir_testkit::poll_until;
use serde_json::{Value, json};

use crate::support::{Server, deleted_line, diagnostics, line, load, server, server_with, server_with_storage};

const T1: &str = "2024-01-01T00:00:00.000Z";
const T2: &str = "2024-01-02T00:00:00.000Z";
const T3: &str = "2024-01-03T00:00:00.000Z";
const T4: &str = "2024-01-04T00:00:00.000Z";

/// p1: v1@T1, v2@T3.  p2: v1@T2, deleted v2@T4.  o1: v1 exactly at T3.
fn dataset() -> Vec<String> {
    vec![
        line("Patient", "p1", 1, T1, json!({ "active": false })),
        line("Patient", "p1", 2, T3, json!({ "active": true })),
        line("Patient", "p2", 1, T2, json!({})),
        deleted_line("Patient", "p2", 2, T4),
        line(
            "Observation",
            "o1",
            1,
            T3,
            json!({ "status": "final", "subject": { "reference": "Patient/p1" } }),
        ),
    ]
}

/// Every exported line of a manifest, as (type, id, versionId, deleted).
async fn exported(s: &Server, manifest: &Value) -> Vec<(String, String, String, bool)> {
    let mut rows = Vec::new();
    for item in manifest["output"].as_array().unwrap() {
        let text = s.read_blob(item["url"].as_str().unwrap()).await;
        assert_eq!(
            text.lines().count() as u64,
            item["count"].as_u64().unwrap(),
            "count = lines in the blob"
        );
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            let deleted = v["meta"]["extension"][0]["valueString"] == "soft-deleted";
            rows.push((
                v["resourceType"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
                v["meta"]["versionId"].as_str().unwrap().to_string(),
                deleted,
            ));
        }
    }
    rows.sort();
    rows
}

fn row(t: &str, id: &str, v: &str, deleted: bool) -> (String, String, String, bool) {
    (t.into(), id.into(), v.into(), deleted)
}

#[tokio::test]
async fn item_14_status_is_an_empty_202_while_running_and_through_the_settle_window() {
    let config = EmulatorConfig {
        settle: Duration::from_millis(600),
        job_latency: Duration::from_millis(300),
        ..EmulatorConfig::new(Flavor::Ahds)
    };
    let s = server_with(config, true).await;
    let location = s.export_ok("$export").await;
    let started = std::time::Instant::now();
    let first = s.http.get(&location).send().await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("retry-after").is_none() && first.headers().get("x-progress").is_none());
    assert!(first.text().await.unwrap().is_empty());
    let done = s.finish(&location).await;
    assert_eq!(done.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "latency + settle window both held the 202"
    );
}

#[tokio::test]
async fn item_15_16_17_manifest_shape_keys_order_times_and_outputs() {
    let s = server_with_storage(Flavor::Ahds).await;
    load(&s, &dataset());
    let path = "$export?_since=2024-01-01T00:00:00.000Z&includeAssociatedData=_history,_deleted";
    let location = s.export_ok(path).await;
    let resp = s.finish(&location).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&String> = manifest.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "transactionTime",
            "request",
            "requiresAccessToken",
            "output",
            "error",
            "issues"
        ]
    );
    let typed: ExportManifest = serde_json::from_str(&text).unwrap();
    assert!(!typed.requires_access_token && typed.error.is_empty() && typed.issues.is_empty());
    assert_eq!(typed.request, format!("{}/{path}", s.emu.base_url));
    assert!(typed.transaction_time.ends_with("+00:00"));
    let types: Vec<&str> = typed.output.iter().map(|o| o.resource_type.as_str()).collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(types, sorted, "ordinal sort by type");
    assert!(typed.output.iter().all(|o| o.count > 0));
    exported(&s, &manifest).await; // checks count == lines for every file

    let empty = s.export_manifest("$export?_since=2030-01-01T00:00:00Z").await;
    assert_eq!(empty["output"], json!([]));
}

#[tokio::test]
async fn item_18_blob_naming_with_and_without_container_and_rollover() {
    let config = EmulatorConfig {
        rollover_bytes: 1,
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    let s = server_with(config, true).await;
    load(&s, &dataset());
    let location = s.export_ok("$export?includeAssociatedData=_history").await;
    let g: u64 = location.rsplit('/').next().unwrap().parse().unwrap();
    let manifest: Value = s.finish(&location).await.json().await.unwrap();
    let urls: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["url"].as_str().unwrap())
        .collect();
    let prefix = format!("{}/export-{g}/", s.azurite.as_ref().unwrap().blob_endpoint());
    for url in &urls {
        let name = url
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{url} not in export-{g}"));
        let parts: Vec<&str> = name.trim_end_matches(".ndjson").split('-').collect();
        assert_eq!(parts.len(), 3, "{name}");
        assert_ne!(
            parts[1].parse::<u64>().unwrap(),
            g,
            "sub-job id differs from the export id"
        );
    }
    // Roll-over at 1 byte: every line in its own file, numbered from 1 within a sub-job.
    assert_eq!(urls.len(), 4);
    assert!(urls.iter().any(|u| u.ends_with("-2.ndjson")));

    let location = s.export_ok("$export?_container=mycontainer").await;
    let g: u64 = location.rsplit('/').next().unwrap().parse().unwrap();
    let manifest: Value = s.finish(&location).await.json().await.unwrap();
    let url = manifest["output"][0]["url"].as_str().unwrap();
    let rest = url
        .strip_prefix(&format!("{}/mycontainer/", s.azurite.as_ref().unwrap().blob_endpoint()))
        .unwrap();
    let (folder, _) = rest.split_once('/').unwrap();
    let (stamp, id) = folder.split_once('-').unwrap();
    assert_eq!(id, g.to_string());
    assert_eq!(stamp.len(), 15, "yyyyMMddTHHmmss: {stamp}");
}

#[tokio::test]
async fn item_19_files_hold_the_stored_json_with_each_versions_meta() {
    let s = server_with_storage(Flavor::Ahds).await;
    load(&s, &dataset());
    let manifest = s
        .export_manifest("$export?_type=Patient&includeAssociatedData=_history")
        .await;
    let mut lines = Vec::new();
    for item in manifest["output"].as_array().unwrap() {
        lines.extend(
            s.read_blob(item["url"].as_str().unwrap())
                .await
                .lines()
                .map(str::to_string),
        );
    }
    let stored = s.emu.store().resource("Patient", "p1").unwrap();
    for v in stored.versions() {
        assert!(
            lines.contains(&v.body.to_string()),
            "version {} exported byte for byte",
            v.version_id
        );
    }
}

#[tokio::test]
async fn item_20_ahds_parallel_is_half_open_with_a_snapshot_at_till() {
    let s = server_with_storage(Flavor::Ahds).await;
    load(&s, &dataset());
    // [T1, T3): p1 as it was before T3 (v1), p2 v1; o1 sits exactly on T3 and is excluded.
    let manifest = s.export_manifest(&format!("$export?_since={T1}&_till={T3}")).await;
    assert_eq!(
        exported(&s, &manifest).await,
        [row("Patient", "p1", "1", false), row("Patient", "p2", "1", false)]
    );
    // The next window [T3, T4) picks up the boundary: p1 v2 and o1.
    let manifest = s.export_manifest(&format!("$export?_since={T3}&_till={T4}")).await;
    assert_eq!(
        exported(&s, &manifest).await,
        [row("Observation", "o1", "1", false), row("Patient", "p1", "2", false)]
    );
}

#[tokio::test]
async fn item_21_aapi_and_non_parallel_ahds_are_inclusive_with_latest_versions_only() {
    for (flavor, extra) in [(Flavor::Aapi, ""), (Flavor::Ahds, "&_isParallel=false")] {
        let s = server_with_storage(flavor).await;
        load(&s, &dataset());
        // [T1, T3] inclusive: p1's latest (v2@T3) and o1@T3; p2's latest is a delete marker (not requested).
        let manifest = s
            .export_manifest(&format!("$export?_since={T1}&_till={T3}{extra}"))
            .await;
        assert_eq!(
            exported(&s, &manifest).await,
            [row("Observation", "o1", "1", false), row("Patient", "p1", "2", false)],
            "{flavor:?}"
        );
    }
}

#[tokio::test]
async fn item_22_23_history_and_deleted_rows() {
    let s = server_with_storage(Flavor::Ahds).await;
    load(&s, &dataset());
    let all = s
        .export_manifest("$export?includeAssociatedData=_history,_deleted")
        .await;
    assert_eq!(
        exported(&s, &all).await,
        [
            row("Observation", "o1", "1", false),
            row("Patient", "p1", "1", false),
            row("Patient", "p1", "2", false),
            row("Patient", "p2", "1", false),
            row("Patient", "p2", "2", true),
        ]
    );
    let history_only = s.export_manifest("$export?includeAssociatedData=_history").await;
    assert!(
        exported(&s, &history_only).await.iter().all(|r| !r.3),
        "_history alone never emits deleted rows"
    );
    // Item 23: the deleted row's exact shape.
    let text = s
        .read_blob(
            all["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|o| o["type"] == "Patient")
                .unwrap()["url"]
                .as_str()
                .unwrap(),
        )
        .await;
    let mut deleted_text = None;
    for item in all["output"].as_array().unwrap() {
        for l in s.read_blob(item["url"].as_str().unwrap()).await.lines() {
            if l.contains("soft-deleted") {
                deleted_text = Some(l.to_string());
            }
        }
    }
    let _ = text;
    let deleted: Value = serde_json::from_str(&deleted_text.expect("a deleted row")).unwrap();
    assert_eq!(
        deleted,
        json!({ "resourceType": "Patient", "id": "p2", "meta": {
            "extension": [{ "url": "http://azurehealthcareapis.com/data-extensions/deleted-state", "valueString": "soft-deleted" }],
            "versionId": "2", "lastUpdated": "2024-01-04T00:00:00+00:00" } })
    );
}

#[tokio::test]
async fn item_24_failed_jobs_report_their_status_with_a_processing_outcome() {
    let s = server_with_storage(Flavor::Aapi).await;
    for (status, reason) in [
        (429, "Request rate is large."),
        (
            413,
            "Timespan in export request contains too much data to export in a single request. Please try reducing the time range and try again.",
        ),
    ] {
        s.emu.set_faults(fhir_emulator::Faults {
            export_failure: Some(JobFailure {
                status,
                reason: reason.into(),
                count: Some(1),
            }),
            ..Default::default()
        });
        let location = s.export_ok("$export").await;
        let resp = s.finish(&location).await;
        assert!(
            resp.headers().get("retry-after").is_none(),
            "a failed job's 429 carries no Retry-After"
        );
        let (got, code, text) = diagnostics(resp).await;
        assert_eq!((got, code.as_str()), (status, "processing"));
        assert_eq!(text, format!("export operation failed for reason: {reason}"));
    }
    // Storage that does not exist fails the job (a server without an export account here).
    let no_storage = server(Flavor::Ahds).await;
    let location = no_storage.export_ok("$export").await;
    let (status, _, text) = diagnostics(no_storage.finish(&location).await).await;
    assert_eq!(
        (status, text.as_str()),
        (
            404,
            "export operation failed for reason: The storage account not found."
        )
    );
    // Storage that cannot be reached fails the job with 404 as well.
    let mut config = EmulatorConfig::quick(Flavor::Ahds);
    config.blob = Some(fhir_emulator::blob::BlobConfig {
        endpoint: url::Url::parse(&format!(
            "http://127.0.0.1:{}/devstoreaccount1",
            fhir_testkit::free_port().unwrap()
        ))
        .unwrap(),
        account: fhir_testkit::DEV_ACCOUNT.into(),
        key: fhir_testkit::DEV_KEY.into(),
    });
    let unreachable = server_with(config, false).await;
    let location = unreachable.export_ok("$export").await;
    let (status, _, text) = diagnostics(unreachable.finish(&location).await).await;
    assert_eq!(
        (status, text.as_str()),
        (
            404,
            "export operation failed for reason: The storage account not found."
        )
    );
    // A missing Group fails with 400.
    let location = s.export_ok("Group/nope/$export").await;
    let (status, _, text) = diagnostics(s.finish(&location).await).await;
    assert_eq!(status, 400);
    assert!(
        text.ends_with("Resource type 'Group' with id 'nope' couldn't be found."),
        "{text}"
    );
}

#[tokio::test]
async fn item_25_unknown_job_ids_are_404() {
    let s = server(Flavor::Ahds).await;
    for id in ["999999", "abc"] {
        let (status, code, text) = diagnostics(s.get(&format!("_operations/export/{id}")).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (404, "not-found"));
        assert_eq!(text, format!("The requested job \"{id}\" was not found."));
    }
}

#[tokio::test]
async fn item_26_cancel_bulkdata2_and_legacy() {
    let s = server_with_storage(Flavor::Ahds).await;
    let location = s.export_ok("$export").await;
    s.finish(&location).await;
    assert_eq!(
        s.http.delete(&location).send().await.unwrap().status(),
        202,
        "even a finished job"
    );
    assert_eq!(s.http.get(&location).send().await.unwrap().status(), 404);
    assert_eq!(s.http.delete(&location).send().await.unwrap().status(), 404);

    let legacy = server_with(
        EmulatorConfig {
            cancel_mode: CancelMode::Legacy,
            ..EmulatorConfig::quick(Flavor::Ahds)
        },
        true,
    )
    .await;
    let location = legacy.export_ok("$export").await;
    legacy.finish(&location).await;
    let (status, code, _) = diagnostics(legacy.http.delete(&location).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (409, "processing"));
    // A running legacy job cancels with 202 and then reports its partial manifest with 200.
    let slow = server_with(
        EmulatorConfig {
            cancel_mode: CancelMode::Legacy,
            job_latency: Duration::from_secs(30),
            ..EmulatorConfig::quick(Flavor::Ahds)
        },
        true,
    )
    .await;
    let location = slow.export_ok("$export").await;
    assert_eq!(slow.http.delete(&location).send().await.unwrap().status(), 202);
    let resp = slow.http.get(&location).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["output"], json!([]));
}

#[tokio::test]
async fn e3_export_status_flap_answers_202_once_after_the_first_200() {
    let s = server_with_storage(Flavor::Ahds).await;
    s.emu.set_faults(fhir_emulator::Faults {
        export_status_flap: true,
        ..Default::default()
    });
    let location = s.export_ok("$export").await;
    assert_eq!(s.finish(&location).await.status(), 200);
    assert_eq!(s.http.get(&location).send().await.unwrap().status(), 202, "the flap");
    let settled = poll_until("200 again", Duration::from_secs(5), Duration::from_millis(10), || {
        let req = s.http.get(&location).send();
        async move { req.await.ok().filter(|r| r.status() == 200) }
    })
    .await;
    assert!(settled.is_ok());
}

#[tokio::test]
async fn deidentified_export_applies_the_truncation_rule_and_fails_without_its_config() {
    let s = server_with_storage(Flavor::Ahds).await;
    let huge = r#"{"resourceType":"Observation","id":"big","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.000Z"},"status":"final","valueQuantity":{"value":1234567890123456789012.5,"unit":"mg"}}"#;
    load(&s, &[huge.to_string()]);
    let config = fhir_emulator::TRUNCATE_QUANTITIES;
    s.write_blob("anonymization", "DemoTruncate.json", config).await;
    let manifest = s
        .export_manifest("$export?_container=deid&_anonymizationConfig=DemoTruncate.json")
        .await;
    let text = s.read_blob(manifest["output"][0]["url"].as_str().unwrap()).await;
    assert!(text.contains(r#""value":123456789012345678,"#), "{text}");

    let location = s
        .export_ok("$export?_container=deid&_anonymizationConfig=missing.json")
        .await;
    let (status, _, text) = diagnostics(s.finish(&location).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        text,
        "export operation failed for reason: Anonymization configuration 'missing.json' not found."
    );
}

#[tokio::test]
async fn patient_and_group_exports_cover_the_compartment() {
    let s = server_with_storage(Flavor::Ahds).await;
    load(&s, &dataset());
    load(
        &s,
        &[
            line("Patient", "p9", 1, T1, json!({})),
            line(
                "Observation",
                "o9",
                1,
                T1,
                json!({ "subject": { "reference": "Patient/p9" } }),
            ),
            line(
                "Group",
                "g1",
                1,
                T1,
                json!({ "type": "person", "actual": true, "member": [{ "entity": { "reference": "Patient/p9" } }] }),
            ),
        ],
    );
    let group = s.export_manifest("Group/g1/$export").await;
    assert_eq!(
        exported(&s, &group).await,
        [row("Observation", "o9", "1", false), row("Patient", "p9", "1", false)]
    );
    let patients = s.export_manifest("Patient/$export").await;
    let rows = exported(&s, &patients).await;
    assert!(rows.contains(&row("Observation", "o1", "1", false)) && rows.contains(&row("Patient", "p9", "1", false)));
    assert!(!rows.iter().any(|r| r.0 == "Group"), "the Group itself is not exported");
}
