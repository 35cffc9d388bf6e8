//! Custom SearchParameters stay in sync while the migration runs (issue 16): one created, one changed and one
//! deleted at the source after the first copy all reach the destination, and the `$reindex` reminder says so.

use chrono::{TimeDelta, Utc};
use serde_json::json;

use crate::migration::{run_to_completion, seed, stack};

#[tokio::test]
async fn search_parameters_created_changed_and_deleted_mid_migration_are_carried() {
    let stack = stack(&[]).await;
    seed(&stack, 100, 8);
    run_to_completion(&stack, 200).await;
    let engine = &stack.engine;
    let destination = stack.destination.store();
    assert!(
        destination.resource("SearchParameter", "custom-sp-2").is_some(),
        "the first copy"
    );
    assert!(engine.compare_search_parameters().await.unwrap().is_empty());

    let source = stack.source.store();
    let sp = |id: &str, description: &str| {
        json!({ "resourceType": "SearchParameter", "id": id, "url": format!("http://example.org/fhir/SearchParameter/{id}"),
            "name": id.replace('-', ""), "status": "active", "description": description, "code": id.replace('-', ""),
            "base": ["Patient"], "type": "token", "expression": "Patient.identifier" })
    };
    source
        .put(
            "SearchParameter",
            "added-later",
            sp("added-later", "created mid-migration"),
        )
        .unwrap();
    source
        .put(
            "SearchParameter",
            "custom-sp-1",
            sp("custom-sp-1", "changed mid-migration"),
        )
        .unwrap();
    assert!(source.delete("SearchParameter", "custom-sp-2").is_some());
    let differences = engine.compare_search_parameters().await.unwrap();
    assert_eq!(differences.len(), 3, "{differences:?}");

    // The next sync is due a few minutes after the last (the clock is an argument).
    let report = engine.starter_tick(Utc::now() + TimeDelta::minutes(5)).await.unwrap();
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("changed at the source: 2 written, 1 deleted")),
        "{:?}",
        report.lines
    );
    assert!(destination.resource("SearchParameter", "added-later").is_some());
    assert!(engine.compare_search_parameters().await.unwrap().is_empty());
    let status = engine.status(Utc::now()).await.unwrap();
    assert!(status.reminder.unwrap().contains("changed at the source"));
    // Nothing changed since: the next sync writes nothing.
    let report = engine.starter_tick(Utc::now() + TimeDelta::minutes(10)).await.unwrap();
    assert!(
        !report.lines.iter().any(|l| l.contains("changed at the source")),
        "{:?}",
        report.lines
    );
}
