//! Processes one import job: the coordinator downloads and checks every input, splits each into units of
//! `processingUnitBytesToRead` bytes, and the units — in a random order, several at once, as the server enqueues
//! them — load their lines in batches of 1,000 through the store's merge rules, writing failed lines to an error
//! file (reference §4.4, §5.3, §5.4, §11.1, §11.4, §11.5).

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Coordinator, ImportSpec, Unit, UnitState};
use crate::App;
use crate::faults::Faults;
use crate::store::{ImportLine, ImportOptions, LineOutcome, parse_import_line};
use crate::time::now_ms;

/// Lines per transaction within a unit (the servers' TransactionSize).
const BATCH: usize = 1000;
/// SQL `decimal(36,18)`: at most 18 digits before the point in an indexed number.
const MAX_INTEGER_DIGITS: usize = 18;
/// How many units of one job run at once (the server's workers pick units up in parallel; the number is the
/// emulator's choice).
const UNIT_CONCURRENCY: usize = 4;
/// The 400 a unit fails with when one (type, millisecond) runs out of surrogate ids. "10,000" is only the text;
/// the limit is 80,000 rows per type and millisecond across the store
/// (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Operations/Import/ImportProcessingJob.cs`,
/// `SurrogateIdsErrorMessage`; reference §11.1).
pub(super) const SURROGATE_IDS_MESSAGE: &str = "Unable to generate internal IDs. If the lastUpdated meta element is provided as input, reduce the number of resources with the same up to millisecond lastUpdated below 10,000.";

pub(super) fn start(app: App, id: u64, spec: ImportSpec) {
    tokio::spawn(async move {
        let mut stopping = app.stopping.clone();
        // Its own task, so a panic fails the import (500) instead of leaving it running forever.
        let job = tokio::spawn({
            let app = app.clone();
            async move { run(&app, id, Arc::new(spec)).await }
        });
        let abort = job.abort_handle();
        tokio::select! {
            r = job => if r.is_err() {
                fail_coordinator(&app, id, 500, "Unknown Error.".into());
            },
            _ = stopping.wait_for(|s| *s) => abort.abort(),
        }
    });
}

fn with_job<T>(app: &App, id: u64, f: impl FnOnce(&mut super::ImportJob) -> T) -> Option<T> {
    app.imports
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .jobs
        .get_mut(&id)
        .map(f)
}

/// The unit offsets of one input (`GetOffsets` in `ImportOrchestratorJob.cs`): `ceil(length / size)` units, at
/// least one even for an empty blob; a negative size (which `int.TryParse` accepts) plans none.
fn offsets(length: usize, size: i64) -> Vec<usize> {
    if size <= 0 {
        return Vec::new();
    }
    let size = size as usize;
    let n = length.div_ceil(size).max(1);
    (0..n).map(|k| k * size).collect()
}

/// A small deterministic shuffle (SplitMix64), seeded from the configuration or the clock.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

