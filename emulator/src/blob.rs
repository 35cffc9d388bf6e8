//! The emulator's access to the export/import storage account (Azurite locally): create containers, write
//! NDJSON and error files, read import inputs with their ETags. The real servers use their managed identity;
//! the emulator signs an account SAS with the account key, kept in memory only.

use base64::Engine as _;
use chrono::{Duration, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use sha2::Sha256;
use url::Url;

const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Azurite 3.35 accepts this REST version; the SAS layout below is the one defined for 2021-08-06.
const API_VERSION: &str = "2021-08-06";

#[derive(Clone, Debug)]
pub struct BlobConfig {
    /// e.g. `http://127.0.0.1:10000/devstoreaccount1` (no trailing slash).
    pub endpoint: Url,
    pub account: String,
    /// The base64 account key.
    pub key: String,
}

/// A storage failure, with the HTTP status the storage account answered (0 when it could not be reached).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BlobFailure {
    pub status: u16,
    pub message: String,
}

#[derive(Clone)]
pub struct BlobClient {
    config: BlobConfig,
    sas: String,
    http: reqwest::Client,
}

/// A downloaded blob and its ETag.
pub struct Downloaded {
    pub bytes: Vec<u8>,
    pub etag: String,
}

impl BlobClient {
    pub fn new(config: BlobConfig) -> Result<BlobClient, String> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(&config.key)
            .map_err(|_| "the blob account key is not valid base64".to_string())?;
        let sas = account_sas(&config.account, &key);
        Ok(BlobClient {
            config,
            sas,
            http: reqwest::Client::new(),
        })
    }

    /// The public URL of a blob (what manifests and error lists contain: no SAS).
    pub fn url(&self, container: &str, blob: &str) -> String {
        format!(
            "{}/{container}/{blob}",
            self.config.endpoint.as_str().trim_end_matches('/')
        )
    }

    /// Whether `url` points at this storage account: scheme and host must match, the port is ignored
    /// (reference §4.2).
    pub fn owns(&self, url: &Url) -> bool {
        url.scheme() == self.config.endpoint.scheme() && url.host_str() == self.config.endpoint.host_str()
    }

    /// Splits a blob URL of this account into (container, blob name).
    pub fn locate(&self, url: &Url) -> Option<(String, String)> {
        let base_path = self.config.endpoint.path().trim_end_matches('/');
        let rest = url.path().strip_prefix(base_path)?.trim_start_matches('/');
        let (container, blob) = rest.split_once('/')?;
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        Some((decode(container), decode(blob)))
    }

    fn signed(&self, container: &str, blob: Option<&str>, extra: &str) -> String {
        let base = self.config.endpoint.as_str().trim_end_matches('/');
        let path = match blob {
            Some(b) => format!(
                "{container}/{}",
                b.split('/')
                    .map(|s| utf8_percent_encode(s, COMPONENT).to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            ),
            None => container.to_string(),
        };
        format!(
            "{base}/{path}?{extra}{}{}",
            if extra.is_empty() { "" } else { "&" },
            self.sas
        )
    }

    pub async fn ensure_container(&self, container: &str) -> Result<(), BlobFailure> {
        let resp = self
            .http
            .put(self.signed(container, None, "restype=container"))
            .header("x-ms-version", API_VERSION)
            .send()
            .await
            .map_err(unreachable)?;
        match resp.status() {
            StatusCode::CREATED | StatusCode::CONFLICT => Ok(()),
            status => Err(storage_error(status, resp).await),
        }
    }

    pub async fn put(&self, container: &str, blob: &str, bytes: Vec<u8>) -> Result<(), BlobFailure> {
        let resp = self
            .http
            .put(self.signed(container, Some(blob), ""))
            .header("x-ms-version", API_VERSION)
            .header("x-ms-blob-type", "BlockBlob")
            .header("content-type", "application/fhir+ndjson")
            .body(bytes)
            .send()
            .await
            .map_err(unreachable)?;
        match resp.status() {
            StatusCode::CREATED => Ok(()),
            status => Err(storage_error(status, resp).await),
        }
    }

    pub async fn get(&self, container: &str, blob: &str) -> Result<Downloaded, BlobFailure> {
        let resp = self
            .http
            .get(self.signed(container, Some(blob), ""))
            .header("x-ms-version", API_VERSION)
            .send()
            .await
            .map_err(unreachable)?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            return Err(storage_error(status, resp).await);
        }
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = resp.bytes().await.map_err(unreachable)?.to_vec();
        Ok(Downloaded { bytes, etag })
    }
}

fn unreachable(e: reqwest::Error) -> BlobFailure {
    // reqwest's text names the URL, which carries the SAS; keep only the kind of failure.
    let what = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    BlobFailure {
        status: 0,
        message: format!("The storage account could not be reached ({what})."),
    }
}

async fn storage_error(status: StatusCode, resp: reqwest::Response) -> BlobFailure {
    let code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let message = match (status.as_u16(), code.as_str()) {
        (404, "ContainerNotFound") => "The specified container does not exist.".to_string(),
        (404, _) => "The specified blob does not exist.".to_string(),
        (403, _) => "Unable to get access token for storage account.".to_string(),
        (400, "InvalidResourceName") => "The specifed resource name contains invalid characters.".to_string(),
        _ => format!("Storage returned {status} {code}."),
    };
    BlobFailure {
        status: status.as_u16(),
        message,
    }
}

fn account_sas(account: &str, key: &[u8]) -> String {
    let start = (Utc::now() - Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let expiry = (Utc::now() + Duration::days(30))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let to_sign = format!("{account}\nrwdlac\nb\nsco\n{start}\n{expiry}\n\n\n{API_VERSION}\n\n");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let enc = |s: &str| utf8_percent_encode(s, COMPONENT).to_string();
    format!(
        "sv={API_VERSION}&ss=b&srt=sco&sp=rwdlac&st={}&se={}&sig={}",
        enc(&start),
        enc(&expiry),
        enc(&sig)
    )
}
