//! The blob adapter (official azure_storage_blob client, account SAS for Azurite) against Azurite.

use fhir_migration_tool::secret::Secret;
use fhir_migration_tool::storage::StorageCredential;
use fhir_migration_tool::storage::blob::{BlobError, BlobStore};

use crate::support::{azurite, settings_for, unique_name};

#[tokio::test]
async fn put_get_and_list_by_prefix() {
    let azurite = azurite().await;
    let settings = settings_for(&azurite);
    let store = BlobStore::new(
        settings.storage.blob_endpoint().clone(),
        settings.storage.credential().unwrap(),
    )
    .unwrap();
    let container = unique_name("payloads");
    store.ensure_container(&container).await.unwrap();
    store.ensure_container(&container).await.unwrap();

    let body = br#"{"resourceType":"Parameters","parameter":[]}"#.to_vec();
    store
        .put(&container, "run-1/window-0001/payload-1.json", body.clone())
        .await
        .unwrap();
    store
        .put(&container, "run-1/window-0002/payload-1.json", b"{}".to_vec())
        .await
        .unwrap();
    store
        .put(&container, "run-2/window-0001/payload-1.json", b"{}".to_vec())
        .await
        .unwrap();

    assert_eq!(
        store.get(&container, "run-1/window-0001/payload-1.json").await.unwrap(),
        Some(body)
    );
    assert_eq!(store.get(&container, "run-1/nothing.json").await.unwrap(), None);
    assert_eq!(
        store.list(&container, "run-1/").await.unwrap(),
        ["run-1/window-0001/payload-1.json", "run-1/window-0002/payload-1.json"]
    );
    assert_eq!(store.list(&container, "").await.unwrap().len(), 3);

    // Overwrite replaces the content.
    store
        .put(&container, "run-2/window-0001/payload-1.json", b"[1]".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.get(&container, "run-2/window-0001/payload-1.json").await.unwrap(),
        Some(b"[1]".to_vec())
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_without_leaking_the_signature() {
    let azurite = azurite().await;
    let settings = settings_for(&azurite);
    let wrong = StorageCredential::SharedKey {
        account: "devstoreaccount1".into(),
        key: Secret::new(b"not the key".to_vec()),
    };
    let store = BlobStore::new(settings.storage.blob_endpoint().clone(), wrong).unwrap();
    let err = store.ensure_container("anything").await.unwrap_err();
    assert!(matches!(err, BlobError::Service { status: 403, .. }), "{err}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("sig="),
        "the SAS signature must not appear in errors: {text}"
    );
    assert!(text.contains("Storage Blob Data Contributor"));
}

#[test]
fn managed_identity_refuses_plain_http_endpoints() {
    let settings = fhir_migration_tool::config::Settings::from_source(&{
        let mut s = fhir_migration_tool::config::SettingsSource::default();
        s.extend([
            ("AZURE_StagingStorageUri", "https://sa.table.core.windows.net"),
            ("AZURE_BlobStorageUri", "https://sa.blob.core.windows.net"),
            ("AZURE_SourceUri", "https://source.example"),
            ("AZURE_DestinationUri", "https://destination.example"),
        ]);
        s
    })
    .unwrap();
    let credential = settings.storage.credential().unwrap();
    let err = BlobStore::new(url::Url::parse("http://sa.blob.core.windows.net").unwrap(), credential).unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
}
