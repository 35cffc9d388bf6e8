//! A second migration into the same destination and storage, with the FHIR servers exporting to an account the
//! tool is not told about (a documented set-up: no blob ETags), from a new source whose export job ids start
//! again, so its export files have the first migration's URLs. The destination de-duplicates import requests
//! on their raw values, finished jobs included (reference §11.7): without a definition of each attempt's own,
//! the second migration was handed the first one's finished jobs and committed windows without importing
//! anything (issue 24, item 2).

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use fhir_emulator::seed::load_into;
use fhir_emulator::{EmulatorConfig, Flavor};
use fhir_migration_tool::app::App;
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::engine::Timing;
use fhir_migration_tool::telemetry::RecordingTelemetry;
use fhir_testkit::{Azurite, DEV_ACCOUNT, DEV_KEY};
use serde_json::json;

use crate::migration::{base_settings, round};

/// A server whose storage account is reached through `localhost` rather than the address the tool's storage
/// setting names: the tool cannot read the export blobs (so it sends no ETags); both servers can.
async fn through_localhost(azurite: &Azurite, flavor: Flavor) -> fhir_emulator::RunningEmulator {
    let endpoint = azurite.blob_endpoint().replace("127.0.0.1", "localhost");
    let config = EmulatorConfig {
        blob: Some(fhir_emulator::blob::BlobConfig {
            endpoint: url::Url::parse(&endpoint).unwrap(),
            account: DEV_ACCOUNT.into(),
            key: DEV_KEY.into(),
        }),
        ..EmulatorConfig::quick(flavor)
    };
    fhir_emulator::spawn(config, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_second_migration_into_the_same_destination_imports_its_own_versions() {
    let azurite = Azurite::start().await.unwrap();
    let destination = through_localhost(&azurite, Flavor::Ahds).await;
    // Both sources hold the same number of versions at the same instants, under other ids.
    let base = Utc::now() - TimeDelta::hours(3);
    for name in ["first", "second"] {
        let source = through_localhost(&azurite, Flavor::Aapi).await;
        let lines: Vec<String> = (0..40)
            .map(|i| {
                let at = (base + TimeDelta::minutes(i * 3)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                json!({ "resourceType": "Patient", "id": format!("{name}-{i}"),
                        "meta": { "versionId": "1", "lastUpdated": at }, "name": [{ "family": name }] })
                .to_string()
            })
            .collect();
        let (_, errors) = load_into(source.store(), &lines);
        assert!(errors.is_empty(), "{errors:?}");

        let mut s = SettingsSource::default();
        s.extend(base_settings(&azurite, &source, &destination));
        s.extend(
            [
                ("AZURE_SafetyLagSeconds", "1"),
                ("AZURE_ExportConfirmSeconds", "0"),
                ("AZURE_ExportChunkTime", "1"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let settings = Settings::from_source(&s).expect("valid test settings");
        let app = App::build_with_telemetry(settings, Arc::new(RecordingTelemetry::default())).unwrap();
        let engine = app.engine().clone().with_timing(Timing {
            confirm_delay: Duration::from_millis(5),
            ..Timing::default()
        });
        let target = Utc::now() - TimeDelta::minutes(1);
        let mut done = false;
        for _ in 0..300 {
            round(&engine).await;
            let status = engine.status(Utc::now()).await.unwrap();
            let through = status
                .migrated_through
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if status.windows_in_flight.is_empty() && through.is_some_and(|t| t >= target) {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            done,
            "the {name} migration did not catch up: {}",
            serde_json::to_string_pretty(&engine.status(Utc::now()).await.unwrap()).unwrap()
        );
        let missing: Vec<String> = (0..40)
            .map(|i| format!("{name}-{i}"))
            .filter(|id| destination.store().resource("Patient", id).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "the {name} migration left {} missing: {missing:?}",
            missing.len()
        );
    }
}
