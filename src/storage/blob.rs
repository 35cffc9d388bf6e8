//! Blob storage through the official `azure_storage_blob` 1.x client.
//!
//! The tool stores each `$import` request body as a blob before posting it, so a crash between "decided" and
//! "posted" can be repaired from storage. In Azure it authenticates with managed identity; with an account key
//! (connection strings, Azurite) it signs a short-lived account SAS, because the official crate takes no shared
//! key. The SAS lives only in memory and never appears in logs or errors.

use std::sync::{Arc, Mutex};

use azure_core::http::{ExponentialRetryOptions, RequestContent, RetryOptions};
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

use super::{StorageCredential, encode_component as encode};
use crate::telemetry::{Dependency, DependencyTimer, NoTelemetry, Telemetry};

/// Account SAS lifetime; a fresh one is signed when less than [`SAS_RENEW_BEFORE`] remains.
const SAS_LIFETIME_HOURS: i64 = 24;
const SAS_RENEW_BEFORE_HOURS: i64 = 1;
/// Azurite 3.35 rejects the SDK's newer default REST version; this is the newest it accepts.
const AZURITE_API_VERSION: &str = "2025-11-05";
/// The SAS string-to-sign layout used here is the one defined for this version.
const SAS_VERSION: &str = "2021-08-06";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob storage refused {operation} on '{container}/{name}': HTTP {status} {code}{}", hint(*.status))]
    Service {
        operation: &'static str,
        container: String,
        name: String,
        status: u16,
        code: String,
    },
    #[error("blob {operation} on '{container}/{name}' failed: {detail}")]
    Other {
        operation: &'static str,
        container: String,
        name: String,
        detail: String,
    },
    #[error("the blob endpoint {0} cannot be used: {1}")]
    Setup(String, String),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => {
            " (check the account key, or the managed identity's 'Storage Blob Data Contributor' role on the account)"
        }
        _ => "",
    }
}

/// The SDK client and, for shared keys, the time its SAS expires; rebuilt when the SAS nears expiry.
type CachedClient = (Arc<BlobServiceClient>, Option<DateTime<Utc>>);

/// A handle on one account's Blob service. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    endpoint: Url,
    credential: StorageCredential,
    client: Arc<Mutex<Option<CachedClient>>>,
    telemetry: Arc<dyn Telemetry>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("endpoint", &self.endpoint.as_str())
            .field("credential", &self.credential)
            .finish()
    }
}

impl BlobStore {
    /// Checks the endpoint up front, so a misconfiguration fails at start-up rather than on first use.
    pub fn new(endpoint: Url, credential: StorageCredential) -> Result<BlobStore, BlobError> {
        if matches!(credential, StorageCredential::Token(_)) && endpoint.scheme() != "https" {
            return Err(BlobError::Setup(
                endpoint.to_string(),
                "managed identity tokens are only sent over https".into(),
            ));
        }
        let store = BlobStore {
            endpoint,
            credential,
            client: Arc::new(Mutex::new(None)),
            telemetry: Arc::new(NoTelemetry),
        };
        store.client()?;
        Ok(store)
    }

