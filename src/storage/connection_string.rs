//! Azure Storage connection strings (`AccountName=…;AccountKey=…;TableEndpoint=…`) and the Azurite shortcut
//! `UseDevelopmentStorage=true`, parsed once into endpoints and a shared key.

use url::Url;

use crate::secret::Secret;

/// Azurite's published development account and key (not a secret: it is in Microsoft's documentation).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// What a connection string resolves to.
#[derive(Debug, Clone)]
pub struct StorageAccount {
    pub name: String,
    /// The decoded account key: signs Table requests (SharedKeyLite) and Azurite blob SAS tokens.
    pub key: Secret<Vec<u8>>,
    /// Table service base, e.g. `https://acct.table.core.windows.net` or `http://127.0.0.1:10002/devstoreaccount1`.
    pub table_endpoint: Url,
    /// Blob service base, same forms as the table endpoint.
    pub blob_endpoint: Url,
}

/// Why a connection string was refused. Messages never include the string itself (it contains the key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionStringError {
    #[error("the storage connection string has no {0}")]
    Missing(&'static str),
    #[error("the storage connection string's AccountKey is not valid base64")]
    BadKey,
    #[error("the storage connection string's {field} is not a valid URL: {reason}")]
    BadEndpoint { field: &'static str, reason: String },
    #[error(
        "the storage connection string uses a SAS token; give an account key (AccountName + AccountKey) or use managed identity"
    )]
    SasUnsupported,
}

impl StorageAccount {
    pub fn parse(connection_string: &str) -> Result<StorageAccount, ConnectionStringError> {
        let mut fields = std::collections::HashMap::new();
        for part in connection_string.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((k, v)) = part.split_once('=') {
                fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let get = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();

        if get("usedevelopmentstorage").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            let proxy = get("developmentstorageproxyuri").unwrap_or_else(|| "http://127.0.0.1".to_string());
            let base = proxy.trim_end_matches('/');
            return Ok(StorageAccount {
                name: DEV_ACCOUNT.to_string(),
                key: Secret::new(decode_key(DEV_KEY)?),
                table_endpoint: endpoint("DevelopmentStorageProxyUri", &format!("{base}:10002/{DEV_ACCOUNT}"))?,
                blob_endpoint: endpoint("DevelopmentStorageProxyUri", &format!("{base}:10000/{DEV_ACCOUNT}"))?,
            });
        }
        if get("sharedaccesssignature").is_some() && get("accountkey").is_none() {
            return Err(ConnectionStringError::SasUnsupported);
        }
        let name = get("accountname").ok_or(ConnectionStringError::Missing("AccountName"))?;
        let key = decode_key(&get("accountkey").ok_or(ConnectionStringError::Missing("AccountKey"))?)?;
        let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".to_string());
        let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".to_string());
        let table = match get("tableendpoint") {
            Some(url) => endpoint("TableEndpoint", &url)?,
            None => endpoint("EndpointSuffix", &format!("{protocol}://{name}.table.{suffix}"))?,
        };
        let blob = match get("blobendpoint") {
            Some(url) => endpoint("BlobEndpoint", &url)?,
            None => endpoint("EndpointSuffix", &format!("{protocol}://{name}.blob.{suffix}"))?,
        };
        Ok(StorageAccount {
            name,
            key: Secret::new(key),
            table_endpoint: table,
            blob_endpoint: blob,
        })
    }
}

fn decode_key(key: &str) -> Result<Vec<u8>, ConnectionStringError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| ConnectionStringError::BadKey)
}

/// Parses an endpoint and drops any trailing slash, so paths can be appended with a single `/`.
pub(crate) fn endpoint(field: &'static str, raw: &str) -> Result<Url, ConnectionStringError> {
    let url = Url::parse(raw.trim_end_matches('/')).map_err(|e| ConnectionStringError::BadEndpoint {
        field,
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConnectionStringError::BadEndpoint {
            field,
            reason: format!("scheme {} is not http or https", url.scheme()),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_storage_points_at_azurite_defaults() {
        let acct = StorageAccount::parse("UseDevelopmentStorage=true").unwrap();
        assert_eq!(acct.name, "devstoreaccount1");
        assert_eq!(acct.table_endpoint.as_str(), "http://127.0.0.1:10002/devstoreaccount1");
        assert_eq!(acct.blob_endpoint.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(acct.key.expose().len(), 64);
    }

    #[test]
    fn explicit_endpoints_win_and_trailing_slashes_are_dropped() {
        let acct = StorageAccount::parse(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;\
             BlobEndpoint=http://127.0.0.1:4000/devstoreaccount1/;TableEndpoint=http://127.0.0.1:4002/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(acct.blob_endpoint.as_str(), "http://127.0.0.1:4000/devstoreaccount1");
        assert_eq!(acct.table_endpoint.as_str(), "http://127.0.0.1:4002/devstoreaccount1");
        assert_eq!(acct.key.expose(), b"key");
    }

    #[test]
    fn azure_form_derives_endpoints_from_the_account_name() {
        let acct = StorageAccount::parse(
            "DefaultEndpointsProtocol=https;AccountName=migsa;AccountKey=a2V5;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(acct.table_endpoint.as_str(), "https://migsa.table.core.windows.net/");
        assert_eq!(acct.blob_endpoint.as_str(), "https://migsa.blob.core.windows.net/");
    }

    #[test]
    fn refuses_incomplete_or_malformed_strings_without_echoing_them() {
        assert_eq!(
            StorageAccount::parse("AccountName=x").unwrap_err(),
            ConnectionStringError::Missing("AccountKey")
        );
        assert_eq!(
            StorageAccount::parse("AccountName=x;AccountKey=!!!not-base64").unwrap_err(),
            ConnectionStringError::BadKey
        );
        assert_eq!(
            StorageAccount::parse("BlobEndpoint=https://x;SharedAccessSignature=sv=1&sig=abc").unwrap_err(),
            ConnectionStringError::SasUnsupported
        );
        let err = StorageAccount::parse("AccountName=x;AccountKey=a2V5;TableEndpoint=ftp://x").unwrap_err();
        assert!(!err.to_string().contains("a2V5"));
        assert!(matches!(
            err,
            ConnectionStringError::BadEndpoint {
                field: "TableEndpoint",
                ..
            }
        ));
    }
}
