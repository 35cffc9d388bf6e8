//! Log set-up. Everything goes to stdout: the Functions host records every stderr line of a custom handler as
//! an Error, which would page operators for routine messages.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once. `RUST_LOG` overrides the level (default `info`); `AZURE_Debug=true`
/// (the original's switch) lowers it to `debug` for this crate.
pub fn init() {
    let debug = std::env::var("AZURE_Debug").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let default = if debug {
        "info,fhir_migration_tool=debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}
