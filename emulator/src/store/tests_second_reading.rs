//! The merge rules as a second reading of the server's source has them (reference §11.1–§11.3), without HTTP.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::time::parse_instant_ms;

const T1: &str = "2024-03-01T10:00:00.001Z";
const T2: &str = "2024-03-01T10:00:00.002Z";
const T3: &str = "2024-03-01T10:00:00.003Z";
const T4: &str = "2024-03-01T10:00:00.004Z";
const T5: &str = "2024-03-01T10:00:00.005Z";

fn opts() -> ImportOptions {
    ImportOptions {
        allow_negative_versions: false,
        input_type: None,
        now: parse_instant_ms("2025-01-01T00:00:00Z").unwrap(),
        same_ms_capacity: None,
    }
}

fn line(resource_type: &str, id: &str, version: Option<&str>, t: Option<&str>, note: &str) -> String {
    let mut meta = serde_json::Map::new();
    if let Some(v) = version {
        meta.insert("versionId".into(), json!(v));
    }
    if let Some(t) = t {
        meta.insert("lastUpdated".into(), json!(t));
    }
    json!({ "resourceType": resource_type, "id": id, "meta": meta, "text": { "div": note } }).to_string()
}

fn parse(lines: &[String], opts: &ImportOptions) -> Vec<ImportLine> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| parse_import_line(l, i + 1, opts).unwrap())
        .collect()
}

fn import(store: &Store, lines: &[String], opts: &ImportOptions) -> BTreeMap<usize, LineOutcome> {
    store.import_batch(parse(lines, opts), opts)
}

fn versions(store: &Store, id: &str) -> Vec<i64> {
    store
        .resource("Patient", id)
        .map(|r| r.versions().iter().map(|v| v.version_id).collect())
        .unwrap_or_default()
}

fn is_duplicate(o: &LineOutcome) -> bool {
    matches!(o, LineOutcome::Error(e) if e.starts_with("Failed to import duplicate resource"))
}

fn is_conflict(o: &LineOutcome) -> bool {
    matches!(o, LineOutcome::Error(e) if e.starts_with("Failed to import resource with version conflict"))
}

/// §11.1: per (type, millisecond) across the store, counting stored rows; a full batch leaves nothing behind.
#[test]
fn s11_1_same_millisecond_capacity_is_per_type_and_counts_stored_rows() {
    let store = Store::new();
    let capped = ImportOptions {
        same_ms_capacity: Some(100),
        ..opts()
    };
    let many = |t: &str, n: usize, from: usize| -> Vec<String> {
        (from..from + n)
            .map(|i| line(t, &format!("x{i}"), Some("1"), Some(T1), ""))
            .collect()
    };
    // 60 Patients + 60 Observations on one millisecond: two types, each below the limit.
    let mut mixed = many("Patient", 60, 0);
    mixed.extend(many("Observation", 60, 0));
    assert!(store.try_import_batch(parse(&mixed, &capped), &capped).is_ok());
    // 40 more Patients reach exactly 100: fine. One more is one too many, counting the 100 stored.
    assert!(
        store
            .try_import_batch(parse(&many("Patient", 40, 60), &capped), &capped)
            .is_ok()
    );
    let full = store
        .try_import_batch(parse(&many("Patient", 1, 100), &capped), &capped)
        .unwrap_err();
    assert_eq!(full.resource_type, "Patient");
    assert!(!store.exists("Patient", "x100"), "the failed batch is rolled back");
    // 101 of one type in one fresh batch fail; the same lines one millisecond apart do not.
    let fresh = Store::new();
    assert!(
        fresh
            .try_import_batch(parse(&many("Basic", 101, 0), &capped), &capped)
            .is_err()
    );
    assert_eq!(fresh.size(), (0, 0));
    let spread: Vec<String> = (0..101)
        .map(|i| {
            line(
                "Basic",
                &format!("b{i}"),
                Some("1"),
                Some(if i % 2 == 0 { T1 } else { T2 }),
                "",
            )
        })
        .collect();
    assert!(fresh.try_import_batch(parse(&spread, &capped), &capped).is_ok());
}

/// §11.2: for one (id, millisecond) the highest version compared as text wins ("9" beats "10"); the loser is a
/// duplicate line. A line without a kept version compares as "1".
#[test]
fn s11_2_in_batch_dedup_compares_versions_as_text() {
    let store = Store::new();
    let out = import(
        &store,
        &[
            line("Patient", "p1", Some("10"), Some("2024-03-01T10:00:00.0015Z"), "ten"),
            line("Patient", "p1", Some("9"), Some("2024-03-01T10:00:00.001Z"), "nine"),
        ],
        &opts(),
    );
    assert!(is_duplicate(&out[&1]), "{out:?}");
    assert_eq!(out[&2], LineOutcome::Loaded);
    assert_eq!(versions(&store, "p1"), [9]);
    // An unversioned line ("1") beats an explicit "0".
    let out = import(
        &store,
        &[
            line("Patient", "p2", Some("0"), Some(T1), "zero"),
            line("Patient", "p2", Some("x"), Some(T1), "unversioned"),
        ],
        &opts(),
    );
    assert!(is_duplicate(&out[&1]), "{out:?}");
    assert_eq!(out[&2], LineOutcome::Loaded);
}

