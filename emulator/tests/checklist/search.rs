//! Search, history, SearchParameter listing, `$reindex` and CRUD: items 54–60.

use fhir_emulator::Flavor;
use fhir_emulator::wire::Bundle;
use serde_json::{Value, json};

use crate::support::{Server, deleted_line, diagnostics, line, load, server};

/// 12 Patients a minute apart (p00..p11), 3 Observations, p05 with a second version, p07 deleted.
async fn populated(flavor: Flavor) -> Server {
    let s = server(flavor).await;
    let mut lines: Vec<String> = (0..12)
        .map(|i| {
            line(
                "Patient",
                &format!("p{i:02}"),
                1,
                &format!("2024-01-01T00:{i:02}:00.000Z"),
                json!({}),
            )
        })
        .collect();
    lines.push(line(
        "Patient",
        "p05",
        2,
        "2024-01-01T01:00:00.000Z",
        json!({ "active": true }),
    ));
    lines.push(deleted_line("Patient", "p07", 2, "2024-01-01T01:01:00.000Z"));
    for i in 0..3 {
        lines.push(line(
            "Observation",
            &format!("o{i}"),
            1,
            &format!("2024-01-02T00:0{i}:00.000Z"),
            json!({ "status": "final" }),
        ));
    }
    load(&s, &lines);
    s
}

