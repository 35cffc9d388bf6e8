//! The skeleton answers as a FHIR server of its flavor and stops when its handle is dropped.

use fhir_emulator::{EmulatorConfig, Flavor, spawn};

async fn start(flavor: Flavor) -> fhir_emulator::RunningEmulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    spawn(EmulatorConfig { flavor, base_url: None }, listener)
        .await
        .unwrap()
}

#[tokio::test]
async fn capability_statement_names_the_bulk_operations_of_each_flavor() {
    for (flavor, has_import) in [(Flavor::Aapi, false), (Flavor::Ahds, true)] {
        let emulator = start(flavor).await;
        let resp = reqwest::get(format!("{}/metadata", emulator.base_url)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/fhir+json")
        );
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["resourceType"], "CapabilityStatement");
        assert_eq!(body["fhirVersion"], "4.0.1");
        let ops: Vec<_> = body["rest"][0]["operation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].clone())
            .collect();
        assert_eq!(ops.contains(&"import".into()), has_import, "{flavor:?}");
        assert!(ops.contains(&"export".into()));
    }
}

#[tokio::test]
async fn unknown_routes_answer_with_an_operation_outcome_and_drop_stops_the_server() {
    let emulator = start(Flavor::Ahds).await;
    let url = format!("{}/Nothing/here", emulator.base_url);
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    drop(emulator);
    let gone = refused_within_deadline(&url).await;
    assert!(gone, "the server still answers after its handle was dropped");
}

/// Polls until connections are refused (bounded), without a fixed sleep.
async fn refused_within_deadline(url: &str) -> bool {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(url).send().await.is_err() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}
