//! Full-check benchmark: two emulators holding the same seeded data (history included), compared version by
//! version through the real FHIR client. Prints a table and writes JSON to the path given as the first argument.
//! `VERIFY_RESOURCES=N` changes the size (default 50,000). The full check streams both servers page by page, so
//! the process's memory should grow by little more than a page per server while it runs.

use std::time::Instant;

use fhir_emulator::seed::{SeedParams, generate, load_into};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};
use fhir_testkit::process_memory_mb;
use serde_json::json;

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench-results/verify-full.json".into());
    let resources: usize = std::env::var("VERIFY_RESOURCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
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
    let (_, versions) = source.store().size();

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
    let app = fhir_migration_tool::app::App::build(settings).expect("app builds");
    let engine = app.engine();
    let types = engine.settings().resource_types.clone();

    let rss_before = process_memory_mb("VmRSS:");
    let started = Instant::now();
    let report = fhir_migration_tool::verify::full::full(engine.source(), engine.destination(), &types, true)
        .await
        .expect("full check runs");
    let secs = started.elapsed().as_secs_f64();
    let rss_after = process_memory_mb("VmRSS:");
    assert!(
        report.passed,
        "identical servers must compare equal: {:?}",
        report.differences
    );
    assert_eq!(report.compared as usize, versions, "every version compared");

    let per_second = report.compared as f64 / secs;
    let rows = [
        ("versions compared", report.compared as f64, ""),
        ("full check time", secs, "s"),
        ("versions per second", per_second, ""),
        ("RSS before (both servers' data)", rss_before, "MB"),
        ("RSS growth during the check", rss_after - rss_before, "MB"),
    ];
    println!("{:<36} {:>14}", "measure", "value");
    for (name, value, unit) in rows {
        println!("{name:<36} {:>14}", format!("{value:.1}{unit}"));
    }
    let result = json!({
        "benchmark": "verify-full",
        "resources": resources, "versions": versions,
        "seconds": secs, "versions_per_second": per_second,
        "rss_before_mb": rss_before, "rss_growth_mb": rss_after - rss_before,
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("written to {out}");
}
