//! Preflight: before a migration starts (and whenever an operator wonders), check that everything the tool
//! needs answers as it must, with the identity and roles it will use. Each check says Pass or Fail, and on Fail
//! what to fix. Every probe is harmless:
//!
//! - state storage: the tables are created if missing, and a blob listing proves blob access;
//! - source: a count (FHIR Data Reader), and an export of an empty window in the future, cancelled at once
//!   (FHIR Data Exporter and a configured export);
//! - destination: a count (Reader); a delete of an id that never existed, which changes nothing but needs FHIR
//!   Data Writer and is refused with 423 when the service is in initial import mode; and an `$import` without
//!   inputs, which a server refuses with 400 when the caller may import and import is configured, with 403 when
//!   it may not, and with "not enabled" when import is not configured.

use chrono::{TimeDelta, Utc};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;

use crate::app::App;
use crate::fhir::{FhirClient, FhirError, format_instant};
use crate::storage::blob::BlobError;
use crate::storage::tables::TableError;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// Not run (its settings are missing); counts as passed, and says what would enable it.
    pub skipped: bool,
    pub detail: String,
    /// What to do when it failed.
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub passed: bool,
    pub checks: Vec<Check>,
    /// What passes but deserves a look before the migration starts (a destination that already holds data).
    pub warnings: Vec<String>,
}

fn skip(name: &str, detail: impl Into<String>) -> Check {
    Check {
        skipped: true,
        ..pass(name, detail)
    }
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        passed: true,
        skipped: false,
        detail: detail.into(),
        fix: String::new(),
    }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        passed: false,
        skipped: false,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// The fix for an authentication or authorization refusal by a FHIR server.
fn access_fix(status: u16, server: &str, role: &str) -> String {
    match status {
        401 => format!(
            "the {server} did not accept the tool's token: check the URL (it is the token audience) and, for a client secret, AZURE_TenantId/AZURE_ClientId/AZURE_ClientSecret"
        ),
        403 => format!("grant the function app's managed identity '{role}' on the {server}"),
        _ => format!("the {server} refused the call: see the detail"),
    }
}

/// Runs every check with the app's own clients.
pub async fn preflight(app: &App) -> Report {
    preflight_with(app, app.engine().source(), app.engine().destination()).await
}

/// Runs every check with the given FHIR clients (tests swap in clients with other identities).
pub async fn preflight_with(app: &App, source: &FhirClient, destination: &FhirClient) -> Report {
    let mut checks = Vec::new();
    checks.push(match app.ensure_tables().await {
        Ok(names) => pass("state tables", format!("{} ready", names.join(", "))),
        // Not reached at all: no role can fix that, so the advice is about the connection.
        Err(e @ (TableError::Transport { .. } | TableError::Token(_))) => {
            fail("state tables", e.to_string(), storage_unreachable_fix(app))
        }
        Err(e) => fail(
            "state tables",
            e.to_string(),
            "grant the function app's identity 'Storage Table Data Contributor' on the tool's storage account, and check AZURE_StagingStorageUri",
        ),
    });
    checks.push(match app.blobs().list("preflight-probe", "").await {
        Ok(_) => pass("state blobs", "blob service answered"),
        Err(BlobError::Service { status: 404, .. }) => pass("state blobs", "blob service answered"),
        Err(e @ BlobError::Service { status: 401 | 403, .. }) => fail(
            "state blobs",
            e.to_string(),
            "grant the function app's identity 'Storage Blob Data Owner' (or Contributor) on the tool's storage account, and check AZURE_BlobStorageUri",
        ),
        Err(e) => fail("state blobs", e.to_string(), storage_unreachable_fix(app)),
    });
    // A server that cannot be reached is reported once; the checks that need it are not run (each would only
    // wait out its own retries to say the same).
    let (source_read, source_reached) = read_check("source: read", source, "source", "FHIR Data Reader").await;
    checks.push(source_read);
    checks.push(if source_reached {
        export_check(source).await
    } else {
        not_run("source: export", "source")
    });
    let (destination_read, destination_reached) =
        read_check("destination: read", destination, "destination", "FHIR Data Reader").await;
    checks.push(destination_read);
    if destination_reached {
        checks.push(write_check(destination).await);
        checks.push(import_check(destination).await);
    } else {
        checks.push(not_run("destination: write", "destination"));
        checks.push(not_run("destination: import", "destination"));
    }
    checks.extend(resource_checks(app).await);
    let mut warnings = Vec::new();
    if destination_reached {
        warnings.extend(destination_data_warning(app, destination).await);
    }
    Report {
        passed: checks.iter().all(|c| c.passed),
        checks,
        warnings,
    }
}