    /// Reports every call to `telemetry` as a dependency.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> BlobStore {
        self.telemetry = telemetry;
        self
    }

    /// Starts timing one call; the URL is the blob's (or container's) without any SAS.
    fn track(&self, operation: &str, container: &str, name: &str) -> DependencyTimer {
        let base = self.endpoint.as_str().trim_end_matches('/');
        let text = format!("{base}/{}/{}", encode(container), encode(name));
        let url = Url::parse(&text).unwrap_or_else(|_| self.endpoint.clone());
        Dependency::http("Azure blob", &url, format!("{operation} {container}"), Utc::now())
    }

    /// Reports a finished call: `expected` statuses (a missing blob on a read, an existing container) count as
    /// success.
    fn report<T>(&self, timer: DependencyTimer, result: &Result<T, azure_core::Error>, ok: u16, expected: u16) {
        let status = match result {
            Ok(_) => Some(ok),
            Err(e) => e.http_status().map(u16::from),
        };
        let success = status.is_some_and(|s| s < 400 || s == expected);
        self.telemetry.dependency(timer.finish(status, success));
    }

    fn client(&self) -> Result<Arc<BlobServiceClient>, BlobError> {
        let now = Utc::now();
        let mut cached = self.client.lock().expect("blob client lock poisoned");
        if let Some((client, expiry)) = cached.as_ref()
            && expiry.is_none_or(|e| e - now > Duration::hours(SAS_RENEW_BEFORE_HOURS))
        {
            return Ok(client.clone());
        }
        let setup = |e: azure_core::Error| BlobError::Setup(self.endpoint.to_string(), e.kind().to_string());
        let loopback = self
            .endpoint
            .host_str()
            .is_some_and(|h| h == "127.0.0.1" || h == "localhost");
        let mut options = BlobServiceClientOptions::default();
        if loopback {
            options.version = AZURITE_API_VERSION.into();
        }
        // The SDK's default retries a refused connection 8 times over up to a minute, silently; like the Table
        // client, a blob call is tried 3 times within seconds and then reported (the next tick tries again).
        options.client_options.retry = RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: 2,
            max_total_elapsed: azure_core::time::Duration::seconds(15),
            max_delay: azure_core::time::Duration::seconds(2),
        });
        let options = Some(options);
        let base = self.endpoint.as_str().trim_end_matches('/');
        let (client, expiry) = match &self.credential {
            StorageCredential::SharedKey { account, key } => {
                let expiry = now + Duration::hours(SAS_LIFETIME_HOURS);
                let sas = account_sas(account, key.expose(), expiry);
                let url = Url::parse(&format!("{base}?{sas}"))
                    .map_err(|e| BlobError::Setup(base.to_string(), e.to_string()))?;
                (BlobServiceClient::new(url, None, options).map_err(setup)?, Some(expiry))
            }
            StorageCredential::Token(credential) => {
                let url = Url::parse(&format!("{base}/")).map_err(|e| BlobError::Setup(base.into(), e.to_string()))?;
                (
                    BlobServiceClient::new(url, Some(credential.clone()), options).map_err(setup)?,
                    None,
                )
            }
        };
        let client = Arc::new(client);
        *cached = Some((client.clone(), expiry));
        Ok(client)
    }

    /// Creates the container; an existing one is success.
    pub async fn ensure_container(&self, container: &str) -> Result<(), BlobError> {
        let timer = self.track("CreateContainer", container, "");
        let result = self.client()?.blob_container_client(container).create(None).await;
        self.report(timer, &result, 201, 409);
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
            Err(e) => Err(describe("create container", container, "", e)),
        }
    }

    /// Writes (or overwrites) a block blob.
    pub async fn put(&self, container: &str, name: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let blob = self.client()?.blob_client(container, name);
        let timer = self.track("PutBlob", container, name);
        let result = blob.upload(RequestContent::from(bytes), None).await;
        self.report(timer, &result, 201, 0);
        result.map(|_| ()).map_err(|e| describe("upload", container, name, e))
    }

    /// The URL of a blob in this account (without any SAS): what a server is told to read.
    pub fn blob_url(&self, container: &str, name: &str) -> String {
        let base = self.endpoint.as_str().trim_end_matches('/');
        let name = name.split('/').map(encode).collect::<Vec<_>>().join("/");
        format!("{base}/{}/{name}", encode(container))
    }

    /// The (container, blob name) a URL names in this account, or `None` when the URL is on another account.
    /// Matches scheme and host (and the account path segment for path-style endpoints such as Azurite's).
    pub fn locate(&self, url: &Url) -> Option<(String, String)> {
        if url.scheme() != self.endpoint.scheme()
            || url.host_str() != self.endpoint.host_str()
            || url.port_or_known_default() != self.endpoint.port_or_known_default()
        {
            return None;
        }
        let base = self.endpoint.path().trim_end_matches('/');
        let rest = url.path().strip_prefix(base)?.trim_start_matches('/');
        let (container, name) = rest.split_once('/')?;
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        Some((decode(container), decode(name)))
    }

    /// Reads a whole blob; `None` if it (or its container) does not exist.
    pub async fn get(&self, container: &str, name: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let blob = self.client()?.blob_client(container, name);
        let timer = self.track("GetBlob", container, name);
        let result = blob.download(None).await;
        self.report(timer, &result, 200, 404);
        match result {
            Ok(result) => {
                let bytes = result
                    .body
                    .collect()
                    .await
                    .map_err(|e| describe("download", container, name, e))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(None),
            Err(e) => Err(describe("download", container, name, e)),
        }
    }

    /// A blob's ETag (as the service writes it, quotes included); `None` if the blob does not exist. The tool
    /// sends it with each `$import` input, so a file rewritten under an old name is a new import definition
    /// rather than a match for an old job (reference §4.2: registration is idempotent on the definition).
    pub async fn etag(&self, container: &str, name: &str) -> Result<Option<String>, BlobError> {
        use azure_storage_blob::models::BlobClientGetPropertiesResultHeaders as _;
        let blob = self.client()?.blob_client(container, name);
        let timer = self.track("GetBlobProperties", container, name);
        let result = blob.get_properties(None).await;
        self.report(timer, &result, 200, 404);
        match result {
            Ok(response) => Ok(response.etag().ok().flatten().map(|e| e.to_string())),
            Err(e) if e.http_status().map(u16::from) == Some(404) => Ok(None),
            Err(e) => Err(describe("get properties", container, name, e)),
        }
    }

    /// Names of the blobs in `container` whose names start with `prefix`, in name order.
    pub async fn list(&self, container: &str, prefix: &str) -> Result<Vec<String>, BlobError> {
        let client = self.client()?.blob_container_client(container);
        let options = azure_storage_blob::models::BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            ..Default::default()
        };
        let mut pager = client
            .list_blobs(Some(options))
            .map_err(|e| describe("list", container, prefix, e))?;
        // The pager yields blobs and fetches pages lazily; the whole listing is reported as one call.
        let timer = self.track("ListBlobs", container, "");
        let mut names = Vec::new();
        let listed = async {
            while let Some(item) = pager.try_next().await? {
                names.extend(item.name);
            }
            Ok::<(), azure_core::Error>(())
        }
        .await;
        self.report(timer, &listed, 200, 0);
        listed.map_err(|e| describe("list", container, prefix, e))?;
        Ok(names)
    }
}

