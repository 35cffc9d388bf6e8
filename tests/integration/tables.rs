//! The Table REST client against Azurite: every operation the engine relies on, and above all the ETag guard.

use chrono::{TimeZone, Utc};
use fhir_migration_tool::secret::Secret;
use fhir_migration_tool::storage::StorageCredential;
use fhir_migration_tool::storage::tables::{Entity, IfMatch, TableError, filter};

use crate::support::{azurite, new_table, table_service, table_service_with, unique_name};

#[tokio::test]
async fn create_if_missing_is_idempotent() {
    let azurite = azurite().await;
    let service = table_service(&azurite);
    let table = service.table(&unique_name("idem")).unwrap();
    table.create_if_missing().await.unwrap();
    table.create_if_missing().await.unwrap();
    // The table is usable afterwards.
    table.insert(&Entity::new("p", "r").unwrap()).await.unwrap();
}

#[tokio::test]
async fn insert_then_get_returns_typed_columns_and_an_etag() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    let since = Utc.with_ymd_and_hms(2023, 1, 31, 0, 0, 0).unwrap();
    let mut row = Entity::new("mypartitionkey", "myrowkey").unwrap();
    row.set_datetime("since", since)
        .set_i64("totalExportResourceCount", 12_345_678_901)
        .set_i32("maxExportRetries", 2)
        .set_bool("searchParameterMigrated", true)
        .set_str("status", "Running");
    let inserted = table.insert(&row).await.unwrap();

    let read = table
        .get("mypartitionkey", "myrowkey")
        .await
        .unwrap()
        .expect("row exists");
    assert_eq!(read.etag(), Some(&inserted));
    assert_eq!(read.get_datetime("since"), Some(since));
    assert_eq!(read.get_i64("totalExportResourceCount"), Some(12_345_678_901));
    assert_eq!(read.get_i64("maxExportRetries"), Some(2));
    assert_eq!(read.get_bool("searchParameterMigrated"), Some(true));
    assert_eq!(read.get_str("status"), Some("Running"));
    assert!(read.timestamp().is_some());

    assert!(table.get("mypartitionkey", "absent").await.unwrap().is_none());
    let again = table.insert(&row).await.unwrap_err();
    assert!(matches!(again, TableError::AlreadyExists { .. }), "{again}");
}

#[tokio::test]
async fn a_stale_etag_is_a_conflict_and_changes_nothing() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    let mut row = Entity::new("p", "cursor").unwrap();
    row.set_str("since", "2023-01-01T00:00:00.000Z");
    table.insert(&row).await.unwrap();

    let mut first = table.get("p", "cursor").await.unwrap().unwrap();
    let mut second = first.clone();
    first.set_str("since", "2023-02-01T00:00:00.000Z");
    let new_tag = table.replace(&first, &first.if_match()).await.unwrap();

    // `second` still carries the ETag from before the first write.
    second.set_str("since", "2023-03-01T00:00:00.000Z");
    let err = table.replace(&second, &second.if_match()).await.unwrap_err();
    assert!(
        matches!(err, TableError::Conflict { ref row_key, .. } if row_key == "cursor"),
        "{err}"
    );
    let err = table.merge(&second, &second.if_match()).await.unwrap_err();
    assert!(matches!(err, TableError::Conflict { .. }), "{err}");
    let err = table.delete("p", "cursor", &second.if_match()).await.unwrap_err();
    assert!(matches!(err, TableError::Conflict { .. }), "{err}");

    let stored = table.get("p", "cursor").await.unwrap().unwrap();
    assert_eq!(stored.get_str("since"), Some("2023-02-01T00:00:00.000Z"));
    assert_eq!(stored.etag(), Some(&new_tag));
}

#[tokio::test]
async fn of_two_concurrent_writers_with_the_same_etag_exactly_one_wins() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    table
        .insert(Entity::new("p", "r").unwrap().set_i32("n", 0))
        .await
        .unwrap();
    let read = table.get("p", "r").await.unwrap().unwrap();
    let (mut a, mut b) = (read.clone(), read);
    a.set_i32("n", 1);
    b.set_i32("n", 2);
    let (ma, mb) = (a.if_match(), b.if_match());
    let (ra, rb) = tokio::join!(table.replace(&a, &ma), table.replace(&b, &mb));
    let wins = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
    assert_eq!(wins, 1, "exactly one conditional write may succeed: {ra:?} / {rb:?}");
    let loser = if ra.is_ok() { rb } else { ra };
    assert!(matches!(loser, Err(TableError::Conflict { .. })));
    let n = table.get("p", "r").await.unwrap().unwrap().get_i64("n").unwrap();
    assert!(n == 1 || n == 2);
}

#[tokio::test]
async fn merge_keeps_other_columns_and_replace_drops_them() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    let mut row = Entity::new("p", "r").unwrap();
    row.set_str("a", "1").set_str("b", "2");
    table.insert(&row).await.unwrap();

    let mut patch = Entity::new("p", "r").unwrap();
    patch.set_str("b", "20");
    let tag = table.merge(&patch, &IfMatch::Any).await.unwrap();
    let merged = table.get("p", "r").await.unwrap().unwrap();
    assert_eq!((merged.get_str("a"), merged.get_str("b")), (Some("1"), Some("20")));
    assert_eq!(merged.etag(), Some(&tag));

    let mut whole = Entity::new("p", "r").unwrap();
    whole.set_str("c", "3");
    table.replace(&whole, &IfMatch::ETag(tag)).await.unwrap();
    let replaced = table.get("p", "r").await.unwrap().unwrap();
    assert_eq!(replaced.get_str("a"), None);
    assert_eq!(replaced.get_str("c"), Some("3"));
}

