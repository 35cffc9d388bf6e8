//! Issue 25: what the tool tells an operator is always true, through the binary as an operator runs it. `status`
//! says STALLED when no tick has run, `waiting` with the server and its answer during an outage, names the
//! versions not at the destination; `verify` and `cutover` check the configured scope and say so; `--json`
//! prints one JSON document whatever happens.

use chrono::{TimeDelta, Utc};
use serde_json::Value;

use crate::cli::{cli, cli_with};
use crate::migration::{run_to_completion, seed, stack};

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Changes columns of the cursor row, as the timers would have written them.
async fn set_cursor(stack: &crate::migration::Stack, columns: &[(&str, &str)], numbers: &[(&str, i64)]) {
    let settings = stack._app.settings();
    let table = stack._app.tables().table(&settings.chunk_table).unwrap();
    let m = &settings.migration;
    let mut row = table
        .get(&m.partition_key, &m.row_key)
        .await
        .unwrap()
        .expect("the cursor row");
    for (k, v) in columns {
        row.set_str(k, *v);
    }
    for (k, v) in numbers {
        row.set_i64(k, *v);
    }
    table
        .replace(&row, &fhir_migration_tool::storage::tables::IfMatch::Any)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_stalled_waiting_and_what_is_not_at_the_destination() {
    let stack = stack(&[]).await;
    seed(&stack, 200, 31);
    run_to_completion(&stack, 200).await;

    // The timers recorded their ticks: a status right after says when, and the migration is caught up.
    let out = tokio::task::block_in_place(|| cli(&stack, &["status", "--json"]));
    assert_eq!(out.status.code(), Some(0));
    let s = json(&out);
    assert!(s["lastTickAt"].is_string(), "{s}");
    assert!(s["lastTickSecondsAgo"].as_i64().unwrap() < 120, "{s}");
    assert_eq!(s["progress"]["state"], "caughtUp", "{s}");
    assert_eq!(s["progress"]["migratedVersions"], s["progress"]["exportedVersions"]);
    assert!(s["waiting"].is_null());

    // Fourteen minutes without a tick: the Function App is stopped; status does not say "caught up".
    let quiet = fhir_migration_tool::fhir::format_instant(Utc::now() - TimeDelta::minutes(14));
    set_cursor(&stack, &[("LastTickAt", &quiet)], &[]).await;
    let out = tokio::task::block_in_place(|| cli(&stack, &["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    // It ran and found something wrong: exit 1, with why on stderr.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: the migration is stalled: no timer tick since"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "state:             STALLED (no timer tick since {quiet}, 14 min ago"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("last timer tick:   {quiet} (14 min ago)")),
        "{text}"
    );
    let out = tokio::task::block_in_place(|| cli(&stack, &["status", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let s = json(&out);
    assert_eq!(s["progress"]["state"], "stalled");
    assert!(s["progress"]["etaSeconds"].is_null());

    // Ticks failing on the source: waiting, with the server, its answer, since when and how many times.
    let now = fhir_migration_tool::fhir::format_instant(Utc::now());
    let since = fhir_migration_tool::fhir::format_instant(Utc::now() - TimeDelta::minutes(2));
    set_cursor(
        &stack,
        &[
            ("LastTickAt", &now),
            ("DeferredServer", "source"),
            ("DeferredAnswer", "HTTP 503"),
            ("DeferredSince", &since),
        ],
        &[("DeferredTicks", 7), ("maxExportRetries", 1)],
    )
    .await;
    let out = tokio::task::block_in_place(|| cli(&stack, &["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().next().unwrap_or_default().starts_with(&format!(
            "state:             waiting (the source answers HTTP 503 since {since} (2 min ago), 7 time(s) in a row)"
        )),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "failures:          1 counted"), "{text}");
    let s = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    assert_eq!(s["progress"]["state"], "waiting");
    assert_eq!(
        s["waiting"],
        serde_json::json!({ "server": "source", "answer": "HTTP 503", "since": since, "times": 7 })
    );

    // The next tick that succeeds clears it (the engine records it).
    stack.engine.starter_tick(Utc::now()).await.unwrap();
    let s = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    assert!(s["waiting"].is_null(), "{s}");
    assert_ne!(s["progress"]["state"], "waiting");
}

/// A command, the settings it runs with, and what its fix names.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

/// Every command with `--json` prints one JSON document on stdout, also when storage or a server cannot be
/// reached: an error object with a message, a fix and the exit code, which is the process's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_command_prints_one_document_when_storage_or_a_server_is_unreachable() {
    let stack = stack(&[]).await;
    let connection = stack.source_settings.get("AZURE_StorageConnectionString").unwrap();
    let stopped = crate::support::on_a_closed_port(connection);
    let no_storage = [("AZURE_StorageConnectionString", stopped.as_str())];
    let no_source = [("AZURE_SourceUri", "http://127.0.0.1:1")];
    let cases: [Case; 8] = [
        (&["status", "--json"], &no_storage, "AZURE_StorageConnectionString"),
        (&["failures", "--json"], &no_storage, "AZURE_StorageConnectionString"),
        (&["plan", "--json"], &no_storage, "AZURE_StorageConnectionString"),
        (&["cutover", "--json"], &no_storage, "AZURE_StorageConnectionString"),
        (
            &["verify", "--mode", "surface", "--json"],
            &no_source,
            "AZURE_SourceUri",
        ),
        (&["cutover", "--json"], &no_source, "AZURE_SourceUri"),
        (&["reconcile", "--json"], &no_source, "AZURE_SourceUri"),
        (&["plan", "--json"], &no_source, "AZURE_SourceUri"),
    ];
    for (args, overrides, fix) in cases {
        let out = tokio::task::block_in_place(|| cli_with(&stack, args, overrides));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc = json(&out);
        let error = &doc["error"];
        assert_eq!(error["exitCode"], 2, "{args:?}: {doc}");
        assert!(!error["message"].as_str().unwrap().is_empty(), "{args:?}: {doc}");
        assert!(error["fix"].as_str().unwrap().contains(fix), "{args:?}: {doc}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("error: ") && stderr.contains("fix: "),
            "{args:?}: {stderr}"
        );
    }
    // Preflight runs against anything and reports each check: a report, exit 1.
    let out = tokio::task::block_in_place(|| cli_with(&stack, &["preflight", "--json"], &no_storage));
    assert_eq!(out.status.code(), Some(1));
    assert!(json(&out)["checks"].is_array());
    // Invalid settings: still one document.
    let out = tokio::task::block_in_place(|| {
        cli_with(&stack, &["status", "--json"], &[("AZURE_ExportChunkDuration", "Weeks")])
    });
    assert_eq!(out.status.code(), Some(2));
    assert!(
        json(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AZURE_ExportChunkDuration")
    );
}

/// Per-type mode over two of the source's types: `check-config` warns, `plan` shows the per-type exports,
/// `verify` checks those two types and says so, and `cutover --final` is NOT READY on whole-server totals
/// until the operator names the configured scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_scope_is_named_and_cut_over_only_when_named() {
    let stack = stack(&[]).await;
    seed(&stack, 300, 32);
    let scope = [
        ("AZURE_IsParallel", "false"),
        ("AZURE_ResourceTypes", "Patient,Observation"),
    ];
    let out = cli_with(&stack, &["check-config"], &scope);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("warning: this configuration migrates part of the source"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = tokio::task::block_in_place(|| cli_with(&stack, &["plan", "--windows", "4"], &scope));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("per-type mode: one export per type and window"),
        "{text}"
    );
    let plan = json(&tokio::task::block_in_place(|| {
        cli_with(&stack, &["plan", "--windows", "4", "--json"], &scope)
    }));
    let rows = plan.as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| r["resourceType"] == "Patient" || r["resourceType"] == "Observation"),
        "{plan}"
    );

    let mut run = vec!["run", "--until-caught-up", "--poll-every", "1", "--starter-every", "1"];
    run.extend(["--max-seconds", "240"]);
    let out = tokio::task::block_in_place(|| cli_with(&stack, &run, &scope));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let out = tokio::task::block_in_place(|| cli_with(&stack, &["verify", "--mode", "all", "--count", "10"], &scope));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("scope: part of the server, as configured: 2 resource type(s): Patient, Observation"),
        "{text}"
    );

    let final_check = [
        "cutover",
        "--final",
        "--quiet-seconds",
        "0",
        "--timeout-seconds",
        "120",
        "--json",
    ];
    let out = tokio::task::block_in_place(|| cli_with(&stack, &final_check, &scope));
    let report = json(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(report["ready"], false);
    assert!(
        report["scope"]
            .as_str()
            .unwrap()
            .starts_with("scope: part of the server")
    );
    let reasons = report["reasons"].to_string();
    assert!(reasons.contains("whole-server totals differ"), "{reasons}");

    let mut named = final_check.to_vec();
    named.extend(["--scope", "configured"]);
    named.retain(|a| *a != "--json");
    let out = tokio::task::block_in_place(|| cli_with(&stack, &named, &scope));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("scope: part of the server, as configured"), "{text}");
    assert!(text.contains("READY for the configured scope"), "{text}");
}

