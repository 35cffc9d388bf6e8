//! fhir-migration-tool: continuously copies FHIR data from Azure API for FHIR (or an AHDS FHIR service) into an
//! Azure Health Data Services FHIR service, by rounds of `$export` on the source and incremental `$import` on
//! the destination, until the operator cuts over. It runs as an Azure Functions custom handler.
//!
//! Layout:
//! - [`config`]: typed settings (`AZURE_*` names of the original tool), validated once at start-up.
//! - [`app`]: the adapters built from the settings, shared by every function and CLI command.
//! - [`planner`]: pure time decisions (pause window, window end, halving), driven by a given `now`.
//! - [`engine`]: the migration: a pure decision core (`engine::core`), the I/O shell that performs its actions,
//!   and (in tests) the simulator that drives both through crashes and server faults.
//! - [`cli`]: the command-line subcommands (`run`, `status`, `plan`, …), calling the same code as the functions.
//! - [`preflight`]: the access and configuration checks behind `preflight` and `CheckAccess_Http`.
//! - [`cutover`]: the cut-over lag report and the final drive.
//! - [`reconcile`]: hard-delete reconciliation (ids at the destination the source no longer has).
//! - [`telemetry`]: the event contract and the App Insights sender.
//! - [`functions`]: the custom-handler HTTP surface; one thin handler per Azure Function folder.
//! - [`fhir`]: the FHIR client: export, import, counts, search parameters; tokens only to configured hosts.
//! - [`state`]: the cursor, window and payload rows the engine persists (original column names kept).
//! - [`verify`]: surface and full checks of the destination against the source.
//! - [`storage`]: Table storage (state, ETag-guarded) and Blob storage (`$import` payloads).
//! - [`secret`]: a wrapper that keeps keys and tokens out of logs.
//! - [`instant`]: the one time format of queries and rows.
//! - [`ledger`]: the failure ledger: every resource version an import refused, classed, until resolved.
//! - [`logging`]: stdout logging (the host treats stderr as errors).
//! - `robustness` (tests only): seeded mutation fuzzing of every parser.

pub mod app;
pub mod cli;
pub mod config;
pub mod cutover;
pub mod engine;
pub mod fhir;
pub mod functions;
pub mod instant;
pub mod ledger;
pub mod logging;
pub mod planner;
pub mod preflight;
pub mod reconcile;
pub mod secret;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod terminal;
pub mod verify;

#[cfg(test)]
mod robustness;
