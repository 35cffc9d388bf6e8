//! `fhir-emulator`: run an emulated Azure FHIR server, seed it, or write to it continuously.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fhir_emulator::blob::BlobConfig;
use fhir_emulator::seed::{SeedParams, generate};
use fhir_emulator::writer::{WriterParams, run as run_writer};
use fhir_emulator::{AuthConfig, CancelMode, EmulatorConfig, Faults, Flavor, spawn};

#[derive(Parser)]
#[command(
    version,
    about = "A local stand-in for Azure API for FHIR and the Azure Health Data Services FHIR service."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an emulated FHIR server on 127.0.0.1.
    Serve(Box<ServeArgs>),
    /// Generate deterministic synthetic data and load it into a running emulator (POST /_admin/load).
    Seed(SeedArgs),
    /// Create, update and delete resources on a server at a steady rate until Ctrl-C (or --duration-secs).
    Writer(WriterArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Which product to imitate.
    #[arg(long, value_enum)]
    flavor: Flavor,
    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Base URL clients use (token audience, Content-Location), if not http://127.0.0.1:<port>.
    #[arg(long)]
    base_url: Option<String>,
    /// Export/import storage: blob service URL, e.g. http://127.0.0.1:10000/devstoreaccount1.
    #[arg(long, requires_all = ["blob_account", "blob_key"])]
    blob_endpoint: Option<url::Url>,
    #[arg(long)]
    blob_account: Option<String>,
    /// Base64 account key (Azurite's is public). Prefer the environment variable to keep it out of `ps`.
    #[arg(long, env = "FHIR_EMULATOR_BLOB_KEY", hide_env_values = true)]
    blob_key: Option<String>,
    /// Export cancel semantics (E-2).
    #[arg(long, value_enum, default_value = "bulkdata2")]
    cancel_mode: CancelMode,
    /// How long export status stays 202 after the job finished (real servers: 15000).
    #[arg(long, default_value_t = 15_000)]
    settle_ms: u64,
    /// Fixed latency of every export and import job.
    #[arg(long, default_value_t = 0)]
    job_latency_ms: u64,
    /// Extra latency per exported or imported resource, in microseconds.
    #[arg(long, default_value_t = 0)]
    per_resource_us: u64,
    /// At most this many imports run at once.
    #[arg(long)]
    import_concurrency: Option<usize>,
    /// Export file roll-over size in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    rollover_bytes: usize,
    /// Check bearer tokens: audience = base URL, roles from the token's `roles` claim.
    #[arg(long)]
    check_tokens: bool,
    /// Authority named in 401 challenges.
    #[arg(long, default_value = "https://login.microsoftonline.com/common")]
    authority: String,
    /// Run in InitialImportMode (writes locked, InitialLoad allowed).
    #[arg(long)]
    initial_import_mode: bool,
    /// `$import`: rows of one resource type that may share one millisecond, counting stored rows (the server's
    /// surrogate ids allow 80,000).
    #[arg(long, default_value_t = fhir_emulator::config::SAME_MS_CAPACITY)]
    same_ms_capacity: u32,
    /// Seed for the random order of `$import` processing units (default: a new order per job).
    #[arg(long)]
    import_order_seed: Option<u64>,
    /// Initial faults as JSON (same shape as PUT /_admin/faults).
    #[arg(long)]
    faults: Option<String>,
}

#[derive(clap::Args)]
struct SeedArgs {
    /// Base URL of the emulator to load into.
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 1000)]
    resources: usize,
    /// Comma-separated resource types (default: 18 common types).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    #[arg(long, default_value_t = 0.3)]
    history_ratio: f64,
    #[arg(long, default_value_t = 0.05)]
    delete_ratio: f64,
    #[arg(long, default_value_t = 30)]
    span_days: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Leave out the unicode and large hostile records.
    #[arg(long)]
    no_hostile: bool,
    /// Add an Observation with a 22-digit quantity (for the de-identified export path).
    #[arg(long)]
    overflow_decimal: bool,
    /// Add N crowded milliseconds: two versions of one resource a fraction of a millisecond apart, and three
    /// more resources of two types, on one millisecond (reference §11.2).
    #[arg(long, default_value_t = 0)]
    crowded_milliseconds: usize,
}