/// A specific run (StartDate/EndDate) is verified within its range: versions outside it are not reported
/// missing, and the report's first line names the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_specific_run_is_verified_within_its_range() {
    let stack = stack(&[]).await;
    seed(&stack, 300, 33);
    let (start, end) = (
        fhir_migration_tool::fhir::format_instant(Utc::now() - TimeDelta::days(20)),
        fhir_migration_tool::fhir::format_instant(Utc::now() - TimeDelta::days(10)),
    );
    let range = [
        ("AZURE_SpecificRun", "true"),
        ("AZURE_StartDate", start.as_str()),
        ("AZURE_EndDate", end.as_str()),
    ];
    let run = [
        "run",
        "--until-caught-up",
        "--poll-every",
        "1",
        "--starter-every",
        "1",
        "--max-seconds",
        "240",
    ];
    let out = tokio::task::block_in_place(|| cli_with(&stack, &run, &range));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = tokio::task::block_in_place(|| cli_with(&stack, &["verify", "--mode", "all", "--count", "10"], &range));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.lines().next().unwrap_or_default().ends_with(&format!(
            "every resource type; lastUpdated from {start} to {end} (AZURE_StartDate, AZURE_EndDate). Nothing outside it is checked"
        )),
        "{text}"
    );
    // The same servers checked as a whole: what lies outside the range is missing, as it should be.
    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "full"]));
    assert_eq!(out.status.code(), Some(1));
    // A range open to the present (a start date only): the history counts send no `_before`, which a server
    // refuses in its future (403). The source has versions after the end the destination stops at: found.
    let open = [("AZURE_StartDate", start.as_str())];
    let out = tokio::task::block_in_place(|| cli_with(&stack, &["verify", "--mode", "surface"], &open));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("lastUpdated from {start} (AZURE_StartDate)")),
        "{text}"
    );
}

