//! Preflight against real servers: a healthy set-up passes every check; a destination in initial import mode,
//! an identity without the Importer role, and a destination without import configured each fail the right check
//! with its fix.

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use fhir_emulator::{AuthConfig, EmulatorConfig, Flavor};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::fhir::FhirClient;
use fhir_migration_tool::fhir::auth::TokenSource;
use fhir_migration_tool::preflight::{Report, preflight, preflight_with};
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY};

use crate::migration::{base_settings, emulator};

/// Hands out one fixed emulator token (an unsigned JWT with an audience and roles).
#[derive(Debug)]
struct Token(String);

#[async_trait::async_trait]
impl TokenCredential for Token {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            self.0.clone(),
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn app(
    azurite: &Azurite,
    source: &fhir_emulator::RunningEmulator,
    destination: &fhir_emulator::RunningEmulator,
) -> App {
    app_with(azurite, source, destination, &[])
}

fn app_with(
    azurite: &Azurite,
    source: &fhir_emulator::RunningEmulator,
    destination: &fhir_emulator::RunningEmulator,
    extra: &[(&str, String)],
) -> App {
    let mut s = SettingsSource::default();
    s.extend(base_settings(azurite, source, destination));
    s.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    App::build(Settings::from_source(&s).unwrap()).unwrap()
}

/// Settings naming both servers' resources by full URL on their emulators' Resource Manager stand-in.
fn resource_ids(
    source: &fhir_emulator::RunningEmulator,
    destination: &fhir_emulator::RunningEmulator,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "AZURE_SourceResourceId",
            format!(
                "{}/subscriptions/s1/resourceGroups/rg/providers/Microsoft.HealthcareApis/services/src",
                source.base_url
            ),
        ),
        (
            "AZURE_DestinationResourceId",
            format!(
                "{}/subscriptions/s1/resourceGroups/rg/providers/Microsoft.HealthcareApis/workspaces/ws/fhirservices/dst",
                destination.base_url
            ),
        ),
    ]
}

fn check<'a>(report: &'a Report, name: &str) -> &'a fhir_migration_tool::preflight::Check {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:?}"))
}

async fn spawn(config: EmulatorConfig) -> fhir_emulator::RunningEmulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    fhir_emulator::spawn(config, listener).await.unwrap()
}

fn blob(azurite: &Azurite) -> Option<fhir_emulator::blob::BlobConfig> {
    Some(fhir_emulator::blob::BlobConfig {
        endpoint: url::Url::parse(&azurite.blob_endpoint()).unwrap(),
        account: DEV_ACCOUNT.into(),
        key: DEV_KEY.into(),
    })
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check() {
    let azurite = Azurite::start().await.unwrap();
    let (source, destination) = (
        emulator(Flavor::Aapi, &azurite).await,
        emulator(Flavor::Ahds, &azurite).await,
    );
    let report = preflight(&app(&azurite, &source, &destination)).await;
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.checks.len(), 8);
    let skipped: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.skipped)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        skipped,
        ["export = import account"],
        "without resource ids, the Resource Manager checks are skipped"
    );
    // The probes changed nothing: no resource was written anywhere.
    assert_eq!(destination.store().size().0, 0);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    // A destination that already holds data, before the migration starts: it passes, with a warning.
    destination
        .store()
        .put(
            "Patient",
            "already-here",
            serde_json::json!({ "resourceType": "Patient", "id": "already-here" }),
        )
        .unwrap();
    let report = preflight(&app(&azurite, &source, &destination)).await;
    assert!(report.passed, "{report:#?}");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(
        report.warnings[0].starts_with("the destination already holds 1 resources and the migration has not started"),
        "{:?}",
        report.warnings
    );
    assert!(fhir_migration_tool::preflight::describe(&report).contains("\nwarning: the destination already holds"));
}

