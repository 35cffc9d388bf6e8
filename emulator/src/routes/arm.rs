//! A minimal stand-in for the Azure Resource Manager GET of this server's own resource (any
//! `/subscriptions/…` path), so a client's preflight can read the export and import configuration end to end:
//! `exportConfiguration.storageAccountName` (both flavors) and, for the AHDS FHIR service,
//! `importConfiguration` (`integrationDataStore`, `enabled`, `initialImportMode`), from the emulator's own
//! configuration.

use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::{App, Flavor};

pub async fn resource(State(app): State<App>, OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path().to_string();
    let account = app.config.blob.as_ref().map(|b| b.account.clone()).unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default().to_string();
    let mut properties = json!({
        "provisioningState": "Succeeded",
        "authenticationConfiguration": { "audience": app.base_url },
        "exportConfiguration": { "storageAccountName": account },
    });
    let kind = match app.config.flavor {
        Flavor::Aapi => "Microsoft.HealthcareApis/services",
        Flavor::Ahds => {
            properties["importConfiguration"] = json!({
                "integrationDataStore": account,
                "enabled": app.config.blob.is_some(),
                "initialImportMode": app.config.initial_import_mode,
            });
            "Microsoft.HealthcareApis/workspaces/fhirservices"
        }
    };
    (
        StatusCode::OK,
        axum::Json(json!({ "id": path, "name": name, "type": kind, "properties": properties })),
    )
        .into_response()
}
