//! The payload row's mapping to and from its Table entity (split from rows.rs to keep files small).

use super::{ImportStatus, Payload, opt_time, payload_key};
use crate::storage::tables::{Entity, TableError};

impl Payload {
    pub fn new(seq: i64, export_attempt: i64, index: i64, blob: String) -> Payload {
        Payload {
            seq,
            export_attempt,
            index,
            blob,
            import_url: String::new(),
            status: ImportStatus::NotStarted,
            attempt: 0,
            lease_until: None,
            start_time: None,
            end_time: None,
            imported: 0,
            failed_lines: 0,
            failed_resources: String::new(),
            error_files: String::new(),
            error_kinds: None,
            error_samples: String::new(),
            failure_reason: String::new(),
            deferrals: 0,
            unit_bytes: None,
            expected_lines: None,
            post_token: String::new(),
            capacity_checked: 0,
            capacity_trims: 0,
            scanned_files: 0,
            scan_done: false,
            left_out: 0,
            etag: None,
        }
    }

    pub fn to_entity(&self, pk: &str, rk: &str) -> Result<Entity, TableError> {
        let mut e = Entity::new(pk, payload_key(rk, self.seq, self.export_attempt, self.index))?;
        e.set_i64("JobSeq", self.seq)
            .set_i64("ExportAttempt", self.export_attempt)
            .set_i64("PayloadIndex", self.index)
            .set_str("ImportNo", &self.blob)
            .set_str("importContentLocation", &self.import_url)
            .set_str("IsImportRunning", self.status.as_str())
            .set_bool("IsImportComplete", self.status == ImportStatus::Completed)
            .set_i64("ImportAttempt", self.attempt)
            .set_str("TotalImportResourceCount", self.imported.to_string())
            .set_str("TotalFailedImportCount", self.failed_lines.to_string())
            .set_str("FailedImportResources", &self.failed_resources)
            .set_str("ImportErrorFiles", &self.error_files)
            .set_str("ImportErrorSamples", &self.error_samples)
            .set_str("FailureReason", &self.failure_reason);
        opt_time(&mut e, "LeaseUntil", self.lease_until);
        if let Some((conflict, duplicate, invalid)) = self.error_kinds {
            e.set_i64("ConflictLines", conflict)
                .set_i64("DuplicateLines", duplicate)
                .set_i64("InvalidLines", invalid);
        }
        opt_time(&mut e, "ImportStartTime", self.start_time);
        opt_time(&mut e, "EndTime", self.end_time);
        e.set_i64("Deferrals", self.deferrals);
        if let Some(bytes) = self.unit_bytes {
            e.set_i64("ProcessingUnitBytes", bytes);
        }
        e.set_str("PostToken", &self.post_token);
        e.set_i64("CapacityChecked", self.capacity_checked)
            .set_i64("CapacityTrims", self.capacity_trims)
            .set_i64("ScannedFiles", self.scanned_files)
            .set_bool("ScanDone", self.scan_done)
            .set_i64("LeftOutVersions", self.left_out);
        if let Some(lines) = self.expected_lines {
            e.set_i64("ExpectedLines", lines);
        }
        Ok(e)
    }

    pub fn from_entity(e: &Entity) -> Option<Payload> {
        Some(Payload {
            seq: e.get_i64("JobSeq")?,
            export_attempt: e.get_i64("ExportAttempt").unwrap_or(1),
            index: e.get_i64("PayloadIndex")?,
            blob: e.get_str("ImportNo").unwrap_or_default().into(),
            import_url: e.get_str("importContentLocation").unwrap_or_default().into(),
            status: ImportStatus::parse(e.get_str("IsImportRunning").unwrap_or_default()),
            attempt: e.get_i64("ImportAttempt").unwrap_or(0),
            lease_until: e.get_datetime("LeaseUntil"),
            start_time: e.get_datetime("ImportStartTime"),
            end_time: e.get_datetime("EndTime"),
            imported: e.get_i64("TotalImportResourceCount").unwrap_or(0),
            failed_lines: e.get_i64("TotalFailedImportCount").unwrap_or(0),
            failed_resources: e.get_str("FailedImportResources").unwrap_or_default().into(),
            error_files: e.get_str("ImportErrorFiles").unwrap_or_default().into(),
            error_kinds: match (
                e.get_i64("ConflictLines"),
                e.get_i64("DuplicateLines"),
                e.get_i64("InvalidLines"),
            ) {
                (Some(c), Some(d), Some(i)) => Some((c, d, i)),
                _ => None,
            },
            error_samples: e.get_str("ImportErrorSamples").unwrap_or_default().into(),
            failure_reason: e.get_str("FailureReason").unwrap_or_default().into(),
            deferrals: e.get_i64("Deferrals").unwrap_or(0),
            unit_bytes: e.get_i64("ProcessingUnitBytes"),
            expected_lines: e.get_i64("ExpectedLines"),
            post_token: e.get_str("PostToken").unwrap_or_default().into(),
            capacity_checked: e.get_i64("CapacityChecked").unwrap_or(0),
            capacity_trims: e.get_i64("CapacityTrims").unwrap_or(0),
            scanned_files: e.get_i64("ScannedFiles").unwrap_or(0),
            scan_done: e.get_bool("ScanDone").unwrap_or(false),
            left_out: e.get_i64("LeftOutVersions").unwrap_or(0),
            etag: e.etag().cloned(),
        })
    }
}
