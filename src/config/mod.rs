//! Typed settings, built once at start-up from app settings and validated in one pass.
//!
//! Setting names are the original tool's (`AZURE_*`), so existing deployments keep working. Validation reports
//! every problem in one error instead of failing on the first, so an operator fixes a configuration in one go.
//! The engine issue grows this with every migration setting; this module holds what the handler needs to start.

mod migration;
mod server_url;
mod source;

pub use migration::{
    ChunkUnit, ClientSecretSettings, ImportErrorPolicy, MAX_DEEP_CHECK_COUNT, MigrationSettings, PauseWindow,
    default_resource_types,
};
pub use server_url::{is_azure_api_for_fhir, is_loopback};
pub use source::SettingsSource;

use std::fmt;
use std::sync::Arc;

use url::Url;

use crate::secret::Secret;
use crate::storage::StorageCredential;
use crate::storage::connection_string::{StorageAccount, endpoint};
use crate::telemetry::appinsights::ConnectionString;

/// Every setting the handler reads, parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: StorageSettings,
    /// `AZURE_ChunkTableName`: the cursor table (default `chunk`, as the original's template set it).
    pub chunk_table: String,
    /// `AZURE_ExportTableName`: one row per export/import job (default `export`).
    pub export_table: String,
    /// `AZURE_ReconcileTableName`: one row per resource hard-deleted by reconciliation (default `reconcile`).
    pub reconcile_table: String,
    /// `AZURE_FailureTableName`: the failure ledger, one row per resource version an import refused (default
    /// `importfailures`).
    pub failure_table: String,
    pub migration: MigrationSettings,
    /// `APPLICATIONINSIGHTS_CONNECTION_STRING` (what the Functions host also reads), else the original's
    /// `AZURE_AppInsightConnectionstring`. Unset: telemetry goes to the log only.
    pub app_insights: Option<ConnectionString>,
}

/// How the tool reaches its own storage account (state tables and payload blobs).
#[derive(Clone)]
pub enum StorageSettings {
    /// From `AZURE_StorageConnectionString`, or `AzureWebJobsStorage` when that is a connection string.
    AccountKey(StorageAccount),
    /// `AZURE_StagingStorageUri` + `AZURE_BlobStorageUri` with managed identity, as the original deployed.
    ManagedIdentity {
        table_endpoint: Url,
        blob_endpoint: Url,
        /// `AZURE_ManagedIdentityClientId`: a user-assigned identity; system-assigned when unset.
        client_id: Option<String>,
        /// `AZURE_CredentialType=DeveloperTools`: the Azure CLI (or azd) login instead of a managed identity.
        developer: bool,
    },
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageSettings::AccountKey(a) => write!(
                f,
                "AccountKey {{ account: {}, tables: {}, blobs: {}, key: <redacted> }}",
                a.name, a.table_endpoint, a.blob_endpoint
            ),
            StorageSettings::ManagedIdentity {
                table_endpoint,
                blob_endpoint,
                client_id,
                developer,
            } => write!(
                f,
                "ManagedIdentity {{ tables: {table_endpoint}, blobs: {blob_endpoint}, client_id: {client_id:?}, developer_login: {developer} }}"
            ),
        }
    }
}

/// All the problems found in a configuration, one per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the configuration has {} problem(s):\n- {}", .0.len(), .0.join("\n- "))]
pub struct ConfigError(pub Vec<String>);

