//! Log set-up. Under the Functions host (`serve`) and for `run`, logs go to stdout: the host records every
//! stderr line of a custom handler as an Error, which would page operators for routine messages. The
//! one-shot commands (`status`, `plan`, …) print their result on stdout, so their logs go to stderr, keeping
//! `--json` output machine-readable.

use tracing_subscriber::EnvFilter;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

/// Installs the global subscriber once. `RUST_LOG` overrides the level (default `info`); `AZURE_Debug=true`
/// (the original's switch) lowers it to `debug` for this crate.
pub fn init(sink: Sink) {
    let debug = std::env::var("AZURE_Debug").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let default = if debug {
        "info,fhir_migration_tool=debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A closed pipe (`status 2>&1 | head -5`) must not end in a panic: the subscriber would report its failed
    // write with `eprintln!`, which panics on that same closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    let _ = match sink {
        Sink::Stdout => builder
            .with_writer(std::io::stdout)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
        Sink::Stderr => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}
