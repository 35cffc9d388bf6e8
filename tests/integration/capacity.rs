//! More versions of one type on one millisecond than the destination can hold (reference §11.1; the emulator's
//! limit scaled down): the tool names exactly the versions that cannot fit, imports everything else, commits
//! the window, and cut-over is NOT READY until an operator accepts the loss (issue 24, item 4).

use chrono::{TimeDelta, Utc};
use fhir_emulator::Flavor;
use fhir_emulator::seed::load_into;
use fhir_migration_tool::cutover::cutover;
use fhir_migration_tool::engine::failures::Selection;
use fhir_migration_tool::ledger::{Class, Kind, State};
use serde_json::json;

use crate::migration::{emulator_with, run_to_completion, seed, stack_to};
use fhir_testkit::Azurite;

const CAPACITY: u32 = 5;

fn line(resource_type: &str, id: &str, at: &str) -> String {
    json!({ "resourceType": resource_type, "id": id, "meta": { "versionId": "1", "lastUpdated": at }, "status": "final",
        "code": { "text": "x" }, "name": [{ "family": id }] })
    .to_string()
}

/// A stack whose destination holds at most [`CAPACITY`] rows of one type on one millisecond, its source seeded,
/// and a millisecond 20 minutes ago with a function giving instants a fraction apart within it (as Azure API
/// for FHIR keeps them).
async fn crowded_stack() -> (crate::migration::Stack, impl Fn(usize) -> String) {
    let azurite = Azurite::start().await.unwrap();
    let destination = emulator_with(Flavor::Ahds, &azurite, |c| c.same_ms_capacity = CAPACITY).await;
    let capacity = CAPACITY.to_string();
    let stack = stack_to(
        azurite,
        Flavor::Aapi,
        destination,
        &[
            ("AZURE_SameMillisecondCapacity", capacity.as_str()),
            ("AZURE_SafetyLagSeconds", "1"),
            ("AZURE_ExportConfirmSeconds", "0"),
        ],
    )
    .await;
    seed(&stack, 40, 3);
    let crowded = (Utc::now() - TimeDelta::minutes(20)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (stack, move |k: usize| crowded.replace('Z', &format!("{:04}Z", k * 7)))
}

/// The keys of the versions named as left out for the capacity, sorted; each is permanent and open, says why,
/// and nothing else failed for good.
async fn left_out(stack: &crate::migration::Stack) -> Vec<String> {
    let entries = stack.engine.ledger().list(None).await.unwrap();
    let mut keys = Vec::new();
    for e in &entries {
        if e.kind == Kind::SameMillisecond {
            assert_eq!((e.class, e.state), (Class::Permanent, State::Open), "{e:?}");
            assert!(e.message.contains("on one millisecond"), "{}", e.message);
            keys.push(e.key.clone());
        } else {
            assert!(
                !e.state.unresolved(),
                "only the versions left out are unresolved: {e:?}"
            );
        }
    }
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn versions_over_the_same_millisecond_capacity_are_named_and_the_rest_is_migrated() {
    let (stack, precise) = crowded_stack().await;
    // 12 Patients and 3 Observations on one millisecond.
    let mut lines: Vec<String> = (0..12)
        .map(|k| line("Patient", &format!("crowd-{k:02}"), &precise(k)))
        .collect();
    lines.extend((0..3).map(|k| line("Observation", &format!("crowd-obs-{k}"), &precise(k))));
    let (_, errors) = load_into(stack.source.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");

    run_to_completion(&stack, 300).await;

    // Newest versions first, then by id: the first five ids fit, the other seven are named.
    let expected: Vec<String> = (5..12).map(|k| format!("Patient|crowd-{k:02}|1")).collect();
    assert_eq!(left_out(&stack).await, expected);
    let dst = stack.destination.store();
    for k in 0..12 {
        let there = dst.resource("Patient", &format!("crowd-{k:02}")).is_some();
        assert_eq!(there, k < 5, "crowd-{k:02}");
    }
    for k in 0..3 {
        assert!(dst.resource("Observation", &format!("crowd-obs-{k}")).is_some());
    }

    // Cut-over names the loss until an operator accepts it.
    let final_check = crate::cutover::final_check();
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(!report.ready, "{report:?}");
    let accepted = stack
        .engine
        .accept_failures(
            &Selection::Keys(expected.clone()),
            "load-test records; the destination cannot hold them on one millisecond",
        )
        .await
        .unwrap();
    assert_eq!(accepted, 7);
    let report = cutover(&stack._app, &final_check).await.unwrap();
    assert!(report.ready, "{report:?}");
    assert_eq!(report.accepted_failures.len(), 7, "{report:?}");
}

/// The rows the destination already holds on a crowded millisecond take their share of the capacity: a payload
/// that would fit on its own (4 of 5) but not beside the 3 held is trimmed to the room left (2), not sent whole
/// to be refused again and again.
#[tokio::test]
async fn rows_the_destination_already_holds_on_a_millisecond_leave_less_room() {
    let (stack, precise) = crowded_stack().await;
    // Written at the destination by something else before the migration (another source, or the REST API).
    let held: Vec<String> = (0..3)
        .map(|k| line("Patient", &format!("held-{k}"), &precise(20 + k)))
        .collect();
    let (_, errors) = load_into(stack.destination.store(), &held);
    assert!(errors.is_empty(), "{errors:?}");
    let lines: Vec<String> = (0..4)
        .map(|k| line("Patient", &format!("crowd-{k:02}"), &precise(k)))
        .collect();
    let (_, errors) = load_into(stack.source.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");

    run_to_completion(&stack, 300).await;

    assert_eq!(left_out(&stack).await, ["Patient|crowd-02|1", "Patient|crowd-03|1"]);
    let dst = stack.destination.store();
    for k in 0..4 {
        assert_eq!(
            dst.resource("Patient", &format!("crowd-{k:02}")).is_some(),
            k < 2,
            "crowd-{k:02}"
        );
    }
    for k in 0..3 {
        assert!(dst.resource("Patient", &format!("held-{k}")).is_some(), "held-{k}");
    }
}