impl Settings {
    pub fn from_source(source: &SettingsSource) -> Result<Settings, ConfigError> {
        let mut problems = source.unresolved_key_vault_references();
        let storage = storage_settings(source).map_err(|p| problems.push(p)).ok();
        let mut table = |name: &str, default: &str| {
            let value = source.get_or(name, default).to_string();
            let valid = (3..=63).contains(&value.len())
                && value.starts_with(|c: char| c.is_ascii_alphabetic())
                && value.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid {
                problems.push(format!(
                    "{name} '{value}' is not a valid table name (3-63 letters and digits)"
                ));
            }
            value
        };
        let chunk_table = table("AZURE_ChunkTableName", "chunk");
        let export_table = table("AZURE_ExportTableName", "export");
        let reconcile_table = table("AZURE_ReconcileTableName", "reconcile");
        let failure_table = table("AZURE_FailureTableName", "importfailures");
        if chunk_table.eq_ignore_ascii_case(&export_table) {
            problems.push("AZURE_ChunkTableName and AZURE_ExportTableName must name different tables".into());
        }
        let migration = MigrationSettings::from_source(source, &mut problems);
        let app_insights = [
            "APPLICATIONINSIGHTS_CONNECTION_STRING",
            "AZURE_AppInsightConnectionstring",
        ]
        .into_iter()
        .find_map(|name| source.get(name).filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
        .and_then(|(name, value)| {
            ConnectionString::parse(value)
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .ok()
        })
        .and_then(|cs| {
            // Entra-only Application Insights (local authentication disabled), as the Functions host reads it.
            match source
                .get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
                .filter(|v| !v.trim().is_empty())
            {
                Some(auth) => cs
                    .with_authentication_string(auth)
                    .map_err(|e| problems.push(format!("APPLICATIONINSIGHTS_AUTHENTICATION_STRING: {e}")))
                    .ok(),
                None => Some(cs),
            }
        });
        match (storage, migration) {
            (Some(storage), Some(migration)) if problems.is_empty() => Ok(Settings {
                storage,
                chunk_table,
                export_table,
                reconcile_table,
                failure_table,
                migration,
                app_insights,
            }),
            _ => Err(ConfigError(problems)),
        }
    }

    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_source(&SettingsSource::from_env())
    }
}

fn storage_settings(source: &SettingsSource) -> Result<StorageSettings, String> {
    if let Some(cs) = source.get("AZURE_StorageConnectionString") {
        return StorageAccount::parse(cs)
            .map(StorageSettings::AccountKey)
            .map_err(|e| format!("AZURE_StorageConnectionString: {e}"));
    }
    if let Some(tables) = source.get("AZURE_StagingStorageUri") {
        let tables = endpoint("AZURE_StagingStorageUri", tables).map_err(|e| e.to_string())?;
        let blobs = source
            .get("AZURE_BlobStorageUri")
            .ok_or("AZURE_BlobStorageUri is required with AZURE_StagingStorageUri")?;
        let blobs = endpoint("AZURE_BlobStorageUri", blobs).map_err(|e| e.to_string())?;
        return Ok(StorageSettings::ManagedIdentity {
            table_endpoint: tables,
            blob_endpoint: blobs,
            client_id: source.get("AZURE_ManagedIdentityClientId").map(str::to_string),
            developer: source
                .get("AZURE_CredentialType")
                .is_some_and(|v| v.eq_ignore_ascii_case("DeveloperTools")),
        });
    }
    match source.get("AzureWebJobsStorage") {
        Some(cs) if cs.contains('=') => StorageAccount::parse(cs)
            .map(StorageSettings::AccountKey)
            .map_err(|e| format!("AzureWebJobsStorage: {e}")),
        _ => Err("no storage account configured: set AZURE_StagingStorageUri and AZURE_BlobStorageUri (managed identity), \
             or AZURE_StorageConnectionString, or an AzureWebJobsStorage connection string (UseDevelopmentStorage=true for Azurite)"
            .into()),
    }
}

impl StorageSettings {
    /// Builds the credential the storage adapters use.
    pub fn credential(&self) -> Result<StorageCredential, String> {
        match self {
            StorageSettings::AccountKey(account) => Ok(StorageCredential::SharedKey {
                account: account.name.clone(),
                key: Secret::new(account.key.expose().clone()),
            }),
            StorageSettings::ManagedIdentity { client_id, .. } => {
                StorageSettings::managed_identity_credential(client_id.as_deref())
            }
        }
    }

    /// A managed-identity storage credential (system-assigned, or user-assigned by client id).
    pub fn managed_identity_credential(client_id: Option<&str>) -> Result<StorageCredential, String> {
        let options = client_id.map(|id| azure_identity::ManagedIdentityCredentialOptions {
            user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(id.to_string())),
            ..Default::default()
        });
        let credential = azure_identity::ManagedIdentityCredential::new(options)
            .map_err(|e| format!("cannot set up the managed identity credential: {e}"))?;
        Ok(StorageCredential::Token(
            credential as Arc<dyn azure_core::credentials::TokenCredential>,
        ))
    }

    pub fn table_endpoint(&self) -> &Url {
        match self {
            StorageSettings::AccountKey(a) => &a.table_endpoint,
            StorageSettings::ManagedIdentity { table_endpoint, .. } => table_endpoint,
        }
    }

    pub fn blob_endpoint(&self) -> &Url {
        match self {
            StorageSettings::AccountKey(a) => &a.blob_endpoint,
            StorageSettings::ManagedIdentity { blob_endpoint, .. } => blob_endpoint,
        }
    }
}