/// §11.2: an aapi (precise) store keeps versions a fraction of a millisecond apart, with 0–7 digits.
#[test]
fn s11_2_a_precise_store_keeps_sub_millisecond_versions() {
    let store = Store::new();
    store.set_precise(true);
    let out = import(
        &store,
        &[
            line("Patient", "p1", Some("1"), Some("2024-03-01T10:00:00.0010001Z"), "a"),
            line("Patient", "p1", Some("2"), Some("2024-03-01T10:00:00.0015Z"), "b"),
        ],
        &ImportOptions::seeding(opts().now),
    );
    assert!(out.values().all(|o| *o == LineOutcome::Loaded), "{out:?}");
    let r = store.resource("Patient", "p1").unwrap();
    let stamps: Vec<String> = r
        .versions()
        .iter()
        .map(|v| {
            let body: serde_json::Value = serde_json::from_str(&v.body).unwrap();
            body["meta"]["lastUpdated"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        stamps,
        ["2024-03-01T10:00:00.0010001+00:00", "2024-03-01T10:00:00.0015+00:00"]
    );
    // Ordinary writes in a precise store share milliseconds but never a tick.
    let a = store
        .put("Patient", "w", json!({ "resourceType": "Patient", "id": "w" }))
        .unwrap();
    let b = store
        .put("Patient", "w", json!({ "resourceType": "Patient", "id": "w" }))
        .unwrap();
    assert!(b.version.precise() > a.version.precise());
}

/// §11.3: only the current version is checked; an older version lands in history even between two stored
/// history versions out of order. Version "0" is neither loaded nor a conflict.
#[test]
fn s11_3_version_order_is_checked_against_the_current_version_only() {
    let store = Store::new();
    let o = opts();
    import(
        &store,
        &[
            line("Patient", "p1", Some("1"), Some(T1), "v1"),
            line("Patient", "p1", Some("3"), Some(T2), "v3"),
            line("Patient", "p1", Some("5"), Some(T5), "v5"),
        ],
        &o,
    );
    // v2 at T4: after stored v3 at T2 in time, but older and lower than the current v5.
    let out = import(&store, &[line("Patient", "p1", Some("2"), Some(T4), "v2")], &o);
    assert_eq!(out[&1], LineOutcome::Loaded);
    assert_eq!(versions(&store, "p1"), [1, 3, 2, 5]);
    assert_eq!(
        store.resource("Patient", "p1").unwrap().current().unwrap().version_id,
        5
    );
    // Against the current: newer in time with a lower number, or older with a higher one, conflict.
    let out = import(&store, &[line("Patient", "p2", Some("4"), Some(T3), "v4")], &o);
    assert_eq!(out[&1], LineOutcome::Loaded);
    let out = import(&store, &[line("Patient", "p2", Some("2"), Some(T4), "late low")], &o);
    assert!(is_conflict(&out[&1]), "{out:?}");
    let out = import(&store, &[line("Patient", "p2", Some("6"), Some(T2), "early high")], &o);
    assert!(is_conflict(&out[&1]), "{out:?}");
    // Version 0: a duplicate line, nothing stored.
    let out = import(&store, &[line("Patient", "p3", Some("0"), Some(T1), "zero")], &o);
    assert!(is_duplicate(&out[&1]), "{out:?}");
    assert!(!store.exists("Patient", "p3"));
}

/// §11.3: inside a batch, newest first, each version is compared with the previous line, even a refused one.
#[test]
fn s11_3_in_batch_monotonicity_compares_with_the_previous_line() {
    let store = Store::new();
    // Newest first: 5@T3, 7@T2 (>= 5: conflict), 6@T1 (< 7: kept).
    let out = import(
        &store,
        &[
            line("Patient", "p1", Some("5"), Some(T3), "a"),
            line("Patient", "p1", Some("7"), Some(T2), "b"),
            line("Patient", "p1", Some("6"), Some(T1), "c"),
        ],
        &opts(),
    );
    assert_eq!(out[&1], LineOutcome::Loaded);
    assert!(is_conflict(&out[&2]), "{out:?}");
    // 6@T1 passes the batch rule, and the database rule compares with what was stored before the batch (nothing).
    assert_eq!(out[&3], LineOutcome::Loaded);
    assert_eq!(versions(&store, "p1"), [6, 5]);
}
