//! A re-drive as text: the answer of `redrive`, and the line `status` shows for the latest one.

use crate::engine::redrives::{Recorded, RedriveStatus};

/// `5, 2026-01-02T00:00:00.000Z to 2026-01-03T00:00:00.000Z, every resource type: running (0 of 1 row(s) done)`.
pub fn line(r: &RedriveStatus) -> String {
    let types = if r.types.is_empty() {
        "every resource type".to_string()
    } else {
        r.types.join(", ")
    };
    let state = match r.state.as_str() {
        "finished" => format!(
            "finished{}",
            r.finished_at.as_deref().map(|t| format!(" at {t}")).unwrap_or_default()
        ),
        "halted" => format!("HALTED ({}): fix the cause, then clear-retries", r.failure_reason),
        _ => format!(
            "running ({} of {} row(s) done){}",
            r.rows_done,
            r.rows.len(),
            if r.failure_reason.is_empty() {
                String::new()
            } else {
                format!("; last failure, retried: {}", r.failure_reason)
            }
        ),
    };
    format!("{}, {} to {}, {types}: {state}", r.id, r.since, r.till)
}

/// What `redrive` says: recorded (or found in flight), the re-drive's line, and what happens next.
pub fn describe_recorded(r: &Recorded) -> String {
    let rows = r.redrive.rows.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let first = if r.created {
        format!("re-drive {} recorded as window row(s) {rows}", r.redrive.id)
    } else {
        format!(
            "re-drive {} of this range and these types is already recorded (window row(s) {rows}); nothing new was recorded",
            r.redrive.id
        )
    };
    format!(
        "{first}\nre-drive:          {}\nThe timers (or `run`) export and import it like any window; the cursor stays where it is. `status` shows its progress.\n",
        line(&r.redrive)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: &str) -> RedriveStatus {
        RedriveStatus {
            id: 5,
            since: "2026-01-02T00:00:00.000Z".into(),
            till: "2026-01-03T00:00:00.000Z".into(),
            types: Vec::new(),
            state: state.into(),
            rows: vec![5, 6],
            rows_done: 1,
            failure_reason: String::new(),
            finished_at: None,
        }
    }

    #[test]
    fn a_redrive_reads_in_one_line() {
        assert_eq!(
            line(&status("running")),
            "5, 2026-01-02T00:00:00.000Z to 2026-01-03T00:00:00.000Z, every resource type: running (1 of 2 row(s) done)"
        );
        let mut finished = status("finished");
        finished.types = vec!["Observation".into(), "Patient".into()];
        finished.finished_at = Some("2026-01-10T00:00:00.000Z".into());
        assert!(
            line(&finished).ends_with("Observation, Patient: finished at 2026-01-10T00:00:00.000Z"),
            "{}",
            line(&finished)
        );
        let mut halted = status("halted");
        halted.failure_reason = "export failed with HTTP 400: bad".into();
        assert!(
            line(&halted).ends_with("HALTED (export failed with HTTP 400: bad): fix the cause, then clear-retries")
        );
        let again = Recorded {
            created: false,
            redrive: status("running"),
        };
        assert!(
            describe_recorded(&again).starts_with(
                "re-drive 5 of this range and these types is already recorded (window row(s) 5, 6); nothing new was recorded\n"
            ),
            "{}",
            describe_recorded(&again)
        );
    }
}
