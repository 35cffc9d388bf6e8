//! The emulator checklist (reference §10), item by item, over HTTP. Test names start with the item number;
//! emulator/README.md maps every item to its tests. Export and import tests run against a real Azurite.

mod auth;
mod export_jobs;
mod export_kickoff;
mod fixtures;
mod import_jobs;
mod import_kickoff;
mod roundtrip;
mod search;
mod second_reading_import;
mod second_reading_reads;
mod support;
mod tools;
