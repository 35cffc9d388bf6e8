//! Telemetry as App Insights receives it: the sender against a local ingestion endpoint (retries, bounds,
//! flush), then a whole migration through the real handler process with every envelope checked against the
//! event contract, the host's trace, and for secrets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fhir_emulator::Flavor;
use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_migration_tool::telemetry::appinsights::{AppInsights, ConnectionString, QUEUE_CAPACITY};
use fhir_migration_tool::telemetry::context::{self, Operation};
use fhir_migration_tool::telemetry::{Event, Telemetry, contract};
use fhir_testkit::{
    Azurite, DEV_KEY, HandlerProcess, MockIngestion, Scripted, TEST_INSTRUMENTATION_KEY, http_payload, poll_until,
    timer_payload,
};
use serde_json::{Value, json};

use crate::migration::{base_settings, emulator};
use crate::support::unique_name;

/// The trace id and span the harness sends as `traceparent` with every invocation.
const HOST_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const HOST_SPAN: &str = "b7ad6b7169203331";

fn sink(mock: &MockIngestion) -> AppInsights {
    let cs = ConnectionString::parse(&mock.connection_string()).unwrap();
    AppInsights::start(&cs, reqwest::Client::new())
}

#[tokio::test]
async fn events_arrive_as_custom_events_in_their_operation_and_flush_drains_the_queue() {
    let mock = MockIngestion::start().await.unwrap();
    let ai = sink(&mock);
    let op = Operation::for_invocation(Some(&format!("00-{HOST_TRACE}-{HOST_SPAN}-01")), "ExportStatus");
    context::scope(op, async {
        for i in 0..1200 {
            ai.event(Event::new("ImportTill").with("Till", format!("2024-01-01T00:00:{:02}.000Z", i % 60)));
        }
    })
    .await;
    ai.event(Event::new("ImportTill").with("Till", "outside"));
    assert!(ai.flush(Duration::from_secs(10)).await, "flush finishes");
    let events = mock.of_kind("Event");
    assert_eq!(events.len(), 1201, "every event, none sampled, none twice");
    assert!(mock.bodies().len() >= 3, "batches of at most 500");
    for e in &events[..1200] {
        assert_eq!(e["iKey"], TEST_INSTRUMENTATION_KEY);
        assert_eq!(e["data"]["baseType"], "EventData");
        assert_eq!(e["tags"]["ai.operation.id"], HOST_TRACE);
        assert_eq!(e["tags"]["ai.operation.parentId"], HOST_SPAN);
        assert_eq!(e["tags"]["ai.operation.name"], "ExportStatus");
    }
    assert!(events[1200]["tags"].get("ai.operation.id").is_none());
    assert_eq!(ai.counters().sent.load(Ordering::Relaxed), 1201);
}

#[tokio::test]
async fn throttling_and_partial_acceptance_are_retried_and_invalid_items_dropped() {
    let mock = MockIngestion::start().await.unwrap();
    mock.script([Scripted::Status(503), Scripted::Partial(vec![(1, 500), (2, 400)])]);
    let ai = sink(&mock);
    for name in ["first", "second", "third", "fourth"] {
        ai.event(Event::new(name));
    }
    assert!(ai.flush(Duration::from_secs(20)).await);
    let names = || -> Vec<String> { mock.custom_events().into_iter().map(|(n, _)| n).collect() };
    assert_eq!(
        names(),
        ["first", "fourth", "second"],
        "the retryable item is resent, the invalid one is not"
    );
    assert_eq!(ai.counters().failed.load(Ordering::Relaxed), 1);
    assert_eq!(ai.counters().sent.load(Ordering::Relaxed), 3);
    assert_eq!(mock.bodies().len(), 3, "503, 206, then the resend");

    // Three failures in a row: the batch is given up, and the sender carries on with the next one.
    mock.script([Scripted::Status(503), Scripted::Status(429), Scripted::Status(500)]);
    ai.event(Event::new("lost"));
    assert!(ai.flush(Duration::from_secs(20)).await);
    ai.event(Event::new("after"));
    assert!(ai.flush(Duration::from_secs(20)).await);
    assert_eq!(names(), ["first", "fourth", "second", "after"]);
    assert_eq!(ai.counters().failed.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn an_unreachable_endpoint_never_blocks_the_caller_and_the_queue_is_bounded() {
    // Accepts connections and never answers: the worst case for a sender.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
        }
    });
    let cs = ConnectionString::parse(&format!(
        "InstrumentationKey={TEST_INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:{port}/"
    ))
    .unwrap();
    let ai = AppInsights::start(&cs, reqwest::Client::new());
    let extra = 1000;
    for i in 0..QUEUE_CAPACITY + extra {
        ai.event(Event::new("ImportTill").with("Till", i));
    }
    // The sender holds at most one batch (500) outside the queue, so at least 500 of the extra were dropped.
    let dropped = ai.counters().dropped.load(Ordering::Relaxed);
    assert!((500..=extra as u64).contains(&dropped), "dropped {dropped}");
    assert!(
        !ai.flush(Duration::from_millis(300)).await,
        "a flush gives up at its deadline"
    );
}

