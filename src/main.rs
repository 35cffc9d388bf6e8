//! The `fhir-migration-tool` command: `serve` is what the Azure Functions host starts; the other subcommands
//! call the same operations without a host.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::{functions, logging};

#[derive(Parser)]
#[command(
    version,
    about = "Migrates FHIR data from Azure API for FHIR to Azure Health Data Services ($export -> $import)."
)]
struct Cli {
    /// Read settings from this local.settings.json (its "Values"); environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    settings: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Azure Functions custom-handler protocol on 127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT.
    Serve {
        /// The port to listen on; the Functions host passes it in FUNCTIONS_CUSTOMHANDLER_PORT.
        #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT")]
        port: u16,
    },
    /// Validate the settings and print the effective configuration (secrets redacted).
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // stdout on purpose: the Functions host logs stderr lines as errors without context.
            println!("error: {message}");
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(file: Option<&PathBuf>) -> Result<Settings, String> {
    let source = match file {
        Some(path) => SettingsSource::from_file_and_env(path)?,
        None => SettingsSource::from_env(),
    };
    Settings::from_source(&source).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<(), String> {
    let settings = load_settings(cli.settings.as_ref())?;
    match cli.command {
        Command::CheckConfig => {
            println!("configuration is valid:\n{settings:#?}");
            Ok(())
        }
        Command::Serve { port } => {
            let app = App::build(settings).map_err(|e| e.to_string())?;
            // Loopback only: the host is the sole client, and nothing else may reach the handler.
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "custom handler listening");
            functions::serve(app, listener, shutdown_signal())
                .await
                .map_err(|e| format!("server failed: {e}"))
        }
    }
}

/// Ctrl-C or SIGTERM (what the host sends when it recycles the worker).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
