//! The engine's own reads and writes of export files before an import (reference §11.1 and §11.2), against
//! Azurite with the export account behind a gate: the same-millisecond scan before a payload's first POST, and
//! the capacity trim after a refusal. A read that may pass holds the action with nothing written or decided; a
//! file the tool may not read is said, never silently dropped; the copies hold exactly the lines kept, and the
//! payload's new body names them with their ETags.

use chrono::{TimeDelta, Utc};
use fhir_emulator::seed::load_into;
use fhir_migration_tool::engine::core::capacity::CapacityTrim;
use fhir_migration_tool::engine::{Engine, EngineError, Timing};
use fhir_migration_tool::fhir::wire::{ExportFile, import_parameters};
use fhir_migration_tool::ledger::{Class, Kind, State};
use fhir_migration_tool::state::Payload;
use fhir_migration_tool::storage::blob::BlobStore;
use serde_json::{Value, json};

use crate::ledger::{instant, ledger_keys, patient};
use crate::migration::{GatedExports, Stack, stack};

const PAYLOADS: &str = "payloads";

fn observation(id: &str, version: &str, at: &str) -> String {
    json!({ "resourceType": "Observation", "id": id, "meta": { "versionId": version, "lastUpdated": at },
        "status": "final", "code": { "text": "x" } })
    .to_string()
}

/// Writes `files` (name, type, lines) to the export container and a payload whose body imports them, with
/// their ETags, in the tool's own storage.
async fn payload_of(stack: &Stack, exports: &BlobStore, files: &[(&str, &str, Vec<String>)]) -> Payload {
    let mut inputs = Vec::new();
    for (name, resource_type, lines) in files {
        exports
            .put("exports", name, lines.join("\n").into_bytes())
            .await
            .unwrap();
        inputs.push(ExportFile {
            resource_type: resource_type.to_string(),
            url: exports.blob_url("exports", name),
            count: lines.len() as u64,
            etag: exports.etag("exports", name).await.unwrap(),
        });
    }
    let blobs = stack._app.blobs();
    blobs.ensure_container(PAYLOADS).await.unwrap();
    let body = import_parameters("IncrementalLoad", &inputs, None);
    blobs
        .put(PAYLOADS, "w1-0001.json", body.to_string().into_bytes())
        .await
        .unwrap();
    Payload::new(7, 1, 1, "w1-0001.json".into())
}

/// Each input of a body as (url, etag).
fn inputs(body: &Value) -> Vec<(String, Option<String>)> {
    body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "input")
        .map(|p| {
            let part = |name: &str| {
                p["part"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["name"] == name)
                    .map(|x| {
                        x["valueUri"]
                            .as_str()
                            .or(x["valueString"].as_str())
                            .unwrap()
                            .to_string()
                    })
            };
            (part("url").unwrap(), part("etag"))
        })
        .collect()
}

async fn body(stack: &Stack, blob: &str) -> Value {
    let bytes = stack._app.blobs().get(PAYLOADS, blob).await.unwrap().expect("the body");
    serde_json::from_slice(&bytes).unwrap()
}

fn engine_reading(stack: &Stack, store: &BlobStore, settings: &[(&str, &str)]) -> Engine {
    stack
        .engine_with(settings)
        .with_error_stores(vec![stack._app.blobs().clone(), store.clone()])
}

/// The names in the export container (read past the gate, so an outage cannot hide a write).
async fn exported(stack: &Stack) -> Vec<String> {
    stack._app.blobs().list("exports", "").await.unwrap()
}

/// What an action did while the export account was unreachable: failed, naming the read, with nothing decided
/// (no ledger entry) and nothing copied.
async fn assert_held<T: std::fmt::Debug>(stack: &Stack, engine: &Engine, held: Result<T, EngineError>) {
    let Err(e) = held else {
        panic!("an unreachable export file holds the action: {held:?}")
    };
    assert!(e.to_string().contains("could not read"), "{e}");
    assert!(
        engine.ledger().list(None).await.unwrap().is_empty(),
        "nothing decided unread"
    );
    assert_eq!(exported(stack).await.len(), 2, "no copy written");
}

