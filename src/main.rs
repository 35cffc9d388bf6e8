//! The `fhir-migration-tool` command: `serve` is what the Azure Functions host starts; the other subcommands
//! call the same operations without a host.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::telemetry::context::{self, Operation};
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
    /// Run the migration without a Functions host: the three timers on their own schedule.
    Run {
        /// Seconds between starter ticks (MigrationOrchestrator).
        #[arg(long, default_value_t = 60)]
        starter_every: u64,
        /// Seconds between ExportStatus/ImportStatus ticks.
        #[arg(long, default_value_t = 30)]
        poll_every: u64,
        /// Stop once the migration has caught up (nothing in flight, migrated up to the frontier).
        #[arg(long)]
        until_caught_up: bool,
        /// Stop after this many seconds in any case.
        #[arg(long)]
        max_seconds: Option<u64>,
    },
    /// Show the migration's progress.
    Status {
        /// Print JSON (the MigrationStatus_Http body) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dry run: the next windows the planner would export, with their sizes. Starts nothing.
    Plan {
        /// How many windows to preview.
        #[arg(long, default_value_t = 10)]
        windows: usize,
        /// Print the result as one JSON document on stdout (errors still go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Reset the retry latch (the same as ClearMaxExportRetries_Http).
    ClearRetries,
    /// Compare the destination with the source; exits non-zero when anything differs.
    Verify {
        /// surface: counts per type; deep: a sample compared document by document; full: every resource
        /// (every version with history) by id, version, lastUpdated and content; all; or a comma-separated mix.
        #[arg(long, default_value = "surface,deep")]
        mode: String,
        /// Types to check (default: AZURE_ResourceTypes).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Resources the deep check samples (default: AZURE_DeepCheckCount).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: Option<u16>,
        /// Also list types with no data on either side.
        #[arg(long)]
        include_empty: bool,
        /// Print the result as one JSON document on stdout (errors still go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Is it safe to cut over? Reports the lag; with --final (after stopping writes to the source) waits for
    /// quiet, migrates the last tail, runs the full check and a reconciliation, and prints READY or NOT READY.
    Cutover {
        /// Only after writes to the source have stopped: wait for quiet, migrate the last tail, run the full
        /// check and a reconciliation, and answer READY or NOT READY.
        #[arg(long = "final")]
        final_check: bool,
        /// Seconds the source must have had no write (at least AZURE_SafetyLagSeconds).
        #[arg(long, default_value_t = 300)]
        quiet_seconds: u64,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_seconds: u64,
        /// Print the result as one JSON document on stdout (errors still go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Check storage, both FHIR servers, the identity's roles and the import mode; prints Pass/Fail and the fix
    /// for each, and exits non-zero when any fails (the same as CheckAccess_Http).
    Preflight {
        /// Print the result as one JSON document on stdout (errors still go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// The failure ledger: resource versions an import refused, with their class and state. Exits 1 while any
    /// is not at the destination (and not accepted).
    Failures {
        #[command(subcommand)]
        action: Option<FailuresAction>,
        /// List every entry, resolved and benign ones too (default: the unresolved and accepted ones).
        #[arg(long)]
        all: bool,
        /// Print the result as one JSON document on stdout (errors still go to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Find resources hard-deleted at the source (still at the destination) and, with --apply, delete them at
    /// the destination. Dry run by default; exits non-zero while anything is left to reconcile.
    Reconcile {
        /// Types to compare (default: AZURE_ResourceTypes).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        /// Hard-delete the candidates at the destination (each recorded in the reconcile table).
        #[arg(long)]
        apply: bool,
        /// Delete nothing when there are more candidates than this.
        #[arg(long, default_value_t = 100)]
        max_deletes: usize,
        /// Print the result as one JSON document on stdout (errors still go to stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FailuresAction {
    /// Import the named versions again after fixing the cause (all open ones without --ids); the ImportStatus
    /// timer (or `run`) carries the retry out and settles each by what the destination then holds.
    Retry {
        /// Keys as `failures` lists them (Patient|p1|3), comma-separated.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<String>,
    },
    /// Accept the loss of the named versions, with a reason every cut-over report shows.
    Accept {
        /// Keys as `failures` lists them (Patient|p1|3), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<String>,
        /// Why the loss is acceptable.
        #[arg(long)]
        reason: String,
    },
    /// Bring accepted entries back (they block cut-over again until retried, fixed or accepted anew).
    Reopen {
        /// Keys as `failures` lists them (Patient|p1|3), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<String>,
    },
}

/// Writes a line to stdout, ignoring a closed pipe (`check-config | head -1` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The same for stderr (`status 2>&1 | head -5` closes it too).
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Why a command did not succeed, which decides its exit code: 1 when it ran and found something wrong
/// (differences, NOT READY, problems, halted), 2 when it could not run at all.
enum Failure {
    Found(String),
    CouldNotRun(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::CouldNotRun(message)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The host (serve) and long runs log to stdout: the Functions host logs stderr lines as errors without
    // context. Every other command keeps stdout for its result (valid JSON with --json) and errors on stderr.
    let host_style = matches!(cli.command, Command::Serve { .. } | Command::Run { .. });
    let sink = if host_style {
        logging::Sink::Stdout
    } else {
        logging::Sink::Stderr
    };
    logging::init(sink);
    let report_error = |message: &str| {
        if host_style {
            out!("error: {message}");
        } else {
            err!("error: {message}");
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            report_error(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Found(message)) => {
            report_error(&message);
            ExitCode::from(1)
        }
        Err(Failure::CouldNotRun(message)) => {
            report_error(&message);
            ExitCode::from(2)
        }
    }
}

fn load_settings(file: Option<&PathBuf>) -> Result<(Settings, SettingsSource), String> {
    let source = match file {
        Some(path) => SettingsSource::from_file_and_env(path)?,
        None => SettingsSource::from_env(),
    };
    let settings = Settings::from_source(&source).map_err(|e| e.to_string())?;
    Ok((settings, source))
}

/// The effective configuration as `name = value` lines (defaults marked, secrets redacted, long lists
/// summarised), then a warning per setting name nobody reads, with the nearest known name.
fn describe_configuration(source: &SettingsSource) -> (Vec<String>, Vec<String>) {
    let lines = source
        .effective()
        .into_iter()
        .map(|s| {
            format!(
                "  {} = {}{}",
                s.name,
                s.value,
                if s.is_default { "   (default)" } else { "" }
            )
        })
        .collect();
    let warnings = source
        .unknown()
        .into_iter()
        .map(|(name, nearest)| match nearest {
            Some(known) => {
                format!("{name} is not a setting this tool reads (did you mean {known}?); its value is ignored")
            }
            None => format!("{name} is not a setting this tool reads; its value is ignored"),
        })
        .collect();
    (lines, warnings)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let (settings, source) = load_settings(cli.settings.as_ref())?;
    let (lines, mut warnings) = describe_configuration(&source);
    warnings.extend(settings.migration.warnings());
    if let Command::CheckConfig = cli.command {
        out!("configuration is valid:\n{}", lines.join("\n"));
        for warning in &warnings {
            out!("warning: {warning}");
        }
        return Ok(());
    }
    // Logged once per start of a long-running process; a one-off command says only which servers it talks to
    // (with AZURE_Debug=true or RUST_LOG=debug), so its answer is not buried under the configuration.
    if matches!(cli.command, Command::Serve { .. } | Command::Run { .. }) {
        tracing::info!("effective configuration:\n{}", lines.join("\n"));
    } else {
        tracing::debug!(
            "configuration: {} settings; source {}, destination {}",
            lines.len(),
            settings.migration.source,
            settings.migration.destination
        );
    }
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::CheckConfig => Ok(()),
        Command::Run {
            starter_every,
            poll_every,
            until_caught_up,
            max_seconds,
        } => {
            let app = App::build(settings).map_err(|e| e.to_string())?;
            let options = fhir_migration_tool::cli::RunOptions {
                starter_every: std::time::Duration::from_secs(starter_every),
                poll_every: std::time::Duration::from_secs(poll_every.max(1)),
                until_caught_up,
                max_duration: max_seconds.map(std::time::Duration::from_secs),
            };
            let outcome = fhir_migration_tool::cli::run(&app, &options, Box::pin(shutdown_signal())).await;
            app.shutdown().await;
            let status = outcome?;
            out!("{}", fhir_migration_tool::cli::format_status(&status));
            Ok(())
        }
        Command::Status { json } => {
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let status = app
                .engine()
                .status(chrono::Utc::now())
                .await
                .map_err(|e| e.to_string())?;
            if json {
                out!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?);
            } else {
                out!("{}", fhir_migration_tool::cli::format_status(&status));
            }
            if status.halted {
                Err(Failure::Found(
                    "the migration is halted: see the failure above, then clear-retries".into(),
                ))
            } else {
                Ok(())
            }
        }
        Command::Plan { windows, json } => {
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let plan = app
                .engine()
                .preview(chrono::Utc::now(), windows)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                out!("{}", serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?);
            } else if plan.is_empty() {
                out!("nothing to export now (caught up, or the source is empty)");
            } else {
                out!("{:<26} {:<26} {:>12} {:>9}", "since", "till", "resources", "halvings");
                for w in plan {
                    out!("{:<26} {:<26} {:>12} {:>9}", w.since, w.till, w.resources, w.halvings);
                }
            }
            Ok(())
        }
        Command::Verify {
            mode,
            types,
            count,
            include_empty,
            json,
        } => {
            use fhir_migration_tool::verify::{local, runs::Checks};
            let checks = Checks::parse(&mode)
                .ok_or_else(|| format!("--mode '{mode}': use surface, deep, full, all, or a comma-separated mix"))?;
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let request = local::Request {
                checks,
                types,
                count: count.map(usize::from),
                include_empty,
            };
            let outcome = local::run(app.engine(), request).await.map_err(|e| e.to_string());
            app.shutdown().await;
            let outcome = outcome?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&outcome.output).map_err(|e| e.to_string())?
                );
            } else {
                {
                    use std::io::Write as _;
                    let _ = write!(std::io::stdout(), "{}", outcome.text);
                };
            }
            if outcome.passed {
                Ok(())
            } else {
                Err(Failure::Found("verification found differences".into()))
            }
        }
        Command::Cutover {
            final_check,
            quiet_seconds,
            timeout_seconds,
            json,
        } => {
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let options = fhir_migration_tool::cutover::Options {
                final_check,
                quiet: std::time::Duration::from_secs(quiet_seconds),
                timeout: std::time::Duration::from_secs(timeout_seconds),
                poll: std::time::Duration::from_secs(2),
            };
            let mut progress = fhir_migration_tool::terminal::Progress::new("cutover", None);
            progress.set_message(if final_check {
                "waiting for quiet at the source, migrating the last tail, then the full check and a reconciliation"
            } else {
                "measuring the lag"
            });
            let outcome = fhir_migration_tool::cutover::cutover(&app, &options)
                .await
                .map_err(|e| e.to_string());
            progress.finish(match &outcome {
                Ok(r) if r.ready => "READY",
                Ok(_) => "NOT READY",
                Err(_) => "could not finish",
            });
            app.shutdown().await;
            let report = outcome?;
            show(json, &report, fhir_migration_tool::cutover::describe)?;
            if report.ready {
                Ok(())
            } else {
                Err(Failure::Found("NOT READY".into()))
            }
        }
        Command::Preflight { json } => {
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let report = fhir_migration_tool::preflight::preflight(&app).await;
            app.shutdown().await;
            show(json, &report, fhir_migration_tool::preflight::describe)?;
            if report.passed {
                Ok(())
            } else {
                Err(Failure::Found("preflight found problems (see above)".into()))
            }
        }
        Command::Reconcile {
            types,
            apply,
            max_deletes,
            json,
        } => {
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let engine = app.engine();
            let options = fhir_migration_tool::reconcile::Options {
                types: if types.is_empty() {
                    engine.settings().resource_types.clone()
                } else {
                    types
                },
                apply,
                max_deletes,
            };
            let table = app
                .tables()
                .table(&app.settings().reconcile_table)
                .map_err(|e| e.to_string())?;
            let mut progress = fhir_migration_tool::terminal::Progress::new("reconcile", None);
            progress.set_message(format!(
                "comparing the ids of {} types on both servers",
                options.types.len()
            ));
            let outcome = fhir_migration_tool::reconcile::reconcile(
                engine.source(),
                engine.destination(),
                &options,
                Some(&table),
                app.telemetry().as_ref(),
            )
            .await
            .map_err(|e| e.to_string());
            progress.finish(match &outcome {
                Ok(r) if r.clean() => "nothing to reconcile",
                Ok(_) => "differences found (see the report)",
                Err(_) => "could not finish",
            });
            app.shutdown().await;
            let report = outcome?;
            show(json, &report, fhir_migration_tool::reconcile::describe)?;
            if let Some(why) = &report.refused {
                return Err(Failure::Found(format!("nothing deleted: {why}")));
            }
            if report.clean() {
                Ok(())
            } else {
                Err(Failure::Found("the servers are not reconciled (see above)".into()))
            }
        }
        Command::Failures { action, all, json } => {
            use fhir_migration_tool::engine::failures::Selection;
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let engine = app.engine();
            let selection = |ids: Vec<String>| {
                if ids.is_empty() {
                    Selection::AllOpen
                } else {
                    Selection::Keys(ids)
                }
            };
            let outcome = match action {
                Some(FailuresAction::Retry { ids }) => engine
                    .retry_failures(&selection(ids), chrono::Utc::now())
                    .await
                    .map(|n| {
                        Some(format!(
                            "{n} failure(s) queued for a retry: the ImportStatus timer (or `run`) imports them again"
                        ))
                    }),
                Some(FailuresAction::Accept { ids, reason }) => engine
                    .accept_failures(&selection(ids), &reason)
                    .await
                    .map(|n| Some(format!("{n} failure(s) accepted"))),
                Some(FailuresAction::Reopen { ids }) => engine.reopen_failures(&selection(ids)).await.map(|n| {
                    Some(format!(
                        "{n} failure(s) reopened: they block cut-over until retried or accepted"
                    ))
                }),
                None => Ok(None),
            };
            let said = outcome.map_err(|e| e.to_string());
            let listed = engine.ledger().list(None).await.map_err(|e| e.to_string());
            app.shutdown().await;
            let (said, entries) = (said?, listed?);
            let summary = fhir_migration_tool::ledger::Summary::of(&entries);
            if let Some(line) = &said {
                err!("{line}");
            }
            let shown: Vec<_> = entries
                .into_iter()
                .filter(|e| all || e.state.unresolved() || e.state == fhir_migration_tool::ledger::State::Accepted)
                .collect();
            if json {
                let doc = serde_json::json!({ "summary": summary, "entries": shown });
                out!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
            } else {
                out!("{}", fhir_migration_tool::ledger::describe(&summary, &shown));
            }
            if said.is_none() && summary.unresolved() > 0 {
                Err(Failure::Found(format!(
                    "{} resource version(s) are not at the destination",
                    summary.unresolved()
                )))
            } else {
                Ok(())
            }
        }
        Command::ClearRetries => {
            let app = App::build_interactive(settings).map_err(|e| e.to_string())?;
            let before = app.engine().clear_failures().await.map_err(|e| e.to_string());
            app.shutdown().await;
            let before = before?;
            out!("maxExportRetries cleared successfully (was {before}).");
            Ok(())
        }
        Command::Serve { port } => {
            let app = App::build(settings).map_err(|e| e.to_string())?;
            // Listen first: the Functions host polls the handler for at most 30 s and restarts it when it does not
            // answer, so nothing slow (storage, tokens) may come before the listener. Loopback only: the host is
            // the sole client, and nothing else may reach the handler.
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            tracing::info!(%addr, "custom handler listening");
            // Create the state tables in the background, so status calls work before the first tick; storage being
            // slow or down at start-up is not fatal (every tick creates them too, and CheckAccess_Http answers).
            let tables = app.clone();
            tokio::spawn(async move {
                let startup = Operation::for_invocation(None, "Startup");
                if let Err(e) = context::scope(startup, tables.ensure_tables()).await {
                    tracing::warn!("could not prepare the state tables yet: {e}");
                }
            });
            let served = functions::serve(app.clone(), listener, shutdown_signal()).await;
            // In-flight invocations have finished; send their telemetry before the host's grace period ends.
            app.shutdown().await;
            served.map_err(|e| Failure::CouldNotRun(format!("server failed: {e}")))
        }
    }
}

/// Prints a report as JSON (`--json`) or as the text `describe` makes of it.
fn show<T: serde::Serialize>(json: bool, report: &T, describe: impl Fn(&T) -> String) -> Result<(), String> {
    if json {
        out!("{}", serde_json::to_string_pretty(report).map_err(|e| e.to_string())?);
    } else {
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), "{}", describe(report));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every option of every command says what it does in `--help`.
    #[test]
    fn every_option_has_help_text() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_id() != "help" && arg.get_help().is_none() {
                    missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "options without help: {missing:?}");
    }
}
