//! Integration tests, one binary (one link) for all of them. Storage tests run against a real Azurite started by
//! the harness on free ports; the handler tests start the real binary and play the Functions host.

mod blobs;
mod boundaries;
mod capacity;
mod cli;
mod clock;
mod cutover;
mod dashboard;
mod engine;
mod entra_ingestion;
mod faults;
mod fhir;
mod handler;
mod infra;
mod infra_azure;
mod layout;
mod ledger;
mod limits;
mod local_stack;
mod messages;
mod migration;
mod package;
mod preflight;
mod reconcile;
mod redrive;
mod router;
mod search_parameters;
mod second_migration;
mod self_contained;
mod startup;
mod structure;
mod support;
mod tables;
mod telemetry;
mod truth;
mod verify;
