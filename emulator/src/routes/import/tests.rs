//! The cancel and status rules of import jobs (reference §11.11).

use super::*;

fn job(coordinator: Coordinator, units: Vec<UnitState>) -> ImportJob {
    ImportJob {
        request_url: String::new(),
        created: 0,
        spec: ImportSpec {
            inputs: Vec::new(),
            initial_load: false,
            allow_negative_versions: false,
            unit_bytes: DEFAULT_UNIT_BYTES,
            error_container: "fhirlogs".into(),
            definition: Definition::default(),
        },
        coordinator,
        units: units
            .into_iter()
            .enumerate()
            .map(|(i, state)| Unit {
                input: 0,
                job_id: i as u64,
                offset: 0,
                state,
            })
            .collect(),
        cancelled: false,
    }
}

fn failed() -> UnitState {
    UnitState::Failed {
        status: 400,
        message: "x".into(),
    }
}

fn done() -> UnitState {
    UnitState::Done {
        succeeded: 1,
        failed: 0,
        error_url: None,
    }
}

/// Reference §11.11: 409 only if a failed unit comes before the first unfinished one.
#[test]
fn s11_11_cancel_is_refused_only_when_a_failure_precedes_the_first_unfinished_unit() {
    assert!(!cancel_refused(&job(Coordinator::Running, vec![])));
    assert!(cancel_refused(&job(Coordinator::Split, vec![done(), done()])));
    assert!(cancel_refused(&job(
        Coordinator::Split,
        vec![done(), failed(), UnitState::Pending]
    )));
    assert!(!cancel_refused(&job(
        Coordinator::Split,
        vec![done(), UnitState::Pending, failed()]
    )));
    assert!(cancel_refused(&job(
        Coordinator::Failed {
            status: 400,
            message: "x".into()
        },
        vec![]
    )));
}

/// Reference §11.11: a coordinator's 500 hides its message.
#[test]
fn s11_11_a_coordinator_500_hides_its_message() {
    assert_eq!(coordinator_reason(500, "secret"), "InternalServerError");
    assert_eq!(
        coordinator_reason(400, "Input file Etag not match. x"),
        "Input file Etag not match. x"
    );
}
