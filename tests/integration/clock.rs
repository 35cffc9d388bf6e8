//! The server's clock (issue 16): windows end at the earlier of this machine's clock and the source server's
//! (its `Date` header) minus the safety lag, so a machine whose clock runs ahead does not commit windows past
//! what the server has written, and the skew is reported.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use fhir_migration_tool::engine::{Engine, Timing};
use serde_json::json;

use crate::migration::{seed, stack};

/// One round of the three timers with this machine's clock `ahead` of the servers'.
async fn round_ahead(engine: &Engine, ahead: TimeDelta) -> Vec<String> {
    let now = Utc::now() + ahead;
    let mut lines = Vec::new();
    for result in [
        engine.starter_tick(now).await,
        engine.export_status_tick(now).await,
        engine.import_status_tick(now).await,
    ] {
        match result {
            Ok(r) => lines.extend(r.lines),
            Err(e) => assert!(e.is_conflict(), "tick failed: {e}"),
        }
    }
    lines
}

#[tokio::test]
async fn a_clock_ahead_of_the_server_still_migrates_late_writes() {
    let stack = stack(&[
        ("AZURE_SafetyLagSeconds", "5"),
        ("AZURE_ExportConfirmSeconds", "0"),
        ("AZURE_ExportChunkTime", "30"),
    ])
    .await;
    seed(&stack, 150, 3);
    // Short tails, so the test need not wait a minute for each.
    let engine = stack.engine.clone().with_timing(Timing {
        confirm_delay: Duration::from_millis(5),
        min_tail: TimeDelta::seconds(1),
        ..Timing::default()
    });
    let ahead = TimeDelta::minutes(3);
    let mut said = Vec::new();
    for _ in 0..40 {
        said.extend(round_ahead(&engine, ahead).await);
    }
    let status = engine.status(Utc::now() + ahead).await.unwrap();
    let through = chrono::DateTime::parse_from_rfc3339(status.migrated_through.as_deref().unwrap()).unwrap();
    assert!(
        through <= Utc::now(),
        "windows never end past the server's own clock: migrated through {through}"
    );
    let skew = status.source_clock_skew_seconds.expect("the source has answered");
    assert!((170..=190).contains(&skew), "skew {skew} s");
    assert!(said.iter().any(|l| l.starts_with("Clock skew")), "{said:?}");
    assert!(stack.telemetry.events().iter().any(|e| e.name == "ClockSkew"));

    // Writes made now, by the server's clock, are behind this machine's "now" by three minutes: they must
    // still be migrated.
    for k in 0..5 {
        stack
            .source
            .store()
            .put(
                "Patient",
                &format!("late-{k}"),
                json!({ "resourceType": "Patient", "id": format!("late-{k}") }),
            )
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        round_ahead(&engine, ahead).await;
        let arrived = (0..5)
            .filter(|k| {
                stack
                    .destination
                    .store()
                    .resource("Patient", &format!("late-{k}"))
                    .is_some()
            })
            .count();
        if arrived == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{arrived} of 5 late writes migrated");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
