//! Starting emulators (with or without Azurite) and driving bulk operations to completion.

use std::time::Duration;

use fhir_emulator::blob::BlobConfig;
use fhir_emulator::{EmulatorConfig, Flavor, RunningEmulator, spawn};
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY, poll_until};
use reqwest::{RequestBuilder, Response};
use serde_json::Value;

pub const FHIR_JSON: &str = "application/fhir+json";

/// An emulator and (when it exports or imports) the Azurite behind it. Dropped together.
pub struct Server {
    pub emu: RunningEmulator,
    pub http: reqwest::Client,
    pub azurite: Option<Azurite>,
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.emu.base_url, path.trim_start_matches('/'))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path))
    }

    /// A kick-off with the headers the servers require.
    pub async fn export(&self, path_and_query: &str) -> Response {
        self.get(path_and_query)
            .header("accept", FHIR_JSON)
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap()
    }

    /// Kicks off an export that must be accepted and returns its status URL.
    pub async fn export_ok(&self, path_and_query: &str) -> String {
        let resp = self.export(path_and_query).await;
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
        resp.headers()["content-location"].to_str().unwrap().to_string()
    }

    /// Polls a status URL until it leaves 202 (bounded), returning the final response.
    pub async fn finish(&self, status_url: &str) -> Response {
        let http = self.http.clone();
        poll_until(
            "the job to finish",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || {
                let req = http.get(status_url).send();
                async move {
                    let resp = req.await.ok()?;
                    (resp.status() != 202).then_some(resp)
                }
            },
        )
        .await
        .unwrap()
    }

    /// Runs an export to completion and returns its manifest.
    pub async fn export_manifest(&self, path_and_query: &str) -> Value {
        let location = self.export_ok(path_and_query).await;
        let resp = self.finish(&location).await;
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    pub async fn import(&self, body: &Value) -> Response {
        self.http
            .post(self.url("$import"))
            .header("prefer", "respond-async")
            .header("content-type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Reads a blob by its public URL through the emulator's own account key.
    pub async fn read_blob(&self, url: &str) -> String {
        let az = self.azurite.as_ref().expect("this server has storage");
        let cfg = blob_config(az);
        let client = fhir_emulator::blob::BlobClient::new(cfg).unwrap();
        let (container, name) = client.locate(&url::Url::parse(url).unwrap()).unwrap();
        String::from_utf8(client.get(&container, &name).await.unwrap().bytes).unwrap()
    }

    /// Writes a blob and returns its public URL.
    pub async fn write_blob(&self, container: &str, name: &str, content: &str) -> String {
        let az = self.azurite.as_ref().expect("this server has storage");
        let client = fhir_emulator::blob::BlobClient::new(blob_config(az)).unwrap();
        client.ensure_container(container).await.unwrap();
        client.put(container, name, content.as_bytes().to_vec()).await.unwrap();
        client.url(container, name)
    }
}

pub fn blob_config(az: &Azurite) -> BlobConfig {
    BlobConfig {
        endpoint: url::Url::parse(&az.blob_endpoint()).unwrap(),
        account: DEV_ACCOUNT.to_string(),
        key: DEV_KEY.to_string(),
    }
}

/// An emulator without storage (search, CRUD, validation that stops before any job runs).
pub async fn server(flavor: Flavor) -> Server {
    server_with(EmulatorConfig::quick(flavor), false).await
}

/// An emulator with its own Azurite.
pub async fn server_with_storage(flavor: Flavor) -> Server {
    server_with(EmulatorConfig::quick(flavor), true).await
}

pub async fn server_with(mut config: EmulatorConfig, storage: bool) -> Server {
    let azurite = if storage {
        Some(Azurite::start().await.expect("Azurite starts"))
    } else {
        None
    };
    if let Some(az) = &azurite {
        config.blob = Some(blob_config(az));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = spawn(config, listener).await.unwrap();
    Server {
        emu,
        http: reqwest::Client::new(),
        azurite,
    }
}

/// Loads NDJSON lines (with their own meta) into the server's store.
pub fn load(server: &Server, lines: &[String]) {
    let (_, errors) = fhir_emulator::seed::load_into(server.emu.store(), lines);
    assert!(errors.is_empty(), "{errors:?}");
}

/// A resource line with explicit meta.
pub fn line(resource_type: &str, id: &str, version: i64, last_updated: &str, extra: Value) -> String {
    let mut body = serde_json::json!({
        "resourceType": resource_type, "id": id,
        "meta": { "versionId": version.to_string(), "lastUpdated": last_updated }
    });
    if let Value::Object(map) = extra {
        for (k, v) in map {
            body[k] = v;
        }
    }
    body.to_string()
}

/// A soft-deleted line.
pub fn deleted_line(resource_type: &str, id: &str, version: i64, last_updated: &str) -> String {
    serde_json::json!({
        "resourceType": resource_type, "id": id,
        "meta": { "extension": [{ "url": fhir_emulator::store::DELETED_STATE_URL, "valueString": "soft-deleted" }],
                  "versionId": version.to_string(), "lastUpdated": last_updated }
    })
    .to_string()
}

/// The OperationOutcome's first diagnostics text of an error response, after checking its shape (item 64).
pub async fn diagnostics(resp: Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(body["id"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(body["meta"]["lastUpdated"].is_string(), "{body}");
    assert_eq!(body["issue"][0]["severity"], "error", "{body}");
    (
        status,
        body["issue"][0]["code"].as_str().unwrap_or_default().to_string(),
        body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_string(),
    )
}
