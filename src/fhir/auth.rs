//! Tokens for the FHIR servers. In Azure: managed identity (system- or user-assigned), or for the source a
//! client-secret credential in another tenant; locally against real Azure: the Azure CLI login. Loopback
//! emulator URLs get no token at all.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use url::Url;

use crate::config::MigrationSettings;
use crate::secret::Secret;

/// Where a client's bearer tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    /// No Authorization header (loopback emulators).
    None,
    /// An Entra ID credential; tokens are requested for `scope` and cached by the credential until near expiry.
    Credential {
        credential: Arc<dyn TokenCredential>,
        scope: String,
        /// What to check when no token comes: it depends on the kind of credential.
        hint: &'static str,
    },
}

/// The advice for a managed identity that gives no token, which is also what a workstation without
/// `AZURE_CredentialType=DeveloperTools` sees.
pub const MANAGED_IDENTITY_HINT: &str = "In Azure, check that the Function App's identity is enabled and holds a FHIR data role on this server; on a workstation there is no managed identity: set AZURE_CredentialType=DeveloperTools and sign in with `az login`";
const DEVELOPER_HINT: &str =
    "Sign in with `az login` (or `azd auth login`) as an account that holds a FHIR data role on this server";
const CLIENT_SECRET_HINT: &str = "Check AZURE_TenantId, AZURE_ClientId and AZURE_ClientSecret (and AZURE_AuthorityHost outside the public cloud), and that the app registration holds a FHIR data role on the source";

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::None => f.write_str("TokenSource::None"),
            TokenSource::Credential { scope, .. } => write!(f, "TokenSource::Credential {{ scope: {scope} }}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("could not get a token for {scope}: {message}. {hint}")]
pub struct TokenError {
    pub scope: String,
    pub message: String,
    pub hint: &'static str,
}

impl TokenSource {
    pub async fn bearer(&self) -> Result<Option<Secret<String>>, TokenError> {
        match self {
            TokenSource::None => Ok(None),
            TokenSource::Credential {
                credential,
                scope,
                hint,
            } => {
                let token = credential
                    .get_token(&[scope.as_str()], None)
                    .await
                    .map_err(|e| TokenError {
                        scope: scope.clone(),
                        message: e.to_string(),
                        hint,
                    })?;
                Ok(Some(Secret::new(token.token.secret().to_string())))
            }
        }
    }
}

/// `{scheme}://{host}/.default`: the audience of a FHIR server is its root URL.
pub fn scope_for(base: &Url) -> String {
    let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}/.default",
        base.scheme(),
        base.host_str().unwrap_or_default()
    )
}

/// `<audience>/.default` for a configured token audience (`https://azurehealthcareapis.com` gives
/// `https://azurehealthcareapis.com/.default`).
pub fn audience_scope(audience: &Url) -> String {
    format!("{}/.default", audience.as_str().trim_end_matches('/'))
}

/// Loopback hosts (the local emulators) get no token.
pub use crate::config::is_loopback;

/// Which server a credential is for: the source may use a client secret, the destination never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Source,
    Destination,
}

/// Builds the token source for one server from the settings.
pub fn token_source(settings: &MigrationSettings, server: Server) -> Result<TokenSource, String> {
    let (base, audience) = match server {
        Server::Source => (&settings.source, settings.source_audience.as_ref()),
        Server::Destination => (&settings.destination, settings.destination_audience.as_ref()),
    };
    if is_loopback(base) {
        return Ok(TokenSource::None);
    }
    if base.scheme() != "https" {
        return Err(format!(
            "{base} is not https: tokens are only sent over https (loopback emulators excepted)"
        ));
    }
    // The server's configured audience when the deployment names it, else the URL's root.
    let scope = audience.map_or_else(|| scope_for(base), audience_scope);
    let (credential, hint): (Arc<dyn TokenCredential>, &'static str) = match (&settings.client_secret, server) {
        (Some(cs), Server::Source) => {
            // A custom authority (sovereign or private cloud) replaces the public login endpoint.
            let options = settings.authority_host.as_ref().map(|authority| {
                let mut custom = azure_core::cloud::CustomConfiguration::default();
                custom.authority_host = authority.as_str().trim_end_matches('/').to_string();
                let mut options = azure_identity::ClientSecretCredentialOptions::default();
                options.client_options.cloud = Some(Arc::new(azure_core::cloud::CloudConfiguration::from(custom)));
                options
            });
            let credential = azure_identity::ClientSecretCredential::new(
                &cs.tenant_id,
                cs.client_id.clone(),
                azure_core::credentials::Secret::new(cs.secret.expose().clone()),
                options,
            )
            .map_err(|e| format!("cannot set up the client-secret credential: {e}"))?;
            (credential, CLIENT_SECRET_HINT)
        }
        _ => (identity(settings)?, identity_hint(settings)),
    };
    Ok(TokenSource::Credential {
        credential,
        scope,
        hint,
    })
}

