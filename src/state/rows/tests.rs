use super::*;
use chrono::TimeZone;

#[test]
fn rows_round_trip_through_entities() {
    let t0 = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let mut cursor = Cursor::new();
    cursor.since = Some(t0);
    cursor.next_job = 7;
    cursor.search_parameters_synced_at = Some(t0);
    cursor.migrated_versions = 42;
    cursor.progress_samples = vec![(t0, 0), (t0 + chrono::TimeDelta::minutes(5), 42)];
    cursor.last_tick_at = Some(t0);
    cursor.deferred_server = "source".into();
    cursor.deferred_answer = "HTTP 503".into();
    cursor.deferred_since = Some(t0);
    cursor.deferred_ticks = 3;
    cursor.source_skew_seconds = Some(-7);
    cursor.skew_measured_at = Some(t0);
    cursor.last_redrive = Some(5);
    let back = Cursor::from_entity(&cursor.to_entity("pk", "rk").unwrap());
    assert_eq!(back, cursor);

    let mut job = Job::planned(12, t0, t0 + chrono::TimeDelta::days(30), "");
    job.export_status = ExportStatus::Completed;
    job.exported = 12345;
    job.lease_until = Some(t0);
    let e = job.to_entity("pk", "myrowkey").unwrap();
    assert_eq!(e.row_key(), "myrowkey0000000012");
    assert_eq!(e.get_str("Since"), Some("2024-01-01T00:00:00.000Z"));
    assert_eq!(e.get_bool("IsExportComplete"), Some(true));
    assert_eq!(Job::from_entity(&e).unwrap(), job);
    assert_eq!(e.get_i64("Redrive"), None);

    // A re-drive's row keeps the request apart from its own (moving) range.
    job.redrive = Some(Redrive {
        id: 12,
        since: t0,
        till: t0 + chrono::TimeDelta::days(1),
        types: vec!["Observation".into(), "Patient".into()],
    });
    let e = job.to_entity("pk", "myrowkey").unwrap();
    assert_eq!(e.get_str("RedriveTypes"), Some("Observation,Patient"));
    assert_eq!(Job::from_entity(&e).unwrap(), job);

    let mut p = Payload::new(12, 2, 1, "import_payload_1.json".into());
    p.imported = 99;
    let e = p.to_entity("pk", "myrowkey").unwrap();
    assert_eq!(e.row_key(), "myrowkey0000000012-002-0001");
    assert!(e.row_key() > job_key("myrowkey", 12).as_str() && e.row_key() < job_key("myrowkey", 13).as_str());
    assert_eq!(Payload::from_entity(&e).unwrap(), p);
}
