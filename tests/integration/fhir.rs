//! The FHIR client on the wire: tokens reach only the configured server, throttling hints are honoured, and
//! slow servers time out with a clear error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use fhir_emulator::{EmulatorConfig, Faults, Flavor};
use fhir_migration_tool::fhir::auth::TokenSource;
use fhir_migration_tool::fhir::client::RetryPolicy;
use fhir_migration_tool::fhir::{FhirClient, FhirError};

#[derive(Debug)]
struct FixedToken;

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "token-for-the-source",
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

/// A server that records the Authorization header of every request and answers a kick-off with a status URL
/// on `elsewhere`.
async fn recording_server(elsewhere: String) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().fallback(get(move |headers: HeaderMap| {
        let record = record.clone();
        let elsewhere = elsewhere.clone();
        async move {
            record
                .lock()
                .unwrap()
                .push(headers.get("authorization").map(|v| v.to_str().unwrap().to_string()));
            (
                StatusCode::ACCEPTED,
                [("content-location", format!("{elsewhere}/_operations/export/1"))],
            )
                .into_response()
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn client(base: &str, tokens: TokenSource) -> FhirClient {
    FhirClient::new(
        url::Url::parse(base).unwrap(),
        tokens,
        "fhir-migration-tool-test",
        reqwest::Client::new(),
    )
}

#[tokio::test]
async fn tokens_never_follow_a_status_url_to_another_host() {
    let (other, other_seen) = recording_server("http://127.0.0.1:1".into()).await;
    let (source, source_seen) = recording_server(other.clone()).await;
    let tokens = TokenSource::Credential {
        credential: Arc::new(FixedToken),
        scope: "https://src.example/.default".into(),
        hint: "test",
    };
    let c = client(&source, tokens);
    let accepted = c.export("_isParallel=true").await.unwrap();
    assert!(accepted.status_url.starts_with(&other));
    assert_eq!(
        source_seen.lock().unwrap()[0].as_deref(),
        Some("Bearer token-for-the-source")
    );
    let err = c.export_status(&accepted.status_url).await.unwrap_err();
    assert!(matches!(err, FhirError::ForeignUrl { .. }), "{err}");
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "nothing, let alone the token, went to the other host"
    );
}

#[tokio::test]
async fn throttling_is_waited_out_as_the_server_asks() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = fhir_emulator::spawn(EmulatorConfig::quick(Flavor::Aapi), listener)
        .await
        .unwrap();
    emulator.set_faults(Faults {
        throttle_every: Some(1),
        retry_after_ms: Some(300),
        ..Default::default()
    });
    let c = client(&emulator.base_url, TokenSource::None).with_retry(RetryPolicy {
        attempts: 3,
        ..RetryPolicy::default()
    });
    let started = Instant::now();
    let err = c.total(false).await.unwrap_err();
    assert!(matches!(err, FhirError::Rejected { status: 429, .. }), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "two waits of x-ms-retry-after-ms: {:?}",
        started.elapsed()
    );
    // Every other request throttled: the client gets through.
    emulator.set_faults(Faults {
        throttle_every: Some(2),
        retry_after_ms: Some(50),
        ..Default::default()
    });
    for _ in 0..4 {
        assert_eq!(c.total(false).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_hanging_server_times_out_with_the_url_in_the_error() {
    let app = Router::new().fallback(get(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late"
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let c = FhirClient::new(url::Url::parse(&base).unwrap(), TokenSource::None, "t", http).with_retry(RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        budget: Duration::from_secs(10),
    });
    let err = c.total(false).await.unwrap_err();
    match err {
        FhirError::Transport { url, message } => {
            assert!(url.starts_with(&base), "{url}");
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("expected a transport error, got {other}"),
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_instead_of_buffered() {
    use fhir_migration_tool::fhir::client::MAX_JSON_BODY;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A body streamed past the cap without a declared length.
    let app = Router::new().fallback(get(|| async {
        let chunk = axum::body::Bytes::from(vec![b' '; 1024 * 1024]);
        let chunks = (0..=MAX_JSON_BODY / (1024 * 1024)).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
        axum::body::Body::from_stream(futures::stream::iter(chunks))
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let streaming = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    // A response that declares four times the cap (hyper would not send one, so it is written by hand).
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let declaring = format!("http://{}", raw.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = raw.accept().await {
            // Read the request head first, as a server would.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{{}}",
                MAX_JSON_BODY * 4
            );
            let _ = socket.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    for base in [streaming, declaring] {
        let c = client(&base, TokenSource::None).with_retry(RetryPolicy {
            attempts: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(10),
            budget: Duration::from_secs(10),
        });
        let started = Instant::now();
        match c.get_json("Patient").await {
            Err(FhirError::InvalidResponse { detail, .. }) => assert!(detail.contains("larger than 64 MB"), "{detail}"),
            other => panic!("{base}: expected a refusal, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "refused without waiting for the body"
        );
    }
}

#[tokio::test]
async fn hostile_and_malformed_answers_give_clear_errors() {
    use axum::routing::get;
    // Calls to the "foreign" listener are counted: the tool must never make any.
    let foreign_calls: Arc<Mutex<usize>> = Arc::default();
    let counter = foreign_calls.clone();
    let foreign = Router::new().fallback(get(move || {
        let counter = counter.clone();
        async move {
            *counter.lock().unwrap() += 1;
            "{}"
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let foreign_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, foreign).await });

    let manifest = serde_json::json!({
        "transactionTime": "2026-01-01T00:00:00Z", "request": "x", "requiresAccessToken": false,
        "output": [{ "type": "Patient", "url": format!("{foreign_base}/c/Patient.ndjson"), "count": 3 }],
        "error": []
    })
    .to_string();
    let app = Router::new()
        .route("/a/$export", get(|| async { StatusCode::ACCEPTED }))
        .route(
            "/b/$export",
            get(|| async { (StatusCode::ACCEPTED, [("content-location", "/b/_operations/export/7")]) }),
        )
        .route(
            "/b/_operations/export/7",
            get(|| async { (StatusCode::OK, "{\"output\":[{\"type\":") }),
        )
        .route(
            "/c/_operations/export/8",
            get(|| async { (StatusCode::OK, [("content-type", "text/html")], "<html>busy</html>") }),
        )
        .route(
            "/d/_operations/export/9",
            get(move || async move { (StatusCode::OK, manifest) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 202 without Content-Location.
    let err = client(&format!("{base}/a"), TokenSource::None)
        .export("_type=Patient")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("202 without Content-Location"), "{err}");
    // A relative Content-Location is resolved on the same server; its truncated manifest is refused clearly.
    let b = client(&format!("{base}/b"), TokenSource::None);
    let accepted = b.export("_type=Patient").await.unwrap();
    assert_eq!(accepted.status_url, format!("{base}/b/_operations/export/7"));
    let err = b.export_status(&accepted.status_url).await.unwrap_err();
    assert!(matches!(err, FhirError::InvalidResponse { .. }), "{err}");
    // A 200 that is not JSON at all.
    let c = client(&base, TokenSource::None);
    let err = c
        .export_status(&format!("{base}/c/_operations/export/8"))
        .await
        .unwrap_err();
    assert!(matches!(err, FhirError::InvalidResponse { .. }), "{err}");
    // A manifest whose files sit on another host: read, never fetched by the tool (the destination server
    // fetches them for $import), and not an account the tool's blob store would read error files from.
    let polled = c
        .export_status(&format!("{base}/d/_operations/export/9"))
        .await
        .unwrap();
    let fhir_migration_tool::fhir::Poll::Done(manifest) = polled else {
        panic!("a finished export")
    };
    let file = url::Url::parse(&manifest.output[0].url).unwrap();
    let blobs = fhir_migration_tool::storage::blob::BlobStore::new(
        url::Url::parse("http://127.0.0.1:10000/devstoreaccount1").unwrap(),
        fhir_migration_tool::storage::StorageCredential::SharedKey {
            account: fhir_testkit::DEV_ACCOUNT.into(),
            key: fhir_migration_tool::secret::Secret::new(b"key".to_vec()),
        },
    )
    .unwrap();
    assert_eq!(
        blobs.locate(&file),
        None,
        "a foreign file is never read with the tool's storage access"
    );
    assert_eq!(
        *foreign_calls.lock().unwrap(),
        0,
        "nothing was sent to the foreign host"
    );
}
