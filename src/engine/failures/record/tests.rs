//! Recording refused lines, case by case: the byte bound, which reads are waited for, and how a refused line is
//! named (by its version, or else by its place), counted and dated.
use super::super::files::SERVER_FILE_BYTES;
use super::*;

/// An import's input file is one of the server's export files (past its rolling size by up to a search page),
/// and its error file is smaller: both are read whole, so every refused line is named by its version, not only
/// by its position.
#[test]
#[allow(clippy::assertions_on_constants)] // a test run, so a mutated bound fails a test rather than a build
fn files_of_the_servers_export_size_are_read_whole() {
    assert!(MAX_FILE_BYTES >= 2 * SERVER_FILE_BYTES);
}

fn refused(status: u16) -> BlobError {
    BlobError::Service {
        operation: "download",
        container: "c".into(),
        name: "n".into(),
        status,
        code: String::new(),
    }
}

/// Only a read that may pass is waited for; a refusal asking again cannot change is decided at once (an open
/// entry saying what to grant), so nothing waits on it until the job timeout.
#[test]
fn only_reads_that_may_pass_are_waited_for() {
    for status in [408, 429, 500, 502, 503, 504] {
        assert!(may_pass(&refused(status)), "{status}");
    }
    for status in [400, 401, 403, 409, 412, 416] {
        assert!(!may_pass(&refused(status)), "{status}");
    }
    let transport = BlobError::Other {
        operation: "download",
        container: "c".into(),
        name: "n".into(),
        detail: "Io error".into(),
    };
    assert!(may_pass(&transport));
    assert!(!may_pass(&BlobError::Setup("https://x".into(), "bad".into())));
}

fn error_text(message: &str, line: u64) -> String {
    serde_json::json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "error",
        "details": { "text": message },
        "diagnostics": format!("Failed to process resource at line: {line} with stream start offset: 0") }] })
    .to_string()
}

fn error_file(url: &str) -> ImportErrorFile {
    ImportErrorFile {
        resource_type: Some("Patient".into()),
        count: 3,
        input_url: Some(INPUT.into()),
        url: url.into(),
    }
}

const INPUT: &str = "https://exports/run/Patient-1.ndjson";
const AT: &str = "2026-03-01T08:00:00.000Z";

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(AT).unwrap().with_timezone(&Utc)
}

/// An input file of three lines: a whole version, one without a version, one without an id.
fn input() -> String {
    [
        serde_json::json!({ "resourceType": "Patient", "id": "p1", "meta": { "versionId": "3", "lastUpdated": AT } }),
        serde_json::json!({ "resourceType": "Patient", "id": "p2", "meta": { "lastUpdated": AT } }),
        serde_json::json!({ "resourceType": "Patient", "meta": { "versionId": "4", "lastUpdated": AT } }),
    ]
    .map(|l| l.to_string())
    .join("\n")
}

/// A refused line is named by the version its input line holds; one whose input line lacks an id or a version,
/// or cannot be read, by its place (the error file and the position), so no two lines share an entry, and its
/// type is then the error file's.
#[test]
fn a_refused_line_is_named_by_its_version_or_else_by_its_place() {
    let input = input();
    let conflict = "Failed to import resource with version conflict";
    let entry = |url: &str, input: Option<&str>, line: u64| {
        line_entry(
            7,
            &error_file(url),
            INPUT,
            input.map(str::as_bytes),
            &error_text(conflict, line),
            0,
            at(),
        )
        .entry
    };
    let named = entry("https://errors/a.ndjson", Some(&input), 1);
    assert_eq!(
        (
            named.key.as_str(),
            named.resource_type.as_str(),
            named.id.as_str(),
            named.version_id.as_str()
        ),
        ("Patient|p1|3", "Patient", "p1", "3")
    );
    assert_eq!(
        (named.last_updated.as_str(), named.kind, named.next_attempt),
        (AT, Kind::Conflict, None)
    );
    assert_eq!(
        (named.error_file.as_str(), named.input_file.as_str(), named.line),
        ("https://errors/a.ndjson", INPUT, 1)
    );
    let keys: Vec<String> = [
        entry("https://errors/a.ndjson", Some(&input), 2),
        entry("https://errors/a.ndjson", Some(&input), 3),
        entry("https://errors/b.ndjson", Some(&input), 3),
        entry("https://errors/b.ndjson", None, 1),
    ]
    .into_iter()
    .map(|e| {
        assert!(e.key.starts_with("line|https"), "named by its place: {e:?}");
        assert_eq!(e.resource_type, "Patient", "{e:?}");
        e.key
    })
    .collect();
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:?}");
}