#[tokio::test]
async fn writes_to_missing_rows_are_not_found_and_upsert_creates() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    let row = Entity::new("p", "ghost").unwrap();
    for err in [
        table.replace(&row, &IfMatch::Any).await.unwrap_err(),
        table.merge(&row, &IfMatch::Any).await.unwrap_err(),
        table.delete("p", "ghost", &IfMatch::Any).await.unwrap_err(),
    ] {
        assert!(matches!(err, TableError::NotFound { .. }), "{err}");
    }
    table.upsert(&row).await.unwrap();
    table.upsert(&row).await.unwrap();
    table.delete("p", "ghost", &IfMatch::Any).await.unwrap();
    assert!(table.get("p", "ghost").await.unwrap().is_none());
}

#[tokio::test]
async fn keys_with_quotes_spaces_percent_and_unicode_round_trip() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    for (pk, rk) in [("it's", "a b"), ("100%", "ünï'cödé ✓"), ("a+b=c&d", "(x,y)")] {
        let mut row = Entity::new(pk, rk).unwrap();
        row.set_str("v", format!("{pk}|{rk}"));
        table.insert(&row).await.unwrap();
        let read = table
            .get(pk, rk)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("({pk}, {rk}) not found"));
        assert_eq!(read.get_str("v"), Some(format!("{pk}|{rk}").as_str()));
        table.replace(&read, &read.if_match()).await.unwrap();
        let hits = table.query_all(Some(&filter::eq("PartitionKey", pk))).await.unwrap();
        assert_eq!(hits.len(), 1, "{pk}");
        assert!(hits[0].etag().is_some(), "query rows carry their ETag");
    }
}

#[tokio::test]
async fn queries_filter_and_follow_continuations() {
    let azurite = azurite().await;
    let table = new_table(&table_service(&azurite)).await;
    for i in 0..250 {
        let mut row = Entity::new("jobs", format!("job-{i:04}")).unwrap();
        row.set_str("state", if i % 5 == 0 { "importing" } else { "done" });
        table.insert(&row).await.unwrap();
    }
    table
        .insert(Entity::new("other", "job-0000").unwrap().set_str("state", "importing"))
        .await
        .unwrap();

    let first = table
        .query_page(Some(&filter::eq("PartitionKey", "jobs")), Some(100), None)
        .await
        .unwrap();
    assert_eq!(first.entities.len(), 100);
    let next = first.continuation.expect("more pages");
    let second = table
        .query_page(Some(&filter::eq("PartitionKey", "jobs")), Some(100), Some(&next))
        .await
        .unwrap();
    assert_eq!(second.entities[0].row_key(), "job-0100");

    let importing = format!(
        "{} and {}",
        filter::eq("PartitionKey", "jobs"),
        filter::eq("state", "importing")
    );
    let rows = table.query_all(Some(&importing)).await.unwrap();
    assert_eq!(rows.len(), 50);
    assert!(
        rows.iter()
            .all(|r| r.partition_key() == "jobs" && r.get_str("state") == Some("importing"))
    );

    let prefixed = table.query_all(Some(&filter::row_key_prefix("job-01"))).await.unwrap();
    assert_eq!(prefixed.len(), 100);
    assert_eq!(table.query_all(None).await.unwrap().len(), 251);
}

#[tokio::test]
async fn a_missing_table_and_a_wrong_key_give_errors_that_say_what_to_do() {
    let azurite = azurite().await;
    let service = table_service(&azurite);
    let missing = service.table(&unique_name("missing")).unwrap();
    let err = missing.get("p", "r").await.unwrap_err();
    assert!(err.is_table_missing(), "{err}");
    let err = missing.insert(&Entity::new("p", "r").unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let wrong = StorageCredential::SharedKey {
        account: "devstoreaccount1".into(),
        key: Secret::new(b"not the key".to_vec()),
    };
    let err = table_service_with(&azurite, wrong)
        .table("anything")
        .unwrap()
        .create_if_missing()
        .await
        .unwrap_err();
    match &err {
        TableError::Service { status: 403, .. } => {
            assert!(err.to_string().contains("credential was refused"), "{err}")
        }
        other => panic!("expected a 403, got {other}"),
    }
}

#[tokio::test]
async fn invalid_table_names_and_keys_fail_before_any_request() {
    let azurite = azurite().await;
    let service = table_service(&azurite);
    for bad in ["ab", "1abc", "has-dash", &"x".repeat(64)] {
        assert!(
            matches!(service.table(bad), Err(TableError::InvalidTableName(_))),
            "{bad}"
        );
    }
    let table = new_table(&service).await;
    assert!(matches!(
        table.get("a/b", "r").await,
        Err(TableError::InvalidKey { .. })
    ));
}

/// The outage tests stop and restart Azurite and expect it to have kept what it acknowledged, as Azure
/// Storage does. Azurite saves its stores every 5 s and on a clean stop, so a row written just before the stop
/// is the one a crude stop would lose.
#[tokio::test]
async fn a_row_written_just_before_storage_stops_is_there_after_it_restarts() {
    let mut azurite = fhir_testkit::Azurite::start_persistent().await.unwrap();
    let table = new_table(&table_service(&azurite)).await;
    let mut row = Entity::new("p", "cursor").unwrap();
    row.set_str("since", "2023-01-01T00:00:00.000Z");
    let written = table.insert(&row).await.unwrap();
    azurite.stop();
    azurite.restart().await.unwrap();
    let table = table_service(&azurite).table(table.name()).unwrap();
    let read = table
        .get("p", "cursor")
        .await
        .unwrap()
        .expect("the acknowledged row is kept");
    assert_eq!(read.etag(), Some(&written));
    assert_eq!(read.get_str("since"), Some("2023-01-01T00:00:00.000Z"));
}
