//! Helpers shared by the integration tests.

use std::sync::atomic::{AtomicU32, Ordering};

use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::storage::StorageCredential;
use fhir_migration_tool::storage::tables::{TableClient, TableService};
use fhir_testkit::Azurite;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A table or container name no other test in this run uses (letters and digits only, valid for both).
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

pub async fn azurite() -> Azurite {
    Azurite::start().await.expect("Azurite starts (run `npm ci` first)")
}

/// Settings pointing at `azurite`, with table names of their own.
pub fn settings_for(azurite: &Azurite) -> Settings {
    let mut source = SettingsSource::default();
    source.extend([
        ("AZURE_StorageConnectionString", azurite.connection_string()),
        ("AZURE_SourceUri", "https://source.example".to_string()),
        ("AZURE_DestinationUri", "https://destination.example".to_string()),
        ("AZURE_ChunkTableName", unique_name("chunk")),
        ("AZURE_ExportTableName", unique_name("export")),
    ]);
    Settings::from_source(&source).expect("test settings are valid")
}

pub fn table_service(azurite: &Azurite) -> TableService {
    let settings = settings_for(azurite);
    let credential = settings.storage.credential().unwrap();
    TableService::new(
        settings.storage.table_endpoint().clone(),
        credential,
        reqwest::Client::new(),
    )
}

pub fn table_service_with(azurite: &Azurite, credential: StorageCredential) -> TableService {
    let settings = settings_for(azurite);
    TableService::new(
        settings.storage.table_endpoint().clone(),
        credential,
        reqwest::Client::new(),
    )
}

/// A fresh, created table.
pub async fn new_table(service: &TableService) -> TableClient {
    let table = service.table(&unique_name("t")).unwrap();
    table.create_if_missing().await.unwrap();
    table
}

/// The one Python the tests run: the interpreter of the virtual environment that ./scripts/test creates under
/// target/py-tools (it has the template checkers). Never the machine's own python3, whose packages differ from
/// one machine to the next; tests/integration/self_contained.rs refuses any other way of starting Python.
pub fn python_tools() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("FHIRMIG_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py-tools/bin/python");
    assert!(
        venv.exists(),
        "the project's Python environment {} is missing: run ./scripts/test, which creates it",
        venv.display()
    );
    venv
}

/// Runs a script with the tools' Python; a missing module means the tools were never installed, which says how
/// to fix it. Whether it succeeded, and its output.
pub fn run_python(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new(python_tools())
        .args(args)
        .output()
        .expect("the tools' Python runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("No module named"),
        "the template checkers are missing: run ./scripts/test, which installs them into target/py-tools\n{text}"
    );
    (out.status.success(), text)
}

/// A storage connection string with every endpoint moved to a port nothing listens on (storage "stopped").
pub fn on_a_closed_port(connection: &str) -> String {
    connection
        .split(';')
        .map(|part| match part.split_once("=http://127.0.0.1:") {
            Some((name, rest)) => {
                let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
                format!("{name}=http://127.0.0.1:1/{path}")
            }
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}
