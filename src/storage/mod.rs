//! Azure Storage adapters: the tool's state lives in Table storage and its `$import` payloads in Blob storage.
//!
//! - [`connection_string`]: connection strings and `UseDevelopmentStorage=true`, parsed once.
//! - [`tables`]: a small Table REST client (no maintained Rust crate exists for Tables) with ETag-guarded writes.
//! - [`blob`]: the official `azure_storage_blob` client, set up for Azure (managed identity) or Azurite (SAS).
//!
//! Both adapters authenticate the same two ways, described by [`StorageCredential`].

pub mod blob;
pub mod connection_string;
pub mod tables;

use std::fmt;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::secret::Secret;

/// The Entra ID scope for Azure Storage data-plane tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// How the tool proves its identity to Azure Storage.
#[derive(Clone)]
pub enum StorageCredential {
    /// An account key (connection strings, Azurite). Tables sign with SharedKeyLite; blobs use an account SAS
    /// derived from the key, because the official blob crate takes no shared key.
    SharedKey { account: String, key: Secret<Vec<u8>> },
    /// An Entra ID token source (managed identity in Azure). Tokens are requested for [`STORAGE_SCOPE`] only and
    /// sent only to the configured storage endpoints.
    Token(Arc<dyn TokenCredential>),
}

impl fmt::Debug for StorageCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageCredential::SharedKey { account, .. } => {
                write!(f, "SharedKey {{ account: {account:?}, key: <redacted> }}")
            }
            StorageCredential::Token(_) => f.write_str("Token(<credential>)"),
        }
    }
}

/// Everything except RFC 3986 unreserved characters is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes one URL component (a key literal, a query value, a SAS field).
pub(crate) fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_encode_everything_but_unreserved_characters() {
        assert_eq!(encode_component("a b'c/é~-_.+="), "a%20b%27c%2F%C3%A9~-_.%2B%3D");
    }
}
