//! The CLI without a Functions host: `plan` previews, `run --until-caught-up` migrates, `status` reports —
//! the real binary, configured through the environment as an operator would.

use std::process::Command;

use serde_json::Value;

use crate::migration::{assert_same, seed, stack, stack_on};

/// `run` driving the timers every second until caught up, stopping after four minutes in any case.
pub(crate) const RUN_UNTIL_CAUGHT_UP: [&str; 8] = [
    "run",
    "--until-caught-up",
    "--poll-every",
    "1",
    "--starter-every",
    "1",
    "--max-seconds",
    "240",
];

pub(crate) fn cli(stack: &crate::migration::Stack, args: &[&str]) -> std::process::Output {
    cli_with(stack, args, &[])
}

/// The binary with the stack's settings, `overrides` replacing some of them.
pub(crate) fn cli_with(
    stack: &crate::migration::Stack,
    args: &[&str],
    overrides: &[(&str, &str)],
) -> std::process::Output {
    command(stack, args, overrides).output().expect("the binary runs")
}

pub(crate) fn command(stack: &crate::migration::Stack, args: &[&str], overrides: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhir-migration-tool"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for name in [
        "AZURE_StorageConnectionString",
        "AZURE_ChunkTableName",
        "AZURE_ExportTableName",
        "AZURE_SourceUri",
        "AZURE_DestinationUri",
        "AZURE_ExportWithHistory",
        "AZURE_ExportWithDelete",
        "AZURE_ExportChunkTime",
        "AZURE_SafetyLagSeconds",
    ] {
        cmd.env(name, stack.source_settings.get(name).unwrap());
    }
    cmd.env("AZURE_ExportConfirmSeconds", "0");
    cmd.envs(overrides.iter().copied());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_run_and_status_drive_a_migration_without_a_host() {
    let stack = stack(&[]).await;
    seed(&stack, 600, 21);

    let out = cli(&stack, &["plan", "--windows", "5", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan.as_array().unwrap().len(), 5);
    assert!(plan[0]["resources"].as_u64().unwrap() > 0);
    assert_eq!(plan[0]["till"], plan[1]["since"], "windows chain without gaps");

    // `run` blocks until caught up: wait for it off the runtime's workers so the emulators keep serving.
    let out = tokio::task::block_in_place(|| cli(&stack, &RUN_UNTIL_CAUGHT_UP));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Export") && stdout.contains("migrated through"),
        "{stdout}"
    );
    // Each engine message is printed once (it used to come again as a "[Function] message" line), and the
    // log line names the function that said it.
    let finished: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("fhir_migration_tool::engine: ").map(|(_, m)| m))
        .filter(|m| m.starts_with("Export ") && m.contains(" finished"))
        .collect();
    assert!(!finished.is_empty(), "{stdout}");
    for message in finished {
        assert_eq!(stdout.matches(message).count(), 1, "printed more than once: {message}");
    }
    assert!(stdout.contains(r#"function{name="ExportStatus"}"#), "{stdout}");
    assert_same(stack.source.store(), stack.destination.store());

    assert!(
        stdout.contains("effective configuration"),
        "run logs its configuration once"
    );
    let out = tokio::task::block_in_place(|| cli(&stack, &["status", "--json"]));
    // A one-off command answers without the configuration in front of it (issue 25, item 6).
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("effective configuration") && said.lines().count() <= 2,
        "{said}"
    );
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["windowsInFlight"], serde_json::json!([]));
    assert!(status["windowsCommitted"].as_i64().unwrap() >= 12);

    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "all", "--count", "30", "--json"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Progress without a terminal: plain lines on stderr, no escape sequences, a summary per check.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(!progress.contains('\x1b') && !progress.contains('\r'), "{progress:?}");
    for summary in [
        "surface check: ",
        "deep check: 30 sampled resources compared, 0 differ (in ",
        "full check: ",
    ] {
        assert!(
            progress.lines().any(|l| l.starts_with(summary) && l.contains("(in ")),
            "{summary} in {progress}"
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = |check: &str| report[check].as_array().cloned().unwrap_or_default();
    assert!(!rows("SurfaceCheck").is_empty() && rows("SurfaceCheck").iter().all(|r| r["Result"] == "Pass"));
    assert_eq!(rows("DeepCheck").len(), 30, "the sample size asked for");
    assert!(rows("DeepCheck").iter().all(|r| r["Result"] == "Pass"), "{report}");
    assert_eq!(report["FullCheck"]["passed"], true);
    // An unknown mode is refused before anything runs.
    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "quick"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mode 'quick'"));
    // Damage one resource at the destination: verify now fails (non-zero exit) and names it.
    stack
        .destination
        .store()
        .put(
            "Patient",
            "only-at-destination",
            serde_json::json!({ "resourceType": "Patient", "id": "only-at-destination" }),
        )
        .unwrap();
    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "full"]));
    assert_eq!(out.status.code(), Some(1), "differences found: exit 1");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Extra Patient/only-at-destination"));
    // With --json, stdout is JSON and nothing else, also when the check fails; the error is on stderr.
    let out = tokio::task::block_in_place(|| cli(&stack, &["verify", "--mode", "full", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let parsed: Result<Value, _> = serde_json::from_slice(&out.stdout);
    assert!(
        parsed.is_ok(),
        "stdout is one JSON document: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: verification found differences"));
}

#[tokio::test]
async fn check_config_lists_every_problem_and_never_prints_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-migration-tool"))
        .arg("check-config")
        .env_clear()
        .env("AZURE_StorageConnectionString", "UseDevelopmentStorage=true")
        .env("AZURE_SourceUri", "https://src.example")
        .env("AZURE_DestinationUri", "not a url")
        .env("AZURE_ExportChunkDuration", "Weeks")
        .env("AZURE_ClientCredential", "true")
        .env("AZURE_ClientSecret", "super-secret-value")
        .output()
        .unwrap();
    // Could not run: exit 2, the problems on stderr, nothing on stdout.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in ["AZURE_DestinationUri", "AZURE_ExportChunkDuration", "AZURE_TenantId"] {
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("super-secret-value"));
}