async fn run(app: &App, id: u64, spec: Arc<ImportSpec>) {
    let _slot = match &app.import_slots {
        Some(slots) => slots.clone().acquire_owned().await.ok(),
        None => None,
    };
    if !app.config.job_latency.is_zero() {
        tokio::time::sleep(app.config.job_latency).await;
    }
    let blob = app.blob.as_ref().expect("kick-off refuses imports without storage");
    // Coordinator: fetch every input, check ETags, plan the units.
    let mut contents = Vec::new();
    for input in &spec.inputs {
        let url = url::Url::parse(&input.url).expect("validated at kick-off");
        let Some((container, name)) = blob.locate(&url) else {
            fail_coordinator(app, id, 404, "The specified blob does not exist.".into());
            return;
        };
        match blob.get(&container, &name).await {
            Ok(d) => {
                // Ordinal equality with the blob's ETag as the storage SDK prints it, quotes included; an empty
                // etag is no etag (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Operations/Import/ImportOrchestratorJob.cs`,
                // `ValidateResourcesAsync`; reference §11.6).
                if let Some(expected) = &input.etag
                    && !expected.is_empty()
                    && *expected != d.etag
                {
                    fail_coordinator(app, id, 400, format!("Input file Etag not match. {}", input.url));
                    return;
                }
                contents.push(Arc::new(d.bytes));
            }
            Err(e) => {
                let status = if e.status == 0 { 500 } else { e.status };
                fail_coordinator(app, id, status, e.message);
                return;
            }
        }
    }
    let mut planned: Vec<(usize, usize)> = Vec::new();
    for (i, bytes) in contents.iter().enumerate() {
        planned.extend(offsets(bytes.len(), spec.unit_bytes).into_iter().map(|o| (i, o)));
    }
    // The server enqueues units in a random order; job ids follow that order (`ImportOrchestratorJob.cs`,
    // `EnqueueProcessingJobsAsync`; reference §11.5).
    let seed = app.config.import_order_seed.map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ id
        },
        |s| s ^ id,
    );
    shuffle(&mut planned, seed);
    let units: Vec<Unit> = planned
        .into_iter()
        .map(|(input, offset)| Unit {
            input,
            job_id: app.next_job_id(),
            offset,
            state: UnitState::Pending,
        })
        .collect();
    let planned = units.clone();
    if with_job(app, id, |job| {
        job.units = units;
        job.coordinator = Coordinator::Split;
        job.cancelled
    })
    .unwrap_or(true)
    {
        return;
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(UNIT_CONCURRENCY));
    let mut running = tokio::task::JoinSet::new();
    for (index, unit) in planned.into_iter().enumerate() {
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        if with_job(app, id, |job| job.cancelled).unwrap_or(true) {
            break;
        }
        let (app, spec, bytes) = (app.clone(), spec.clone(), contents[unit.input].clone());
        running.spawn(async move {
            let state = process_unit(&app, id, &spec, &unit, &bytes).await;
            with_job(&app, id, |job| job.units[index].state = state);
            drop(permit);
        });
    }
    while running.join_next().await.is_some() {}
}

fn fail_coordinator(app: &App, id: u64, status: u16, message: String) {
    with_job(app, id, |job| job.coordinator = Coordinator::Failed { status, message });
}

