//! The performance benchmarks behind `./scripts/bench` (release build): Azurite, emulated FHIR servers with
//! fixed job times, and the tool's real code, measured side by side in one run.
//!
//! - P1 orchestration overhead: wall time ÷ the servers' summed busy time over a many-window migration.
//! - P2 tick cost: each timer's latency and Table transactions with 10, 1,000 and 10,000 committed windows.
//! - P3 footprint: handler start-to-ready time and peak memory during a large migration.
//! - P4 verification throughput: full-check rate ÷ raw paging rate.
//!
//! Usage: `perf [p1] [p2] [p3] [p4] [--out bench/results.json]` (all parts by default). Sizes:
//! `PERF_P1_WINDOWS` (20), `PERF_P1_RESOURCES` (2,000), `PERF_P3_RESOURCES` (100,000), `PERF_P4_RESOURCES`
//! (100,000), `PERF_P2_HISTORY` (comma-separated, default 10,1000,10000).

mod common;
mod p1;
mod p2;
mod p3;
mod p4;

use std::path::PathBuf;
use std::time::Duration;

use fhir_testkit::Azurite;
use serde_json::json;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// The handler binary next to this example (`target/release/fhir-migration-tool`).
fn handler_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>/examples");
    let binary = dir.join("fhir-migration-tool");
    assert!(
        binary.exists(),
        "{} is missing: ./scripts/bench builds it",
        binary.display()
    );
    binary
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("bench/results.json"), PathBuf::from);
    let parts: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| a.starts_with('p') && a.len() == 2)
        .collect();
    let wants = |p: &str| parts.is_empty() || parts.contains(&p);
    let azurite = Azurite::start()
        .await
        .expect("Azurite starts (./scripts/bench installs it)");
    let mut results = serde_json::Map::new();
    results.insert(
        "machine".into(),
        json!({ "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()) }),
    );

    if wants("p1") {
        let plan = p1::Plan {
            windows: env_number("PERF_P1_WINDOWS", 20) as u32,
            resources: env_number("PERF_P1_RESOURCES", 2000),
            export: Duration::from_secs(2),
            import: Duration::from_secs(3),
            cadence: Duration::from_millis(100),
        };
        let rows = vec![
            p1::run(&azurite, &plan, false).await,
            p1::run(&azurite, &plan, true).await,
        ];
        println!(
            "\n### P1 orchestration overhead (export 2 s, import 3 s of server time per window; ticks every 100 ms)\n"
        );
        println!(
            "| mode | windows in flight | exports | imports | Σ server busy (s) | wall (s) | wall ÷ busy | target | | original's cadence: wall (s) | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} | ≤ {:.2} | {} | {:.0} | {:.0} |",
                r.mode,
                r.windows_in_flight,
                r.exports,
                r.imports,
                r.busy_seconds,
                r.wall_seconds,
                r.ratio,
                r.target,
                verdict(r.ratio <= r.target),
                r.original_wall_seconds,
                r.original_ratio
            );
        }
        results.insert("p1".into(), json!(rows));
    }

    if wants("p2") {
        let sizes: Vec<usize> = std::env::var("PERF_P2_HISTORY")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10, 1000, 10_000]);
        let mut rows = Vec::new();
        for n in &sizes {
            rows.extend(p2::run(&azurite, *n).await);
        }
        println!("\n### P2 tick cost by committed history\n");
        println!(
            "| function | {} |",
            sizes
                .iter()
                .map(|n| format!("{n} windows: ms / table tx"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---|".repeat(sizes.len()));
        let functions: Vec<String> = rows
            .iter()
            .map(|r| r.function.clone())
            .take(rows.len() / sizes.len())
            .collect();
        let mut flat = true;
        for f in &functions {
            let cells: Vec<&p2::TickCost> = rows.iter().filter(|r| &r.function == f).collect();
            let first = cells.first().map_or(0, |c| c.table_transactions);
            flat &= cells.iter().all(|c| c.table_transactions == first);
            println!(
                "| {f} | {} |",
                cells
                    .iter()
                    .map(|c| format!("{:.1} / {}", c.milliseconds, c.table_transactions))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        println!("\nTable transactions independent of history: {}", verdict(flat));
        results.insert("p2".into(), json!({ "rows": rows, "flat": flat }));
    }

    if wants("p3") {
        let f = p3::run(&azurite, &handler_binary(), env_number("PERF_P3_RESOURCES", 100_000)).await;
        println!("\n### P3 footprint (the handler process only)\n");
        println!("| measure | value | target | |\n|---|---|---|---|");
        println!(
            "| start to ready (median of {}) | {:.1} ms | < 100 ms | {} |",
            f.starts,
            f.start_to_ready_ms,
            verdict(f.start_to_ready_ms < 100.0)
        );
        println!(
            "| peak RSS migrating {} resources ({} versions, {:.0} s) | {:.1} MB | < 30 MB | {} |",
            f.resources,
            f.versions,
            f.migration_seconds,
            f.peak_rss_mb,
            verdict(f.peak_rss_mb < 30.0)
        );
        results.insert("p3".into(), json!(f));
    }

    if wants("p4") {
        let t = p4::run(env_number("PERF_P4_RESOURCES", 100_000)).await;
        println!("\n### P4 verification throughput\n");
        println!(
            "| resources | versions | raw paging (versions/s) | full check (versions/s) | ratio | target | |\n|---|---|---|---|---|---|---|"
        );
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | ≥ {:.1} | {} |",
            t.resources,
            t.versions,
            t.raw_paging_per_second,
            t.full_check_per_second,
            t.ratio,
            t.target,
            verdict(t.ratio >= t.target)
        );
        results.insert("p4".into(), json!(t));
    }

    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("results folder");
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results).expect("JSON") + "\n").expect("results written");
    println!("\nresults: {}", out.display());
}
