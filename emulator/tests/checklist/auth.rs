//! Tokens, roles, throttling and the error shape: items 13 and 61–64.

use fhir_emulator::{AuthConfig, EmulatorConfig, Flavor, test_token};
use serde_json::Value;

use crate::support::{FHIR_JSON, diagnostics, server, server_with};

async fn with_tokens() -> crate::support::Server {
    let config = EmulatorConfig {
        auth: Some(AuthConfig {
            authority: "https://login.example/tenant".into(),
        }),
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    server_with(config, false).await
}

#[tokio::test]
async fn item_61_wrong_or_missing_audience_is_401_with_a_challenge() {
    let s = with_tokens().await;
    for token in [
        None,
        Some(test_token("https://other.azurehealthcareapis.com", &["*"])),
        Some("garbage".to_string()),
    ] {
        let mut req = s.get("Patient");
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(
            challenge.starts_with("Bearer authorization_uri=\"https://login.example/tenant\""),
            "{challenge}"
        );
        assert!(challenge.contains(&format!("resource_id=\"{}\"", s.emu.base_url)));
        let (status, code, text) = diagnostics(resp).await;
        assert_eq!(
            (status, code.as_str(), text.as_str()),
            (401, "login", "Authentication failed.")
        );
    }
    // The audience matches with or without a trailing slash.
    let ok = s
        .get("Patient")
        .bearer_auth(test_token(&format!("{}/", s.emu.base_url), &["FHIR Data Reader"]))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn item_13_62_missing_roles_are_403() {
    let s = with_tokens().await;
    let reader = test_token(&s.emu.base_url, &["FHIR Data Reader"]);
    let resp = s
        .get("$export")
        .bearer_auth(&reader)
        .header("accept", FHIR_JSON)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, code, text) = diagnostics(resp).await;
    assert_eq!(
        (status, code.as_str(), text.as_str()),
        (403, "forbidden", "Authorization failed.")
    );
    let resp = s.http.post(s.url("$import")).bearer_auth(&reader).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = s
        .http
        .put(s.url("Patient/x"))
        .bearer_auth(&reader)
        .json(&serde_json::json!({"resourceType":"Patient"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let writer = test_token(&s.emu.base_url, &["FHIR Data Writer"]);
    let resp = s
        .http
        .put(s.url("Patient/x"))
        .bearer_auth(&writer)
        .json(&serde_json::json!({"resourceType":"Patient"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let exporter = test_token(&s.emu.base_url, &["FHIR Data Exporter"]);
    let resp = s
        .get("$export")
        .bearer_auth(&exporter)
        .header("accept", FHIR_JSON)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        202,
        "an exporter may export (the job then fails: no storage here)"
    );
}

#[tokio::test]
async fn item_63_injected_throttling_carries_both_retry_headers() {
    let s = server(Flavor::Aapi).await;
    s.emu.set_faults(fhir_emulator::Faults {
        throttle_every: Some(2),
        retry_after_ms: Some(1500),
        ..Default::default()
    });
    let mut throttled = 0;
    for _ in 0..6 {
        let resp = s.get("metadata").send().await.unwrap();
        if resp.status() == 429 {
            throttled += 1;
            assert_eq!(resp.headers()["retry-after"], "2");
            assert_eq!(resp.headers()["x-ms-retry-after-ms"], "1500");
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            let (_, code, _) = diagnostics(resp).await;
            assert_eq!(code, "throttled");
        }
    }
    assert_eq!(throttled, 3);
    // The admin endpoint is never throttled, so a storm can always be switched off at run time.
    let off = s.http.put(s.url("_admin/faults")).body("{}").send().await.unwrap();
    assert_eq!(off.status(), 200);
    for _ in 0..4 {
        assert_eq!(s.get("metadata").send().await.unwrap().status(), 200);
    }
}

#[tokio::test]
async fn item_64_errors_are_operation_outcomes_with_request_ids() {
    let s = server(Flavor::Ahds).await;
    let resp = s
        .get("Patient/nobody")
        .header("x-request-id", "client-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-correlation-id"], "client-123");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["content-type"], "application/fhir+json; charset=utf-8");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], request_id.as_str());
    assert_eq!(body["issue"][0]["code"], "not-found");
    let (status, _, _) = diagnostics(s.get("NotAType").send().await.unwrap()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn item_13_export_authorization_comes_after_parameter_validation() {
    let s = with_tokens().await;
    let reader = test_token(&s.emu.base_url, &["FHIR Data Reader"]);
    // A reader with a bad parameter gets the 400 first, as the servers validate before authorizing.
    let resp = s
        .get("$export?_foo=1")
        .bearer_auth(&reader)
        .header("accept", FHIR_JSON)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, _, text) = diagnostics(resp).await;
    assert_eq!(
        (status, text.as_str()),
        (400, "The \"_foo\" parameter is not supported.")
    );
    // The route's type is checked after the headers.
    let resp = s
        .get("Observation/$export")
        .bearer_auth(&reader)
        .header("accept", "application/json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, _, text) = diagnostics(resp).await;
    assert_eq!(status, 400);
    assert!(text.contains("\"Accept\" header"), "{text}");
}

#[tokio::test]
async fn initial_import_mode_locks_writes_with_the_servers_body() {
    let config = EmulatorConfig {
        initial_import_mode: true,
        ..EmulatorConfig::quick(Flavor::Ahds)
    };
    let s = server_with(config, false).await;
    let resp = s
        .http
        .put(s.url("Patient/x"))
        .json(&serde_json::json!({"resourceType":"Patient"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 423);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({ "severity": "Error", "code": "Locked", "diagnostics": "Service is locked for initial import mode." })
    );
    assert_eq!(s.get("Patient").send().await.unwrap().status(), 200, "reads pass");
    assert_eq!(s.http.post(s.url("$reindex")).send().await.unwrap().status(), 423);
}

#[tokio::test]
async fn large_bodies_are_accepted_and_extractor_errors_are_operation_outcomes() {
    let s = server(Flavor::Aapi).await;
    let big = "x".repeat(3 * 1024 * 1024);
    let line = serde_json::json!({ "resourceType": "Basic", "id": "big", "meta": { "versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z" }, "text": { "div": big } });
    let resp = s
        .http
        .post(s.url("_admin/load"))
        .body(line.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "a 3 MB body is fine");
    let resp = s
        .http
        .put(s.url("Patient/%FF"))
        .json(&serde_json::json!({"resourceType":"Patient"}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = diagnostics(resp).await;
    assert_eq!((status, code.as_str()), (400, "invalid"));
}
