//! The "done when": a full export → import round trip between two emulators (aapi source, ahds
//! destination, one storage account) reproduces every version of every seeded resource.

use std::time::Duration;

use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};
use fhir_testkit::{Azurite, poll_until};
use serde_json::{Value, json};

use crate::support::{FHIR_JSON, blob_config};

#[tokio::test]
async fn full_export_import_round_trip_reproduces_every_version() {
    let azurite = Azurite::start().await.unwrap();
    let start = |flavor| {
        let config = EmulatorConfig {
            blob: Some(blob_config(&azurite)),
            ..EmulatorConfig::quick(flavor)
        };
        async move {
            spawn(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
                .await
                .unwrap()
        }
    };
    let source = start(Flavor::Aapi).await;
    let destination = start(Flavor::Ahds).await;
    let lines = generate(&SeedParams {
        resources: 1500,
        ..SeedParams::default()
    });
    let (_, errors) = load_into(source.store(), &lines);
    assert!(errors.is_empty(), "{errors:?}");
    let http = reqwest::Client::new();

    // Export everything, with history and deletes, using a small _maxCount so there are many files.
    let kickoff = http
        .get(format!(
            "{}/$export?_isParallel=true&includeAssociatedData=_history,_deleted&_maxCount=200",
            source.base_url
        ))
        .header("accept", FHIR_JSON)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kickoff.status(), 202);
    let status_url = kickoff.headers()["content-location"].to_str().unwrap().to_string();
    let manifest: Value = poll_until("the export", Duration::from_secs(60), Duration::from_millis(20), || {
        let req = http.get(&status_url).send();
        async move {
            let r = req.await.ok()?;
            if r.status() == 200 { r.json().await.ok() } else { None }
        }
    })
    .await
    .unwrap();
    let outputs = manifest["output"].as_array().unwrap();
    assert!(outputs.len() > 10, "many files: {}", outputs.len());

    // Import every file except SearchParameters (which $import refuses; they move through the REST API).
    let inputs: Vec<Value> = outputs
        .iter()
        .filter(|o| o["type"] != "SearchParameter")
        .map(|o| json!({ "name": "input", "part": [{ "name": "type", "valueString": o["type"] }, { "name": "url", "valueUri": o["url"] }] }))
        .collect();
    assert!(outputs.iter().any(|o| o["type"] == "SearchParameter"));
    let mut parameter = vec![
        json!({ "name": "inputFormat", "valueString": "application/fhir+ndjson" }),
        json!({ "name": "mode", "valueString": "IncrementalLoad" }),
    ];
    parameter.extend(inputs);
    let import = http
        .post(format!("{}/$import", destination.base_url))
        .header("prefer", "respond-async")
        .header("content-type", "application/fhir+json")
        .json(&json!({ "resourceType": "Parameters", "parameter": parameter }))
        .send()
        .await
        .unwrap();
    assert_eq!(import.status(), 202);
    let import_url = import.headers()["content-location"].to_str().unwrap().to_string();
    let result: Value = poll_until("the import", Duration::from_secs(60), Duration::from_millis(20), || {
        let req = http.get(&import_url).send();
        async move {
            let r = req.await.ok()?;
            if r.status() == 200 { r.json().await.ok() } else { None }
        }
    })
    .await
    .unwrap();
    assert_eq!(result["error"], json!([]), "no line failed");

    // Every version of every resource (SearchParameters aside) is identical on both sides.
    let src: Vec<_> = source
        .store()
        .snapshot()
        .into_iter()
        .filter(|(k, _)| &*k.0 != "SearchParameter")
        .collect();
    let dst = destination.store().snapshot();
    assert_eq!(src.len(), dst.len(), "same resources");
    let mut versions = 0;
    for ((sk, sr), (dk, dr)) in src.iter().zip(&dst) {
        assert_eq!(sk, dk);
        assert_eq!(sr.versions().len(), dr.versions().len(), "{}/{}", sk.0, sk.1);
        for (sv, dv) in sr.versions().iter().zip(dr.versions()) {
            assert_eq!(
                (sv.version_id, sv.last_updated, sv.deleted),
                (dv.version_id, dv.last_updated, dv.deleted),
                "{}/{}",
                sk.0,
                sk.1
            );
            let (a, b): (Value, Value) = (
                serde_json::from_str(&sv.body).unwrap(),
                serde_json::from_str(&dv.body).unwrap(),
            );
            assert_eq!(a, b, "{}/{} v{}", sk.0, sk.1, sv.version_id);
            versions += 1;
        }
    }
    assert!(versions > 2000, "{versions} versions compared");
}
