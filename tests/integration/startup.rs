//! The Functions host polls a custom handler with `GET /` for at most 30 s and restarts it when it does not
//! answer. `serve` must listen before anything slow: here the state storage accepts connections and never
//! answers, and the handler still answers at once.

use std::path::Path;
use std::time::{Duration, Instant};

use fhir_testkit::{DEV_ACCOUNT, DEV_KEY, HandlerProcess};

#[tokio::test]
async fn serve_answers_the_host_before_slow_storage_answers() {
    // A storage endpoint that takes every connection and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let storage = format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};\
         BlobEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};\
         QueueEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT}"
    );
    let settings = [
        ("AzureWebJobsStorage", storage),
        ("AZURE_SourceUri", "http://127.0.0.1:9/".to_string()),
        ("AZURE_DestinationUri", "http://127.0.0.1:9/".to_string()),
    ];
    let started = Instant::now();
    let mut handler = HandlerProcess::start(Path::new(env!("CARGO_BIN_EXE_fhir-migration-tool")), &settings, None)
        .await
        .expect("the handler answers GET / although storage does not answer");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the handler answered after {took:?}: something slow runs before it listens"
    );
    handler.terminate(Duration::from_secs(10)).await.unwrap();
}
