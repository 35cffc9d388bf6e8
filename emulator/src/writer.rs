//! A live writer for continuous-migration tests: creates, updates, soft-deletes and hard-deletes resources on a
//! server at a steady rate until stopped, and reports what it did (hard deletes by id, since no export can
//! carry them).

use std::time::{Duration, Instant};

use serde_json::json;

#[derive(Debug, Clone)]
pub struct WriterParams {
    pub target: String,
    /// Operations per second.
    pub rate: f64,
    pub seed: u64,
    pub types: Vec<String>,
    /// Optional bearer token (for emulators that check tokens).
    pub token: Option<String>,
    /// Whether some deletes are hard deletes (which no export can carry; off for tests that expect equality).
    pub hard_deletes: bool,
}

/// What a writer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterReport {
    pub created: usize,
    pub updated: usize,
    pub soft_deleted: usize,
    /// `Type/id` of every hard-deleted resource.
    pub hard_deleted: Vec<String>,
    pub failed: usize,
}

/// Writes until `stop` resolves. Ids are `live-<seed>-<n>`, so two writers with different seeds never collide.
pub async fn run(params: WriterParams, stop: impl std::future::Future<Output = ()>) -> WriterReport {
    let http = reqwest::Client::new();
    let mut report = WriterReport::default();
    let mut live: Vec<(String, String, i64)> = Vec::new();
    let mut state = params
        .seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let types = if params.types.is_empty() {
        vec!["Patient".to_string(), "Observation".to_string()]
    } else {
        params.types.clone()
    };
    let interval = Duration::from_secs_f64(1.0 / params.rate.max(0.001));
    let started = Instant::now();
    let mut n = 0u64;
    tokio::pin!(stop);
    loop {
        let due = started + interval * n as u32;
        tokio::select! {
            _ = &mut stop => return report,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        n += 1;
        let roll = next() % 100;
        let send = |req: reqwest::RequestBuilder| match &params.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        if live.is_empty() || roll < 40 {
            let t = types[(next() % types.len() as u64) as usize].clone();
            let id = format!("live-{}-{n}", params.seed);
            let body = json!({ "resourceType": t, "id": id, "extension": [{ "url": "http://example.org/ext/revision", "valueInteger": 1 }] });
            let ok = send(http.put(format!("{}/{t}/{id}", params.target)).json(&body))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                report.created += 1;
                live.push((t, id, 1));
            } else {
                report.failed += 1;
            }
        } else {
            let k = (next() % live.len() as u64) as usize;
            let (t, id, revision) = live[k].clone();
            if roll < 80 {
                let body = json!({ "resourceType": t, "id": id, "extension": [{ "url": "http://example.org/ext/revision", "valueInteger": revision + 1 }] });
                let ok = send(http.put(format!("{}/{t}/{id}", params.target)).json(&body))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    report.updated += 1;
                    live[k].2 += 1;
                } else {
                    report.failed += 1;
                }
            } else {
                let hard = params.hard_deletes && roll >= 95;
                let url = format!(
                    "{}/{t}/{id}{}",
                    params.target,
                    if hard { "?hardDelete=true" } else { "" }
                );
                let ok = send(http.delete(url))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    report.failed += 1;
                    continue;
                }
                live.swap_remove(k);
                if hard {
                    report.hard_deleted.push(format!("{t}/{id}"));
                } else {
                    report.soft_deleted += 1;
                }
            }
        }
    }
}