#[tokio::test]
async fn the_scan_waits_for_an_unreachable_export_file_and_copies_exactly_the_lines_it_keeps() {
    let stack = stack(&[]).await;
    let GatedExports { gate, store, refused } = stack.gated_exports().await;
    let at = Utc::now() - TimeDelta::hours(2);
    let crowded = instant(at);
    let precise = |ticks: &str| crowded.replace('Z', &format!("{ticks}Z"));
    let first = vec![
        patient("s", "8", &instant(at - TimeDelta::seconds(1)), "v8"),
        patient("s", "10", &precise("5678"), "v10"),
        patient("t", "1", &crowded, "t"),
        patient("s", "9", &precise("1234"), "v9"),
    ];
    let second = vec![patient("u", "1", &crowded, "u")];
    let payload = payload_of(
        &stack,
        &store,
        &[
            ("run/Patient-1.ndjson", "Patient", first.clone()),
            ("run/Patient-2.ndjson", "Patient", second),
        ],
    )
    .await;
    let before = body(&stack, &payload.blob).await;
    let engine = engine_reading(&stack, &store, &[]);
    let now = Utc::now();

    gate.close();
    assert_held(
        &stack,
        &engine,
        engine.scan_payload(&payload, PAYLOADS, "t1", now).await,
    )
    .await;

    gate.open();
    let scanned = engine.scan_payload(&payload, PAYLOADS, "t1", now).await.unwrap();
    assert_eq!(
        (scanned.files, scanned.done, scanned.left_out),
        (2, true, 1),
        "{scanned:?}"
    );
    assert_eq!(scanned.blob, "w1-0001.scanned-2-t1");
    assert!(
        scanned.note.starts_with("1 version(s) share a millisecond"),
        "{}",
        scanned.note
    );
    let entries = engine.ledger().list(None).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let e = &entries[0];
    assert_eq!(e.key, "Patient|s|9");
    assert_eq!(
        (e.kind, e.class, e.state),
        (Kind::SameMillisecond, Class::Permanent, State::Open)
    );
    assert!(e.message.contains("version 10"), "{}", e.message);
    // The new body: the first file replaced by its copy (with the copy's ETag), the second as it was.
    let (old, new) = (inputs(&before), inputs(&body(&stack, &scanned.blob).await));
    assert_eq!(new[1], old[1]);
    let copy = "run/Patient-1.scanned-t1.ndjson";
    assert_eq!(
        new[0],
        (
            store.blob_url("exports", copy),
            store.etag("exports", copy).await.unwrap()
        )
    );
    assert!(new[0].1.is_some());
    let kept = String::from_utf8(store.get("exports", copy).await.unwrap().unwrap()).unwrap();
    let expected: String = [&first[0], &first[1], &first[2]]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(kept, expected);
    // The original body is left as it was (a repeat after a crash reads it again).
    assert_eq!(body(&stack, &payload.blob).await, before);

    // A scan that stopped after the first file goes on from the second: nothing crowded there.
    let mut resumed = payload.clone();
    resumed.scanned_files = 1;
    let more = engine.scan_payload(&resumed, PAYLOADS, "t2", now).await.unwrap();
    assert_eq!((more.files, more.done, more.left_out), (2, true, 0), "{more:?}");
    assert_eq!(more.blob, payload.blob);
    assert_eq!(more.note, "", "nothing to say");

    // Files the tool may not read (403) are imported as they are, and the scan says so.
    let blind = engine_reading(&stack, &refused, &[]);
    let unread = blind.scan_payload(&payload, PAYLOADS, "t3", now).await.unwrap();
    assert_eq!((unread.files, unread.done, unread.left_out), (2, true, 0), "{unread:?}");
    assert_eq!(unread.blob, payload.blob);
    assert!(unread.note.contains("cannot be read"), "{}", unread.note);
    assert_eq!(unread.note.matches("cannot be read").count(), 2, "{}", unread.note);
}

