//! Issue 25, item 3: a re-drive through the binary, as an operator runs it. A resource deleted at the
//! destination after it was migrated (below the cursor, unknown to the failure ledger) comes back through
//! `redrive` over its range and the normal engine (`run`), `verify` is clean again, and what the operator reads
//! (`redrive`, `status`, `failures`) says so at each step.

use serde_json::Value;

use crate::cli::{RUN_UNTIL_CAUGHT_UP, cli, cli_with};
use crate::migration::{assert_same, run_to_completion, seed, stack};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_brings_back_a_resource_deleted_at_the_destination() {
    let stack = stack(&[]).await;
    seed(&stack, 200, 41);
    run_to_completion(&stack, 300).await;
    let before = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    let migrated_through = before["migratedThrough"].as_str().unwrap().to_string();

    // An operator deletes a migrated Patient at the destination, every version of it.
    let (id, first, last) = stack
        .source
        .store()
        .snapshot()
        .into_iter()
        .find(|(k, r)| &*k.0 == "Patient" && r.versions().len() > 1)
        .map(|(k, r)| {
            let at: Vec<i64> = r.versions().iter().map(|v| v.last_updated).collect();
            (k.1.to_string(), at[0], *at.iter().max().unwrap())
        })
        .expect("a Patient with history");
    assert!(stack.destination.store().hard_delete("Patient", &id) > 1);
    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "full"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(&format!("Patient/{id}")), "{}", stdout(&out));

    // Re-drive the range its versions lie in.
    let instant =
        |ms: i64| fhir_migration_tool::fhir::format_instant(chrono::DateTime::from_timestamp_millis(ms).unwrap());
    let (since, till) = (instant(first), instant(last + 1));
    let redrive = ["redrive", "--since", &since, "--till", &till];
    let mut with_json = redrive.to_vec();
    with_json.push("--json");
    let out = tokio::task::block_in_place(|| cli(&stack, &with_json));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let recorded = json(&out);
    assert_eq!(recorded["created"], true, "{recorded}");
    let number = recorded["redrive"]["id"].as_i64().unwrap();
    assert_eq!(recorded["redrive"]["since"], since.as_str());
    assert_eq!(recorded["redrive"]["till"], till.as_str());
    assert_eq!(recorded["redrive"]["state"], "running");
    assert_eq!(recorded["redrive"]["rows"], serde_json::json!([number]));

    // The same command again records nothing new and says so.
    let out = tokio::task::block_in_place(|| cli(&stack, &redrive));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).starts_with(&format!(
            "re-drive {number} of this range and these types is already recorded (window row(s) {number}); nothing new was recorded\n"
        )),
        "{}",
        stdout(&out)
    );
    // A range above the cursor, or one overlapping the re-drive in flight, is refused with what to do.
    let out = tokio::task::block_in_place(|| {
        cli(
            &stack,
            &["redrive", "--since", &since, "--till", "2999-01-01T00:00:00Z", "--json"],
        )
    });
    assert_eq!(out.status.code(), Some(2));
    let error = &json(&out)["error"];
    assert!(
        error["message"].as_str().unwrap().contains("is past what is migrated"),
        "{error}"
    );
    assert!(
        error["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("at or before {migrated_through}")),
        "{error}"
    );
    let out = tokio::task::block_in_place(|| {
        cli(
            &stack,
            &[
                "redrive",
                "--since",
                &since,
                "--till",
                &instant(last),
                "--types",
                "Patient",
            ],
        )
    });
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "error: re-drive {number} ({since} to {till}, every resource type) overlaps this range"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("fix: wait until re-drive {number} has finished")),
        "{said}"
    );

    // `status` shows it in flight.
    let out = tokio::task::block_in_place(|| cli(&stack, &["status"]));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l
            == format!(
                "re-drive:          {number}, {since} to {till}, every resource type: running (0 of 1 row(s) done)"
            )),
        "{text}"
    );
    assert!(text.contains(&format!("  (re-drive {number})")), "{text}");

    // The engine carries it out, through the binary.
    let out = tokio::task::block_in_place(|| cli(&stack, &RUN_UNTIL_CAUGHT_UP));
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!(
            "Re-drive {number} of {since} to {till} done (row {number}); the cursor stays at"
        )),
        "{}",
        stdout(&out)
    );

    let after = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    assert_eq!(after["redrive"]["state"], "finished", "{after}");
    assert!(after["redrive"]["finishedAt"].is_string(), "{after}");
    assert_eq!(
        after["progress"]["exportedVersions"], before["progress"]["exportedVersions"],
        "the re-drive is not counted as migrated again"
    );
    assert!(after["migratedThrough"].as_str().unwrap() >= migrated_through.as_str());
    let out = tokio::task::block_in_place(|| cli(&stack, &["status"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(&format!(
            "re-drive:          {number}, {since} to {till}, every resource type: finished at "
        )),
        "{}",
        stdout(&out)
    );

    // The resource is back, every version, and nothing else changed.
    assert_same(stack.source.store(), stack.destination.store());
    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "full"]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // The versions of the range already at the destination are the same versions: the destination skips them
    // without refusing a line (same lastUpdated, same content), so the ledger records nothing and nothing
    // blocks cut-over.
    let out = tokio::task::block_in_place(|| cli_with(&stack, &["failures", "--all", "--json"], &[]));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(json(&out)["summary"]["total"], 0);
}

/// A re-drive an operator gives up (`redrive --cancel N`): its rows are marked done, the windows after it commit
/// again, the cursor's instant does not move back, and an unknown number or a SearchParameter re-drive is
/// refused with its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_can_be_cancelled_and_the_migration_goes_on() {
    let stack = stack(&[]).await;
    seed(&stack, 60, 43);
    run_to_completion(&stack, 300).await;
    let before = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    let migrated_through = before["migratedThrough"].as_str().unwrap().to_string();
    let since = fhir_migration_tool::fhir::format_instant(chrono::Utc::now() - chrono::TimeDelta::days(30));
    let out = tokio::task::block_in_place(|| {
        cli(
            &stack,
            &["redrive", "--since", &since, "--till", &migrated_through, "--json"],
        )
    });
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let number = json(&out)["redrive"]["id"].as_i64().unwrap().to_string();

    let out = tokio::task::block_in_place(|| cli(&stack, &["redrive", "--cancel", "999999"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: no re-drive 999999 is recorded"));
    let out = tokio::task::block_in_place(|| {
        cli(
            &stack,
            &[
                "redrive",
                "--since",
                &since,
                "--till",
                &migrated_through,
                "--types",
                "SearchParameter",
            ],
        )
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fix: leave SearchParameter out of --types"));

    // Cancelled before any timer ran it: done at once, and again changes nothing.
    for created in [true, false] {
        let out = tokio::task::block_in_place(|| cli(&stack, &["redrive", "--cancel", &number, "--json"]));
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(json(&out)["created"], created, "{}", stdout(&out));
    }
    let out = tokio::task::block_in_place(|| cli(&stack, &RUN_UNTIL_CAUGHT_UP));
    assert!(out.status.success(), "{}", stdout(&out));
    let after = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    assert_eq!(after["redrive"]["state"], "finished", "{after}");
    assert!(
        after["migratedThrough"].as_str().unwrap() >= migrated_through.as_str(),
        "{after}"
    );
    assert_same(stack.source.store(), stack.destination.store());
}