/// The app's own identity: the developer's login when asked for, else the (user- or system-assigned) managed
/// identity.
fn identity(settings: &MigrationSettings) -> Result<Arc<dyn TokenCredential>, String> {
    if settings.developer_credential {
        return crate::config::developer_credential();
    }
    let options =
        settings
            .managed_identity_client_id
            .as_ref()
            .map(|id| azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: Some(azure_identity::UserAssignedId::ClientId(id.clone())),
                ..Default::default()
            });
    let credential = azure_identity::ManagedIdentityCredential::new(options)
        .map_err(|e| format!("cannot set up the managed identity: {e}"))?;
    Ok(credential)
}

fn identity_hint(settings: &MigrationSettings) -> &'static str {
    if settings.developer_credential {
        DEVELOPER_HINT
    } else {
        MANAGED_IDENTITY_HINT
    }
}

/// Tokens for Azure Resource Manager at `base` (the preflight reads the FHIR resources' configuration), with the
/// app's own identity; none for a loopback stand-in.
pub fn resource_manager_tokens(settings: &MigrationSettings, base: &Url) -> Result<TokenSource, String> {
    if is_loopback(base) {
        return Ok(TokenSource::None);
    }
    if base.scheme() != "https" {
        return Err(format!("{base} is not https: tokens are only sent over https"));
    }
    Ok(TokenSource::Credential {
        credential: identity(settings)?,
        scope: scope_for(base),
        hint: identity_hint(settings),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audience_scope_keeps_the_configured_audience_not_the_server_host() {
        let shared = Url::parse("https://azurehealthcareapis.com").unwrap();
        assert_eq!(audience_scope(&shared), "https://azurehealthcareapis.com/.default");
        let custom = Url::parse("https://fhir.contoso.example/api/").unwrap();
        assert_eq!(audience_scope(&custom), "https://fhir.contoso.example/api/.default");
    }

    #[test]
    fn scope_is_the_server_root() {
        let u = Url::parse("https://ws-fhir.fhir.azurehealthcareapis.com/some/path").unwrap();
        assert_eq!(scope_for(&u), "https://ws-fhir.fhir.azurehealthcareapis.com/.default");
    }

    /// Without a managed identity (a workstation), the failure says how to use the developer's login instead.
    #[test]
    fn a_managed_identity_failure_points_a_workstation_user_at_developer_tools() {
        use crate::config::{Settings, SettingsSource};
        let mut source = SettingsSource::default();
        source.extend([
            ("AZURE_StorageConnectionString", "UseDevelopmentStorage=true"),
            ("AZURE_SourceUri", "https://src.example"),
            ("AZURE_DestinationUri", "https://dst.example"),
        ]);
        let settings = Settings::from_source(&source).unwrap();
        let hint = |s: &crate::config::MigrationSettings| match token_source(s, Server::Source).unwrap() {
            TokenSource::Credential { hint, .. } => hint,
            TokenSource::None => panic!("a remote server gets a token"),
        };
        assert!(hint(&settings.migration).contains("AZURE_CredentialType=DeveloperTools"));
        source.extend([("AZURE_CredentialType", "DeveloperTools")]);
        if let Ok(settings) = Settings::from_source(&source)
            && let Ok(TokenSource::Credential { hint, .. }) = token_source(&settings.migration, Server::Source)
        {
            assert!(hint.contains("az login"), "{hint}");
        }
    }

    /// The deployment sets each server's configured audience: tokens are asked for it, not for the URL's host
    /// (an Azure API for FHIR often uses the shared https://azurehealthcareapis.com); without it, the URL's root.
    #[test]
    fn tokens_are_asked_for_the_configured_audience() {
        use crate::config::{Settings, SettingsSource};
        let mut source = SettingsSource::default();
        source.extend([
            ("AZURE_StorageConnectionString", "UseDevelopmentStorage=true"),
            ("AZURE_SourceUri", "https://src.azurehealthcareapis.com"),
            ("AZURE_DestinationUri", "https://ws-dst.fhir.azurehealthcareapis.com"),
            ("AZURE_SourceAudience", "https://azurehealthcareapis.com"),
        ]);
        let settings = Settings::from_source(&source).unwrap();
        let scope = |server| match token_source(&settings.migration, server).unwrap() {
            TokenSource::Credential { scope, .. } => scope,
            TokenSource::None => panic!("a remote server gets a token"),
        };
        assert_eq!(scope(Server::Source), "https://azurehealthcareapis.com/.default");
        assert_eq!(
            scope(Server::Destination),
            "https://ws-dst.fhir.azurehealthcareapis.com/.default"
        );
    }

    #[test]
    fn loopback_detection() {
        for (u, l) in [
            ("http://127.0.0.1:8080", true),
            ("http://localhost:1", true),
            ("http://[::1]:2", true),
            ("https://x.azurehealthcareapis.com", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(u).unwrap()), l, "{u}");
        }
    }
}