/// `check-config` lists the effective configuration readably (defaults marked, secrets redacted, long lists
/// summarised) and warns about a misspelled setting with the name it was probably meant to be.
#[tokio::test]
async fn check_config_lists_the_effective_configuration_and_catches_typos() {
    let out = Command::new(env!("CARGO_BIN_EXE_fhir-migration-tool"))
        .arg("check-config")
        .env_clear()
        .env("AZURE_StorageConnectionString", "UseDevelopmentStorage=true")
        .env("AZURE_SourceUri", "https://src.example")
        .env("AZURE_DestinationUri", "https://dst.example")
        .env("AZURE_ExportChunkTme", "5")
        .env("AZURE_ClientCredential", "true")
        .env("AZURE_TenantId", "t")
        .env("AZURE_ClientId", "c")
        .env("AZURE_ClientSecret", "super-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "  AZURE_SourceUri = https://src.example",
        "  AZURE_ExportChunkTime = 30   (default)",
        "  AZURE_ClientSecret = <redacted>",
        "  AZURE_StorageConnectionString = <redacted>",
        "warning: AZURE_ExportChunkTme is not a setting this tool reads (did you mean AZURE_ExportChunkTime?); its value is ignored",
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains("AZURE_ResourceTypes = 145 items: Account, ActivityDefinition"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("super-secret-value") && !stdout.contains("Url {"),
        "{stdout}"
    );
}

/// A reader that goes away (`check-config | head -1`, `status 2>&1 | head -5`) ends the command quietly instead
/// of a panic (exit code 101), with its exit code unchanged.
#[tokio::test]
async fn a_closed_output_pipe_is_not_a_panic() {
    // Both ends closed: a command that fails (unreachable storage) writes its error to a closed stderr.
    let piped = |command: &str, storage: &str| {
        Command::new(env!("CARGO_BIN_EXE_fhir-migration-tool"))
            .arg(command)
            .env_clear()
            .env("AZURE_StorageConnectionString", storage)
            .env("AZURE_SourceUri", "https://src.example")
            .env("AZURE_DestinationUri", "https://dst.example")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stopped = crate::support::on_a_closed_port(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1",
    );
    let mut child = piped("status", &stopped);
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "a panic on the closed pipe");
    assert_eq!(status.code(), Some(2), "could not run: exit code 2 as documented");

    let mut child = piped("check-config", "UseDevelopmentStorage=true");
    // Close the reading end before the tool writes its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// A server that refuses connections: the retries show on stderr while they happen ("retrying 4/4 in 4 s:
/// could not connect"), and each command fails within the documented minute with exit code 2, instead of
/// minutes of silence (a surface check over 146 types used to wait out every type's retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_shows_its_retries_and_fails_within_a_minute() {
    let stack = stack(&[]).await;
    let refused = [("AZURE_SourceUri", "http://127.0.0.1:1")];
    for args in [
        &["plan", "--json"][..],
        &["verify", "--mode", "surface", "--json"],
        &["preflight"],
    ] {
        let started = std::time::Instant::now();
        let out = tokio::task::block_in_place(|| cli_with(&stack, args, &refused));
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = if args[0] == "preflight" { 1 } else { 2 };
        assert_eq!(out.status.code(), Some(expected), "{args:?}: {stderr}");
        assert!(
            stderr.contains("retrying 4/4 in") && stderr.contains("could not connect"),
            "{args:?}: the retries are shown: {stderr}"
        );
        assert!(
            elapsed < std::time::Duration::from_secs(75),
            "{args:?} took {elapsed:?}"
        );
        if args[0] == "preflight" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("did not answer"),
                "connection advice, not a role: {stdout}"
            );
            assert!(stdout.contains("not run: the source could not be reached"), "{stdout}");
        }
    }
}