/// The lines a unit owns, exactly as the server's `ReadLines`
/// (`fs:src/Microsoft.Health.Fhir.Core/Features/Operations/Import/ImportResourceLoader.cs`; reference §11.4): reading
/// from `offset`, a unit at an offset above 0 always drops the first line it reads — even when the offset falls on
/// a line start — and reads lines while the bytes read so far are at most `size`, so a line starting exactly at
/// the next unit's offset belongs to this unit. A line ends at `\n` or `\r\n` (a lone `\r` stays in the line); only
/// truly empty lines are left out (a whitespace-only line is a line, which then fails to parse).
pub(super) fn unit_lines(bytes: &[u8], offset: usize, size: usize) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut pos = offset;
    let mut read = 0usize;
    let mut skip_first = offset > 0;
    while read <= size && pos < bytes.len() {
        let (line, next) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                let raw = &bytes[pos..pos + p];
                (raw.strip_suffix(b"\r").unwrap_or(raw), pos + p + 1)
            }
            None => (&bytes[pos..], bytes.len()),
        };
        read += next - pos;
        pos = next;
        if skip_first {
            skip_first = false;
            continue;
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// Runs a unit's lines through the store once: (succeeded, error lines), or the state of a failed unit.
fn load_lines(app: &App, spec: &ImportSpec, unit: &Unit, lines: &[&[u8]]) -> Result<(usize, Vec<String>), UnitState> {
    let input = &spec.inputs[unit.input];
    let mut succeeded = 0;
    let mut errors: Vec<String> = Vec::new();
    for (batch_no, batch) in lines.chunks(BATCH).enumerate() {
        let opts = ImportOptions {
            allow_negative_versions: spec.allow_negative_versions,
            input_type: input.resource_type.clone(),
            now: now_ms(),
            same_ms_capacity: (!spec.initial_load).then_some(app.config.same_ms_capacity),
        };
        let mut parsed: Vec<ImportLine> = Vec::new();
        for (k, raw) in batch.iter().enumerate() {
            let line_no = batch_no * BATCH + k + 1;
            let text = String::from_utf8_lossy(raw);
            match parse_import_line(&text, line_no, &opts) {
                Ok(line) => parsed.push(line),
                Err(message) => errors.push(error_line(&message, line_no, unit.offset)),
            }
        }
        // Whole-unit failures: earlier batches stay committed, as on the real server.
        if parsed.iter().any(|l| has_decimal_overflow(&l.body)) {
            return Err(UnitState::Failed {
                status: 400,
                message: "Value was either too large or too small for a Decimal.".into(),
            });
        }
        let outcomes = if spec.initial_load {
            initial_load(app, parsed)
        } else {
            // A (type, millisecond) out of surrogate ids makes the SQL merge throw after its retries; the processing
            // job turns that into a 400 for the whole unit, and its error lines are never written
            // (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Storage/SqlServerFhirDataStore.cs`, `GetMaxRetries`;
            // `ImportProcessingJob.cs`; reference §11.1).
            app.store
                .try_import_batch(parsed, &opts)
                .map_err(|_| UnitState::Failed {
                    status: 400,
                    message: SURROGATE_IDS_MESSAGE.into(),
                })?
        };
        for (line_no, outcome) in outcomes {
            match outcome {
                LineOutcome::Error(message) => errors.push(error_line(&message, line_no, unit.offset)),
                _ => succeeded += 1,
            }
        }
    }
    Ok((succeeded, errors))
}

async fn process_unit(app: &App, id: u64, spec: &ImportSpec, unit: &Unit, bytes: &[u8]) -> UnitState {
    if let Some(f) = Faults::take(&mut app.faults().import_unit_failure) {
        return UnitState::Failed {
            status: f.status,
            message: f.reason,
        };
    }
    let input = &spec.inputs[unit.input];
    let lines = unit_lines(bytes, unit.offset, spec.unit_bytes.max(0) as usize);
    let per_resource = app.config.per_resource_latency * lines.len() as u32;
    if !per_resource.is_zero() {
        tokio::time::sleep(per_resource).await;
    }
    let (mut succeeded, mut errors) = match load_lines(app, spec, unit, &lines) {
        Ok(r) => r,
        Err(state) => return state,
    };
    // The count the result reports: the errors of the last run.
    let mut failed = errors.len();
    let (restart, crlf) = {
        let mut faults = app.faults();
        (faults.take_restart(), faults.error_file_crlf)
    };
    if restart {
        // The unit's errors were appended, then it restarted from its first line: the lines it loaded are now
        // identical re-imports, and its error lines are appended a second time.
        let (again, more) = match load_lines(app, spec, unit, &lines) {
            Ok(r) => r,
            Err(state) => return state,
        };
        succeeded = again;
        failed = more.len();
        errors.extend(more);
    }
    let error_url = if !errors.is_empty() {
        let blob = app.blob.as_ref().expect("checked at kick-off");
        let name = format!(
            "{}{id}_{}.ndjson",
            input.resource_type.as_deref().unwrap_or(""),
            unit.job_id
        );
        // Each line written with WriteLine: the host's newline after every line (CRLF on Windows hosts).
        let newline = if crlf { "\r\n" } else { "\n" };
        let mut text = errors.join(newline);
        text.push_str(newline);
        if let Err(e) = blob.ensure_container(&spec.error_container).await {
            return UnitState::Failed {
                status: e.status.max(400),
                message: e.message,
            };
        }
        if let Err(e) = blob.put(&spec.error_container, &name, text.into_bytes()).await {
            return UnitState::Failed {
                status: e.status.max(400),
                message: e.message,
            };
        }
        Some(blob.url(&spec.error_container, &name))
    } else {
        None
    };
    UnitState::Done {
        succeeded,
        failed,
        error_url,
    }
}

/// An error-file line (reference §5.3): no `issue.code`, by design of the real server.
fn error_line(message: &str, line: usize, offset: usize) -> String {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "details": { "text": message },
            "diagnostics": format!("Failed to process resource at line: {line} with stream start offset: {offset}")
        }]
    })
    .to_string()
}

