//! The store's own rules, without HTTP: ordinary writes, and the incremental-import merge table (reference §6,
//! checklist items 43–53). Names start with the checklist item they prove.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::time::parse_instant_ms;

const T1: &str = "2024-03-01T10:00:00.001Z";
const T2: &str = "2024-03-01T10:00:00.002Z";
const T3: &str = "2024-03-01T10:00:00.003Z";
const T4: &str = "2024-03-01T10:00:00.004Z";

fn ms(t: &str) -> Millis {
    parse_instant_ms(t).unwrap()
}

fn opts() -> ImportOptions {
    ImportOptions {
        allow_negative_versions: false,
        input_type: None,
        now: ms("2025-01-01T00:00:00Z"),
        same_ms_capacity: None,
    }
}

fn patient(version: Option<&str>, last_updated: Option<&str>, family: &str) -> String {
    let mut meta = serde_json::Map::new();
    if let Some(v) = version {
        meta.insert("versionId".into(), json!(v));
    }
    if let Some(t) = last_updated {
        meta.insert("lastUpdated".into(), json!(t));
    }
    json!({ "resourceType": "Patient", "id": "p1", "meta": meta, "name": [{ "family": family }] }).to_string()
}

fn import(store: &Store, lines: &[String], opts: &ImportOptions) -> BTreeMap<usize, LineOutcome> {
    let parsed = lines
        .iter()
        .enumerate()
        .map(|(i, l)| parse_import_line(l, i + 1, opts).unwrap())
        .collect();
    store.import_batch(parsed, opts)
}

/// (version, lastUpdated, deleted) of every stored version, oldest first.
fn versions(store: &Store) -> Vec<(i64, Millis, bool)> {
    store
        .resource("Patient", "p1")
        .map(|r| {
            r.versions()
                .iter()
                .map(|v| (v.version_id, v.last_updated, v.deleted))
                .collect()
        })
        .unwrap_or_default()
}

fn is_conflict(o: &LineOutcome) -> bool {
    matches!(o, LineOutcome::Error(e) if e.starts_with("Failed to import resource with version conflict, resource id: p1"))
}

fn is_duplicate(o: &LineOutcome) -> bool {
    matches!(o, LineOutcome::Error(e) if e.starts_with("Failed to import duplicate resource, resource id: p1"))
}

#[test]
fn ordinary_writes_number_versions_and_never_go_back_in_time() {
    let store = Store::new();
    let a = store
        .put("Patient", "p1", json!({ "resourceType": "Patient", "id": "p1" }))
        .unwrap();
    let b = store
        .put(
            "Patient",
            "p1",
            json!({ "resourceType": "Patient", "id": "p1", "active": true }),
        )
        .unwrap();
    assert!(a.created && !b.created);
    assert_eq!((a.version.version_id, b.version.version_id), (1, 2));
    // Two writes may share a millisecond (reference §11.2); time never goes backwards.
    assert!(b.version.last_updated >= a.version.last_updated);
    let body: Value = serde_json::from_str(&b.version.body).unwrap();
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(
        body.as_object().unwrap().keys().take(3).collect::<Vec<_>>(),
        ["resourceType", "id", "meta"]
    );
    let deleted = store.delete("Patient", "p1").unwrap();
    assert!(deleted.deleted && deleted.version_id == 3);
    assert!(matches!(store.read("Patient", "p1"), Read::Gone(_)));
    assert!(
        store.delete("Patient", "p1").is_none(),
        "deleting a deleted resource adds nothing"
    );
    assert!(matches!(store.vread("Patient", "p1", "1"), Read::Found(_)));
    assert_eq!(store.hard_delete("Patient", "p1"), 3);
    assert!(matches!(store.read("Patient", "p1"), Read::Missing));
    assert_eq!(store.size(), (0, 0));
}

#[test]
fn writes_with_mismatched_type_or_id_are_refused() {
    let store = Store::new();
    assert_eq!(
        store
            .put("Patient", "p1", json!({ "resourceType": "Observation" }))
            .unwrap_err(),
        WriteError::TypeMismatch
    );
    assert_eq!(
        store
            .put("Patient", "p1", json!({ "resourceType": "Patient", "id": "p2" }))
            .unwrap_err(),
        WriteError::IdMismatch
    );
    assert_eq!(
        store
            .put("Patient", "bad id", json!({ "resourceType": "Patient" }))
            .unwrap_err(),
        WriteError::InvalidId
    );
}

