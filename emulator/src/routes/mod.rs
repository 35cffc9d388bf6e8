//! The HTTP surface, one module per operation family. Each module owns its handlers; this one assembles the
//! router and holds the helpers they share (query parsing, Bundle building).

pub mod admin;
mod arm;
mod crud;
pub mod export;
mod history;
pub mod import;
pub mod reindex;
mod search;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::json;

use crate::App;
use crate::middleware::{authorize, initial_import_lock, request_context, throttle};
use crate::outcome::{FhirError, FhirResult, fhir_json};
use crate::resource_types::is_resource_type;
use crate::store::VersionRef;
use crate::time::{format_ms, now_ms};

pub fn router(app: App) -> Router {
    Router::new()
        .route("/metadata", get(capability_statement))
        .route("/", get(search::system).post(crud::batch))
        .route("/$export", get(export::kickoff_system))
        .route("/{type}/$export", get(export::kickoff_type))
        .route("/{type}/{id}/$export", get(export::kickoff_instance))
        .route("/_operations/export/{id}", get(export::status).delete(export::cancel))
        .route("/$import", post(import::kickoff))
        .route("/_operations/import/{id}", get(import::status).delete(import::cancel))
        .route("/$reindex", post(reindex::kickoff))
        .route(
            "/_operations/reindex/{id}",
            get(reindex::status).delete(reindex::cancel),
        )
        .route("/_history", get(history::system))
        .route("/{type}", get(search::type_level).post(crud::create))
        .route("/{type}/_history", get(history::type_level))
        .route("/{type}/{id}", get(crud::read).put(crud::update).delete(crud::delete))
        .route("/{type}/{id}/_history", get(history::instance))
        .route("/{type}/{id}/_history/{vid}", get(crud::vread))
        .nest("/_admin", admin::router())
        .route("/subscriptions/{*rest}", get(arm::resource))
        .layer(from_fn_with_state(app.clone(), initial_import_lock))
        .layer(from_fn_with_state(app.clone(), authorize))
        .layer(from_fn_with_state(app.clone(), throttle))
        .layer(axum::middleware::from_fn(request_context))
        // Import files and seed loads can be large; the real servers take bodies of many megabytes.
        .layer(axum::extract::DefaultBodyLimit::max(512 * 1024 * 1024))
        .with_state(app)
}

async fn capability_statement(axum::extract::State(app): axum::extract::State<App>) -> Response {
    let mut operations =
        vec![json!({ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export" })];
    if app.config.flavor == crate::Flavor::Ahds {
        operations.push(
            json!({ "name": "import", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import" }),
        );
    }
    operations
        .push(json!({ "name": "reindex", "definition": format!("{}/OperationDefinition/reindex", app.base_url) }));
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": format_ms(now_ms()),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "software": { "name": format!("fhir-emulator ({})", app.config.flavor.name()), "version": env!("CARGO_PKG_VERSION") },
            "implementation": { "url": app.base_url },
            "rest": [{ "mode": "server", "operation": operations }]
        }),
    )
}

/// Query parameters in order, repeats kept, decoded as the servers decode them (`+` becomes a space).
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The first value of a parameter.
pub(crate) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Refuses a type segment that is not an R4 resource type.
pub(crate) fn check_type(resource_type: &str) -> FhirResult<()> {
    if is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "Resource type '{resource_type}' is not supported."
        )))
    }
}

/// A Bundle as JSON text, with entries spliced in from stored bodies (no re-parsing of each resource).
pub(crate) struct BundleBuilder {
    text: String,
    entries: usize,
}

impl BundleBuilder {
    pub fn new(id: &str, kind: &str, total: Option<usize>, links: &[(&str, String)]) -> BundleBuilder {
        let mut head = json!({
            "resourceType": "Bundle",
            "id": id,
            "meta": { "lastUpdated": format_ms(now_ms()) },
            "type": kind,
        });
        if let Some(total) = total {
            head["total"] = json!(total);
        }
        head["link"] = links
            .iter()
            .map(|(rel, url)| json!({ "relation": rel, "url": url }))
            .collect();
        let mut text = head.to_string();
        text.pop(); // reopen the object to append "entry"
        BundleBuilder { text, entries: 0 }
    }

    /// Appends an entry: `prefix` is the JSON object text before `"resource"`, the body is stored JSON.
    pub fn entry(&mut self, fields_before: &serde_json::Value, resource: &str, fields_after: &serde_json::Value) {
        self.text.push_str(if self.entries == 0 { ",\"entry\":[" } else { "," });
        let before = fields_before.to_string();
        self.text.push_str(&before[..before.len() - 1]);
        if before.len() > 2 {
            self.text.push(',');
        }
        self.text.push_str("\"resource\":");
        self.text.push_str(resource);
        let after = fields_after.to_string();
        if after.len() > 2 {
            self.text.push(',');
            self.text.push_str(&after[1..]);
        } else {
            self.text.push('}');
        }
        self.entries += 1;
    }

    pub fn finish(mut self) -> Response {
        if self.entries > 0 {
            self.text.push(']');
        }
        self.text.push('}');
        (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, crate::outcome::FHIR_JSON)],
            self.text,
        )
            .into_response()
    }
}

use axum::response::IntoResponse as _;

/// `fullUrl` of a version's resource.
pub(crate) fn full_url(app: &App, v: &VersionRef) -> String {
    format!("{}/{}/{}", app.base_url, v.resource_type(), v.id())
}
