//! Exact windows whatever the source makes of `_till` (issue 16 item 2, issue 24 item 1): with versions on
//! every window boundary, a crowd on one boundary millisecond and a run of occupied milliseconds no empty one
//! is near, every version is exported and imported exactly once, each window's size is exactly its range's,
//! and a specific run stops before `AZURE_EndDate`. On Azure API for FHIR with the reading set, on the same
//! emulator reached on a loopback address under `auto` (the case that double-exported boundaries), and on an
//! AHDS source whose export takes the inclusive fallback path (reference §11.9).

use std::collections::HashMap;

use chrono::{DurationRound, TimeDelta, Utc};
use fhir_emulator::seed::load_into;
use fhir_migration_tool::state::Job;
use serde_json::{Value, json};

use crate::migration::{round, stack_from};
use fhir_emulator::Flavor;
use fhir_testkit::Azurite;

fn at(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn line(resource_type: &str, id: &str, t: chrono::DateTime<Utc>) -> String {
    json!({ "resourceType": resource_type, "id": id, "meta": { "versionId": "1", "lastUpdated": at(t) } }).to_string()
}

#[tokio::test]
async fn every_version_once_with_exact_sizes_and_nothing_at_the_end_date() {
    exact_windows(Flavor::Aapi, "true", false).await;
}

#[tokio::test]
async fn an_azure_api_for_fhir_source_on_a_loopback_address_under_auto_is_exact() {
    exact_windows(Flavor::Aapi, "auto", false).await;
}

#[tokio::test]
async fn an_ahds_source_on_its_inclusive_fallback_path_is_exact() {
    exact_windows(Flavor::Ahds, "auto", true).await;
}

async fn exact_windows(source_flavor: Flavor, reading: &str, sql_fallback: bool) {
    let day = TimeDelta::days(1);
    let t0 = (Utc::now() - TimeDelta::days(10))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap();
    let end = t0 + day * 6;
    let fmt = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let stack = stack_from(
        Azurite::start().await.unwrap(),
        source_flavor,
        &[
            ("AZURE_ExportTillInclusive", reading),
            ("AZURE_StartDate", &fmt(t0)),
            ("AZURE_SpecificRun", "true"),
            ("AZURE_EndDate", &fmt(end)),
            ("AZURE_ExportChunkTime", "1"),
            ("AZURE_ChunkLimit", "100000"),
            ("AZURE_ExportConfirmSeconds", "0"),
        ],
    )
    .await;
    if sql_fallback {
        stack.source.set_faults(fhir_emulator::faults::Faults {
            export_sql_fallback: true,
            ..Default::default()
        });
    }
    let mut lines = Vec::new();
    for k in 0..=6 {
        // On each boundary (the last one exactly at the end date), and a few inside each window.
        lines.push(line("Patient", &format!("boundary-{k}"), t0 + day * k));
        for j in 0..3 {
            lines.push(line(
                "Patient",
                &format!("inside-{k}-{j}"),
                t0 + day * k + TimeDelta::hours(5 + j),
            ));
        }
    }
    for i in 0..30 {
        lines.push(line("Observation", &format!("crowd-{i}"), t0 + day * 2));
    }
    // Windows end a millisecond before each boundary version (the nearest empty one); before the third, every
    // millisecond for more than a second is occupied, so the manifest's count must settle the reading.
    const DENSE: i64 = 1_010;
    for i in 0..DENSE {
        lines.push(line(
            "Observation",
            &format!("dense-{i}"),
            t0 + day * 3 - TimeDelta::milliseconds(DENSE - i),
        ));
    }
    let (_, errors) = load_into(stack.source.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");

    for _ in 0..200 {
        round(&stack.engine).await;
        let status = stack.engine.status(Utc::now()).await.unwrap();
        if status.windows_in_flight.is_empty() && status.migrated_through.as_deref() == Some(at(end).as_str()) {
            break;
        }
    }
    let status = stack.engine.status(Utc::now()).await.unwrap();
    assert_eq!(status.migrated_through.as_deref(), Some(at(end).as_str()), "{status:?}");

    // What the source holds before the end date, by version.
    let source: Vec<(String, String, chrono::DateTime<Utc>)> = stack
        .source
        .store()
        .snapshot()
        .into_iter()
        .filter(|(k, _)| &*k.0 != "SearchParameter")
        .flat_map(|(k, r)| {
            r.versions()
                .iter()
                .map(|v| {
                    let t = chrono::DateTime::from_timestamp_millis(v.last_updated).unwrap();
                    (format!("{}/{}", k.0, k.1), v.version_id.to_string(), t)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let before_end: Vec<_> = source.iter().filter(|(_, _, t)| *t < end).collect();
    assert_eq!(before_end.len(), 7 * 4 - 4 + 30 + DENSE as usize, "the seeded versions");

    // Every import input line, across every import job: each version exactly once, none at the end date.
    let blobs = stack._app.blobs();
    let mut imported: HashMap<String, usize> = HashMap::new();
    for (_, inputs) in stack.destination.import_inputs() {
        for (url, _) in inputs {
            let (container, name) = blobs.locate(&url::Url::parse(&url).unwrap()).unwrap();
            let bytes = blobs.get(&container, &name).await.unwrap().unwrap();
            for l in String::from_utf8_lossy(&bytes).lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(l).unwrap();
                let key = format!(
                    "{}/{}/{}",
                    v["resourceType"].as_str().unwrap(),
                    v["id"].as_str().unwrap(),
                    v["meta"]["versionId"].as_str().unwrap()
                );
                *imported.entry(key).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = imported.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "imported more than once: {twice:?}");
    let expected: std::collections::HashSet<String> = before_end.iter().map(|(id, v, _)| format!("{id}/{v}")).collect();
    let got: std::collections::HashSet<String> = imported.keys().cloned().collect();
    assert_eq!(got, expected, "exactly the versions before the end date");
    assert!(
        stack.destination.store().resource("Patient", "boundary-6").is_none(),
        "at the end date: not migrated"
    );
    assert!(stack.destination.store().resource("Patient", "boundary-5").is_some());

    // Each window's exported size is exactly its range's.
    let table = stack
        ._app
        .tables()
        .table(stack.source_settings.get("AZURE_ExportTableName").unwrap())
        .unwrap();
    let rows = table.query_all(None).await.unwrap();
    let jobs: Vec<Job> = rows
        .iter()
        .filter(|e| !e.row_key().contains('-'))
        .filter_map(Job::from_entity)
        .collect();
    assert!(jobs.len() >= 6, "{} windows", jobs.len());
    // Where the reading was a guess, the occupied boundary was settled by the count, not imported twice.
    let flips = stack
        .telemetry
        .events()
        .iter()
        .filter(|e| e.name == "ExportBoundary")
        .count();
    if reading == "auto" {
        assert!(flips > 0, "the manifest check corrected the reading");
    } else {
        assert_eq!(flips, 0, "an explicit reading is used as it is");
    }
    for j in &jobs {
        let in_range = source.iter().filter(|(_, _, t)| *t >= j.since && *t < j.till).count() as i64;
        assert_eq!(
            j.exported,
            in_range,
            "window {} [{}, {})",
            j.seq,
            at(j.since),
            at(j.till)
        );
    }
}
