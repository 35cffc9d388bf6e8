//! The harness itself: Azurite starts on free ports, answers, runs side by side with another instance, and is
//! gone after drop.

use std::time::Duration;

use fhir_testkit::{Azurite, poll_until};

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn two_instances_run_side_by_side_and_die_on_drop() {
    let (a, b) = tokio::join!(Azurite::start(), Azurite::start());
    let (a, b) = (a.expect("first Azurite"), b.expect("second Azurite"));
    assert_ne!(a.table_endpoint(), b.table_endpoint());
    assert!(a.connection_string().contains(&a.blob_endpoint()));

    let http = reqwest::Client::new();
    for url in [a.table_endpoint(), b.blob_endpoint()] {
        let answer = http
            .get(format!("{url}?comp=list"))
            .send()
            .await
            .expect("Azurite answers");
        // Unauthenticated requests are refused, which proves a real Azurite is on the other end.
        assert!(answer.status().is_client_error(), "{url}: {}", answer.status());
    }

    let pid = a.pid();
    let workdir = a
        .log_path()
        .parent()
        .expect("the log is in the working directory")
        .to_path_buf();
    assert!(process_alive(pid) && workdir.is_dir());
    drop(a);
    assert!(!workdir.exists(), "a passing test leaves no files behind");
    poll_until(
        "Azurite to exit after drop",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { (!process_alive(pid)).then_some(()) },
    )
    .await
    .unwrap();
}

/// Ports chosen for one process are all different, even though the system may hand a port just let go to the
/// next request.
#[test]
fn ports_chosen_together_are_all_different() {
    for _ in 0..20 {
        let ports = fhir_testkit::free_ports::<16>().unwrap();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        assert!(!distinct.contains(&0));
    }
}