/// A line refused as ahead of the destination's clock is retried 30 seconds after its lastUpdated, and never
/// sooner than a minute from now; no other kind is retried by time.
#[test]
fn a_line_ahead_of_the_destinations_clock_waits_for_its_instant() {
    let input = input();
    let future = "The lastUpdated of the resource cannot be in the future";
    let retry_at = |now: DateTime<Utc>| {
        let e = line_entry(
            7,
            &error_file("https://errors/f.ndjson"),
            INPUT,
            Some(input.as_bytes()),
            &error_text(future, 1),
            0,
            now,
        )
        .entry;
        assert_eq!(e.kind, Kind::Future);
        e.next_attempt
    };
    assert_eq!(
        retry_at(at() - TimeDelta::minutes(10)),
        Some(at() + TimeDelta::seconds(30))
    );
    assert_eq!(
        retry_at(at() + TimeDelta::hours(1)),
        Some(at() + TimeDelta::minutes(61))
    );
}

/// An error file that cannot be read is one entry counting its lines, under the file's type; a shortfall says
/// how many lines its file held, and an older release's shortfall that this is unknown.
#[test]
fn unreadable_files_and_shortfalls_count_what_cannot_be_named() {
    let file = error_file("https://errors/u.ndjson");
    let e = unreadable(7, &file, "the error file", at());
    assert_eq!(
        (e.resource_type.as_str(), e.unnamed_lines, e.kind),
        ("Patient", 3, Kind::Unreadable)
    );
    assert_eq!(shortfall_of(&e), None);
    let short = shortfall(7, &file, 2, 1, at());
    assert_eq!(
        (shortfall_of(&short), short.unnamed_lines, short.kind),
        (Some(Some(2)), 1, Kind::Unreadable)
    );
    assert!(
        short
            .message
            .starts_with("the server counted 1 more failed line(s) than its error file holds"),
        "{short:?}"
    );
    let old = Entry {
        key: format!("{OLD_SHORTFALL}|x"),
        ..short
    };
    assert_eq!(shortfall_of(&old), Some(None));
}

/// Lines with a position are counted once however often a restarted unit wrote them; lines without one each.
#[test]
fn an_error_file_counts_each_positioned_line_once() {
    let conflict = "Failed to import resource with version conflict";
    let text = [
        error_text(conflict, 1),
        error_text(conflict, 1),
        error_text(conflict, 2),
        "{}".into(),
        "{}".into(),
    ]
    .join("\r\n");
    assert_eq!(distinct_lines(&text), 4);
}

/// Two instants are the same when they fall on one millisecond (the source may keep a fraction more); an instant
/// that cannot be read is the same as nothing.
#[test]
fn instants_are_compared_by_the_millisecond() {
    let v = |s: &str| Value::String(s.into());
    assert!(same_instant(
        &v("2026-03-01T08:00:00.001Z"),
        &v("2026-03-01T08:00:00.0015Z")
    ));
    assert!(!same_instant(
        &v("2026-03-01T08:00:00.001Z"),
        &v("2026-03-01T08:00:00.002Z")
    ));
    assert!(!same_instant(&v("soon"), &v("soon")));
    assert!(!same_instant(&v("2026-03-01T08:00:00.001Z"), &Value::Null));
}
