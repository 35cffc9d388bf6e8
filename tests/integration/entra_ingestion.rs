//! Application Insights with local authentication disabled (Entra only): with
//! `APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD`, as the Functions host reads it, items go to
//! `/v2.1/track` with a bearer token for `https://monitor.azure.com`; without it they go to `/v2/track` with the
//! instrumentation key alone (which such a resource refuses).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use fhir_migration_tool::config::{Settings, SettingsSource};
use fhir_migration_tool::telemetry::appinsights::{AppInsights, ConnectionString, MONITOR_SCOPE};
use fhir_migration_tool::telemetry::{Event, Telemetry};
use fhir_testkit::{MockIngestion, TEST_MONITOR_TOKEN};

#[derive(Debug, Default)]
struct MonitorToken {
    scopes: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TokenCredential for MonitorToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(
            TEST_MONITOR_TOKEN,
            azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        ))
    }
}

fn settings(mock: &MockIngestion, auth: Option<&str>) -> Result<Settings, String> {
    let mut source = SettingsSource::default();
    source.extend([
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true".to_string()),
        ("AZURE_SourceUri", "https://src.example".to_string()),
        ("AZURE_DestinationUri", "https://dst.example".to_string()),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", mock.connection_string()),
    ]);
    if let Some(auth) = auth {
        source.extend([("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", auth.to_string())]);
    }
    Settings::from_source(&source).map_err(|e| e.to_string())
}

#[tokio::test]
async fn entra_only_ingestion_posts_to_v2_1_with_a_monitor_token() {
    let mock = MockIngestion::start().await.unwrap();
    let cs = settings(
        &mock,
        Some("Authorization=AAD;ClientId=11111111-2222-3333-4444-555555555555"),
    )
    .unwrap()
    .app_insights
    .unwrap();
    assert!(cs.entra_only);
    assert_eq!(
        cs.entra_client_id.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert!(cs.track_url().path().ends_with("/v2.1/track"));
    let token = Arc::new(MonitorToken::default());
    let ai = AppInsights::start_with_credential(&cs, reqwest::Client::new(), Some(token.clone()));
    ai.event(Event::new("Export").with("ExportStatus", "Started"));
    assert!(ai.flush(Duration::from_secs(10)).await);
    assert_eq!(mock.custom_events().len(), 1, "accepted by the token-checking endpoint");
    assert!(token.scopes.lock().unwrap().iter().all(|s| s == MONITOR_SCOPE));
    assert!(!token.scopes.lock().unwrap().is_empty());
    // The same endpoint refuses a post without a token: the test endpoint does check.
    let ai = AppInsights::start_with_credential(&cs, reqwest::Client::new(), None);
    ai.event(Event::new("Export"));
    assert!(ai.flush(Duration::from_secs(10)).await);
    assert_eq!(mock.custom_events().len(), 1);
    assert_eq!(ai.counters().failed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn without_the_authentication_string_items_go_to_v2_and_a_bad_one_is_refused_at_start() {
    let mock = MockIngestion::start().await.unwrap();
    let cs: ConnectionString = settings(&mock, None).unwrap().app_insights.unwrap();
    assert!(!cs.entra_only);
    assert!(cs.track_url().path().ends_with("/v2/track"));
    let problem = settings(&mock, Some("Authorization=Basic")).unwrap_err();
    assert!(problem.contains("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") && problem.contains("Authorization=AAD"));
}
