//! docs/local-stack.md is right: its settings and its tool commands (steps 4 and 5) run as written against
//! Azurite and two emulators, with only the ports and the binary's path substituted; the processes it starts by
//! hand (steps 1 to 3) are started here by the harness, and the flags the page gives them are checked against
//! what the emulator and the harness really use.

use crate::migration::{seed, stack};

fn page() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/local-stack.md")).unwrap()
}

/// The page's one bash block.
fn script(page: &str) -> String {
    let start = page.find("```bash\n").expect("a bash block") + "```bash\n".len();
    let end = start + page[start..].find("```").expect("the block ends");
    page[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_stack_page_runs_as_written() {
    let page = page();
    let block = script(&page);
    // Steps 1-3 as the harness runs them: Azurite's flags and the emulator's switches exist as written.
    let harness = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testkit/src/azurite.rs")).unwrap();
    for flag in [
        "--skipApiVersionCheck",
        "--inMemoryPersistence",
        "--blobPort",
        "--tablePort",
        "--queuePort",
    ] {
        assert!(block.contains(flag) && harness.contains(flag), "{flag}");
    }
    let emulator = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/emulator/src/main.rs")).unwrap();
    for (flag, field) in [
        ("--flavor", "flavor:"),
        ("--port", "port:"),
        ("--settle-ms", "settle_ms:"),
        ("--blob-endpoint", "blob_endpoint:"),
        ("--blob-account", "blob_account:"),
        ("--target", "target:"),
        ("--resources", "resources:"),
        ("--span-days", "span_days:"),
        ("FHIR_EMULATOR_BLOB_KEY", "FHIR_EMULATOR_BLOB_KEY"),
    ] {
        assert!(block.contains(flag) && emulator.contains(field), "{flag}");
    }
    assert!(
        page.contains(fhir_testkit::DEV_KEY),
        "the page gives Azurite's account key"
    );

    // Steps 4-5 as written, on this harness's ports.
    let stack = stack(&[]).await;
    seed(&stack, 300, 35);
    let from = block.find("# 4.").expect("step 4");
    let key_line = block
        .lines()
        .find(|l| l.starts_with("export FHIR_EMULATOR_BLOB_KEY="))
        .expect("the key's export");
    let steps = format!("set -euo pipefail\n{key_line}\n{}", &block[from..])
        .replace(
            "http://127.0.0.1:10000/devstoreaccount1",
            &stack.azurite.blob_endpoint(),
        )
        .replace(
            "http://127.0.0.1:10002/devstoreaccount1",
            &stack.azurite.table_endpoint(),
        )
        .replace("http://127.0.0.1:8081", stack.source.base_url.trim_end_matches('/'))
        .replace(
            "http://127.0.0.1:8082",
            stack.destination.base_url.trim_end_matches('/'),
        )
        .replace(
            "target/debug/fhir-migration-tool",
            env!("CARGO_BIN_EXE_fhir-migration-tool"),
        );
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("bash")
            .args(["-c", &steps])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(stdout.contains("preflight: PASS"), "{stdout}");
    assert!(
        stdout.contains("READY: the destination holds everything the source holds"),
        "{stdout}"
    );
}