#[test]
fn item_43_id_version_and_last_updated_are_preserved_truncated_to_ms() {
    let store = Store::new();
    let line = patient(Some("7"), Some("2024-03-01T10:00:00.0019999+00:00"), "A");
    let out = import(&store, &[line], &opts());
    assert_eq!(out[&1], LineOutcome::Loaded);
    assert_eq!(versions(&store), [(7, ms(T1), false)]);
    let Read::Found(v) = store.read("Patient", "p1") else {
        panic!()
    };
    let body: Value = serde_json::from_str(&v.body).unwrap();
    assert_eq!(body["meta"]["versionId"], "7");
    assert_eq!(body["meta"]["lastUpdated"], "2024-03-01T10:00:00.001+00:00");
}

#[test]
fn item_44_without_last_updated_the_server_assigns_time_and_version() {
    let store = Store::new();
    // An explicit version without lastUpdated is ignored.
    import(&store, &[patient(Some("9"), None, "A")], &opts());
    let v = versions(&store);
    assert_eq!(v[0].0, 1);
    assert_eq!(v[0].1, opts().now);
    // A non-integer version with lastUpdated becomes an implicit version.
    import(
        &store,
        &[patient(Some("W/\"3\""), Some("2025-01-01T00:00:01Z"), "B")],
        &opts(),
    );
    assert_eq!(versions(&store).last().unwrap().0, 2);
}

#[test]
fn item_45_last_updated_in_the_future_is_a_line_error() {
    let o = opts();
    let err = parse_import_line(&patient(Some("1"), Some("2025-01-01T00:00:11Z"), "A"), 1, &o).unwrap_err();
    assert_eq!(err, "LastUpdated in the resource cannot be in the future.");
    assert!(parse_import_line(&patient(Some("1"), Some("2025-01-01T00:00:09Z"), "A"), 1, &o).is_ok());
}

#[test]
fn item_46_in_batch_duplicates_and_non_monotonic_versions() {
    let store = Store::new();
    // Same (id, lastUpdated): the highest version wins; the other is a duplicate.
    let out = import(
        &store,
        &[patient(Some("1"), Some(T1), "A"), patient(Some("2"), Some(T1), "B")],
        &opts(),
    );
    assert!(is_duplicate(&out[&1]), "{out:?}");
    assert_eq!(out[&2], LineOutcome::Loaded);
    // Same (id, version): the latest lastUpdated wins.
    let store = Store::new();
    let out = import(
        &store,
        &[patient(Some("5"), Some(T2), "A"), patient(Some("5"), Some(T3), "B")],
        &opts(),
    );
    assert!(is_duplicate(&out[&1]));
    assert_eq!(versions(&store), [(5, ms(T3), false)]);
    // Versions must decrease as lastUpdated decreases.
    let store = Store::new();
    let out = import(
        &store,
        &[patient(Some("2"), Some(T1), "A"), patient(Some("1"), Some(T2), "B")],
        &opts(),
    );
    assert_eq!(out.values().filter(|o| is_conflict(o)).count(), 1, "{out:?}");
    // An exact repeat in one batch: one duplicate error, the first copy loaded.
    let store = Store::new();
    let line = patient(Some("1"), Some(T1), "A");
    let out = import(&store, &[line.clone(), line], &opts());
    assert_eq!(out[&1], LineOutcome::Loaded);
    assert!(is_duplicate(&out[&2]));
}

#[test]
fn item_47_identical_reimport_adds_nothing() {
    let store = Store::new();
    let lines = [patient(Some("1"), Some(T1), "A"), patient(Some("2"), Some(T2), "B")];
    import(&store, &lines, &opts());
    let before = versions(&store);
    let out = import(&store, &lines, &opts());
    assert!(out.values().all(|o| *o == LineOutcome::Unchanged), "{out:?}");
    assert_eq!(versions(&store), before);
    // The same instant with another offset is the same version.
    let out = import(
        &store,
        &[patient(Some("1"), Some("2024-03-01T11:00:00.001+01:00"), "A")],
        &opts(),
    );
    assert_eq!(out[&1], LineOutcome::Unchanged);
}

