//! The command line: every command, option and its help text (`fhir-migration-tool --help`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Migrates FHIR data from Azure API for FHIR to Azure Health Data Services ($export -> $import)."
)]
pub struct Cli {
    /// Read settings from this local.settings.json (its "Values"); environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// `whole` (default): with a configuration that migrates part of the source (per-type mode with a
        /// shorter AZURE_ResourceTypes, or a specific run's StartDate/EndDate), whole-server totals that differ
        /// make it NOT READY. `configured`: the configured part is all that is to move.
        #[arg(long, default_value = "whole", value_parser = ["whole", "configured"])]
        scope: String,
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
    /// Export and import a range below `migrated through` again, through the normal engine, for versions missing
    /// at the destination that the failure ledger does not hold (deleted there, say). Records the re-drive and
    /// exits; the timers (or `run`) carry it out, and `status` shows it. The same command again while it runs
    /// records nothing new.
    Redrive {
        /// Start of the range (lastUpdated, inclusive), an RFC 3339 instant: 2026-01-31T00:00:00Z.
        #[arg(long, required_unless_present = "cancel")]
        since: Option<String>,
        /// End of the range (lastUpdated, exclusive), at or before `migrated through`.
        #[arg(long, required_unless_present = "cancel")]
        till: Option<String>,
        /// Give up re-drive N (its number from `status`): its unfinished rows are marked done, so the windows
        /// after it commit again. What it already imported stays; nothing else changes.
        #[arg(long, conflicts_with_all = ["since", "till", "types"])]
        cancel: Option<i64>,
        /// Types to re-drive, comma-separated (default: every type; in per-type mode those of AZURE_ResourceTypes).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
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
pub enum FailuresAction {
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

/// Whether the command was asked for `--json` (its stdout is then one JSON document, whatever happens).
pub fn json_requested(command: &Command) -> bool {
    match command {
        Command::Status { json }
        | Command::Plan { json, .. }
        | Command::Verify { json, .. }
        | Command::Cutover { json, .. }
        | Command::Preflight { json }
        | Command::Failures { json, .. }
        | Command::Reconcile { json, .. }
        | Command::Redrive { json, .. } => *json,
        Command::Serve { .. } | Command::CheckConfig | Command::Run { .. } | Command::ClearRetries => false,
    }
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
