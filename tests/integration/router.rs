//! The custom-handler router in process (no socket): readiness, unknown functions, malformed payloads.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::functions::router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// An app whose storage is never contacted by these requests.
fn app() -> App {
    let mut source = SettingsSource::default();
    source.extend([
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
        ("AZURE_SourceUri", "https://source.example"),
        ("AZURE_DestinationUri", "https://destination.example"),
    ]);
    App::build(Settings::from_source(&source).unwrap()).unwrap()
}

async fn call(method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router(app()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test]
async fn get_root_answers_for_the_host_readiness_probe() {
    let (status, _) = call("GET", "/", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_function_is_a_json_404_naming_the_known_ones() {
    let (status, body) = call("POST", "/Nope", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["error"].as_str().unwrap().contains("'Nope'"));
}

#[tokio::test]
async fn malformed_payload_is_a_json_400() {
    for bad in ["not json", "[1,2]", "{\"Data\": 5}"] {
        let (status, body) = call("POST", "/MigrationOrchestrator", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("MigrationOrchestrator"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn invocations_must_be_posts() {
    let (status, _) = call("GET", "/MigrationOrchestrator", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