/// A count on the server, and whether the server answered at all (refusing counts as answering).
async fn read_check(name: &str, client: &FhirClient, server: &str, role: &str) -> (Check, bool) {
    match client.total(false).await {
        Ok(n) => (pass(name, format!("{n} resources at {}", client.base())), true),
        Err(FhirError::Rejected {
            status, diagnostics, ..
        }) => (
            fail(
                name,
                format!("HTTP {status}: {diagnostics}"),
                access_fix(status, server, role),
            ),
            true,
        ),
        Err(e) => (fail(name, e.to_string(), unreachable_fix(server, &e)), false),
    }
}

/// Before the first window: a destination that already holds resources. Versions it holds under the same ids
/// conflict with the migrated ones (the failure ledger names each), and the full check reports its others as
/// extra.
async fn destination_data_warning(app: &App, destination: &FhirClient) -> Option<String> {
    let not_started = app
        .engine()
        .status(chrono::Utc::now())
        .await
        .is_ok_and(|s| s.progress.state == crate::engine::progress::State::NotStarted);
    let held = destination.total(false).await.ok().filter(|n| *n > 0)?;
    not_started.then(|| {
        format!(
            "the destination already holds {held} resources and the migration has not started: versions under the same ids will conflict (named in `failures`) and the rest will show as extra in `verify --mode full`; start from an empty destination unless that data is meant to stay"
        )
    })
}

/// A check left out because its server could not be reached: a failure, since nothing about it is known.
fn not_run(name: &str, server: &str) -> Check {
    fail(
        name,
        format!("not run: the {server} could not be reached (see its read check)"),
        format!("fix the {server}'s read check first"),
    )
}

/// What to do when a FHIR server could not be reached or no token could be had for it.
fn unreachable_fix(server: &str, e: &FhirError) -> String {
    match e {
        FhirError::Token(_) => format!(
            "no token for the {server}: in Azure, enable the function app's managed identity; on a workstation set AZURE_CredentialType=DeveloperTools and sign in with `az login`"
        ),
        _ => format!(
            "the {server} did not answer: check its URL, that it is running, and that it is reachable from where the tool runs (DNS, firewall, private endpoint)"
        ),
    }
}

/// What to do when the tool's own storage account did not answer.
fn storage_unreachable_fix(app: &App) -> String {
    let endpoint = app.settings().storage.table_endpoint();
    format!(
        "storage at {endpoint} did not answer: check that it is running (locally: Azurite) and reachable from where the tool runs (DNS, firewall, private endpoint), and the storage setting (AZURE_StorageConnectionString or AZURE_StagingStorageUri); on a workstation with Entra ID storage, set AZURE_CredentialType=DeveloperTools"
    )
}

async fn export_check(source: &FhirClient) -> Check {
    let name = "source: export";
    // A window entirely in the future: the job exports nothing.
    let since = format_instant(Utc::now() + TimeDelta::days(1));
    let query = format!("_since={}&_type=Patient", crate::storage::encode_component(&since));
    match source.export(&query).await {
        Ok(accepted) => {
            // Cancel it, so the probe leaves no job behind (a failed cancel is harmless: it exports nothing).
            if let Ok(url) = source.own_url(&accepted.status_url) {
                let _ = source.send(Method::DELETE, &url, |r| r, false).await;
            }
            pass(name, "an empty export was accepted and cancelled")
        }
        Err(FhirError::Rejected {
            status, diagnostics, ..
        }) => fail(
            name,
            format!("HTTP {status}: {diagnostics}"),
            if matches!(status, 401 | 403) {
                access_fix(status, "source", "FHIR Data Exporter")
            } else {
                "configure export on the source (its export storage account) and check the server's own logs".into()
            },
        ),
        Err(e) => fail(name, e.to_string(), "check that the source URL is right and reachable"),
    }
}

