//! The App Insights connection string: `InstrumentationKey=…;IngestionEndpoint=https://…/;…`.

use url::Url;

/// Where and as whom to send telemetry.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    instrumentation_key: String,
    ingestion: Url,
    /// `Authorization=AAD` (in the connection string or in `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`): the
    /// resource may have local authentication disabled, so items go to `/v2.1/track` with an Entra token of the
    /// app's managed identity for `https://monitor.azure.com`.
    pub entra_only: bool,
    /// `ClientId=…` of `APPLICATIONINSIGHTS_AUTHENTICATION_STRING`: the user-assigned identity to take tokens as.
    pub entra_client_id: Option<String>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is not a credential in the strict sense, but anyone holding it can write into the resource.
        f.debug_struct("ConnectionString")
            .field("instrumentation_key", &"<redacted>")
            .field("ingestion", &self.ingestion.as_str())
            .field("entra_only", &self.entra_only)
            .field("entra_client_id", &self.entra_client_id)
            .finish()
    }
}

/// The global ingestion endpoint, used when the connection string names none.
const DEFAULT_INGESTION: &str = "https://dc.services.visualstudio.com/";

impl ConnectionString {
    /// Parses and checks a connection string. Keys are case-insensitive, as in the official SDKs. The endpoint
    /// must be https, except on a loopback address (a local collector or test double).
    pub fn parse(text: &str) -> Result<ConnectionString, String> {
        let mut key = None;
        let mut ingestion = None;
        let mut suffix = None;
        let mut entra_only = false;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                // The part itself is not echoed: it may be a pasted key.
                return Err(
                    "it has a part that is not a Name=value pair (expected InstrumentationKey=…;IngestionEndpoint=…)"
                        .into(),
                );
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "instrumentationkey" => key = Some(value.to_string()),
                "ingestionendpoint" => ingestion = Some(value.to_string()),
                "endpointsuffix" => suffix = Some(value.trim_matches('.').to_string()),
                "authorization" => entra_only = value.eq_ignore_ascii_case("aad"),
                _ => {}
            }
        }
        let key = key.ok_or("it has no InstrumentationKey")?;
        let is_guid = key.len() == 36
            && key.char_indices().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        if !is_guid {
            return Err("its InstrumentationKey is not a GUID".into());
        }
        let endpoint = match (ingestion, suffix) {
            (Some(e), _) => e,
            (None, Some(s)) => format!("https://dc.{s}/"),
            (None, None) => DEFAULT_INGESTION.to_string(),
        };
        let mut ingestion = Url::parse(&endpoint).map_err(|e| format!("IngestionEndpoint '{endpoint}': {e}"))?;
        let loopback = matches!(ingestion.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if ingestion.scheme() != "https" && !(ingestion.scheme() == "http" && loopback) {
            return Err(format!(
                "IngestionEndpoint '{endpoint}' must use https (plain http is accepted only on a loopback address)"
            ));
        }
        if !ingestion.path().ends_with('/') {
            let path = format!("{}/", ingestion.path());
            ingestion.set_path(&path);
        }
        ingestion.set_query(None);
        Ok(ConnectionString {
            instrumentation_key: key.to_ascii_lowercase(),
            ingestion,
            entra_only,
            entra_client_id: None,
        })
    }

    /// Applies `APPLICATIONINSIGHTS_AUTHENTICATION_STRING` (`Authorization=AAD`, optionally `;ClientId=<id>` for a
    /// user-assigned identity), the setting the Functions host reads for the same purpose.
    pub fn with_authentication_string(mut self, text: &str) -> Result<ConnectionString, String> {
        let mut aad = false;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(
                    "it has a part that is not a Name=value pair (expected Authorization=AAD[;ClientId=…])".into(),
                );
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" if value.trim().eq_ignore_ascii_case("aad") => aad = true,
                "authorization" => {
                    return Err(format!(
                        "Authorization '{}' is not supported: use Authorization=AAD",
                        value.trim()
                    ));
                }
                "clientid" => self.entra_client_id = Some(value.trim().to_string()),
                _ => {}
            }
        }
        if !aad {
            return Err("it has no Authorization=AAD".into());
        }
        self.entra_only = true;
        Ok(self)
    }

    pub fn instrumentation_key(&self) -> &str {
        &self.instrumentation_key
    }

    /// The Track API URL batches are posted to: `v2.1/track` (Entra tokens) when the resource asks for Entra
    /// authentication, else `v2/track` (instrumentation key only).
    pub fn track_url(&self) -> Url {
        let path = if self.entra_only { "v2.1/track" } else { "v2/track" };
        self.ingestion
            .join(path)
            .expect("a base URL with a trailing slash joins")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00000000-1111-2222-3333-444444444444";

    #[test]
    fn the_portal_format_parses() {
        let cs = ConnectionString::parse(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;LiveEndpoint=https://westeurope.livediagnostics.monitor.azure.com/;ApplicationId=abc"
        ))
        .unwrap();
        assert_eq!(cs.instrumentation_key(), KEY);
        assert_eq!(
            cs.track_url().as_str(),
            "https://westeurope-5.in.applicationinsights.azure.com/v2/track"
        );
        assert!(!cs.entra_only);
        assert!(!format!("{cs:?}").contains(KEY));
    }

    #[test]
    fn defaults_and_suffixes() {
        let cs = ConnectionString::parse(&format!("instrumentationkey={KEY}")).unwrap();
        assert_eq!(cs.track_url().as_str(), "https://dc.services.visualstudio.com/v2/track");
        let cs = ConnectionString::parse(&format!(
            "InstrumentationKey={KEY};EndpointSuffix=applicationinsights.azure.cn"
        ))
        .unwrap();
        assert_eq!(
            cs.track_url().as_str(),
            "https://dc.applicationinsights.azure.cn/v2/track"
        );
        let cs = ConnectionString::parse(&format!(
            "InstrumentationKey={KEY};IngestionEndpoint=http://127.0.0.1:4318/base;Authorization=AAD"
        ))
        .unwrap();
        // Entra authentication: the token-taking endpoint.
        assert_eq!(cs.track_url().as_str(), "http://127.0.0.1:4318/base/v2.1/track");
        assert!(cs.entra_only);
    }

    #[test]
    fn bad_strings_are_explained_without_echoing_the_key() {
        for (text, expect) in [
            ("IngestionEndpoint=https://x/", "no InstrumentationKey"),
            ("InstrumentationKey=abc", "not a GUID"),
            (
                &format!("InstrumentationKey={KEY};IngestionEndpoint=http://collector.example/"),
                "must use https",
            ),
            (
                &format!("InstrumentationKey={KEY};IngestionEndpoint=not a url"),
                "IngestionEndpoint",
            ),
            ("secretwithoutequals", "not a Name=value pair"),
        ] {
            let err = ConnectionString::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
            assert!(!err.contains(KEY));
        }
    }
}