/// InitialLoad (reference §6.5): existing resources are duplicates; new ones get version 1 and lastUpdated now.
fn initial_load(app: &App, lines: Vec<ImportLine>) -> std::collections::BTreeMap<usize, LineOutcome> {
    let mut outcomes = std::collections::BTreeMap::new();
    let mut fresh = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for mut line in lines {
        if app.store.exists(&line.resource_type, &line.id)
            || !seen.insert((line.resource_type.clone(), line.id.clone()))
        {
            outcomes.insert(
                line.line,
                LineOutcome::Error(format!(
                    "Failed to import duplicate resource, resource id: {}, line: {}",
                    line.id, line.line
                )),
            );
        } else {
            line.last_updated = None;
            line.version = None;
            fresh.push(line);
        }
    }
    let opts = ImportOptions {
        allow_negative_versions: false,
        ..ImportOptions::seeding(now_ms())
    };
    outcomes.extend(app.store.import_batch(fresh, &opts));
    outcomes
}

/// Any number with more than 18 digits before the decimal point (the servers index numbers and quantities as
/// `decimal(36,18)`; the emulator checks every number, which covers the indexed ones).
fn has_decimal_overflow(v: &Value) -> bool {
    match v {
        Value::Number(n) => {
            let text = n.to_string();
            let mantissa = text.trim_start_matches('-');
            if mantissa.contains(['e', 'E']) {
                return n.as_f64().is_some_and(|f| f.abs() >= 1e18);
            }
            mantissa
                .split('.')
                .next()
                .unwrap_or_default()
                .trim_start_matches('0')
                .len()
                > MAX_INTEGER_DIGITS
        }
        Value::Array(items) => items.iter().any(has_decimal_overflow),
        Value::Object(map) => map.values().any(has_decimal_overflow),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_own_lines_as_the_servers_read_lines_does() {
        let file = b"aaaa\nbbbb\r\n\ncccc\ndddd";
        let all: Vec<&[u8]> = offsets(file.len(), 7)
            .into_iter()
            .flat_map(|o| unit_lines(file, o, 7))
            .collect();
        assert_eq!(all, [&b"aaaa"[..], b"bbbb", b"cccc", b"dddd"]);
        assert_eq!(unit_lines(file, 0, 100).len(), 4, "empty lines are skipped");
        // A line starting exactly at a unit's offset belongs to the previous unit: the unit at 5 skips it, and the
        // unit at 0 (5 bytes) still reads it because 5 bytes read is not more than 5.
        assert!(unit_lines(file, 5, 5).is_empty());
        assert_eq!(unit_lines(file, 0, 5), [&b"aaaa"[..], b"bbbb"]);
        // Every line is owned exactly once, whatever the unit size.
        for size in 1..=file.len() {
            let all: Vec<&[u8]> = offsets(file.len(), size as i64)
                .into_iter()
                .flat_map(|o| unit_lines(file, o, size))
                .collect();
            assert_eq!(all, [&b"aaaa"[..], b"bbbb", b"cccc", b"dddd"], "size {size}");
        }
    }

    #[test]
    fn whitespace_only_lines_and_lone_carriage_returns_are_lines() {
        let file = b"a\n \n\r\nb\rc\n\n";
        assert_eq!(unit_lines(file, 0, 100), [&b"a"[..], b" ", b"b\rc"]);
    }

    #[test]
    fn unit_offsets_follow_the_blob_length() {
        assert_eq!(offsets(0, 10), [0]);
        assert_eq!(offsets(10, 10), [0]);
        assert_eq!(offsets(11, 10), [0, 10]);
        assert!(offsets(11, -5).is_empty(), "a negative size plans no unit");
    }

    #[test]
    fn decimals_beyond_eighteen_integer_digits_overflow() {
        let v: Value = serde_json::from_str(r#"{"valueQuantity":{"value":1234567890123456789.5}}"#).unwrap();
        assert!(has_decimal_overflow(&v));
        let ok: Value =
            serde_json::from_str(r#"{"valueQuantity":{"value":123456789012345678.123456789012345678999}}"#).unwrap();
        assert!(!has_decimal_overflow(&ok));
    }
}