#[tokio::test]
async fn the_capacity_trim_waits_for_an_unreachable_export_file_and_copies_exactly_the_lines_it_keeps() {
    let stack = stack(&[]).await;
    let GatedExports { gate, store, refused } = stack.gated_exports().await;
    let at = instant(Utc::now() - TimeDelta::hours(2));
    let elsewhere = instant(Utc::now() - TimeDelta::hours(3));
    // The destination already holds o0 on the crowded millisecond (a failed unit's earlier batch, §5.4).
    let (_, errors) = load_into(stack.destination.store(), &[observation("o0", "1", &at)]);
    assert!(errors.is_empty(), "{errors:?}");
    let first = vec![
        observation("o0", "1", &at),
        observation("o1", "1", &at),
        observation("o2", "1", &at),
    ];
    let second = vec![
        observation("o4", "1", &at),
        observation("p1", "1", &elsewhere),
        observation("o3", "1", &at),
    ];
    let payload = payload_of(
        &stack,
        &store,
        &[
            ("run/Observation-1.ndjson", "Observation", first),
            ("run/Observation-2.ndjson", "Observation", second.clone()),
        ],
    )
    .await;
    let before = body(&stack, &payload.blob).await;
    // Room for three on a millisecond (a margin of none at this size): o0 is there, o1 and o2 fit, o3 and o4
    // (the last by id) do not.
    let engine = engine_reading(&stack, &store, &[("AZURE_SameMillisecondCapacity", "3")]);
    let now = Utc::now();

    gate.close();
    assert_held(
        &stack,
        &engine,
        engine.trim_for_capacity(&payload, PAYLOADS, "t1", now).await,
    )
    .await;

    gate.open();
    let trimmed = engine.trim_for_capacity(&payload, PAYLOADS, "t1", now).await.unwrap();
    let CapacityTrim::Trimmed {
        excluded,
        kept_lines,
        blob,
        groups,
    } = trimmed
    else {
        panic!("o3 and o4 cannot fit: {trimmed:?}")
    };
    assert_eq!((excluded, kept_lines), (2, 4), "{groups:?}");
    assert_eq!(blob, "w1-0001.capacity-0-t1");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert!(
        groups[0].contains(": 5 in the payload, 1 at the destination, 2 left out"),
        "{groups:?}"
    );
    let mut keys: Vec<_> = engine
        .ledger()
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            assert_eq!((e.kind, e.class), (Kind::SameMillisecond, Class::Permanent), "{e:?}");
            e.key
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["Observation|o3|1", "Observation|o4|1"]);
    let (old, new) = (inputs(&before), inputs(&body(&stack, &blob).await));
    assert_eq!(new[0], old[0], "the first file loses nothing");
    let copy = "run/Observation-2.capacity-0-t1.ndjson";
    assert_eq!(
        new[1],
        (
            store.blob_url("exports", copy),
            store.etag("exports", copy).await.unwrap()
        )
    );
    let kept = String::from_utf8(store.get("exports", copy).await.unwrap().unwrap()).unwrap();
    assert_eq!(kept, format!("{}\n", second[1]));
    assert_eq!(body(&stack, &payload.blob).await, before);

    // Files the tool may not read: the trim cannot decide, and says what to grant.
    let blind = engine_reading(&stack, &refused, &[("AZURE_SameMillisecondCapacity", "3")]);
    let unread = blind.trim_for_capacity(&payload, PAYLOADS, "t2", now).await.unwrap();
    let CapacityTrim::CannotTrim(why) = unread else {
        panic!("unread files cannot be trimmed: {unread:?}")
    };
    assert!(
        why.contains("cannot be read") && why.contains("AZURE_IntegrationStorageUri"),
        "{why}"
    );

    // A capacity the payload fits under: nothing over, the largest group named.
    let roomy = engine_reading(&stack, &store, &[("AZURE_SameMillisecondCapacity", "80000")]);
    let fits = roomy.trim_for_capacity(&payload, PAYLOADS, "t3", now).await.unwrap();
    let CapacityTrim::NothingOver(largest) = fits else {
        panic!("everything fits: {fits:?}")
    };
    assert!(
        largest.contains("5 Observation on") && largest.contains("1 at the destination"),
        "{largest}"
    );
}

fn bounded(engine: Engine, scan_bytes: usize, examined_bytes: usize) -> Engine {
    engine.with_timing(Timing {
        scan_bytes_per_action: scan_bytes,
        capacity_bytes_examined: examined_bytes,
        ..Timing::default()
    })
}

