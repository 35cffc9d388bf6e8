//! Processes one import job: the coordinator downloads and checks every input, splits each into units of
//! `processingUnitBytesToRead` bytes, and each unit loads its lines in batches of 1,000 through the store's
//! merge rules, writing failed lines to an error file (reference §4.4, §5.3, §5.4, items 37–40).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Coordinator, ImportSpec, Unit, UnitState};
use crate::App;
use crate::faults::Faults;
use crate::store::{ImportLine, ImportOptions, LineOutcome, parse_import_line};
use crate::time::{Millis, now_ms};

/// Lines per transaction within a unit (the servers' TransactionSize).
const BATCH: usize = 1000;
/// More resources than this with one millisecond lastUpdated exhaust the surrogate ids of a unit.
const SAME_MS_LIMIT: usize = 10_000;
/// SQL `decimal(36,18)`: at most 18 digits before the point in an indexed number.
const MAX_INTEGER_DIGITS: usize = 18;

pub(super) fn start(app: App, id: u64, spec: ImportSpec) {
    tokio::spawn(async move {
        let mut stopping = app.stopping.clone();
        // Its own task, so a panic fails the import (500) instead of leaving it running forever.
        let job = tokio::spawn({
            let app = app.clone();
            async move { run(&app, id, spec).await }
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

async fn run(app: &App, id: u64, spec: ImportSpec) {
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
                if let Some(expected) = &input.etag
                    && expected.trim_matches('"') != d.etag.trim_matches('"')
                {
                    fail_coordinator(app, id, 400, format!("Input file Etag not match. {}", input.url));
                    return;
                }
                contents.push(d.bytes);
            }
            Err(e) => {
                let status = if e.status == 0 { 500 } else { e.status };
                fail_coordinator(app, id, status, e.message);
                return;
            }
        }
    }
    let mut units = Vec::new();
    for (i, bytes) in contents.iter().enumerate() {
        let mut offset = 0;
        loop {
            units.push(Unit {
                input: i,
                job_id: app.next_job_id(),
                offset,
                state: UnitState::Pending,
            });
            offset += spec.unit_bytes;
            if offset >= bytes.len() {
                break;
            }
        }
    }
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
    for (index, unit) in planned.iter().enumerate() {
        if with_job(app, id, |job| job.cancelled).unwrap_or(true) {
            return;
        }
        let state = process_unit(app, id, &spec, unit, &contents[unit.input]).await;
        with_job(app, id, |job| job.units[index].state = state);
    }
}

fn fail_coordinator(app: &App, id: u64, status: u16, message: String) {
    with_job(app, id, |job| job.coordinator = Coordinator::Failed { status, message });
}

/// The non-empty lines a unit owns: those starting in `[offset, offset + size)`, 1-based.
fn unit_lines(bytes: &[u8], offset: usize, size: usize) -> Vec<&[u8]> {
    let end = (offset + size).min(bytes.len());
    let mut start = offset;
    if offset > 0 {
        // Skip to the first line that starts at or after the offset.
        if bytes[offset - 1] != b'\n' {
            match bytes[offset..].iter().position(|&b| b == b'\n') {
                Some(p) => start = offset + p + 1,
                None => return Vec::new(),
            }
        }
    }
    let mut lines = Vec::new();
    while start < end {
        let stop = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| start + p);
        let line = bytes[start..stop].strip_suffix(b"\r").unwrap_or(&bytes[start..stop]);
        if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push(line);
        }
        start = stop + 1;
    }
    lines
}

async fn process_unit(app: &App, id: u64, spec: &ImportSpec, unit: &Unit, bytes: &[u8]) -> UnitState {
    if let Some(f) = Faults::take(&mut app.faults().import_unit_failure) {
        return UnitState::Failed {
            status: f.status,
            message: f.reason,
        };
    }
    let input = &spec.inputs[unit.input];
    let lines = unit_lines(bytes, unit.offset, spec.unit_bytes);
    let per_resource = app.config.per_resource_latency * lines.len() as u32;
    if !per_resource.is_zero() {
        tokio::time::sleep(per_resource).await;
    }
    let mut succeeded = 0;
    let mut errors: Vec<String> = Vec::new();
    let mut same_ms: HashMap<Millis, usize> = HashMap::new();
    for (batch_no, batch) in lines.chunks(BATCH).enumerate() {
        let opts = ImportOptions {
            allow_negative_versions: spec.allow_negative_versions,
            input_type: input.resource_type.clone(),
            now: now_ms(),
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
            return UnitState::Failed {
                status: 400,
                message: "Value was either too large or too small for a Decimal.".into(),
            };
        }
        for l in &parsed {
            if let Some(t) = l.last_updated {
                let n = same_ms.entry(t).or_default();
                *n += 1;
                if *n > SAME_MS_LIMIT {
                    return UnitState::Failed {
                        status: 400,
                        message: "Unable to generate internal IDs. If the lastUpdated meta element is provided as input, reduce the number of resources with the same up to millisecond lastUpdated below 10,000.".into(),
                    };
                }
            }
        }
        let outcomes = if spec.initial_load {
            initial_load(app, parsed)
        } else {
            app.store.import_batch(parsed, &opts)
        };
        for (line_no, outcome) in outcomes {
            match outcome {
                LineOutcome::Error(message) => errors.push(error_line(&message, line_no, unit.offset)),
                _ => succeeded += 1,
            }
        }
    }
    let failed = errors.len();
    let error_url = if failed > 0 {
        let blob = app.blob.as_ref().expect("checked at kick-off");
        let name = format!(
            "{}{id}_{}.ndjson",
            input.resource_type.as_deref().unwrap_or(""),
            unit.job_id
        );
        let mut text = errors.join("\n");
        text.push('\n');
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
        input_type: None,
        now: now_ms(),
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
    fn units_own_the_lines_that_start_inside_them() {
        let file = b"aaaa\nbbbb\r\n\ncccc\ndddd";
        let all: Vec<&[u8]> = (0..file.len())
            .step_by(7)
            .flat_map(|o| unit_lines(file, o, 7))
            .collect();
        assert_eq!(all, [&b"aaaa"[..], b"bbbb", b"cccc", b"dddd"]);
        assert_eq!(unit_lines(file, 0, 100).len(), 4, "empty lines are skipped");
        // A unit that starts exactly at a line start keeps that line.
        assert_eq!(unit_lines(file, 5, 5), [&b"bbbb"[..]]);
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
