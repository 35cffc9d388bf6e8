//! Verification after a migration: both checks pass on identical servers, and each kind of damage to the
//! destination is found and named.

use chrono::{TimeDelta, Utc};
use fhir_migration_tool::storage::tables::{Entity, IfMatch};
use fhir_migration_tool::verify::full::{Kind, full};
use fhir_migration_tool::verify::surface::surface;
use fhir_migration_tool::verify::{Content, deep};
use serde_json::{Value, json};

use crate::migration::{run_to_completion, seed, stack};

#[tokio::test]
async fn checks_pass_after_a_migration_and_name_every_kind_of_damage() {
    let stack = stack(&[]).await;
    seed(&stack, 400, 41);
    run_to_completion(&stack, 300).await;
    let (src, dst) = (stack.engine.source(), stack.engine.destination());
    let types: Vec<String> = stack.engine.settings().resource_types.clone();

    let s = surface(src, dst, &types, true, false).await.unwrap();
    assert!(
        s.passed,
        "{:?}",
        s.rows.iter().filter(|r| r.result == "Fail").collect::<Vec<_>>()
    );
    assert!(s.rows.len() > 10, "types with data are listed, empty ones left out");
    let f = full(src, dst, &types, true).await.unwrap();
    assert!(f.passed, "{:?}", f.differences);
    assert!(f.compared > 400, "{} compared", f.compared);

    // Damage the destination five ways.
    let snapshot = stack.destination.store().snapshot();
    let live: Vec<_> = snapshot
        .iter()
        .filter(|(k, r)| &*k.0 == "Patient" && !r.current().unwrap().deleted)
        .collect();
    let (changed, gone, deleted) = (
        live[0].0.1.to_string(),
        live[1].0.1.to_string(),
        live[2].0.1.to_string(),
    );
    // 1. Same version, other content.
    let v = live[0].1.current().unwrap();
    let mut body: Value = serde_json::from_str(&v.body).unwrap();
    body["gender"] = json!("tampered");
    stack.destination.store().hard_delete("Patient", &changed);
    let mut lines: Vec<String> = live[0]
        .1
        .versions()
        .iter()
        .take(live[0].1.versions().len() - 1)
        .map(|v| v.body.to_string())
        .collect();
    lines.push(body.to_string());
    let (_, errors) = fhir_emulator::seed::load_into(stack.destination.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");
    // 2. One old version missing (the current one intact).
    let (thinned, versions) = live[3..]
        .iter()
        .find(|(_, r)| r.versions().len() >= 2)
        .map(|(k, r)| (k.1.to_string(), r.versions().to_vec()))
        .expect("a Patient with history");
    stack.destination.store().hard_delete("Patient", &thinned);
    let lines: Vec<String> = versions.iter().skip(1).map(|v| v.body.to_string()).collect();
    let (_, errors) = fhir_emulator::seed::load_into(stack.destination.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");
    let lost_version = versions[0].version_id.to_string();
    // 3. A resource missing altogether. 4. A soft delete only at the destination. 5. An extra resource.
    stack.destination.store().hard_delete("Patient", &gone);
    stack.destination.store().delete("Patient", &deleted);
    stack
        .destination
        .store()
        .put(
            "Patient",
            "only-here",
            json!({ "resourceType": "Patient", "id": "only-here" }),
        )
        .unwrap();

    let f = full(src, dst, &types, true).await.unwrap();
    assert!(!f.passed);
    let named = |kind: Kind, id: &str| {
        f.differences
            .iter()
            .any(|d| d.kind == kind && d.resource_type == "Patient" && d.id == id)
    };
    assert!(named(Kind::Different, &changed), "{:?}", f.differences);
    assert!(named(Kind::Missing, &gone), "{:?}", f.differences);
    assert!(
        f.differences
            .iter()
            .any(|d| d.kind == Kind::Missing && d.id == thinned && d.version_id == lost_version),
        "the lost version of {thinned}: {:?}",
        f.differences
    );
    assert!(
        named(Kind::Extra, &deleted),
        "the destination-only delete version: {:?}",
        f.differences
    );
    assert!(named(Kind::Extra, "only-here"), "{:?}", f.differences);
    assert_eq!(f.different, 1);
    let s = surface(src, dst, &types, true, false).await.unwrap();
    assert!(!s.passed);
    assert!(s.rows.iter().any(|r| r.resource == "Patient" && r.result == "Fail"));

    // The deep check, sampling every Patient, names the changed field and the resources the destination lacks.
    let patients = s
        .rows
        .iter()
        .find(|r| r.resource == "Patient" && r.measure == "current")
        .unwrap()
        .source_count;
    let plan = deep::allocate(&[("Patient".to_string(), patients)], patients as usize);
    let d = deep::deep(src, dst, &plan, &[], Content::Compared).await.unwrap();
    assert_eq!(d.compared, patients);
    let row = |id: &str| {
        d.rows
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} not sampled"))
    };
    assert_eq!(row(&changed).differences, vec!["gender"]);
    assert_eq!(row(&gone).differences, vec!["(missing at destination)"]);
    assert_eq!(row(&deleted).differences, vec!["(missing at destination)"]);
    assert_eq!(
        d.failed,
        3,
        "{:?}",
        d.rows.iter().filter(|r| r.result != "Pass").collect::<Vec<_>>()
    );
    // An allow-listed path is not reported.
    let d = deep::deep(src, dst, &plan, &["gender".to_string()], Content::Compared)
        .await
        .unwrap();
    assert_eq!(d.failed, 2);
}

/// A persisted run checkpoints after every group of versions (zero-length slices), survives being worked on by
/// two ticks at once, and ends with exactly the result of a check done in one go.
#[tokio::test]
async fn a_persisted_run_resumes_slice_by_slice_and_matches_a_one_shot_check() {
    use fhir_migration_tool::verify::runs::{Checks, Runs};
    use std::time::Duration;

    let stack = stack(&[]).await;
    seed(&stack, 60, 43);
    run_to_completion(&stack, 300).await;
    // One damaged resource, so the totals are not trivially zero.
    let gone = stack
        .destination
        .store()
        .snapshot()
        .into_iter()
        .find(|(k, _)| &*k.0 == "Patient")
        .map(|(k, _)| k.1.to_string())
        .unwrap();
    stack.destination.store().hard_delete("Patient", &gone);
    let mut types: Vec<String> = stack
        .source
        .store()
        .snapshot()
        .into_iter()
        .map(|(k, _)| k.0.to_string())
        .filter(|t| t != "SearchParameter")
        .collect();
    types.sort();
    types.dedup();
    let (src, dst) = (stack.engine.source(), stack.engine.destination());
    let expected = full(src, dst, &types, true).await.unwrap();
    assert!(expected.missing >= 1, "{:?}", expected.differences);

    let table = stack._app.tables().table(&stack._app.settings().export_table).unwrap();
    let runs = |slice| Runs::new(table.clone(), &stack.engine).with_slice(slice);
    let run = runs(Duration::ZERO)
        .start(Checks::parse("all").unwrap(), types.clone(), Some(20))
        .await
        .unwrap();
    assert_eq!(run.status, "Pending");
    assert!(runs(Duration::ZERO).get("nosuchrun").await.unwrap().is_none());

    // A tick that claimed the run and then died leaves a lease: others keep off until it runs out.
    let lease = |until: chrono::DateTime<Utc>| {
        let mut e = Entity::new(format!("{}-verify", stack.engine.settings().partition_key), &run.id).unwrap();
        e.set_str("RuntimeStatus", "Running").set_datetime("LeaseUntil", until);
        e
    };
    table
        .merge(&lease(Utc::now() + TimeDelta::minutes(4)), &IfMatch::Any)
        .await
        .unwrap();
    assert!(
        runs(Duration::ZERO).tick().await.unwrap().is_empty(),
        "a live lease is respected"
    );
    table
        .merge(&lease(Utc::now() - TimeDelta::seconds(1)), &IfMatch::Any)
        .await
        .unwrap();

    let mut ticks = 0;
    let done = loop {
        ticks += 1;
        assert!(ticks < 5000, "the run never finished");
        // Two ticks race; the lease lets only one of them work on the run.
        let (one, two) = (runs(Duration::ZERO), runs(Duration::ZERO));
        let (a, b) = tokio::join!(one.tick(), two.tick());
        let worked = a.unwrap().len() + b.unwrap().len();
        assert!(worked <= 1, "two ticks worked on one run at once");
        let now = runs(Duration::ZERO).get(&run.id).await.unwrap().unwrap();
        if now.status != "Pending" && now.status != "Running" {
            break now;
        }
        assert_eq!(
            now.status_body()["output"],
            Value::Null,
            "no output before the run completes"
        );
    };
    assert!(ticks > types.len() + 1, "checkpointed inside types too ({ticks} ticks)");
    assert_eq!(done.status, "Completed", "{}", done.error);
    assert_eq!(
        done.full.compared, expected.compared,
        "nothing counted twice or skipped"
    );
    assert_eq!(
        (done.full.missing, done.full.extra, done.full.different),
        (expected.missing, expected.extra, expected.different)
    );
    assert!(!done.full.passed);
    let body = done.status_body();
    assert_eq!(body["runtimeStatus"], "Completed");
    assert!(
        body["output"]["SurfaceCheck"]
            .as_array()
            .is_some_and(|rows| !rows.is_empty()),
        "{body}"
    );
    assert_eq!(body["output"]["FullCheck"]["missing"], json!(expected.missing));
    assert_eq!(body["output"]["DeepCheck"].as_array().map(Vec::len), Some(20), "{body}");
    assert!(stack.telemetry.events().iter().any(|e| e.name == "DeepCheck"));
    // The results reached telemetry too.
    assert!(stack.telemetry.events().iter().any(|e| e.name == "FullCheck"));

    // A finished run is left alone by later ticks.
    assert!(runs(Duration::ZERO).tick().await.unwrap().is_empty());

    // A server refusing the checks' requests: each attempt keeps the checkpoint and says why; the third fails
    // the run for good, still showing the reason.
    let broken = stack.engine_with(&[("AZURE_SourceUri", &format!("{}/no-such-base", stack.source.base_url))]);
    let failing = Runs::new(table.clone(), &broken);
    let run = failing
        .start(Checks::DEFAULT, vec!["Patient".into()], None)
        .await
        .unwrap();
    for attempt in 1..=3 {
        assert_eq!(failing.tick().await.unwrap(), vec![run.id.clone()]);
        let now = failing.get(&run.id).await.unwrap().unwrap();
        assert_eq!(now.attempts, attempt);
        assert!(now.error.starts_with("surface check:"), "{}", now.error);
        assert_eq!(now.is_open(), attempt < 3, "attempt {attempt}: {}", now.status);
    }
    let run = failing.get(&run.id).await.unwrap().unwrap();
    let body = run.status_body();
    assert_eq!(body["runtimeStatus"], "Failed");
    assert_eq!(body["error"], json!(run.error));
    assert_eq!(body["partial"], true);
}
