//! P4, verification throughput: the full check over two identical servers, against how fast one server can
//! merely be paged through with the same queries, measured in the same run.

use std::time::Instant;

use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};
use fhir_migration_tool::fhir::FhirClient;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Throughput {
    pub resources: usize,
    pub versions: u64,
    /// Versions per second, paging the source's history type by type (no comparison).
    pub raw_paging_per_second: f64,
    /// Versions per second compared by the full check (both servers).
    pub full_check_per_second: f64,
    pub ratio: f64,
    pub target: f64,
}

/// Pages through every type's history the way the full check asks for it; returns the entries read.
async fn page_all(client: &FhirClient, types: &[String]) -> u64 {
    let mut entries = 0;
    for t in types {
        let mut next = Some(
            client
                .url(&format!("{t}/_history?_sort=_lastUpdated&_count=1000"))
                .unwrap(),
        );
        while let Some(url) = next.take() {
            let page = client.page(&url).await.expect("a page");
            entries += page["entry"].as_array().map_or(0, Vec::len) as u64;
            next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(|u| client.own_url(u).expect("next link on the same server"));
        }
    }
    entries
}

pub async fn run(resources: usize) -> Throughput {
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let source = spawn(EmulatorConfig::quick(Flavor::Aapi), listener().await)
        .await
        .unwrap();
    let destination = spawn(EmulatorConfig::quick(Flavor::Ahds), listener().await)
        .await
        .unwrap();
    let lines = generate(&SeedParams {
        resources,
        hostile: false,
        search_parameters: 0,
        ..SeedParams::default()
    });
    for server in [&source, &destination] {
        let (_, errors) = load_into(server.store(), &lines);
        assert!(errors.is_empty(), "{} seed lines refused", errors.len());
    }
    drop(lines);
    let mut settings = fhir_migration_tool::config::SettingsSource::default();
    settings.extend([
        (
            "AZURE_StorageConnectionString".to_string(),
            "UseDevelopmentStorage=true".to_string(),
        ),
        ("AZURE_SourceUri".to_string(), source.base_url.clone()),
        ("AZURE_DestinationUri".to_string(), destination.base_url.clone()),
    ]);
    let settings = fhir_migration_tool::config::Settings::from_source(&settings).expect("valid settings");
    let app = fhir_migration_tool::app::App::build(settings).expect("the app builds");
    let engine = app.engine();
    let types = engine.settings().resource_types.clone();

    let started = Instant::now();
    let paged = page_all(engine.source(), &types).await;
    let raw = paged as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let report = fhir_migration_tool::verify::full::full(engine.source(), engine.destination(), &types, true)
        .await
        .expect("the full check runs");
    let full = report.compared as f64 / started.elapsed().as_secs_f64();
    assert!(report.passed, "identical servers must compare equal");
    assert_eq!(report.compared, paged, "the full check compares what paging reads");
    Throughput {
        resources,
        versions: report.compared,
        raw_paging_per_second: raw,
        full_check_per_second: full,
        ratio: full / raw,
        target: 0.8,
    }
}