async fn write_check(destination: &FhirClient) -> Check {
    let name = "destination: write";
    let id = format!("preflight-probe-{}", crate::telemetry::context::random_hex(12));
    let url = match destination.url(&format!("Patient/{id}")) {
        Ok(u) => u,
        Err(e) => return fail(name, e.to_string(), "check AZURE_DestinationUri"),
    };
    match destination.send(Method::DELETE, &url, |r| r, true).await {
        Ok(resp) if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND => pass(
            name,
            "writes are accepted (probed with a delete of an id that never existed)",
        ),
        Ok(resp) if resp.status() == StatusCode::LOCKED => fail(
            name,
            "HTTP 423: the service is locked for initial import mode",
            "switch the destination's import configuration to incremental mode (initialImportMode: false)",
        ),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = crate::fhir::client::read_text(resp).await;
            fail(
                name,
                format!("HTTP {status}: {}", crate::fhir::client::diagnostics_of(&text)),
                access_fix(status, "destination", "FHIR Data Writer"),
            )
        }
        Err(e) => fail(
            name,
            e.to_string(),
            "check that the destination URL is right and reachable",
        ),
    }
}

async fn import_check(destination: &FhirClient) -> Check {
    let name = "destination: import";
    // Valid in every way but one: no input. A server that lets us import says so with a 400 about the input.
    let body = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "inputFormat", "valueString": "application/fhir+ndjson" },
        { "name": "mode", "valueString": "IncrementalLoad" }
    ]});
    let url = match destination.url("$import") {
        Ok(u) => u,
        Err(e) => return fail(name, e.to_string(), "check AZURE_DestinationUri"),
    };
    let sent = destination
        .send(
            Method::POST,
            &url,
            |r| {
                r.header("content-type", "application/fhir+json")
                    .header("prefer", "respond-async")
                    .json(&body)
            },
            true,
        )
        .await;
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let text = crate::fhir::client::read_text(resp).await;
            let diagnostics = crate::fhir::client::diagnostics_of(&text);
            match status {
                400 if ["not enabled", "not configured"]
                    .iter()
                    .any(|m| diagnostics.to_ascii_lowercase().contains(m)) =>
                {
                    fail(
                        name,
                        format!("HTTP 400: {diagnostics}"),
                        "configure import on the destination (importConfiguration.enabled, with the same storage account the source exports to); an Azure API for FHIR cannot be a destination",
                    )
                }
                400 => pass(name, "an $import without input was refused for its input only"),
                423 => fail(
                    name,
                    format!("HTTP 423: {diagnostics}"),
                    "switch the destination's import configuration to incremental mode (initialImportMode: false)",
                ),
                s if (200..300).contains(&s) => pass(name, "the import endpoint accepted the call"),
                s => fail(
                    name,
                    format!("HTTP {s}: {diagnostics}"),
                    access_fix(s, "destination", "FHIR Data Importer"),
                ),
            }
        }
        Err(e) => fail(
            name,
            e.to_string(),
            "check that the destination URL is right and reachable",
        ),
    }
}

/// Reads one FHIR resource from Azure Resource Manager: `id` is a resource id (read from
/// `AZURE_ResourceManagerUri`) or a full Resource Manager URL.
async fn arm_resource(app: &App, id: &str) -> Result<serde_json::Value, String> {
    let settings = &app.engine().settings();
    let full = if id.starts_with("http://") || id.starts_with("https://") {
        url::Url::parse(id).map_err(|e| e.to_string())?
    } else {
        settings.resource_manager.join(id).map_err(|e| e.to_string())?
    };
    let mut root = full.clone();
    root.set_path("/");
    root.set_query(None);
    let tokens = crate::fhir::auth::resource_manager_tokens(settings, &root)?;
    let client = FhirClient::new(root, tokens, &settings.user_agent, reqwest::Client::new());
    client
        .get_json(&format!("{}?api-version=2024-03-31", full.path()))
        .await
        .map_err(|e| e.to_string())
}