/// The developer's own Azure login (Azure CLI, then Azure Developer CLI): for running locally against real Azure.
pub fn developer_credential() -> Result<Arc<dyn azure_core::credentials::TokenCredential>, String> {
    azure_identity::DeveloperToolsCredential::new(None)
        .map(|c| c as Arc<dyn azure_core::credentials::TokenCredential>)
        .map_err(|e| format!("cannot use the Azure CLI / azd login: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&str, &str)]) -> SettingsSource {
        let mut s = SettingsSource::default();
        s.extend([
            ("AZURE_SourceUri", "https://src.example"),
            ("AZURE_DestinationUri", "https://dst.example"),
        ]);
        s.extend(pairs.iter().copied());
        s
    }

    #[test]
    fn an_unresolved_key_vault_reference_fails_startup_naming_the_setting() {
        let err = Settings::from_source(&source(&[
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("AZURE_ClientCredential", "true"),
            ("AZURE_TenantId", "00000000-0000-0000-0000-000000000001"),
            ("AZURE_ClientId", "00000000-0000-0000-0000-000000000002"),
            (
                "AZURE_ClientSecret",
                "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/source-client-secret)",
            ),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("AZURE_ClientSecret is still a Key Vault reference"),
            "{text}"
        );
        assert!(text.contains("Key Vault Secrets User"), "{text}");
    }

    #[test]
    fn development_storage_and_default_table_names() {
        let s = Settings::from_source(&source(&[("AzureWebJobsStorage", "UseDevelopmentStorage=true")])).unwrap();
        assert_eq!((s.chunk_table.as_str(), s.export_table.as_str()), ("chunk", "export"));
        assert_eq!(
            s.storage.table_endpoint().as_str(),
            "http://127.0.0.1:10002/devstoreaccount1"
        );
        assert!(
            !format!("{s:?}").contains("Eby8"),
            "the account key must not appear in Debug output"
        );
    }

    #[test]
    fn managed_identity_endpoints_as_the_original_deployed_them() {
        let s = Settings::from_source(&source(&[
            ("AzureWebJobsStorage__accountName", "migsa"),
            ("AZURE_StagingStorageUri", "https://migsa.table.core.windows.net"),
            ("AZURE_BlobStorageUri", "https://migsa.blob.core.windows.net/"),
        ]))
        .unwrap();
        assert!(matches!(
            s.storage,
            StorageSettings::ManagedIdentity { client_id: None, .. }
        ));
        assert_eq!(
            s.storage.blob_endpoint().as_str(),
            "https://migsa.blob.core.windows.net/"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Settings::from_source(&source(&[
            ("AZURE_StagingStorageUri", "https://migsa.table.core.windows.net"),
            ("AZURE_ChunkTableName", "bad-name"),
            ("AZURE_ExportTableName", "x"),
        ]))
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.to_string().contains("AZURE_BlobStorageUri is required"));
        assert!(err.to_string().contains("'bad-name'"));
    }

    #[test]
    fn app_insights_from_the_standard_setting_or_the_originals() {
        let key = "00000000-1111-2222-3333-444444444444";
        let dev = ("AzureWebJobsStorage", "UseDevelopmentStorage=true");
        let s = Settings::from_source(&source(&[dev])).unwrap();
        assert!(s.app_insights.is_none());
        let legacy = format!("InstrumentationKey={key};IngestionEndpoint=https://legacy.example/");
        let standard = format!("InstrumentationKey={key};IngestionEndpoint=https://standard.example/");
        let s = Settings::from_source(&source(&[dev, ("AZURE_AppInsightConnectionstring", &legacy)])).unwrap();
        assert_eq!(s.app_insights.unwrap().track_url().host_str(), Some("legacy.example"));
        let s = Settings::from_source(&source(&[
            dev,
            ("AZURE_AppInsightConnectionstring", &legacy),
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", &standard),
        ]))
        .unwrap();
        assert_eq!(s.app_insights.unwrap().track_url().host_str(), Some("standard.example"));
        let err = Settings::from_source(&source(&[
            dev,
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=x"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("APPLICATIONINSIGHTS_CONNECTION_STRING: its InstrumentationKey is not a GUID")
        );
    }

    #[test]
    fn no_storage_at_all_says_how_to_configure_it() {
        let err = Settings::from_source(&SettingsSource::default()).unwrap_err();
        assert!(err.0[0].contains("UseDevelopmentStorage=true"), "{err}");
    }
}