/// Seeds two bursts 20 days apart (the gap is skipped without an export) and a conflicting version at the
/// destination (one import line fails). Returns the source's version count.
fn seed(source: &fhir_emulator::Store, destination: &fhir_emulator::Store) -> usize {
    let now = Utc::now();
    let mut versions = 0;
    for (days_ago, s) in [(25, 21), (2, 22)] {
        let mut lines = generate(&SeedParams {
            resources: 120,
            seed: s,
            span_days: 1,
            end: Some((now - TimeDelta::days(days_ago)).timestamp_millis()),
            search_parameters: 0,
            hostile: false,
            ..Default::default()
        });
        for l in lines.iter_mut() {
            *l = l.replace("\"id\":\"", &format!("\"id\":\"b{s}"));
        }
        let (loaded, errors) = load_into(source, &lines);
        assert!(errors.is_empty(), "{errors:?}");
        versions += loaded;
    }
    let victim = source
        .snapshot()
        .into_iter()
        .find(|(k, r)| &*k.0 == "Patient" && r.versions().len() == 1 && !r.current().unwrap().deleted)
        .unwrap();
    let mut body: Value = serde_json::from_str(&victim.1.versions()[0].body).unwrap();
    body["gender"] = json!("unknown-conflicting");
    assert!(load_into(destination, &[body.to_string()]).1.is_empty());
    versions
}

async fn invoke(handler: &HandlerProcess, function: &str, payload: &Value) -> (u16, Value) {
    let resp = handler.invoke(function, payload).await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn http_body(response: &Value) -> Value {
    serde_json::from_str(response["Outputs"]["res"]["body"].as_str().unwrap_or("null")).unwrap()
}

async fn migrate(handler: &HandlerProcess) {
    let target = Utc::now() - TimeDelta::minutes(5);
    for _ in 0..200 {
        for function in ["MigrationOrchestrator", "ExportStatus", "ImportStatus"] {
            let payload = timer_payload(function, "myTimer", &Utc::now().to_rfc3339(), false);
            let (code, body) = invoke(handler, function, &payload).await;
            assert_eq!(code, 200, "{function}: {body}");
        }
        let get = http_payload("MigrationStatus_Http", "req", "GET", json!({}), None);
        let status = http_body(&invoke(handler, "MigrationStatus_Http", &get).await.1);
        let through = status["migratedThrough"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if status["windowsInFlight"].as_array().is_some_and(|w| w.is_empty()) && through.is_some_and(|t| t >= target) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the migration did not catch up");
}

async fn verify(handler: &HandlerProcess) -> Value {
    let mut start = http_payload(
        "E2ETest_Http",
        "req",
        "POST",
        json!({ "mode": "all", "count": 20 }),
        None,
    );
    start["Data"]["req"]["Url"] = json!("https://fn.example/api/E2ETest_Http?code=FUNCTIONKEYSECRET&mode=all");
    let (_, response) = invoke(handler, "E2ETest_Http", &start).await;
    let id = http_body(&response)["id"].as_str().unwrap().to_string();
    let mut status = http_payload("E2ETest_Status", "req", "GET", json!({}), None);
    status["Data"]["req"]["Params"] = json!({ "id": id });
    poll_until(
        "the verification run to finish",
        Duration::from_secs(120),
        Duration::from_millis(10),
        || {
            let (status, tick) = (
                status.clone(),
                timer_payload("E2ETest_Runner", "myTimer", &Utc::now().to_rfc3339(), false),
            );
            async move {
                invoke(handler, "E2ETest_Runner", &tick).await;
                let body = http_body(&invoke(handler, "E2ETest_Status", &status).await.1);
                (body["runtimeStatus"] == "Completed").then_some(body)
            }
        },
    )
    .await
    .unwrap()
}

fn props<'a>(
    events: &'a [(String, serde_json::Map<String, Value>)],
    name: &str,
) -> Vec<&'a serde_json::Map<String, Value>> {
    events.iter().filter(|(n, _)| n == name).map(|(_, p)| p).collect()
}

fn text<'a>(p: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    p.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {key} in {p:?}"))
}

