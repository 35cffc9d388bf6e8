//! P2, tick cost: each timer's latency and Table transactions with 10, 1,000 and 10,000 committed windows in
//! the tables. The state store reads only the uncommitted key range, so both should stay flat.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use fhir_emulator::Flavor;
use fhir_migration_tool::state::rows::{ExportStatus, ImportStatus};
use fhir_migration_tool::state::{Cursor, Job, Payload, StateStore};
use fhir_migration_tool::telemetry::RecordingTelemetry;
use fhir_testkit::Azurite;
use futures::StreamExt;
use serde::Serialize;

use crate::common;

#[derive(Debug, Serialize)]
pub struct TickCost {
    pub history_windows: usize,
    pub function: String,
    pub milliseconds: f64,
    pub table_transactions: usize,
    pub fhir_calls: usize,
}

fn calls(telemetry: &RecordingTelemetry, kind: &str) -> usize {
    telemetry.dependencies().iter().filter(|d| d.kind == kind).count()
}

pub async fn run(azurite: &Azurite, history: usize) -> Vec<TickCost> {
    let source = common::emulator(Flavor::Aapi, azurite, Duration::ZERO).await;
    let destination = common::emulator(Flavor::Ahds, azurite, Duration::ZERO).await;
    let settings = common::settings(
        azurite,
        &source,
        &destination,
        &[("AZURE_ExportConfirmSeconds", "0".into())],
    );
    let (app, telemetry) = common::app(&settings);
    app.ensure_tables().await.expect("tables");
    let s = app.settings();
    let m = &s.migration;
    let store = StateStore::new(
        app.tables().table(&s.chunk_table).unwrap(),
        app.tables().table(&s.export_table).unwrap(),
        &m.partition_key,
        &m.row_key,
    );

    // `history` committed windows of one minute each, ending three days ago, each with its payload row.
    let now = Utc::now();
    let base = now - TimeDelta::days(3) - TimeDelta::minutes(history as i64);
    let rows = futures::stream::iter(0..history)
        .map(|i| {
            let store = store.clone();
            async move {
                let since = base + TimeDelta::minutes(i as i64);
                let mut job = Job::planned(i as i64, since, since + TimeDelta::minutes(1), "");
                job.export_status = ExportStatus::Completed;
                job.import_status = ImportStatus::Completed;
                job.processed = true;
                job.payloads = 1;
                job.exported = 100;
                store.insert_job(&job).await.expect("history row");
                let payload = Payload::new(i as i64, 1, 1, format!("import-history{i}/payload-1.json"));
                store.insert_payload(&payload).await.expect("history payload");
            }
        })
        .buffer_unordered(32);
    rows.collect::<Vec<()>>().await;
    let mut cursor = store.cursor().await.expect("cursor");
    let since = base + TimeDelta::minutes(history as i64);
    cursor.since = Some(since);
    cursor.planned_till = Some(since);
    cursor.next_job = history as i64;
    cursor.committed_job = history as i64;
    cursor.search_parameters_copied = true;
    let _: Cursor = store.save_cursor(&cursor).await.expect("cursor saved");
    // Fresh data after the history, so the ticks have a window to plan, export and import.
    common::seed(source.store(), 200, 1, now - TimeDelta::days(1), 7);

    let engine = app.engine();
    let committed = store.cursor().await.expect("cursor");
    let mut out = Vec::new();
    for function in [
        "(storage) one key-range query",
        "MigrationOrchestrator",
        "ExportStatus",
        "ImportStatus",
        "ImportStatus (commit)",
        "MigrationStatus_Http",
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (tables_before, fhir_before) = (calls(&telemetry, "Azure table"), calls(&telemetry, "HTTP"));
        let started = Instant::now();
        let result = match function {
            // What every tick reads: the uncommitted key range. Its latency is the storage's own cost of a range
            // query over a table of this size (Azurite scans; Azure Table storage seeks the key).
            "(storage) one key-range query" => store
                .active(&committed)
                .await
                .map(|_| ())
                .map_err(fhir_migration_tool::engine::EngineError::from),
            "MigrationOrchestrator" => engine.starter_tick(Utc::now()).await.map(|_| ()),
            "ExportStatus" => engine.export_status_tick(Utc::now()).await.map(|_| ()),
            "MigrationStatus_Http" => engine.status(Utc::now()).await.map(|_| ()),
            _ => engine.import_status_tick(Utc::now()).await.map(|_| ()),
        };
        let elapsed = started.elapsed();
        result.unwrap_or_else(|e| panic!("{function} failed: {e}"));
        out.push(TickCost {
            history_windows: history,
            function: function.to_string(),
            milliseconds: elapsed.as_secs_f64() * 1000.0,
            table_transactions: calls(&telemetry, "Azure table") - tables_before,
            fhir_calls: calls(&telemetry, "HTTP") - fhir_before,
        });
    }
    out
}