#[derive(clap::Args)]
struct WriterArgs {
    #[arg(long)]
    target: String,
    /// Operations per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long)]
    duration_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stdout).init();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Seed(args) => seed(args).await,
        Command::Writer(args) => writer(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let blob = match (args.blob_endpoint, args.blob_account, args.blob_key) {
        (Some(endpoint), Some(account), Some(key)) => Some(BlobConfig { endpoint, account, key }),
        _ => None,
    };
    let config = EmulatorConfig {
        base_url: args.base_url,
        blob,
        cancel_mode: args.cancel_mode,
        settle: Duration::from_millis(args.settle_ms),
        job_latency: Duration::from_millis(args.job_latency_ms),
        per_resource_latency: Duration::from_micros(args.per_resource_us),
        import_concurrency: args.import_concurrency,
        rollover_bytes: args.rollover_bytes,
        auth: args.check_tokens.then_some(AuthConfig {
            authority: args.authority,
        }),
        initial_import_mode: args.initial_import_mode,
        same_ms_capacity: args.same_ms_capacity,
        import_order_seed: args.import_order_seed,
        ..EmulatorConfig::new(args.flavor)
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let running = spawn(config, listener).await.map_err(|e| e.to_string())?;
    if let Some(json) = args.faults {
        let faults: Faults = serde_json::from_str(&json).map_err(|e| format!("--faults: {e}"))?;
        running.set_faults(faults);
    }
    // Scripts read this line to learn the address.
    println!("fhir-emulator {} listening on {}", args.flavor.name(), running.base_url);
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}

async fn seed(args: SeedArgs) -> Result<(), String> {
    let params = SeedParams {
        resources: args.resources,
        types: args.types,
        history_ratio: args.history_ratio,
        delete_ratio: args.delete_ratio,
        span_days: args.span_days,
        seed: args.seed,
        hostile: !args.no_hostile,
        overflow_decimal: args.overflow_decimal,
        crowded_milliseconds: args.crowded_milliseconds,
        ..SeedParams::default()
    };
    let lines = generate(&params);
    let http = reqwest::Client::new();
    let (mut loaded, mut errors) = (0u64, 0usize);
    for chunk in lines.chunks(5000) {
        let mut body = chunk.join("\n");
        body.push('\n');
        let resp = http
            .post(format!("{}/_admin/load", args.target.trim_end_matches('/')))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", args.target))?;
        let status = resp.status();
        let report: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("load failed with {status}: {report}"));
        }
        loaded += report["loaded"].as_u64().unwrap_or(0) + report["unchanged"].as_u64().unwrap_or(0);
        errors += report["errors"].as_array().map_or(0, Vec::len);
    }
    println!(
        "seeded {} versions ({loaded} stored, {errors} refused) into {}",
        lines.len(),
        args.target
    );
    if errors > 0 {
        Err(format!("{errors} lines were refused"))
    } else {
        Ok(())
    }
}

async fn writer(args: WriterArgs) -> Result<(), String> {
    let params = WriterParams {
        target: args.target.trim_end_matches('/').to_string(),
        rate: args.rate,
        seed: args.seed,
        types: args.types,
        token: None,
        hard_deletes: true,
    };
    let stop = async move {
        match args.duration_secs {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let report = run_writer(params, stop).await;
    println!(
        "writer: {} created, {} updated, {} soft-deleted, {} hard-deleted, {} failed",
        report.created,
        report.updated,
        report.soft_deleted,
        report.hard_deleted.len(),
        report.failed
    );
    for id in &report.hard_deleted {
        println!("hard-deleted {id}");
    }
    Ok(())
}