#[tokio::test]
async fn initial_import_mode_a_missing_role_and_unconfigured_import_fail_with_their_fix() {
    let azurite = Azurite::start().await.unwrap();
    let source = emulator(Flavor::Aapi, &azurite).await;

    // Initial import mode: writes are locked (423).
    let locked = spawn(EmulatorConfig {
        blob: blob(&azurite),
        initial_import_mode: true,
        ..EmulatorConfig::quick(Flavor::Ahds)
    })
    .await;
    let report = preflight(&app(&azurite, &source, &locked)).await;
    let write = check(&report, "destination: write");
    assert!(!report.passed && !write.passed, "{report:#?}");
    assert!(
        write.detail.contains("423") && write.fix.contains("incremental"),
        "{write:?}"
    );

    // An identity with Reader and Writer but not Importer.
    let guarded = spawn(EmulatorConfig {
        blob: blob(&azurite),
        auth: Some(AuthConfig {
            authority: "https://login.example/tenant".into(),
        }),
        ..EmulatorConfig::quick(Flavor::Ahds)
    })
    .await;
    let token = fhir_emulator::test_token(&guarded.base_url, &["FHIR Data Reader", "FHIR Data Writer"]);
    let client = FhirClient::new(
        url::Url::parse(&guarded.base_url).unwrap(),
        TokenSource::Credential {
            credential: Arc::new(Token(token)),
            scope: "x/.default".into(),
            hint: "test",
        },
        "preflight-test",
        reqwest::Client::new(),
    );
    let tool = app(&azurite, &source, &guarded);
    let report = preflight_with(&tool, tool.engine().source(), &client).await;
    let import = check(&report, "destination: import");
    assert!(!import.passed && import.detail.contains("403"), "{import:?}");
    assert!(import.fix.contains("FHIR Data Importer"), "{import:?}");
    assert!(check(&report, "destination: read").passed && check(&report, "destination: write").passed);

    // A destination whose import is not enabled (here an Azure API for FHIR, which never imports).
    let unconfigured = spawn(EmulatorConfig {
        blob: blob(&azurite),
        ..EmulatorConfig::quick(Flavor::Aapi)
    })
    .await;
    let report = preflight(&app(&azurite, &source, &unconfigured)).await;
    let import = check(&report, "destination: import");
    assert!(!import.passed && import.fix.contains("configure import"), "{import:?}");
}

#[tokio::test]
async fn resource_manager_checks_find_a_wrong_account_initial_mode_and_a_missing_deid_config() {
    let azurite = Azurite::start().await.unwrap();
    let source = emulator(Flavor::Aapi, &azurite).await;
    let destination = emulator(Flavor::Ahds, &azurite).await;
    let report = preflight(&app_with(
        &azurite,
        &source,
        &destination,
        &resource_ids(&source, &destination),
    ))
    .await;
    assert!(report.passed, "{report:#?}");
    assert!(check(&report, "export = import account").detail.contains(DEV_ACCOUNT));
    assert!(check(&report, "destination import mode").passed);

    // The destination imports from another account than the source exports to.
    let mut other = blob(&azurite).unwrap();
    other.account = "otheraccount".into();
    let elsewhere = spawn(EmulatorConfig {
        blob: Some(other),
        ..EmulatorConfig::quick(Flavor::Ahds)
    })
    .await;
    let report = preflight(&app_with(
        &azurite,
        &source,
        &elsewhere,
        &resource_ids(&source, &elsewhere),
    ))
    .await;
    let accounts = check(&report, "export = import account");
    assert!(
        !accounts.passed && accounts.detail.contains("otheraccount"),
        "{accounts:?}"
    );

    // Initial import mode, as Resource Manager reports it.
    let initial = spawn(EmulatorConfig {
        blob: blob(&azurite),
        initial_import_mode: true,
        ..EmulatorConfig::quick(Flavor::Ahds)
    })
    .await;
    let report = preflight(&app_with(&azurite, &source, &initial, &resource_ids(&source, &initial))).await;
    let mode = check(&report, "destination import mode");
    assert!(!mode.passed && mode.fix.contains("incremental"), "{mode:?}");

    // De-identified export: the config blob must exist in the export account's anonymization container.
    let mut deid = resource_ids(&source, &destination);
    deid.extend([
        ("AZURE_IsExportDeidentified", "true".to_string()),
        ("AZURE_ConfigFile", "DemoTruncate.json".to_string()),
        ("AZURE_IntegrationStorageUri", azurite.blob_endpoint()),
    ]);
    let tool = app_with(&azurite, &source, &destination, &deid);
    let missing = check(&preflight(&tool).await, "de-identification config").clone();
    assert!(!missing.passed && missing.fix.contains("upload-config"), "{missing:?}");
    tool.blobs().ensure_container("anonymization").await.unwrap();
    tool.blobs()
        .put("anonymization", "DemoTruncate.json", b"{}".to_vec())
        .await
        .unwrap();
    let present = check(&preflight(&tool).await, "de-identification config").clone();
    assert!(present.passed && !present.skipped, "{present:?}");
}
