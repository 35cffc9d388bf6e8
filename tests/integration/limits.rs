//! Size limits of the services the tool writes to: Application Insights refuses an item over its limits (the
//! local ingestion endpoint refuses them as the real one does), so long diagnostics are clipped where the
//! envelope is made and every event still arrives.

use std::time::Duration;

use fhir_migration_tool::telemetry::appinsights::{AppInsights, ConnectionString};
use fhir_migration_tool::telemetry::{Event, Exception, Telemetry};
use fhir_testkit::{MockIngestion, over_limit};
use serde_json::json;

#[tokio::test]
async fn the_local_ingestion_refuses_items_over_the_real_limits() {
    let mock = MockIngestion::start().await.unwrap();
    let envelope = |value: String| {
        json!({
            "name": "Microsoft.ApplicationInsights.Event",
            "iKey": "k",
            "data": { "baseType": "EventData", "baseData": { "ver": 2, "name": "Export", "properties": { "FailureReason": value } } },
        })
    };
    let body = json!([envelope("short".into()), envelope("x".repeat(8_193))]);
    let url = mock
        .connection_string()
        .split(';')
        .find_map(|p| p.strip_prefix("IngestionEndpoint="))
        .unwrap()
        .to_string()
        + "v2/track";
    let answer = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 206);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["itemsAccepted"], 1);
    assert_eq!(answer["errors"][0]["index"], 1);
    assert_eq!(answer["errors"][0]["statusCode"], 400);
    assert_eq!(mock.custom_events().len(), 1);
    // Each limit on its own.
    assert!(over_limit(&envelope("x".repeat(8_192))).is_none());
    let mut long_name = envelope("x".into());
    long_name["data"]["baseData"]["name"] = json!("n".repeat(513));
    assert!(over_limit(&long_name).is_some());
    let mut big = envelope("x".into());
    for i in 0..10 {
        big["data"]["baseData"]["properties"][format!("P{i}")] = json!("y".repeat(8_000));
    }
    assert!(over_limit(&big).unwrap().contains("bytes"));
    let exception = json!({
        "name": "Microsoft.ApplicationInsights.Exception",
        "data": { "baseData": { "exceptions": [{ "message": "m".repeat(32_769) }] } },
    });
    assert!(over_limit(&exception).is_some());
}

#[tokio::test]
async fn long_diagnostics_are_clipped_so_every_event_and_exception_still_arrives() {
    let mock = MockIngestion::start().await.unwrap();
    let ai = AppInsights::start(
        &ConnectionString::parse(&mock.connection_string()).unwrap(),
        reqwest::Client::new(),
    );
    let diagnostic = "OperationOutcome: the resource is invalid. ".repeat(1_000); // about 43,000 characters
    ai.event(
        Event::new("Export")
            .with("ExportStatus", "Failed")
            .with("FailureReason", &diagnostic),
    );
    ai.exception(Exception::new("FunctionFailed", "e".repeat(50_000)).with("FailureReason", &diagnostic));
    let mut many = Event::new("Import").with("ImportStatus", "Failed");
    for i in 0..12 {
        many = many.with(&format!("Detail{i}"), "z".repeat(8_000));
    }
    ai.event(many);
    assert!(ai.flush(Duration::from_secs(10)).await);

    let events = mock.custom_events();
    assert_eq!(
        events.len(),
        2,
        "both events arrive: {:?}",
        events.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    let reason = events[0].1["FailureReason"].as_str().unwrap();
    assert!(reason.chars().count() <= 8_192);
    assert!(reason.starts_with("OperationOutcome: the resource is invalid."));
    assert!(reason.contains("… [clipped "), "the cut is visible");
    assert_eq!(events[0].1["ExportStatus"], "Failed");
    assert_eq!(
        events[1].1["ImportStatus"], "Failed",
        "the status survives the shrinking"
    );
    let exceptions = mock.of_kind("Exception");
    assert_eq!(exceptions.len(), 1);
    let message = exceptions[0]["data"]["baseData"]["exceptions"][0]["message"]
        .as_str()
        .unwrap();
    assert!(message.chars().count() <= 32_768 && message.contains("… [clipped "));
    for item in mock.envelopes() {
        assert!(over_limit(&item).is_none());
    }
}