/// Describes an SDK error by its status and service code only: the SDK's own text can contain the request
/// URL, and with a shared key that URL carries the SAS signature.
fn describe(operation: &'static str, container: &str, name: &str, e: azure_core::Error) -> BlobError {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse { status, error_code, .. } => BlobError::Service {
            operation,
            container: container.to_string(),
            name: name.to_string(),
            status: u16::from(*status),
            code: error_code.clone().unwrap_or_default(),
        },
        kind => BlobError::Other {
            operation,
            container: container.to_string(),
            name: name.to_string(),
            detail: format!("{kind} error"),
        },
    }
}

/// An account SAS for the Blob service: read, write, delete, list, add, create on service, containers and blobs.
fn account_sas(account: &str, key: &[u8], expiry: DateTime<Utc>) -> String {
    let (permissions, services, resource_types) = ("rwdlac", "b", "sco");
    let start = (Utc::now() - Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let expiry = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    // Field order is fixed by the service; the empty lines are IP range, protocol (both unset) and
    // encryption scope.
    let to_sign =
        format!("{account}\n{permissions}\n{services}\n{resource_types}\n{start}\n{expiry}\n\n\n{SAS_VERSION}\n\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!(
        "sv={SAS_VERSION}&ss={services}&srt={resource_types}&sp={permissions}&st={}&se={}&sig={}",
        encode(&start),
        encode(&expiry),
        encode(&sig)
    )
}
