//! Fault injection (E-3), switchable at run time through `GET/PUT /_admin/faults`, so a test can start a
//! throttling storm mid-migration and end it again.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The faults in force. Every field defaults to "off".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Faults {
    /// Answer every N-th request (admin routes excepted) with 429, `Retry-After` and `x-ms-retry-after-ms`.
    pub throttle_every: Option<u64>,
    /// The delay those 429s advertise.
    pub retry_after_ms: Option<u64>,
    /// Answer every N-th request (admin routes excepted) with 503, as a gateway does during a brief outage.
    pub server_error_every: Option<u64>,
    /// The next `count` export jobs fail with this status and reason.
    pub export_failure: Option<JobFailure>,
    /// The next `count` import processing units fail with this status and reason.
    pub import_unit_failure: Option<JobFailure>,
    /// After an export first reports 200, its next status call answers 202 once.
    pub export_status_flap: bool,
    /// Every import status call is delayed this long (the real server may take up to 60 s).
    pub import_status_delay_ms: u64,
    /// aapi search and history pages: every other page comes back empty, still with a `next` link.
    pub empty_pages: bool,
    /// Import error files end their lines with `\r\n`, as a Windows host writes them (reference §11.5; the
    /// server's E2E tests split error files on `\r\n`).
    pub error_file_crlf: bool,
    /// The next `count` import processing units restart after writing their error lines, so those lines are
    /// appended again and appear twice (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Operations/Import/ImportProcessingJob.cs`:
    /// "leads to adding duplicate error records on job restart"; reference §11.5). `None`: off; `Some(0)`: every unit.
    pub import_unit_restart: Option<u32>,
    /// ahds exports with `_isParallel` take the SQL fallback path: the inclusive search path (`_till` to the end
    /// of its precision, latest versions), as the server does when no rows existed when it planned the ranges
    /// (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Operations/Export/SqlExportOrchestratorJob.cs`;
    /// reference §11.9).
    pub export_sql_fallback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFailure {
    pub status: u16,
    pub reason: String,
    /// How many jobs (or units) it applies to; `None`: all until switched off.
    #[serde(default)]
    pub count: Option<u32>,
}

impl Faults {
    /// Consumes one use of a counted failure; returns the failure to apply, if any.
    pub fn take(slot: &mut Option<JobFailure>) -> Option<JobFailure> {
        let failure = slot.clone()?;
        match failure.count {
            Some(n) if n <= 1 => *slot = None,
            Some(n) => slot.as_mut().expect("present").count = Some(n - 1),
            None => {}
        }
        Some(failure)
    }
}

impl Faults {
    /// Consumes one use of `import_unit_restart`; whether this unit restarts.
    pub fn take_restart(&mut self) -> bool {
        match self.import_unit_restart {
            None => false,
            Some(0) => true,
            Some(1) => {
                self.import_unit_restart = None;
                true
            }
            Some(n) => {
                self.import_unit_restart = Some(n - 1);
                true
            }
        }
    }
}

/// Counts requests for `throttle_every`.
#[derive(Debug, Default)]
pub struct RequestCounter(AtomicU64);

impl RequestCounter {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_failures_run_out() {
        let mut slot = Some(JobFailure {
            status: 429,
            reason: "RU".into(),
            count: Some(2),
        });
        assert!(Faults::take(&mut slot).is_some());
        assert!(Faults::take(&mut slot).is_some());
        assert!(Faults::take(&mut slot).is_none());
        let mut forever = Some(JobFailure {
            status: 500,
            reason: "x".into(),
            count: None,
        });
        for _ in 0..5 {
            assert!(Faults::take(&mut forever).is_some());
        }
    }

    #[test]
    fn faults_parse_from_partial_json() {
        let f: Faults = serde_json::from_str(r#"{"throttleEvery": 3}"#).unwrap();
        assert_eq!(f.throttle_every, Some(3));
        assert!(!f.export_status_flap);
    }
}
