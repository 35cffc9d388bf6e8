//! The `fhir-migration-tool` command: `serve` is what the Azure Functions host starts; the other subcommands
//! call the same operations without a host.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fhir_migration_tool::app::App;
use fhir_migration_tool::cli::args::{Cli, Command, FailuresAction, json_requested};
use fhir_migration_tool::cli::outcome::{CommandError, Failure};
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::telemetry::context::{self, Operation};
use fhir_migration_tool::{functions, logging};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = json_requested(&cli.command);
    // The host (serve) and long runs log to stdout: the Functions host logs stderr lines as errors without
    // context. Every other command keeps stdout for its result (valid JSON with --json) and errors on stderr.
    let host_style = matches!(cli.command, Command::Serve { .. } | Command::Run { .. });
    let sink = if host_style {
        logging::Sink::Stdout
    } else {
        // A one-off command has no App Insights: its telemetry events are not for the operator's screen.
        let debug = std::env::var("AZURE_Debug").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        if std::env::var_os("RUST_LOG").is_none() && !debug {
            // SAFETY: no other thread exists yet (the runtime is built below).
            unsafe { std::env::set_var("RUST_LOG", "info,fhir_migration_tool::telemetry=warn") };
        }
        logging::Sink::Stderr
    };
    logging::init(sink);
    let report = |failure: &Failure| {
        if host_style {
            out!("{}", failure.text());
        } else {
            err!("{}", failure.text());
        }
        // With --json, stdout holds one JSON document also when the command could not run.
        if json && let Some(doc) = failure.json() {
            out!("{doc}");
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let failure = Failure::CouldNotRun(CommandError::new(
                format!("cannot start the async runtime: {e}"),
                "check the machine's limits on threads and open files",
            ));
            report(&failure);
            return ExitCode::from(failure.exit_code());
        }
    };
    // Long-running processes stop on a signal by themselves; a one-off command says it was interrupted.
    let outcome = if host_style {
        runtime.block_on(run(cli))
    } else {
        runtime.block_on(async {
            tokio::select! {
                outcome = run(cli) => outcome,
                _ = shutdown_signal() => Err(Failure::Interrupted(
                    "stopped by Ctrl-C (or SIGTERM) before it finished; what it did so far stands, and running it again is safe".into(),
                )),
            }
        })
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(&failure);
            ExitCode::from(failure.exit_code())
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
    warnings.extend(fhir_migration_tool::verify::scope::warning(&settings.migration));
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
            let app = App::build(settings)?;
            let options = fhir_migration_tool::cli::RunOptions {
                starter_every: std::time::Duration::from_secs(starter_every),
                poll_every: std::time::Duration::from_secs(poll_every.max(1)),
                until_caught_up,
                max_duration: max_seconds.map(std::time::Duration::from_secs),
            };
            let outcome = fhir_migration_tool::cli::run(&app, &options, Box::pin(shutdown_signal())).await;
            app.shutdown().await;
            let status = outcome.map_err(CommandError::storage)?;
            out!("{}", fhir_migration_tool::cli::format_status(&status));
            Ok(())
        }
        Command::Status { json } => {
            let app = App::build_interactive(settings)?;
            let status = app.engine().status(chrono::Utc::now()).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                out!("{}", fhir_migration_tool::cli::format_status(&status));
            }
            if status.halted {
                Err(Failure::Found(
                    "the migration is halted: see the failure above, then clear-retries".into(),
                ))
            } else if status.progress.state == fhir_migration_tool::engine::progress::State::Stalled {
                Err(Failure::Found(format!(
                    "the migration is stalled: {}",
                    status.progress.state_detail
                )))
            } else {
                Ok(())
            }
        }
        Command::Plan { windows, json } => {
            let app = App::build_interactive(settings)?;
            let plan = app.engine().preview(chrono::Utc::now(), windows).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                out!(
                    "{}",
                    fhir_migration_tool::cli::format_plan(app.settings().migration.is_parallel, &plan)
                );
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
            let app = App::build_interactive(settings)?;
            let request = local::Request {
                checks,
                types,
                count: count.map(usize::from),
                include_empty,
            };
            let outcome = local::run(app.engine(), request).await;
            app.shutdown().await;
            let outcome = outcome?;
            if json {
                out!("{}", serde_json::to_string_pretty(&outcome.output)?);
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
            scope,
            json,
        } => {
            let app = App::build_interactive(settings)?;
            let options = fhir_migration_tool::cutover::Options {
                final_check,
                quiet: std::time::Duration::from_secs(quiet_seconds),
                timeout: std::time::Duration::from_secs(timeout_seconds),
                poll: std::time::Duration::from_secs(2),
                scope_configured: scope == "configured",
                on_wait: Some(|line: &str| err!("cutover: {line}")),
            };
            let mut progress = fhir_migration_tool::terminal::Progress::new("cutover", None);
            progress.set_message(if final_check {
                "waiting for quiet at the source, migrating the last tail, then the full check and a reconciliation"
            } else {
                "measuring the lag"
            });
            let outcome = fhir_migration_tool::cutover::cutover(&app, &options).await;
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
            let app = App::build_interactive(settings)?;
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
            let app = App::build_interactive(settings)?;
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
            let table = app.tables().table(&app.settings().reconcile_table)?;
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
            .await;
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
        Command::Redrive {
            since,
            till,
            cancel,
            types,
            json,
        } => {
            use fhir_migration_tool::engine::redrives::{RedriveError, Request, parse_instant};
            let failure = |e: RedriveError| match e {
                RedriveError::Refused(r) => Failure::CouldNotRun(CommandError::new(r.to_string(), r.fix())),
                RedriveError::Engine(e) => e.into(),
                busy @ RedriveError::Busy => {
                    Failure::CouldNotRun(CommandError::new(busy.to_string(), "run the same command again"))
                }
            };
            if let Some(id) = cancel {
                let app = App::build_interactive(settings)?;
                let outcome = app.engine().cancel_redrive(id, chrono::Utc::now()).await;
                app.shutdown().await;
                let cancelled = outcome.map_err(failure)?;
                return show(json, &cancelled, fhir_migration_tool::cli::redrive::describe_recorded);
            }
            let (Some(since), Some(till)) = (since, till) else {
                return Err(CommandError::new("redrive needs --since and --till", "give both, or --cancel N").into());
            };
            let instant = |text: &str| {
                parse_instant(text).map_err(|m| {
                    CommandError::new(m, "give --since and --till as RFC 3339 instants (2026-01-31T00:00:00Z)")
                })
            };
            let request = Request {
                since: instant(&since)?,
                till: instant(&till)?,
                types,
            };
            let app = App::build_interactive(settings)?;
            let outcome = app.engine().redrive(request).await;
            app.shutdown().await;
            let recorded = outcome.map_err(failure)?;
            show(json, &recorded, fhir_migration_tool::cli::redrive::describe_recorded)
        }
        Command::Failures { action, all, json } => {
            use fhir_migration_tool::engine::failures::Selection;
            let app = App::build_interactive(settings)?;
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
            let said = outcome;
            let listed = engine.ledger().list(None).await;
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
                out!("{}", serde_json::to_string_pretty(&doc)?);
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
            let app = App::build_interactive(settings)?;
            // What there is to clear: the latch's count, and windows halted by a failure or the error policy.
            let halted = app.engine().status(chrono::Utc::now()).await.map(|s| {
                s.windows_in_flight
                    .iter()
                    .filter(|w| {
                        w.export_status == "Halted"
                            || w.import_status == "Halted"
                            || w.payloads.iter().any(|p| p.status == "Halted")
                    })
                    .map(|w| w.sequence)
                    .collect::<Vec<_>>()
            });
            let before = app.engine().clear_failures().await;
            app.shutdown().await;
            let (halted, before) = (halted?, before?);
            out!("maxExportRetries cleared successfully (was {before}).");
            if halted.is_empty() {
                out!("no window was halted.");
            } else {
                out!(
                    "halted window(s) {} released: an import halt is accepted (its refused versions stay in `failures`), a repeated failure is tried again with a smaller plan.",
                    halted.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(())
        }
        Command::Serve { port } => {
            let app = App::build(settings)?;
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
            served.map_err(|e| {
                Failure::CouldNotRun(CommandError::new(
                    format!("server failed: {e}"),
                    "see the log above; the Functions host restarts the handler",
                ))
            })
        }
    }
}

/// Prints a report as JSON (`--json`) or as the text `describe` makes of it.
fn show<T: serde::Serialize>(json: bool, report: &T, describe: impl Fn(&T) -> String) -> Result<(), Failure> {
    if json {
        out!("{}", serde_json::to_string_pretty(report)?);
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
