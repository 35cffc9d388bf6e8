//! The rules the whole engine shares, written once: what a window and a payload are doing (typed phases derived
//! from their rows), which of them count against `AZURE_PayloadCount`, which may be retried, and how a server's
//! answer to a kick-off or an `$import` POST is classified. Every decision in the core goes through here.

use chrono::{DateTime, TimeDelta, Utc};

use crate::state::rows::{ExportStatus, ImportStatus};
use crate::state::{Job, Payload};

/// Identical failures of one window (or payload) in a row after which retrying stops and the window halts
/// with its reason: the same request would only fail the same way again.
pub const IDENTICAL_FAILURES_TO_HALT: i64 = 3;

/// Transient answers (throttling, 5xx, unreachable server, token trouble) in a row after which one failure is
/// counted toward the retry latch and reported, so a server that never recovers is seen instead of retried
/// silently forever. The counter starts again after each report.
pub const DEFERRALS_PER_FAILURE: i64 = 6;

/// How soon a deferred kick-off or POST is tried again when the server named no wait.
pub const RETRY_SOON: TimeDelta = TimeDelta::seconds(30);

/// How often custom SearchParameters are synced after the first copy (each sync reads only what changed).
pub const SEARCH_PARAMETER_SYNC_EVERY: TimeDelta = TimeDelta::minutes(4);

/// Whether the starter should copy (first time) or sync the custom SearchParameters now.
pub fn search_parameters_due(ctx: &super::Context, cursor: &crate::state::Cursor) -> bool {
    !cursor.search_parameters_copied
        || cursor
            .search_parameters_synced_at
            .is_none_or(|t| ctx.now - t >= SEARCH_PARAMETER_SYNC_EVERY)
}

/// A window's phase, from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPhase {
    /// Planned or deferred: waiting for a kick-off (its lease, when set, is a claim or a requested wait).
    Planned,
    /// `$export` accepted: polled until it finishes.
    Exporting,
    /// Exported; its payloads import.
    Exported,
    /// Every payload imported: the window may commit.
    Processed,
    /// Failed: exported again (a new attempt).
    Failed,
    /// Stopped for an operator: a failure retrying cannot fix, or import errors under the Halt policy.
    Halted,
}

pub fn window_phase(job: &Job) -> WindowPhase {
    if job.processed {
        return WindowPhase::Processed;
    }
    if job.import_status == ImportStatus::Halted {
        return WindowPhase::Halted;
    }
    match &job.export_status {
        ExportStatus::Starting => WindowPhase::Planned,
        ExportStatus::Started | ExportStatus::Running => WindowPhase::Exporting,
        ExportStatus::Completed => WindowPhase::Exported,
        ExportStatus::Failed => WindowPhase::Failed,
        ExportStatus::Halted | ExportStatus::Other(_) => WindowPhase::Halted,
    }
}

/// A payload's phase, from its row and its window's current export attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadPhase {
    Waiting,
    /// A POST is claimed and its lease still runs.
    Posting,
    /// A POST whose lease ran out: interrupted or deferred, and posted again.
    PostDue,
    Running,
    Done,
    Failed,
    Halted,
    /// A payload of an export attempt that was replaced: it decides nothing about its window any more.
    Superseded,
}

pub fn payload_phase(p: &Payload, window_attempt: i64, now: DateTime<Utc>) -> PayloadPhase {
    if p.export_attempt != window_attempt || p.status == ImportStatus::Superseded {
        return PayloadPhase::Superseded;
    }
    match &p.status {
        ImportStatus::NotStarted => PayloadPhase::Waiting,
        ImportStatus::Posting if p.lease_until.is_some_and(|l| l >= now) => PayloadPhase::Posting,
        ImportStatus::Posting => PayloadPhase::PostDue,
        ImportStatus::Started | ImportStatus::Running => PayloadPhase::Running,
        ImportStatus::Completed => PayloadPhase::Done,
        ImportStatus::Failed => PayloadPhase::Failed,
        ImportStatus::Halted | ImportStatus::Superseded | ImportStatus::Other(_) => PayloadPhase::Halted,
    }
}

/// Whether a payload occupies one of the `AZURE_PayloadCount` import slots.
pub fn occupies_slot(phase: PayloadPhase) -> bool {
    matches!(phase, PayloadPhase::Posting | PayloadPhase::Running)
}

