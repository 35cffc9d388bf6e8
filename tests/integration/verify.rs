//! Verification after a migration: both checks pass on identical servers, and each kind of damage to the
//! destination is found and named.

use fhir_migration_tool::verify::full::{Kind, full};
use fhir_migration_tool::verify::surface::surface;
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

    // Damage the destination four ways.
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
    // 2. A resource missing altogether. 3. A soft delete only at the destination. 4. An extra resource.
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
        named(Kind::Extra, &deleted),
        "the destination-only delete version: {:?}",
        f.differences
    );
    assert!(named(Kind::Extra, "only-here"), "{:?}", f.differences);
    assert_eq!(f.different, 1);
    let s = surface(src, dst, &types, true, false).await.unwrap();
    assert!(!s.passed);
    assert!(s.rows.iter().any(|r| r.resource == "Patient" && r.result == "Fail"));
}