async fn bundle(s: &Server, path: &str) -> Bundle {
    let resp = s.get(path).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

fn ids(b: &Bundle) -> Vec<String> {
    b.entry
        .iter()
        .filter(|e| e.search.as_ref().is_some_and(|s| s["mode"] == "match") || e.request.is_some())
        .map(|e| e.resource.as_ref().unwrap()["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn item_54_counts_current_non_deleted_resources() {
    let s = populated(Flavor::Ahds).await;
    for path in ["?_summary=count", "?_summary=Count", "?_count=0"] {
        let b = bundle(&s, path).await;
        assert_eq!(
            (b.bundle_type.as_str(), b.total, b.entry.len()),
            ("searchset", Some(14), 0),
            "{path}"
        );
    }
    assert_eq!(bundle(&s, "Patient?_summary=count").await.total, Some(11));
    assert_eq!(bundle(&s, "?_type=Observation&_summary=count").await.total, Some(3));
    let b = bundle(
        &s,
        "?_summary=count&_lastUpdated=ge2024-01-01T00:05:00.000Z&_lastUpdated=lt2024-01-02T00:00:00.000Z",
    )
    .await;
    assert_eq!(b.total, Some(6), "p05 (now at 01:00), p06, p08..p11; p07 is deleted");
}

#[tokio::test]
async fn item_55_history_count_includes_every_version_and_delete_marker() {
    let s = populated(Flavor::Ahds).await;
    assert_eq!(bundle(&s, "_history?_summary=count").await.total, Some(17));
    assert_eq!(bundle(&s, "Patient/_history?_summary=count").await.total, Some(14));
    assert_eq!(bundle(&s, "Patient/p05/_history?_summary=count").await.total, Some(2));
}

#[tokio::test]
async fn item_56_last_updated_bounds_sort_and_count_clamp() {
    let s = populated(Flavor::Ahds).await;
    let b = bundle(&s, "Patient?_sort=_lastUpdated&_count=3").await;
    assert_eq!(ids(&b), ["p00", "p01", "p02"]);
    let b = bundle(&s, "?_sort=-_lastUpdated&_count=1").await;
    assert_eq!(ids(&b), ["o2"]);
    let b = bundle(&s, "?_sort=_lastUpdated&_count=1").await;
    assert_eq!(
        ids(&b),
        ["p00"],
        "the oldest resource, as the tool asks for its first since"
    );
    let b = bundle(
        &s,
        "Patient?_lastUpdated=gt2024-01-01T00:09:00.000Z&_lastUpdated=le2024-01-01T00:11:00.000Z",
    )
    .await;
    assert_eq!(ids(&b), ["p10", "p11"]);
    assert_eq!(bundle(&s, "Patient").await.entry.len(), 10, "_count defaults to 10");
    let b = bundle(&s, "Patient?_count=5000").await;
    let outcome = b
        .entry
        .iter()
        .find(|e| e.search.as_ref().is_some_and(|m| m["mode"] == "outcome"))
        .expect("clamp warning");
    assert!(
        outcome.resource.as_ref().unwrap()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Current limit is 1000")
    );
    assert_eq!(ids(&b).len(), 11);
    let (status, _, _) = diagnostics(s.get("Patient?_lastUpdated=ge-not-a-date").send().await.unwrap()).await;
    assert_eq!(status, 400);
    let b = bundle(&s, "Patient?_id=p01,p03&_elements=id").await;
    assert_eq!(ids(&b), ["p01", "p03"]);
    assert!(b.entry[0].resource.as_ref().unwrap().get("gender").is_none());
}

#[tokio::test]
async fn item_57_history_parameters_order_and_entries() {
    let s = populated(Flavor::Ahds).await;
    let b = bundle(&s, "Patient/p05/_history").await;
    assert_eq!(b.bundle_type, "history");
    let versions: Vec<&str> = b
        .entry
        .iter()
        .map(|e| e.resource.as_ref().unwrap()["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2", "1"], "newest first by default");
    let e = &b.entry[0];
    assert_eq!(e.request.as_ref().unwrap()["method"], "PUT");
    assert_eq!(e.response.as_ref().unwrap()["etag"], "W/\"2\"");
    let asc = bundle(&s, "Patient/p05/_history?_sort=_lastUpdated&_lastUpdated=ge2030-01-01").await;
    assert_eq!(asc.entry.len(), 2, "_lastUpdated is ignored on history");
    let since = bundle(&s, "_history?_since=2024-01-02T00:01:00.000Z").await;
    assert_eq!(ids(&since), ["o2", "o1"]);
    let (status, _, text) = diagnostics(s.get("_history?_sort=id").send().await.unwrap()).await;
    assert_eq!(
        (status, text.as_str()),
        (403, "Sorting by the 'id' parameter is not supported.")
    );
    let (status, _, _) = diagnostics(s.get("_history?_before=2999-01-01").send().await.unwrap()).await;
    assert_eq!(status, 403);
    let (status, _, text) = diagnostics(s.get("Patient/nobody/_history").send().await.unwrap()).await;
    assert_eq!(
        (status, text.as_str()),
        (404, "Resource type 'Patient' with id 'nobody' couldn't be found.")
    );
}

/// Follows `next` links to the end, collecting ids; counts empty pages.
async fn walk(s: &Server, first: &str) -> (Vec<String>, usize) {
    let mut url = s.url(first);
    let (mut all, mut empty) = (Vec::new(), 0);
    for _ in 0..100 {
        let b: Bundle = s.http.get(&url).send().await.unwrap().json().await.unwrap();
        let page = ids(&b);
        if page.is_empty() {
            empty += 1;
        }
        all.extend(page);
        match b.next() {
            Some(next) => {
                assert!(next.contains("ct="), "{next}");
                url = next.to_string();
            }
            None => return (all, empty),
        }
    }
    panic!("paging did not end");
}

#[tokio::test]
async fn item_58_paging_with_next_links_and_aapi_empty_pages() {
    let s = populated(Flavor::Aapi).await;
    let (all, empty) = walk(&s, "Patient?_count=4").await;
    assert_eq!(all.len(), 11);
    assert_eq!(empty, 0);
    let (history, _) = walk(&s, "_history?_count=5").await;
    assert_eq!(history.len(), 17);
    s.emu.set_faults(fhir_emulator::Faults {
        empty_pages: true,
        ..Default::default()
    });
    let (all_again, empty) = walk(&s, "Patient?_count=4").await;
    assert_eq!(all_again, all, "empty pages lose nothing");
    assert!(empty >= 3, "empty pages with next links were served");
    let (newest_first, _) = walk(&s, "Patient?_count=4&_sort=-_lastUpdated").await;
    assert_eq!(newest_first.len(), 11, "empty pages also work newest first");
    assert_eq!(newest_first[0], "p05");
}

#[tokio::test]
async fn item_58_a_forged_continuation_token_selects_nothing_instead_of_crashing() {
    use base64::Engine as _;
    let s = populated(Flavor::Ahds).await;
    for (path, position) in [
        ("_history?_since=2024-01-01T00:00:00Z", "0:0:0"),
        ("Patient?_lastUpdated=lt2020-01-01", "9999999999999:1:0"),
    ] {
        let ct = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position);
        let b = bundle(&s, &format!("{path}&ct={ct}")).await;
        assert!(ids(&b).is_empty(), "{path}");
    }
    let (status, _, _) = diagnostics(s.get("Patient?ct=not-base64!").send().await.unwrap()).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn item_59_search_parameter_listing_returns_only_custom_ones() {
    let s = server(Flavor::Aapi).await;
    let b = bundle(&s, "SearchParameter?_count=1000").await;
    assert!(b.entry.is_empty(), "no built-in parameters are listed");
    let sp = json!({ "resourceType": "SearchParameter", "id": "custom-1", "url": "http://x/sp", "name": "c", "status": "active",
                     "description": "d", "code": "c", "base": ["Patient"], "type": "token", "expression": "Patient.id" });
    assert_eq!(
        s.http
            .put(s.url("SearchParameter/custom-1"))
            .json(&sp)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(ids(&bundle(&s, "SearchParameter?_count=1000").await), ["custom-1"]);
}

#[tokio::test]
async fn item_60_reindex_lifecycle() {
    let s = populated(Flavor::Ahds).await;
    let send = |prefer: Option<&'static str>| {
        let mut req = s
            .http
            .post(s.url("$reindex"))
            .header("content-type", "application/fhir+json")
            .json(&json!({ "resourceType": "Parameters", "parameter": [] }));
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        req.send()
    };
    let (status, _, _) = diagnostics(send(Some("respond-async")).await.unwrap()).await;
    assert_eq!(status, 400);
    let first = send(None).await.unwrap();
    assert_eq!(first.status(), 201);
    let location = first.headers()["content-location"].to_str().unwrap().to_string();
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["resourceType"], "Parameters");
    let second = send(Some("respond-sync")).await.unwrap();
    assert_eq!(
        second.headers()["content-location"].to_str().unwrap(),
        location,
        "the active job is returned"
    );
    assert_eq!(s.http.get(&location).send().await.unwrap().status(), 200);
    let cancelled = s.http.delete(&location).send().await.unwrap();
    assert_eq!(cancelled.status(), 202);
    assert_eq!(cancelled.json::<Value>().await.unwrap()["resourceType"], "Parameters");
}

#[tokio::test]
async fn crud_batch_and_hard_delete() {
    let s = server(Flavor::Ahds).await;
    let created = s
        .http
        .post(s.url("Patient"))
        .json(&json!({ "resourceType": "Patient" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(created.headers()["location"].to_str().unwrap().contains("/_history/1"));
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "PUT", "url": "Patient/b1" }, "resource": { "resourceType": "Patient", "id": "b1" } },
        { "request": { "method": "PUT", "url": "Patient/b1" }, "resource": { "resourceType": "Patient", "id": "b1", "active": true } },
        { "request": { "method": "GET", "url": "Patient/missing" } }
    ]});
    let resp: Value = s
        .http
        .post(s.url(""))
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["type"], "batch-response");
    let statuses: Vec<&str> = resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201 Created", "200 OK", "404"]);
    assert_eq!(s.http.delete(s.url("Patient/b1")).send().await.unwrap().status(), 204);
    assert_eq!(s.get("Patient/b1").send().await.unwrap().status(), 410);
    assert_eq!(bundle(&s, "Patient/b1/_history?_summary=count").await.total, Some(3));
    assert_eq!(
        s.http
            .delete(s.url("Patient/b1?hardDelete=true"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(s.get("Patient/b1").send().await.unwrap().status(), 404);
    assert_eq!(
        s.get("Patient/b1/_history").send().await.unwrap().status(),
        404,
        "hard delete removes history too"
    );
}

#[tokio::test]
async fn concurrent_writes_to_one_resource_get_distinct_versions_in_time_order() {
    let s = server(Flavor::Ahds).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (http, url) = (s.http.clone(), s.url("Patient/busy"));
        tasks.push(tokio::spawn(async move {
            let body = json!({ "resourceType": "Patient", "id": "busy", "birthDate": format!("19{i:02}-01-01") });
            http.put(url).json(&body).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), 200 | 201));
    }
    let resource = s.emu.store().resource("Patient", "busy").unwrap();
    let versions: Vec<i64> = resource.versions().iter().map(|v| v.version_id).collect();
    assert_eq!(versions, (1..=40).collect::<Vec<_>>());
    assert!(
        resource
            .versions()
            .windows(2)
            .all(|w| w[0].last_updated <= w[1].last_updated),
        "lastUpdated never goes backwards (two versions may share a millisecond, reference §11.2)"
    );
}