#[test]
fn item_48_same_instant_other_content_or_same_version_other_instant_conflicts() {
    let store = Store::new();
    import(&store, &[patient(Some("1"), Some(T1), "A")], &opts());
    let out = import(&store, &[patient(Some("1"), Some(T1), "changed")], &opts());
    assert!(is_conflict(&out[&1]));
    let out = import(&store, &[patient(Some("2"), Some(T1), "A")], &opts());
    assert!(is_conflict(&out[&1]));
    let out = import(&store, &[patient(Some("1"), Some(T3), "A")], &opts());
    assert!(is_conflict(&out[&1]));
    assert_eq!(versions(&store), [(1, ms(T1), false)]);
}

#[test]
fn item_49_older_versions_become_history_newer_become_current_gaps_allowed() {
    let store = Store::new();
    import(&store, &[patient(Some("10"), Some(T3), "current")], &opts());
    import(&store, &[patient(Some("1"), Some(T1), "old")], &opts());
    assert_eq!(
        store.resource("Patient", "p1").unwrap().current().unwrap().version_id,
        10
    );
    import(&store, &[patient(Some("10000"), Some(T4), "new")], &opts());
    assert_eq!(versions(&store).iter().map(|v| v.0).collect::<Vec<_>>(), [1, 10, 10000]);
}

#[test]
fn item_50_order_contradicting_the_stored_current_conflicts() {
    let store = Store::new();
    import(&store, &[patient(Some("5"), Some(T2), "A")], &opts());
    let out = import(&store, &[patient(Some("6"), Some(T1), "higher but older")], &opts());
    assert!(is_conflict(&out[&1]));
    let out = import(&store, &[patient(Some("4"), Some(T3), "lower but newer")], &opts());
    assert!(is_conflict(&out[&1]));
}

#[test]
fn item_51_soft_delete_extension_creates_a_deleted_version() {
    let store = Store::new();
    let deleted = json!({ "resourceType": "Patient", "id": "p1", "meta": {
        "extension": [{ "url": DELETED_STATE_URL, "valueString": "soft-deleted" }], "versionId": "2", "lastUpdated": T2 } })
    .to_string();
    let out = import(&store, &[patient(Some("1"), Some(T1), "A"), deleted], &opts());
    assert!(out.values().all(|o| *o == LineOutcome::Loaded));
    assert_eq!(versions(&store), [(1, ms(T1), false), (2, ms(T2), true)]);
    let Read::Gone(v) = store.read("Patient", "p1") else {
        panic!("a deleted current version reads as gone")
    };
    assert!(
        !v.body.contains("deleted-state"),
        "the extension is stripped: {}",
        v.body
    );
    // A deleted version of a resource that never existed is stored too.
    let ghost = json!({ "resourceType": "Patient", "id": "p2", "meta": {
        "extension": [{ "url": DELETED_STATE_URL, "valueString": "soft-deleted" }], "versionId": "1", "lastUpdated": T1 } })
    .to_string();
    import(&store, &[ghost], &opts());
    assert!(matches!(store.read("Patient", "p2"), Read::Gone(_)));
    // The export form puts the extension back.
    assert!(export_deleted_line(&v.body).contains(DELETED_STATE_URL));
}

#[test]
fn item_52_negative_versions_need_allow_negative_versions() {
    let store = Store::new();
    import(&store, &[patient(Some("3"), Some(T3), "A")], &opts());
    let out = import(&store, &[patient(Some("-1"), Some(T1), "neg")], &opts());
    assert!(is_conflict(&out[&1]));
    let allow = ImportOptions {
        allow_negative_versions: true,
        ..opts()
    };
    let out = import(&store, &[patient(Some("-1"), Some(T1), "neg")], &allow);
    assert_eq!(out[&1], LineOutcome::Loaded);
    assert_eq!(
        store.resource("Patient", "p1").unwrap().current().unwrap().version_id,
        3
    );
}

