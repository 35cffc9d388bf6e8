//! Import status, results, error files, failures, cancel (items 34–42) and the incremental semantics over HTTP
//! (items 43–53 are covered rule by rule in the store's unit tests; these prove them end to end).

use std::time::Duration;

use fhir_emulator::wire::ImportResult;
use fhir_emulator::{EmulatorConfig, Flavor, JobFailure};
use serde_json::{Value, json};

use crate::import_kickoff::parameters;
use crate::support::{Server, deleted_line, diagnostics, line, server_with, server_with_storage};

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

#[tokio::test]
async fn item_34_35_36_status_codes_result_shape_and_grouping() {
    let s = server_with_storage(Flavor::Ahds).await;
    let lines: Vec<String> = (0..30)
        .map(|i| line("Patient", &format!("p{i}"), 1, T1, json!({ "gender": "other" })))
        .collect();
    let url = s
        .write_blob("import", "patients.ndjson", &(lines.join("\n") + "\n"))
        .await;
    // Small units: several per file.
    let location = start(
        &s,
        &[(&url, Some("Patient"), None)],
        &[json!({ "name": "processingUnitBytesToRead", "valueInteger": 1000 })],
    )
    .await;
    let resp = s.finish(&location).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        raw.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["transactionTime", "request", "output", "error"]
    );
    let r: ImportResult = serde_json::from_str(&text).unwrap();
    assert_eq!(r.output.len(), 1, "one entry per input by default");
    assert_eq!(
        (r.output[0].count, r.output[0].resource_type.as_deref()),
        (30, Some("Patient"))
    );
    assert!(r.error.is_empty());
    let detailed: ImportResult = s
        .http
        .get(format!("{location}?_details=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(detailed.output.len() > 1, "one entry per unit with _details");
    assert_eq!(detailed.output.iter().map(|o| o.count).sum::<u64>(), 30);
    // An input without a type echoes null.
    let url2 = s.write_blob("import", "untyped.ndjson", &lines[0]).await;
    let r = result(&s, &start(&s, &[(&url2, None, None)], &[]).await).await;
    assert_eq!(r.output[0].resource_type, None);
}

#[tokio::test]
async fn item_34_a_running_job_answers_202_first_empty_then_with_a_partial_result() {
    let config = EmulatorConfig {
        per_resource_latency: Duration::from_millis(150),
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    let s = server_with(config, true).await;
    let lines: Vec<String> = (0..4)
        .map(|i| line("Patient", &format!("p{i}"), 1, T1, json!({})))
        .collect();
    let a = s.write_blob("import", "a.ndjson", &lines[..2].join("\n")).await;
    let b = s.write_blob("import", "b.ndjson", &lines[2..].join("\n")).await;
    let location = start(&s, &[(&a, None, None), (&b, None, None)], &[]).await;
    let partial = fhir_testkit::poll_until(
        "a partial 202 body",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            let req = s.http.get(&location).send();
            async move {
                let r = req.await.ok()?;
                if r.status() != 202 {
                    return None;
                }
                let text = r.text().await.ok()?;
                (!text.is_empty()).then_some(text)
            }
        },
    )
    .await
    .unwrap();
    let partial: ImportResult = serde_json::from_str(&partial).unwrap();
    assert!(partial.output.len() < 2, "some units still running");
    assert_eq!(s.finish(&location).await.status(), 200);
}

#[tokio::test]
async fn item_36_37_error_files_per_unit_with_the_servers_line_format() {
    let s = server_with_storage(Flavor::Ahds).await;
    let content = [
        line("Patient", "ok1", 1, T1, json!({})),
        "{not json".to_string(),
        line("Observation", "wrongtype", 1, T1, json!({})),
        line("Patient", "bad id!", 1, T1, json!({})),
        line("Patient", "ok1", 1, T1, json!({ "changed": true })),
    ]
    .join("\r\n");
    let url = s.write_blob("import", "mixed.ndjson", &content).await;
    let location = start(&s, &[(&url, Some("Patient"), None)], &[]).await;
    let g = location.rsplit('/').next().unwrap().to_string();
    let r = result(&s, &location).await;
    assert_eq!(r.output[0].count, 1);
    assert_eq!(r.error.len(), 1);
    assert_eq!(r.error[0].count, 4);
    let error_url = &r.error[0].url;
    let prefix = format!("{}/fhirlogs/Patient{g}_", s.azurite.as_ref().unwrap().blob_endpoint());
    assert!(
        error_url.starts_with(&prefix) && error_url.ends_with(".ndjson"),
        "{error_url}"
    );
    let errors = s.read_blob(error_url).await;
    let lines: Vec<Value> = errors.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        assert_eq!(l["resourceType"], "OperationOutcome");
        assert!(
            l["issue"][0].get("code").is_none(),
            "no issue.code, as on the real server"
        );
        assert_eq!(l["issue"][0]["severity"], "error");
    }
    let texts: Vec<&str> = lines
        .iter()
        .map(|l| l["issue"][0]["details"]["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"Resource type not match."));
    assert!(texts.iter().any(|t| t.starts_with("Invalid resource id: 'bad id!'")));
    // Same id and lastUpdated as line 1 in the same batch: an in-batch duplicate (the first copy wins).
    assert!(
        texts.contains(&"Failed to import duplicate resource, resource id: ok1, line: 5"),
        "{texts:?}"
    );
    assert_eq!(
        lines[0]["issue"][0]["diagnostics"],
        "Failed to process resource at line: 2 with stream start offset: 0"
    );
}

#[tokio::test]
async fn item_38_units_split_by_bytes_and_restart_line_numbers() {
    let s = server_with_storage(Flavor::Ahds).await;
    let mut lines: Vec<String> = (0..20)
        .map(|i| line("Patient", &format!("p{i}"), 1, T1, json!({})))
        .collect();
    lines.push(String::new()); // an empty line is skipped, not counted
    lines.push("{broken".into());
    let content = lines.join("\n");
    let url = s.write_blob("import", "units.ndjson", &content).await;
    let unit = 700;
    let location = start(
        &s,
        &[(&url, None, None)],
        &[json!({ "name": "processingUnitBytesToRead", "valueString": unit.to_string() })],
    )
    .await;
    let r = result(&s, &location).await;
    assert_eq!(r.output[0].count, 20);
    let errors = s.read_blob(&r.error[0].url).await;
    let diag: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    let text = diag["issue"][0]["diagnostics"].as_str().unwrap();
    let offset: usize = text.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(offset % unit, 0, "{text}");
    assert!(offset > 0, "the broken line sits in a later unit: {text}");
    let line_no: usize = text
        .split("line: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(line_no < 20, "line numbers restart per unit: {text}");
}

#[tokio::test]
async fn item_39_etag_mismatch_and_missing_blob_fail_the_job() {
    let s = server_with_storage(Flavor::Ahds).await;
    let url = s
        .write_blob("import", "a.ndjson", &line("Patient", "p1", 1, T1, json!({})))
        .await;
    let location = start(&s, &[(&url, None, Some("\"0xDEADBEEF\""))], &[]).await;
    let (status, code, text) = diagnostics(s.finish(&location).await).await;
    assert_eq!((status, code.as_str()), (400, "processing"));
    assert_eq!(
        text,
        format!("import operation failed for reason: Input file Etag not match. {url}")
    );
    let missing = format!("{}/import/missing.ndjson", s.azurite.as_ref().unwrap().blob_endpoint());
    let location = start(&s, &[(&missing, None, None)], &[]).await;
    let (status, _, text) = diagnostics(s.finish(&location).await).await;
    assert_eq!(status, 404);
    assert!(text.starts_with("import operation failed for reason: "), "{text}");
}

#[tokio::test]
async fn item_40_unit_failures_sink_the_import_but_keep_committed_batches() {
    let s = server_with_storage(Flavor::Ahds).await;
    let mut lines: Vec<String> = (0..1000)
        .map(|i| line("Patient", &format!("p{i}"), 1, T1, json!({})))
        .collect();
    lines.push(r#"{"resourceType":"Observation","id":"huge","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.001Z"},"valueQuantity":{"value":1234567890123456789012.5}}"#.into());
    let url = s.write_blob("import", "overflow.ndjson", &lines.join("\n")).await;
    let location = start(&s, &[(&url, None, None)], &[]).await;
    let (status, _, text) = diagnostics(s.finish(&location).await).await;
    assert_eq!(status, 400);
    assert!(
        text.starts_with("import operation failed for reason: ") && text.ends_with(&format!(" ErrorFile: {url}")),
        "{text}"
    );
    assert_eq!(s.emu.store().size().0, 1000, "the first batch of 1,000 stays committed");

    // A 500 unit failure hides its message.
    s.emu.set_faults(fhir_emulator::Faults {
        import_unit_failure: Some(JobFailure {
            status: 500,
            reason: "secret detail".into(),
            count: Some(1),
        }),
        ..Default::default()
    });
    let url = s
        .write_blob("import", "b.ndjson", &line("Patient", "x", 1, T1, json!({})))
        .await;
    let location = start(&s, &[(&url, None, None)], &[]).await;
    let (status, _, text) = diagnostics(s.finish(&location).await).await;
    assert_eq!(
        (status, text),
        (
            500,
            format!("import operation failed for reason: InternalServerError ErrorFile: {url}")
        )
    );
}

#[tokio::test]
async fn item_41_cancel() {
    let config = EmulatorConfig {
        job_latency: Duration::from_secs(30),
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    let slow = server_with(config, true).await;
    let url = slow
        .write_blob("import", "a.ndjson", &line("Patient", "p1", 1, T1, json!({})))
        .await;
    let location = start(&slow, &[(&url, None, None)], &[]).await;
    assert_eq!(slow.http.delete(&location).send().await.unwrap().status(), 202);
    assert_eq!(
        slow.http.delete(&location).send().await.unwrap().status(),
        202,
        "again while unfinished"
    );
    let (status, _, text) = diagnostics(slow.http.get(&location).send().await.unwrap()).await;
    assert_eq!(
        (status, text.as_str()),
        (400, "User requested cancellation of operation.")
    );

    let s = server_with_storage(Flavor::Ahds).await;
    let url = s
        .write_blob("import", "a.ndjson", &line("Patient", "p1", 1, T1, json!({})))
        .await;
    let location = start(&s, &[(&url, None, None)], &[]).await;
    result(&s, &location).await;
    let (status, code, text) = diagnostics(s.http.delete(&location).send().await.unwrap()).await;
    assert_eq!(
        (status, code.as_str(), text.as_str()),
        (409, "processing", "Import operation has already completed")
    );
    assert_eq!(
        s.http.get(&location).send().await.unwrap().status(),
        200,
        "still 200 after a refused cancel"
    );
    let (status, _, text) = diagnostics(s.get("_operations/import/424242").send().await.unwrap()).await;
    assert_eq!(
        (status, text.as_str()),
        (404, "The requested import job \"424242\" was not found.")
    );
    assert_eq!(
        s.http
            .delete(s.url("_operations/import/424242"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn item_42_import_status_can_be_delayed() {
    let s = server_with_storage(Flavor::Ahds).await;
    s.emu.set_faults(fhir_emulator::Faults {
        import_status_delay_ms: 400,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    s.get("_operations/import/1").send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn items_43_to_53_end_to_end_versions_history_deletes_and_reimport() {
    let s = server_with_storage(Flavor::Ahds).await;
    let content = [
        line("Patient", "p1", 1, T1, json!({ "active": false })),
        line("Patient", "p1", 2, T2, json!({ "active": true })),
        line("Patient", "p2", 1, T1, json!({})),
        deleted_line("Patient", "p2", 2, T2),
    ]
    .join("\n");
    let url = s.write_blob("import", "v.ndjson", &content).await;
    let r = result(&s, &start(&s, &[(&url, Some("Patient"), None)], &[]).await).await;
    assert_eq!(r.output[0].count, 4);
    // Item 43: read and vread return the file's ids, versions and times.
    let p1: Value = s.get("Patient/p1").send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (p1["meta"]["versionId"].as_str(), p1["meta"]["lastUpdated"].as_str()),
        (Some("2"), Some("2024-01-01T00:00:00.002+00:00"))
    );
    let v1: Value = s
        .get("Patient/p1/_history/1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v1["active"], false);
    // Item 51: the deleted current version is 410, left out of search, and a DELETE in history.
    assert_eq!(s.get("Patient/p2").send().await.unwrap().status(), 410);
    let count: Value = s
        .get("Patient?_summary=count")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["total"], 1);
    let history: Value = s.get("Patient/p2/_history").send().await.unwrap().json().await.unwrap();
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert_eq!(history["entry"][0]["response"]["status"], "204 NoContent");
    // Item 47: a second import of the same file (new job through an etag) changes nothing.
    let before = s.emu.store().size();
    let location = start(&s, &[(&url, Some("Patient"), Some("\"again\""))], &[]).await;
    let again = s.finish(&location).await;
    // The etag does not match the blob's, which proves the check; re-register without it under a new name.
    assert_eq!(again.status(), 400);
    let url2 = s.write_blob("import", "v-copy.ndjson", &content).await;
    let r = result(&s, &start(&s, &[(&url2, Some("Patient"), None)], &[]).await).await;
    assert_eq!((r.output[0].count, r.error.len()), (4, 0));
    assert_eq!(s.emu.store().size(), before);
}