/// Checks that need the FHIR resources' Azure configuration: skipped unless both ids are set.
async fn resource_checks(app: &App) -> Vec<Check> {
    let settings = app.engine().settings();
    let (Some(source_id), Some(destination_id)) = (&settings.source_resource, &settings.destination_resource) else {
        return vec![skip(
            "export = import account",
            "set AZURE_SourceResourceId and AZURE_DestinationResourceId (and grant the app Reader on both) to check the servers' storage and import configuration",
        )];
    };
    let reader_fix = "grant the function app's identity 'Reader' on the FHIR resource, and check the resource id";
    let source = match arm_resource(app, source_id).await {
        Ok(v) => v,
        Err(e) => {
            return vec![fail(
                "export = import account",
                format!("source resource: {e}"),
                reader_fix,
            )];
        }
    };
    let destination = match arm_resource(app, destination_id).await {
        Ok(v) => v,
        Err(e) => {
            return vec![fail(
                "export = import account",
                format!("destination resource: {e}"),
                reader_fix,
            )];
        }
    };
    let exports_to = source["properties"]["exportConfiguration"]["storageAccountName"]
        .as_str()
        .unwrap_or_default();
    let import = &destination["properties"]["importConfiguration"];
    let imports_from = import["integrationDataStore"].as_str().unwrap_or_default();
    let mut checks = vec![
        if !exports_to.is_empty() && exports_to.eq_ignore_ascii_case(imports_from) {
            pass(
                "export = import account",
                format!("both use the storage account '{exports_to}'"),
            )
        } else {
            fail(
                "export = import account",
                format!("the source exports to '{exports_to}', the destination imports from '{imports_from}'"),
                "configure the destination's import (integrationDataStore) on the account the source exports to",
            )
        },
    ];
    let enabled = import["enabled"].as_bool().unwrap_or(false);
    let initial = import["initialImportMode"].as_bool().unwrap_or(false);
    checks.push(match (enabled, initial) {
        (true, false) => pass("destination import mode", "import enabled, incremental mode"),
        (false, _) => fail(
            "destination import mode",
            "import is not enabled",
            "enable import on the destination (importConfiguration.enabled)",
        ),
        (true, true) => fail(
            "destination import mode",
            "initial import mode",
            "switch the destination to incremental mode (initialImportMode: false)",
        ),
    });
    if let Some(config) = &settings.deidentify_config {
        checks.push(deid_check(app, config).await);
    }
    checks
}

/// The anonymization config blob the de-identified export will ask for exists in the export account.
async fn deid_check(app: &App, config: &str) -> Check {
    let name = "de-identification config";
    let settings = app.engine().settings();
    let Some(account) = &settings.integration_storage else {
        return skip(
            name,
            "set AZURE_IntegrationStorageUri (the export account's blob endpoint) to check that the config exists",
        );
    };
    let text = format!("{}/anonymization/{config}", account.as_str().trim_end_matches('/'));
    let Ok(url) = url::Url::parse(&text) else {
        return fail(
            name,
            format!("cannot build the config URL from {account}"),
            "check AZURE_IntegrationStorageUri",
        );
    };
    let Some((store, container, blob)) = app.engine().locate_blob(&url) else {
        return skip(
            name,
            "the export account is not readable with the tool's storage access",
        );
    };
    match store.get(&container, &blob).await {
        Ok(Some(_)) => pass(name, format!("anonymization/{config} exists")),
        Ok(None) => fail(
            name,
            format!("anonymization/{config} does not exist in the export account"),
            "upload it with infra/Anonymization/upload-config.sh, and set AZURE_ConfigFile to the name it prints",
        ),
        Err(e) => fail(
            name,
            e.to_string(),
            "grant the app 'Storage Blob Data Reader' on the export account",
        ),
    }
}

/// The report as text for the CLI.
pub fn describe(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let mark = if c.skipped {
            "Skip"
        } else if c.passed {
            "Pass"
        } else {
            "FAIL"
        };
        out.push_str(&format!("{mark:<5} {:<22} {}\n", c.name, c.detail));
        if !c.passed {
            out.push_str(&format!("      fix: {}\n", c.fix));
        }
    }
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(if report.passed {
        "preflight: PASS\n"
    } else {
        "preflight: FAIL\n"
    });
    out
}