#[test]
fn item_53_implicit_versions_fill_gaps_from_the_upper_neighbour() {
    let store = Store::new();
    import(
        &store,
        &[
            patient(Some("1"), Some("2024-01-01T00:00:00.001Z"), "v1"),
            patient(Some("10"), Some("2024-01-01T00:00:00.004Z"), "v10"),
        ],
        &opts(),
    );
    let out = import(
        &store,
        &[
            patient(None, Some("2024-01-01T00:00:00.002Z"), "a"),
            patient(None, Some("2024-01-01T00:00:00.003Z"), "b"),
        ],
        &opts(),
    );
    assert!(out.values().all(|o| *o == LineOutcome::Loaded), "{out:?}");
    assert_eq!(versions(&store).iter().map(|v| v.0).collect::<Vec<_>>(), [1, 8, 9, 10]);
    // No gap: a conflict, or negative versions when allowed.
    let store = Store::new();
    import(
        &store,
        &[patient(Some("1"), Some(T1), "v1"), patient(Some("2"), Some(T3), "v2")],
        &opts(),
    );
    let out = import(&store, &[patient(None, Some(T2), "between")], &opts());
    assert!(is_conflict(&out[&1]));
    let allow = ImportOptions {
        allow_negative_versions: true,
        ..opts()
    };
    import(&store, &[patient(None, Some(T2), "between")], &allow);
    assert_eq!(versions(&store).iter().map(|v| v.0).collect::<Vec<_>>(), [1, -1, 2]);
    // Later than everything: sequential after the current.
    import(&store, &[patient(None, Some(T4), "next")], &opts());
    assert_eq!(versions(&store).last().unwrap().0, 3);
}

#[test]
fn export_selection_follows_each_path() {
    let store = Store::new();
    // p1: v1@T1, v2@T3; p2: v1@T2 then deleted @T4.
    let del = |id: &str, v: &str, t: &str| {
        json!({ "resourceType": "Patient", "id": id, "meta": {
        "extension": [{ "url": DELETED_STATE_URL, "valueString": "soft-deleted" }], "versionId": v, "lastUpdated": t } }).to_string()
    };
    let p2 =
        json!({ "resourceType": "Patient", "id": "p2", "meta": { "versionId": "1", "lastUpdated": T2 } }).to_string();
    import(
        &store,
        &[
            patient(Some("1"), Some(T1), "A"),
            patient(Some("2"), Some(T3), "B"),
            p2,
            del("p2", "2", T4),
        ],
        &opts(),
    );
    let pick = |sel: ExportSelection| -> Vec<(String, i64)> {
        store
            .export(&sel)
            .iter()
            .map(|v| (v.id().to_string(), v.version.version_id))
            .collect()
    };
    let base = ExportSelection {
        since: Some(ms(T1)),
        till: ms(T3),
        inclusive_till: false,
        inclusive_end: None,
        snapshot: true,
        history: false,
        deleted: false,
        types: None,
    };
    // ahds parallel snapshot [T1, T3): p1 as of T3 (v1), p2 v1.
    assert_eq!(pick(base.clone()), [("p1".into(), 1), ("p2".into(), 1)]);
    // Non-parallel, inclusive [T1, T3]: latest versions in the window only (p1 v2; p2's current is a delete).
    assert_eq!(
        pick(ExportSelection {
            inclusive_till: true,
            snapshot: false,
            ..base.clone()
        }),
        [("p1".into(), 2)]
    );
    // History and deletes over everything.
    let all = ExportSelection {
        till: ms(T4),
        inclusive_till: true,
        snapshot: false,
        history: true,
        deleted: true,
        ..base.clone()
    };
    assert_eq!(
        pick(all),
        [("p1".into(), 1), ("p2".into(), 1), ("p1".into(), 2), ("p2".into(), 2)]
    );
    // History without deletes never emits a delete marker.
    let no_del = ExportSelection {
        till: ms(T4),
        inclusive_till: true,
        snapshot: false,
        history: true,
        deleted: false,
        ..base
    };
    assert!(pick(no_del).iter().all(|(id, v)| !(id == "p2" && *v == 2)));
}