fn number(p: &serde_json::Map<String, Value>, key: &str) -> i64 {
    text(p, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {p:?}"))
}

fn is_instant(t: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(t).is_ok() && t.ends_with('Z') && t.len() == "2024-01-01T00:00:00.000Z".len()
}

#[tokio::test]
async fn a_whole_migration_reports_the_originals_events_and_no_secrets() {
    let azurite = Azurite::start().await.unwrap();
    let mock = MockIngestion::start().await.unwrap();
    let source = emulator(Flavor::Aapi, &azurite).await;
    let destination = emulator(Flavor::Ahds, &azurite).await;
    let versions = seed(source.store(), destination.store());
    let mut settings = base_settings(&azurite, &source, &destination);
    settings.extend([
        ("AZURE_ExportConfirmSeconds", "1".into()),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", mock.connection_string()),
    ]);
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("telemetry-handler")));
    let mut handler = HandlerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_fhir-migration-tool")),
        &settings,
        Some(&log),
    )
    .await
    .unwrap();

    migrate(&handler).await;
    let verification = verify(&handler).await;
    assert_eq!(
        verification["passed"], false,
        "the conflicting version is found: {verification}"
    );
    let clear = http_payload("ClearMaxExportRetries_Http", "req", "POST", json!({}), None);
    assert_eq!(invoke(&handler, "ClearMaxExportRetries_Http", &clear).await.0, 200);
    // A broken invocation (a binding name the function does not declare) fails and is reported as an exception.
    let broken = timer_payload("ExportStatus", "notMyTimer", &Utc::now().to_rfc3339(), false);
    assert_eq!(invoke(&handler, "ExportStatus", &broken).await.0, 500);
    // SIGTERM, as the host recycles a worker: queued telemetry is flushed before the process exits.
    let exit = handler.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(exit.success(), "{exit:?}");

    let envelopes = mock.envelopes();
    let events = mock.custom_events();
    assert!(!events.is_empty());
    // Every event follows the contract, and every item joins the invocation's operation.
    for (name, p) in &events {
        let keys: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(contract::violation(name, &keys), None);
        for (key, value) in p {
            if let Some(allowed) = contract::allowed_values(name, key) {
                assert!(
                    allowed.contains(&value.as_str().unwrap_or_default()),
                    "{name}.{key} = {value}"
                );
            }
        }
        assert!(p.values().all(Value::is_string), "{name}: every value is a string");
    }
    for e in &envelopes {
        assert_eq!(e["iKey"], TEST_INSTRUMENTATION_KEY);
        assert_eq!(e["sampleRate"], 100.0);
        // Start-up work (creating the tables) is its own operation; everything else is an invocation's.
        if e["tags"]["ai.operation.name"] == "Startup" {
            assert_ne!(e["tags"]["ai.operation.id"], HOST_TRACE, "{e}");
            continue;
        }
        assert_eq!(e["tags"]["ai.operation.id"], HOST_TRACE, "{e}");
        assert_eq!(e["tags"]["ai.operation.parentId"], HOST_SPAN, "{e}");
    }

    // Exports: each started export completes once, with the window it was started for.
    let exports = props(&events, "Export");
    let by_status = |s: &str| -> Vec<_> {
        exports
            .iter()
            .filter(|p| text(p, "ExportStatus") == s)
            .copied()
            .collect()
    };
    let started = by_status("Started");
    let completed = by_status("Completed");
    assert!(started.len() >= 2, "two bursts need at least two windows");
    assert!(by_status("Failed").is_empty());
    let started_ids: HashSet<&str> = started.iter().map(|p| text(p, "ExportId")).collect();
    let completed_ids: Vec<&str> = completed.iter().map(|p| text(p, "ExportId")).collect();
    assert_eq!(started_ids.len(), started.len(), "export ids are unique");
    assert_eq!(completed_ids.len(), started.len(), "one Completed per export");
    assert_eq!(started_ids, completed_ids.iter().copied().collect::<HashSet<_>>());
    for p in &started {
        assert!(is_instant(text(p, "Since")) && is_instant(text(p, "Till")), "{p:?}");
        assert!(
            text(p, "StatusUrl").ends_with(&format!("/{}", text(p, "ExportId"))),
            "{p:?}"
        );
    }
    for p in by_status("Running") {
        assert!(started_ids.contains(text(p, "ExportId")));
        assert_eq!((text(p, "Since"), text(p, "Till")), ("", ""));
    }
    let exported: i64 = completed
        .iter()
        .filter(|p| !text(p, "TotalResources").is_empty())
        .map(|p| number(p, "TotalResources"))
        .sum();

    // Imports: one Completed per Started; every exported line is imported or counted as failed, exactly once.
    let imports = props(&events, "Import");
    let of = |s: &str| -> Vec<_> {
        imports
            .iter()
            .filter(|p| text(p, "ImportStatus") == s)
            .copied()
            .collect()
    };
    let (istarted, icompleted) = (of("Started"), of("Completed"));
    assert!(of("Failed").is_empty());
    let mut ids: Vec<&str> = istarted.iter().map(|p| text(p, "ImportId")).collect();
    let mut done: Vec<&str> = icompleted.iter().map(|p| text(p, "ImportId")).collect();
    ids.sort_unstable();
    done.sort_unstable();
    assert_eq!(ids, done);
    let imported: i64 = icompleted.iter().map(|p| number(p, "TotalImportResources")).sum();
    let failed: i64 = icompleted.iter().map(|p| number(p, "FailedImportCount")).sum();
    assert_eq!(failed, 1, "the one conflicting line");
    assert_eq!(imported + failed, exported);
    assert_eq!(exported as usize, versions, "every source version exported once");
    let last = icompleted.last().unwrap();
    assert_eq!(
        number(last, "SourceResourceCount") as usize,
        versions,
        "whole-server totals"
    );
    assert!(number(last, "DestinationResourceCount") > 0);
    assert_eq!((text(last, "SourceError"), text(last, "DestinationError")), ("", ""));
    let errors = props(&events, "ImportErrors");
    assert_eq!(errors.len(), 1);
    assert_eq!(number(errors[0], "FailedImportCount"), 1);
    assert_eq!(
        number(errors[0], "Conflicts") + number(errors[0], "Duplicates") + number(errors[0], "Invalid"),
        1
    );
    assert!(is_instant(text(errors[0], "Since")) && is_instant(text(errors[0], "Till")));

    // Progress: ImportTill only moves forward and ends near now; the 20-day gap was skipped, not exported.
    let tills: Vec<&str> = props(&events, "ImportTill").iter().map(|p| text(p, "Till")).collect();
    assert!(tills.iter().all(|t| is_instant(t)), "{tills:?}");
    assert!(tills.windows(2).all(|w| w[0] < w[1]), "{tills:?}");
    let through = chrono::DateTime::parse_from_rfc3339(tills.last().unwrap()).unwrap();
    assert!(through >= Utc::now() - TimeDelta::minutes(10));
    assert!(!props(&events, "WindowSkipped").is_empty());

    // Verification and the latch reset.
    let surface = props(&events, "SurfaceCheck");
    assert!(!surface.is_empty() && surface.iter().all(|p| ["Pass", "Fail"].contains(&text(p, "Result"))));
    let deep = props(&events, "DeepCheck");
    assert!(!deep.is_empty() && deep.iter().all(|p| !text(p, "id").is_empty()));
    let full = props(&events, "FullCheck");
    assert_eq!(full.len(), 1);
    assert_eq!(text(full[0], "Result"), "Fail");
    assert!(number(full[0], "Different") + number(full[0], "Missing") >= 1);
    assert_eq!(props(&events, "MaxExportRetriesCleared").len(), 1);

    // Dependencies for both FHIR servers and both storage services; the failed invocation as an exception.
    let dependencies = mock.of_kind("RemoteDependency");
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut targets: HashMap<String, usize> = HashMap::new();
    for d in &dependencies {
        let base = &d["data"]["baseData"];
        *kinds.entry(base["type"].as_str().unwrap().to_string()).or_default() += 1;
        *targets.entry(base["target"].as_str().unwrap().to_string()).or_default() += 1;
        assert!(base["duration"].as_str().unwrap().contains(':'));
    }
    assert!(
        ["HTTP", "Azure table", "Azure blob"]
            .iter()
            .all(|k| kinds.contains_key(*k)),
        "{kinds:?}"
    );
    for server in [&source.base_url, &destination.base_url] {
        let host = url::Url::parse(server).unwrap();
        let host = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
        assert!(targets.contains_key(&host), "no dependency on {host}: {targets:?}");
    }
    let exceptions = mock.of_kind("Exception");
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    let x = &exceptions[0]["data"]["baseData"];
    assert_eq!(x["exceptions"][0]["typeName"], "FunctionFailed");
    assert_eq!(x["properties"]["Function"], "ExportStatus");
    assert!(
        x["exceptions"][0]["message"].as_str().unwrap().contains("binding"),
        "{x}"
    );

    // No credential in anything sent: the storage key, SAS signatures, the function key.
    for body in mock.bodies() {
        for secret in [DEV_KEY, "FUNCTIONKEYSECRET", "AccountKey=Eby8"] {
            assert!(!body.contains(secret), "a secret reached App Insights");
        }
        for (i, _) in body.match_indices("sig=") {
            assert!(
                body[i..].starts_with("sig=REDACTED"),
                "a SAS signature reached App Insights"
            );
        }
    }
    // The handler's own log (what the host forwards to `traces`) carries none of them either.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("custom handler listening"), "the log was captured");
    for secret in [DEV_KEY, "FUNCTIONKEYSECRET", TEST_INSTRUMENTATION_KEY] {
        assert!(!logged.contains(secret), "a secret reached the log");
    }
    assert!(!logged.contains("sig="), "a SAS signature reached the log");
    let _ = std::fs::remove_file(log);
}