/// Whether a superseded payload may still have a job running at the destination (it is then cancelled).
pub fn may_be_running(p: &Payload) -> bool {
    matches!(
        p.status,
        ImportStatus::Posting | ImportStatus::Started | ImportStatus::Running
    )
}

/// A server's answer to a kick-off (`$export`) or an `$import` POST.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Accepted {
        status_url: String,
    },
    Refused {
        status: u16,
        diagnostics: String,
        retry_after: Option<std::time::Duration>,
    },
    /// Not sent or no answer: unreachable server, token trouble, an unreadable answer.
    Unsent {
        error: String,
    },
}

/// What to do with an answer: the one classification that kick-offs and POSTs share.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accepted {
        status_url: String,
    },
    /// Send the same request again at `at`. `report` is set when the deferrals in a row reached
    /// [`DEFERRALS_PER_FAILURE`]: one failure is then counted and reported.
    Retry {
        at: DateTime<Utc>,
        reason: String,
        report: bool,
    },
    /// Refused for good: this request will not succeed as it is.
    Refused {
        status: u16,
        reason: String,
    },
}

/// Classifies an answer. `deferrals` is how many transient answers in a row the request already had.
pub fn classify(answer: &Answer, call: &str, deferrals: i64, now: DateTime<Utc>) -> Verdict {
    match answer {
        Answer::Accepted { status_url } => Verdict::Accepted {
            status_url: status_url.clone(),
        },
        Answer::Refused {
            status,
            diagnostics,
            retry_after,
        } if crate::fhir::is_transient(*status) => Verdict::Retry {
            at: retry_at(*retry_after, now),
            reason: format!("{call} answered HTTP {status} ({diagnostics}); trying again"),
            report: deferrals + 1 >= DEFERRALS_PER_FAILURE,
        },
        Answer::Refused {
            status, diagnostics, ..
        } => Verdict::Refused {
            status: *status,
            reason: format!("{call} refused with HTTP {status}: {diagnostics}"),
        },
        Answer::Unsent { error } => Verdict::Retry {
            at: now + RETRY_SOON,
            reason: format!("{call} could not be sent: {error}"),
            report: deferrals + 1 >= DEFERRALS_PER_FAILURE,
        },
    }
}

/// When to try a deferred call again: when the server said (bounded to 1 s – 5 min), else soon.
pub fn retry_at(retry_after: Option<std::time::Duration>, now: DateTime<Utc>) -> DateTime<Utc> {
    let wait = retry_after
        .and_then(|d| TimeDelta::from_std(d).ok())
        .map_or(RETRY_SOON, |d| d.clamp(TimeDelta::seconds(1), TimeDelta::minutes(5)));
    now + wait
}

