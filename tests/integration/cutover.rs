//! The cut-over assistant against real servers: NOT READY while a writer is still writing to the source,
//! READY once writes stop and the tool has migrated the last tail, checked and reconciled.

use std::time::Duration;

use chrono::{SecondsFormat, TimeDelta, Utc};
use fhir_emulator::seed::load_into;

use fhir_migration_tool::cutover::{Options, cutover};

use crate::migration::{Stack, run_to_completion, seed, stack};

/// The final check as an operator runs it, with a short quiet period and a generous timeout.
pub fn final_check() -> Options {
    Options {
        final_check: true,
        quiet: Duration::from_secs(2),
        timeout: Duration::from_secs(120),
        poll: Duration::from_millis(200),
        scope_configured: false,
        on_wait: None,
    }
}

/// A look without the final check: no waiting.
fn at_once() -> Options {
    Options {
        final_check: false,
        quiet: Duration::ZERO,
        timeout: Duration::ZERO,
        poll: Duration::ZERO,
        scope_configured: false,
        on_wait: None,
    }
}

/// Writes resources whose lastUpdated is a second ahead of the server's clock.
fn write_ahead(stack: &Stack, ids: &[&str]) {
    let ahead = (Utc::now() + TimeDelta::seconds(1)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let lines: Vec<String> = ids
        .iter()
        .map(|id| {
            serde_json::json!({ "resourceType": "Patient", "id": id, "meta": { "versionId": "1", "lastUpdated": ahead } })
                .to_string()
        })
        .collect();
    let (_, errors) = load_into(stack.source.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn not_ready_while_the_source_is_written_and_ready_after() {
    let stack = stack(&[("AZURE_SafetyLagSeconds", "1"), ("AZURE_ExportConfirmSeconds", "0")]).await;
    seed(&stack, 300, 21);
    run_to_completion(&stack, 200).await;
    let app = &stack._app;
    // A write whose lastUpdated is ahead of the server's clock (by a second here; by under a millisecond when
    // a write lands in the millisecond the check runs): the count of what is pending must wait for its end to
    // pass, since the server refuses a `_before` in its future (403), rather than fail the check.
    write_ahead(&stack, &["ahead"]);

    let lag = cutover(app, &at_once()).await.unwrap();
    assert!(
        !lag.ready && lag.reasons.iter().any(|r| r.contains("--final")),
        "{lag:?}"
    );
    assert_eq!(lag.pending_source_versions, 1, "the write ahead, and only it: {lag:?}");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(fhir_emulator::writer::run(
        fhir_emulator::writer::WriterParams {
            target: stack.source.base_url.clone(),
            rate: 20.0,
            seed: 9,
            types: vec!["Patient".into()],
            token: None,
            hard_deletes: false,
        },
        async {
            let _ = stopped.await;
        },
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = Options {
        final_check: true,
        quiet: Duration::from_secs(2),
        timeout: Duration::from_secs(3),
        poll: Duration::from_millis(200),
        scope_configured: false,
        on_wait: None,
    };
    let report = cutover(app, &busy).await.unwrap();
    assert!(!report.ready, "{report:?}");
    assert!(
        report.reasons.iter().any(|r| r.contains("still being written")),
        "{report:?}"
    );
    assert!(report.pending_source_versions > 0, "{report:?}");

    let _ = stop.send(());
    let writes = writer.await.unwrap();
    assert!(writes.created > 0);
    let quiet = final_check();
    let skipped = || {
        stack
            .telemetry
            .events()
            .iter()
            .filter(|e| e.name == "WindowSkipped")
            .count()
    };
    let skipped_before = skipped();
    let report = cutover(app, &quiet).await.unwrap();
    assert!(report.ready, "{report:?}");
    // The tail is driven to the millisecond without a loop of empty sub-millisecond windows (each one a cursor
    // write and an event; the defect wrote about a hundred per call).
    assert!(
        skipped() - skipped_before <= 3,
        "{} empty ranges skipped by one --final",
        skipped() - skipped_before
    );
    assert_eq!(report.full_check_passed, Some(true));
    assert_eq!(report.reconcile_clean, Some(true));
    assert_eq!((report.pending_source_versions, report.windows_in_flight), (0, 0));
}

/// A de-identified migration: the destination's content differs from the source by design (here the emulator's
/// truncation rule rewrites one Observation), which the content comparison would report forever. Verification
/// and `--final` compare ids, versions, lastUpdated and counts instead, label the content "not comparable
/// (de-identified)", and say READY; a real difference in an id, a version or a lastUpdated is still reported.
#[tokio::test]
async fn a_deidentified_migration_is_ready_with_content_not_comparable_and_real_differences_still_show() {
    use chrono::{TimeDelta, Utc};
    use fhir_migration_tool::verify::full::{Kind, full, full_with};
    use fhir_migration_tool::verify::local::{Request, run};
    use fhir_migration_tool::verify::runs::Checks;
    use fhir_migration_tool::verify::{Content, NOT_COMPARABLE, deep};
    use serde_json::Value;

    let stack = stack(&[
        ("AZURE_SafetyLagSeconds", "1"),
        ("AZURE_ExportConfirmSeconds", "0"),
        ("AZURE_IsExportDeidentified", "true"),
        ("AZURE_ConfigFile", "DemoTruncate.json"),
    ])
    .await;
    let params = fhir_emulator::seed::SeedParams {
        resources: 200,
        seed: 23,
        overflow_decimal: true,
        end: Some((Utc::now() - TimeDelta::minutes(10)).timestamp_millis()),
        ..Default::default()
    };
    let (_, errors) = fhir_emulator::seed::load_into(stack.source.store(), &fhir_emulator::seed::generate(&params));
    assert!(errors.is_empty(), "{errors:?}");
    // The rule the emulator applies (the shipped demo config keeps every number; the emulator does not apply it).
    let blob = fhir_emulator::blob::BlobClient::new(fhir_emulator::blob::BlobConfig {
        endpoint: url::Url::parse(&stack.azurite.blob_endpoint()).unwrap(),
        account: fhir_testkit::DEV_ACCOUNT.into(),
        key: fhir_testkit::DEV_KEY.into(),
    })
    .unwrap();
    blob.ensure_container("anonymization").await.unwrap();
    blob.put(
        "anonymization",
        "DemoTruncate.json",
        fhir_emulator::TRUNCATE_QUANTITIES.as_bytes().to_vec(),
    )
    .await
    .unwrap();
    run_to_completion(&stack, 300).await;
    let (src, dst) = (stack.engine.source(), stack.engine.destination());
    let types = stack.engine.settings().resource_types.clone();

    // Content compared, the de-identified Observation is a difference that no migration can ever remove.
    let raw = full(src, dst, &types, true).await.unwrap();
    assert_eq!(raw.different, 1, "{:?}", raw.differences);
    assert_eq!(raw.differences[0].id, "overflow-decimal");

    let app = &stack._app;
    let report = cutover(app, &final_check()).await.unwrap();
    assert!(report.ready, "{report:?}");
    assert_eq!(report.full_check_passed, Some(true));
    assert_eq!(report.content.as_deref(), Some(NOT_COMPARABLE));
    let text = fhir_migration_tool::cutover::describe(&report);
    assert!(
        text.contains("content:               not comparable (de-identified)"),
        "{text}"
    );
    assert!(
        text.contains("READY: the destination holds every resource and version"),
        "{text}"
    );
    assert_eq!(serde_json::to_value(&report).unwrap()["content"], NOT_COMPARABLE);

    // `verify` (every check): passes, and every report carries the label.
    let outcome = run(
        &stack.engine,
        Request {
            checks: Checks::parse("all").unwrap(),
            types: types.clone(),
            count: Some(50),
            include_empty: false,
        },
    )
    .await
    .unwrap();
    assert!(outcome.passed, "{}", outcome.text);
    let out = &outcome.output;
    assert_eq!(out["Content"], NOT_COMPARABLE, "{out}");
    assert_eq!(out["FullCheck"]["content"], NOT_COMPARABLE, "{out}");
    let rows = out["DeepCheck"].as_array().unwrap();
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r["content"] == NOT_COMPARABLE),
        "{out}"
    );
    assert!(
        outcome
            .text
            .contains("not comparable (de-identified) with DemoTruncate.json"),
        "{}",
        outcome.text
    );

    // The same through a persisted run (E2ETest_Http, worked on in slices).
    let table = app.tables().table(&app.settings().export_table).unwrap();
    let runs = || fhir_migration_tool::verify::runs::Runs::new(table.clone(), &stack.engine).with_slice(Duration::ZERO);
    let started = runs()
        .start(Checks::parse("all").unwrap(), types.clone(), Some(30))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let finished = loop {
        runs().tick().await.unwrap();
        let now = runs().get(&started.id).await.unwrap().unwrap();
        if !now.is_open() {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "the run did not finish");
    };
    let body = finished.status_body();
    assert_eq!(body["runtimeStatus"], "Completed", "{body}");
    assert_eq!(body["passed"], true, "{body}");
    assert_eq!(body["output"]["Content"], NOT_COMPARABLE, "{body}");
    assert_eq!(body["output"]["FullCheck"]["content"], NOT_COMPARABLE, "{body}");
    assert!(
        body["output"]["DeepCheck"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["content"] == NOT_COMPARABLE),
        "{body}"
    );

    // Real differences: a Patient's current version moved by a second, another's versionId changed, a third gone.
    let live: Vec<_> = stack
        .destination
        .store()
        .snapshot()
        .into_iter()
        .filter(|(k, r)| &*k.0 == "Patient" && r.versions().len() == 1 && !r.current().unwrap().deleted)
        .take(3)
        .collect();
    let ids: Vec<String> = live.iter().map(|(k, _)| k.1.to_string()).collect();
    for (i, (_, r)) in live.iter().take(2).enumerate() {
        let mut body: Value = serde_json::from_str(&r.current().unwrap().body).unwrap();
        if i == 0 {
            let t = chrono::DateTime::parse_from_rfc3339(body["meta"]["lastUpdated"].as_str().unwrap()).unwrap();
            body["meta"]["lastUpdated"] =
                Value::String((t + TimeDelta::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        } else {
            body["meta"]["versionId"] = Value::String("7".into());
        }
        stack.destination.store().hard_delete("Patient", &ids[i]);
        let (_, errors) = fhir_emulator::seed::load_into(stack.destination.store(), &[body.to_string()]);
        assert!(errors.is_empty(), "{errors:?}");
    }
    stack.destination.store().hard_delete("Patient", &ids[2]);
    let f = full_with(src, dst, &types, true, Content::NotComparable).await.unwrap();
    assert!(!f.passed);
    assert_eq!(f.content, NOT_COMPARABLE);
    assert_eq!(f.different, 0, "content is never a difference: {:?}", f.differences);
    let has = |kind: Kind, id: &str| f.differences.iter().any(|d| d.kind == kind && d.id == id);
    for id in &ids[..2] {
        assert!(
            has(Kind::Missing, id) && has(Kind::Extra, id),
            "{id}: {:?}",
            f.differences
        );
    }
    assert!(has(Kind::Missing, &ids[2]), "{:?}", f.differences);
    assert_eq!((f.missing, f.extra), (3, 2), "{:?}", f.differences);
    // The deep check names the changed fields, and the de-identified Observation passes.
    let patients = stack
        .source
        .store()
        .snapshot()
        .iter()
        .filter(|(k, _)| &*k.0 == "Patient")
        .count();
    let plan = [("Patient".to_string(), patients), ("Observation".to_string(), 1000)];
    let d = deep::deep(src, dst, &plan, &[], Content::NotComparable).await.unwrap();
    let row = |id: &str| {
        d.rows
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} not sampled"))
    };
    assert_eq!(row(&ids[0]).differences, ["meta.lastUpdated"]);
    assert_eq!(row(&ids[1]).differences, ["meta.versionId"]);
    assert_eq!(row(&ids[2]).differences, ["(missing at destination)"]);
    assert_eq!(row("overflow-decimal").result, "Pass");
    assert_eq!(
        d.failed,
        3,
        "{:?}",
        d.rows.iter().filter(|r| r.result != "Pass").collect::<Vec<_>>()
    );
    let report = cutover(app, &final_check()).await.unwrap();
    assert!(!report.ready, "{report:?}");
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("3 missing, 2 extra and 0 different")),
        "{report:?}"
    );
}

/// The product's default, current resources only, for part of the server (`AZURE_StartDate`): before anything
/// is migrated, what is pending is what the range holds at the source, not the whole server; once caught up,
/// exactly the writes after the migrated-through point.
#[tokio::test]
async fn current_resources_pending_are_counted_within_the_configured_range() {
    let start = Utc::now() - TimeDelta::days(10);
    let start_text = fhir_migration_tool::fhir::format_instant(start);
    let stack = stack(&[
        ("AZURE_ExportWithHistory", "false"),
        ("AZURE_ExportWithDelete", "false"),
        ("AZURE_StartDate", start_text.as_str()),
        ("AZURE_SafetyLagSeconds", "1"),
        ("AZURE_ExportConfirmSeconds", "0"),
    ])
    .await;
    seed(&stack, 200, 23);
    let current: Vec<_> = stack
        .source
        .store()
        .snapshot()
        .into_iter()
        .filter_map(|(_, r)| r.current().filter(|v| !v.deleted).map(|v| v.last_updated))
        .collect();
    let in_range = current.iter().filter(|t| **t >= start.timestamp_millis()).count() as u64;
    assert!(
        0 < in_range && in_range < current.len() as u64,
        "{in_range} of {}",
        current.len()
    );

    let before = cutover(&stack._app, &at_once()).await.unwrap();
    assert_eq!(before.migrated_through, None, "{before:?}");
    assert_eq!(before.pending_source_versions, in_range, "{before:?}");

    run_to_completion(&stack, 200).await;
    write_ahead(&stack, &["ahead-1", "ahead-2"]);
    let after = cutover(&stack._app, &at_once()).await.unwrap();
    assert_eq!(after.pending_source_versions, 2, "the two writes ahead: {after:?}");
    assert!(!after.ready, "{after:?}");
}