/// Storage that does not answer gets advice about the connection, not a role to grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_against_stopped_storage_advises_on_the_connection() {
    let stack = stack(&[]).await;
    let connection = stack.source_settings.get("AZURE_StorageConnectionString").unwrap();
    let stopped = crate::support::on_a_closed_port(connection);
    assert_ne!(stopped, connection);
    let started = std::time::Instant::now();
    let out = tokio::task::block_in_place(|| {
        cli_with(
            &stack,
            &["preflight", "--json"],
            &[("AZURE_StorageConnectionString", &stopped)],
        )
    });
    // The blob SDK's own default retried a refused connection for over a minute.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in ["state tables", "state blobs"] {
        let check = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(check["passed"], false);
        let fix = check["fix"].as_str().unwrap();
        assert!(
            fix.contains("did not answer") && !fix.contains("grant"),
            "{name}: {fix}"
        );
    }
}

/// `run --max-seconds 3` stops after about three seconds, not after the next 30-second poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_at_max_seconds() {
    let stack = stack(&[]).await;
    seed(&stack, 50, 5);
    let started = std::time::Instant::now();
    let out = tokio::task::block_in_place(|| cli(&stack, &["run", "--max-seconds", "3"]));
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(elapsed < std::time::Duration::from_secs(20), "ran {elapsed:?}");
}

/// `run` is a long-running process: a storage outage of several seconds is ridden out like the timers do,
/// and the migration completes once storage is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_rides_out_a_storage_outage() {
    let mut stack = stack_on(fhir_testkit::Azurite::start_persistent().await.unwrap(), &[]).await;
    seed(&stack, 300, 9);
    let child = command(&stack, &RUN_UNTIL_CAUGHT_UP, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start, then take storage away for eight seconds.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stack.azurite.stop();
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    stack.azurite.restart().await.unwrap();
    let out = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("could not reach table storage"),
        "the outage was met, and logged: {stdout}"
    );
    assert_same(stack.source.store(), stack.destination.store());
}