/// Ctrl-C of a one-off command ends it with a word and exit code 130 (with `--json`, an error document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_command_says_so_and_exits_130() {
    let stack = stack(&[]).await;
    // A source that refuses connections keeps `verify` retrying long enough to be interrupted.
    let mut child = crate::cli::command(
        &stack,
        &["verify", "--mode", "surface", "--json"],
        &[("AZURE_SourceUri", "http://127.0.0.1:1")],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Interrupt it once it says it is retrying (its signal handler is in place by then).
    let stderr = child.stderr.take().unwrap();
    let (lines, said) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("retrying")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        seen.push(said.recv_timeout(left).expect("a retry line within a minute"));
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    reader.join().unwrap();
    seen.extend(said.try_iter());
    let stderr = seen.join("\n");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: stopped by Ctrl-C"), "{stderr}");
    assert_eq!(json(&out)["error"]["exitCode"], 130);
}

/// A version an import refused: `status` counts what is at the destination (not what was exported), says how
/// many exported versions are not there, names the open failure with its key, and never reads 100.0%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_versions_at_the_destination_and_names_open_failures() {
    let stack = stack(&[("AZURE_SafetyLagSeconds", "1"), ("AZURE_ExportConfirmSeconds", "0")]).await;
    seed(&stack, 200, 34);
    let at = fhir_migration_tool::fhir::format_instant(Utc::now() - TimeDelta::minutes(20));
    let patient = |family: &str| {
        serde_json::json!({ "resourceType": "Patient", "id": "conflict-9", "meta": { "versionId": "1", "lastUpdated": at }, "name": [{ "family": family }] })
            .to_string()
    };
    fhir_emulator::seed::load_into(stack.source.store(), &[patient("Source")]);
    fhir_emulator::seed::load_into(stack.destination.store(), &[patient("Written at the destination")]);
    run_to_completion(&stack, 300).await;

    let s = json(&tokio::task::block_in_place(|| cli(&stack, &["status", "--json"])));
    let p = &s["progress"];
    assert_eq!(
        p["migratedVersions"].as_i64().unwrap() + 1,
        p["exportedVersions"].as_i64().unwrap(),
        "{s}"
    );
    let named = s["openFailures"][0].as_str().unwrap();
    assert!(
        named.starts_with("Patient|conflict-9|1: Patient/conflict-9 version 1 ("),
        "{s}"
    );
    let out = tokio::task::block_in_place(|| cli(&stack, &["status"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(", 1 of them not at the destination (see `failures`)"),
        "{text}"
    );
    assert!(
        text.contains("  not at the destination: Patient|conflict-9|1: "),
        "{text}"
    );
    if let Some(pct) = p["percentVersions"].as_f64() {
        assert!(pct < 100.0, "{s}");
        assert!(!text.lines().next().unwrap_or_default().contains("100.0%"), "{text}");
    }
}