/// A large payload is scanned over several actions (each reads at least one file, then stops at its byte
/// share), each going on where the last stopped; and a payload larger than the capacity trim holds at once is
/// said instead of read whole (a process killed for memory would record nothing).
#[tokio::test]
async fn scans_go_by_shares_of_bytes_and_a_trim_refuses_more_than_it_can_hold() {
    let stack = stack(&[]).await;
    // The gate stays open (dropped, it would close).
    let GatedExports { store, gate: _gate, .. } = stack.gated_exports().await;
    let at = Utc::now() - TimeDelta::hours(2);
    let crowded = instant(at);
    let precise = |ticks: &str| crowded.replace('Z', &format!("{ticks}Z"));
    let first = vec![
        patient("s", "1", &precise("1000"), "v1"),
        patient("s", "2", &precise("2000"), "v2"),
    ];
    let second = vec![
        patient("r", "1", &precise("1000"), "v1"),
        patient("r", "2", &precise("2000"), "v2"),
    ];
    let first_bytes = first.join("\n").len();
    let all_bytes = first_bytes + second.join("\n").len();
    let payload = payload_of(
        &stack,
        &store,
        &[
            ("run/Patient-1.ndjson", "Patient", first),
            ("run/Patient-2.ndjson", "Patient", second),
        ],
    )
    .await;
    let now = Utc::now();
    // A share of one byte: one file an action.
    let engine = bounded(engine_reading(&stack, &store, &[]), 1, usize::MAX);
    let one = engine.scan_payload(&payload, PAYLOADS, "t1", now).await.unwrap();
    assert_eq!((one.files, one.done, one.left_out), (1, false, 1), "{one:?}");
    assert_eq!(one.blob, "w1-0001.scanned-1-t1");
    let mut rest = payload.clone();
    (rest.blob, rest.scanned_files) = (one.blob.clone(), one.files);
    let two = engine.scan_payload(&rest, PAYLOADS, "t2", now).await.unwrap();
    assert_eq!((two.files, two.done, two.left_out), (2, true, 1), "{two:?}");
    assert_eq!(two.blob, "w1-0001.scanned-1-t1.scanned-2-t2");
    // Both copies are in the final body, each in its place.
    let copies: Vec<String> = inputs(&body(&stack, &two.blob).await)
        .into_iter()
        .map(|(url, _)| url)
        .collect();
    assert_eq!(
        copies,
        [
            store.blob_url("exports", "run/Patient-1.scanned-t1.ndjson"),
            store.blob_url("exports", "run/Patient-2.scanned-t2.ndjson")
        ]
    );
    assert_eq!(ledger_keys(&engine).await, ["Patient|r|1", "Patient|s|1"]);
    // A share as large as the first file: the second file is read by the same action only when the first
    // fell short of the share.
    let exact = bounded(engine_reading(&stack, &store, &[]), first_bytes, usize::MAX);
    let whole = exact.scan_payload(&payload, PAYLOADS, "t3", now).await.unwrap();
    assert_eq!((whole.files, whole.done), (1, false), "{whole:?}");
    let more = bounded(engine_reading(&stack, &store, &[]), first_bytes + 1, usize::MAX);
    let whole = more.scan_payload(&payload, PAYLOADS, "t4", now).await.unwrap();
    assert_eq!((whole.files, whole.done, whole.left_out), (2, true, 2), "{whole:?}");

    // The capacity trim holds the payload's files up to its bound: one byte more, and the payload is said.
    let settings = [("AZURE_SameMillisecondCapacity", "1")];
    let over = bounded(engine_reading(&stack, &store, &settings), usize::MAX, all_bytes - 1);
    let refused = over.trim_for_capacity(&payload, PAYLOADS, "t5", now).await.unwrap();
    let CapacityTrim::CannotTrim(why) = refused else {
        panic!("more than the trim holds: {refused:?}")
    };
    assert!(why.contains("AZURE_ChunkLimit"), "{why}");
    let within = bounded(engine_reading(&stack, &store, &settings), usize::MAX, all_bytes);
    let trimmed = within.trim_for_capacity(&payload, PAYLOADS, "t6", now).await.unwrap();
    assert!(
        matches!(trimmed, CapacityTrim::Trimmed { excluded: 3, .. }),
        "one of four fits: {trimmed:?}"
    );
}