/// What stays of a failure reason once the parts that differ between attempts (job ids, URLs, numbers) are
/// taken out: two failures with the same signature are the same failure.
pub fn signature(reason: &str) -> String {
    reason
        .split_whitespace()
        .filter(|w| !w.contains("://"))
        .map(|w| w.chars().filter(|c| !c.is_ascii_digit()).collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The failure streak after a new failure: one more when it repeats the last one, else a new streak.
pub fn next_streak(previous_reason: &str, previous_streak: i64, reason: &str) -> i64 {
    if previous_streak > 0 && signature(previous_reason) == signature(reason) {
        previous_streak + 1
    } else {
        1
    }
}

/// A server's answer to a cancel (`DELETE` on a job's status URL).
#[derive(Debug, Clone, PartialEq)]
pub enum CancelAnswer {
    Accepted,
    Refused {
        status: u16,
        diagnostics: String,
    },
    /// Not answered: unreachable, or a transport failure.
    Unsent(String),
}

/// What a cancel's answer means: the job is stopped or gone (`Ok`, with a line when the server refused: a job
/// that already finished answers 409 and a lost one 404, and neither runs on), or it may run on (`Err`, with
/// the reason: cancelled again on the next tick). Throttling (429) and a timeout (408) are not refusals.
pub fn cancel_outcome(answer: &CancelAnswer) -> Result<Option<String>, String> {
    match answer {
        CancelAnswer::Accepted => Ok(None),
        CancelAnswer::Refused { status, diagnostics }
            if (400..500).contains(status) && !matches!(status, 408 | 429) =>
        {
            Ok(Some(format!(
                "the server refused the cancel (HTTP {status}: {diagnostics}); the job has ended or is gone, and is left as it is"
            )))
        }
        CancelAnswer::Refused { status, diagnostics } => Err(format!("HTTP {status}: {diagnostics}")),
        CancelAnswer::Unsent(error) => Err(error.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn one_classification_for_every_answer() {
        let now = t0();
        let throttled = Answer::Refused {
            status: 429,
            diagnostics: "busy".into(),
            retry_after: Some(std::time::Duration::from_secs(20)),
        };
        assert_eq!(
            classify(&throttled, "$export", 0, now),
            Verdict::Retry {
                at: now + TimeDelta::seconds(20),
                reason: "$export answered HTTP 429 (busy); trying again".into(),
                report: false
            }
        );
        let Verdict::Retry { report, .. } = classify(&throttled, "$export", DEFERRALS_PER_FAILURE - 1, now) else {
            panic!()
        };
        assert!(report, "a throttle that never ends is reported");
        let down = Answer::Refused {
            status: 503,
            diagnostics: String::new(),
            retry_after: None,
        };
        assert!(
            matches!(classify(&down, "$import", 0, now), Verdict::Retry { at, report: false, .. } if at == now + RETRY_SOON)
        );
        let unsent = Answer::Unsent {
            error: "connection refused".into(),
        };
        assert!(matches!(
            classify(&unsent, "$import", 0, now),
            Verdict::Retry { at, report: false, .. } if at == now + RETRY_SOON
        ));
        // Reported with the deferral that completes a failure's worth, not one sooner.
        assert!(matches!(
            classify(&unsent, "$import", DEFERRALS_PER_FAILURE - 2, now),
            Verdict::Retry { report: false, .. }
        ));
        assert!(matches!(
            classify(&unsent, "$import", DEFERRALS_PER_FAILURE - 1, now),
            Verdict::Retry { report: true, .. }
        ));
        let bad = Answer::Refused {
            status: 400,
            diagnostics: "bad".into(),
            retry_after: None,
        };
        assert_eq!(
            classify(&bad, "$import", 0, now),
            Verdict::Refused {
                status: 400,
                reason: "$import refused with HTTP 400: bad".into()
            }
        );
    }

    #[test]
    fn waits_are_bounded() {
        let now = t0();
        let wait = |d: u64| (retry_at(Some(std::time::Duration::from_millis(d)), now) - now).num_milliseconds();
        assert_eq!(wait(150), 1000);
        assert_eq!(wait(20_000), 20_000);
        assert_eq!(wait(3_600_000), 300_000);
        assert_eq!((retry_at(None, now) - now).num_seconds(), 30);
    }

    #[test]
    fn identical_failures_are_recognised_across_ids_and_urls() {
        let a = "import failed with HTTP 400: import operation failed for reason: Unable to generate internal IDs ErrorFile: https://x/a/1.ndjson";
        let b = "import failed with HTTP 400: import operation failed for reason: Unable to generate internal IDs ErrorFile: https://x/b/2.ndjson";
        assert_eq!(signature(a), signature(b));
        assert_eq!(next_streak(a, 1, b), 2);
        assert_eq!(next_streak(a, 2, "export failed: something else"), 1);
        assert_eq!(next_streak("", 0, a), 1);
        // The same status with other words is another failure.
        assert_eq!(
            next_streak(
                "export failed with HTTP 500: disk full",
                3,
                "export failed with HTTP 500: quota exceeded"
            ),
            1
        );
    }

    #[test]
    fn a_refused_cancel_ends_the_job_only_when_the_job_cannot_run_on() {
        let refused = |status| CancelAnswer::Refused {
            status,
            diagnostics: "x".into(),
        };
        assert_eq!(cancel_outcome(&CancelAnswer::Accepted), Ok(None));
        for gone in [404, 409, 400] {
            assert!(matches!(cancel_outcome(&refused(gone)), Ok(Some(_))), "{gone}");
        }
        for runs_on in [408, 429, 500, 503] {
            assert!(cancel_outcome(&refused(runs_on)).is_err(), "{runs_on}");
        }
        assert!(cancel_outcome(&CancelAnswer::Unsent("could not connect".into())).is_err());
    }
}
