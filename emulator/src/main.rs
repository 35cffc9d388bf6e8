//! `fhir-emulator`: run an emulated Azure FHIR server by hand or from scripts.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhir_emulator::{EmulatorConfig, Flavor, spawn};

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
    Serve {
        /// Which product to imitate.
        #[arg(long, value_enum)]
        flavor: Flavor,
        /// Port to listen on (0 picks a free one; the chosen address is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Base URL clients use, if not http://127.0.0.1:<port>.
        #[arg(long)]
        base_url: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stdout).init();
    let Command::Serve { flavor, port, base_url } = Cli::parse().command;
    let listener = match tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(l) => l,
        Err(e) => {
            println!("error: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match spawn(EmulatorConfig { flavor, base_url }, listener).await {
        Ok(r) => r,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Scripts read this line to learn the address.
    println!("fhir-emulator {} listening on {}", flavor.name(), running.base_url);
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
