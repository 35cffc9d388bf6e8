//! fhir-emulator: a local stand-in for Azure API for FHIR ("aapi", the migration source) and the Azure Health
//! Data Services FHIR service ("ahds", the destination), behaving on the wire as the real servers do
//! (see `shared/reference/azure-fhir-bulk-api.md`).
//!
//! Layout:
//! - [`Flavor`] and [`EmulatorConfig`]: which product to imitate and how.
//! - [`spawn`]: start an emulator on a listener (port 0 in tests) and get a handle that stops it on drop.
//!
//! This is the skeleton the emulator issue builds out (store, search, history, `$export`, `$import`, auth,
//! faults); today it answers the capability statement so the local stack can be started and probed.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Which Azure product the emulator imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// Azure API for FHIR (Gen1): the migration source; `$import` is not available.
    Aapi,
    /// Azure Health Data Services FHIR service (Gen2): the destination; `$import` is available.
    Ahds,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Aapi => "aapi",
            Flavor::Ahds => "ahds",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub flavor: Flavor,
    /// The base URL clients use (it appears in `Content-Location` and manifests). `None`: derived from the
    /// listener address.
    pub base_url: Option<String>,
}

/// A running emulator. Dropping it stops the server.
pub struct RunningEmulator {
    pub addr: SocketAddr,
    pub base_url: String,
    _stop: oneshot::Sender<()>,
}

/// Serves the emulator on `listener` until the returned handle is dropped.
pub async fn spawn(config: EmulatorConfig, listener: TcpListener) -> std::io::Result<RunningEmulator> {
    let addr = listener.local_addr()?;
    let base_url = config.base_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(config);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(RunningEmulator {
        addr,
        base_url,
        _stop: stop,
    })
}

pub fn router(config: EmulatorConfig) -> Router {
    let flavor = config.flavor;
    Router::new()
        .route("/metadata", get(move || capability_statement(flavor)))
        .fallback(not_implemented)
}

fn fhir_json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

async fn capability_statement(flavor: Flavor) -> Response {
    let import = matches!(flavor, Flavor::Ahds);
    let mut operations =
        vec![json!({ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export" })];
    if import {
        operations.push(
            json!({ "name": "import", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import" }),
        );
    }
    fhir_json(
        StatusCode::OK,
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "software": { "name": format!("fhir-emulator ({})", flavor.name()), "version": env!("CARGO_PKG_VERSION") },
            "rest": [{ "mode": "server", "operation": operations }]
        }),
    )
}

async fn not_implemented() -> Response {
    fhir_json(
        StatusCode::NOT_FOUND,
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": "not-found", "diagnostics": "This route is not emulated yet." }]
        }),
    )
}
