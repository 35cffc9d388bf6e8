//! Test harness shared by the workspace's integration tests.
//!
//! Layout:
//! - [`Azurite`]: a real Azurite (Blob + Table) on free loopback ports, killed when dropped — and, through
//!   `scripts/azurite-supervised.cjs`, also when the test process dies without running destructors.
//! - [`HandlerProcess`]: the real `fhir-migration-tool serve` process, driven as the Functions host drives it.
//! - [`Gate`]: a TCP gate in front of one of Azurite's services, closed to make it unreachable alone.
//! - [`poll_until`]: wait for a condition with a deadline instead of sleeping and hoping.
//! - [`MockIngestion`]: a local App Insights ingestion endpoint that keeps what it receives.
//! - [`free_port`]: a loopback port nobody is listening on right now.
//!
//! The harness never mocks storage: every storage test talks to Azurite over HTTP exactly as the tool talks to
//! Azure Storage in production.

mod azurite;
mod gate;
mod handler;
mod ingestion;
mod poll;

pub use azurite::{Azurite, DEV_ACCOUNT, DEV_KEY};
pub use gate::Gate;
pub use handler::{HandlerProcess, Invoker, http_payload, timer_payload};
pub use ingestion::{MockIngestion, Scripted, TEST_INSTRUMENTATION_KEY, TEST_MONITOR_TOKEN, over_limit};
pub use poll::{PollTimeout, poll_until};

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// Errors the harness reports; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("Azurite is not installed at {0}: run `npm ci` at the repository root (./scripts/test does this for you)")]
    AzuriteMissing(PathBuf),
    #[error("could not start `node` for Azurite: {0} (install Node.js 20; ./scripts/test checks for it)")]
    NodeMissing(std::io::Error),
    #[error("Azurite exited during start-up ({status}); its output is in {log}")]
    AzuriteExited { status: String, log: PathBuf },
    #[error("Azurite did not answer on {what} in time; its output is in {log}")]
    AzuriteNotReady { what: String, log: PathBuf },
    #[error("local I/O failed while starting the test stack: {0}")]
    Io(#[from] std::io::Error),
}

/// The workspace root (where `package.json` and `node_modules/` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the workspace root")
        .to_path_buf()
}

/// A loopback port that was free a moment ago. Callers that hand it to another process must retry on
/// "address in use", since another test may grab the same port in between.
pub fn free_port() -> std::io::Result<u16> {
    Ok(free_ports::<1>()?[0])
}

/// `N` loopback ports that were free a moment ago, all different: each is held until the last is chosen, since
/// the system may hand a port just let go to the next request (Azurite then fails to listen twice on one port).
pub fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        *port = listener.local_addr()?.port();
        held.push(listener);
    }
    Ok(ports)
}

/// A memory figure of this process from `/proc/self/status` in MB (`VmRSS:` now, `VmHWM:` the peak), for the
/// benchmarks; 0 where the file is unavailable.
pub fn process_memory_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
