//! Export kick-off: items 1–12 (item 13 is in auth.rs).

use fhir_emulator::Flavor;

use crate::support::{FHIR_JSON, diagnostics, server, server_with_storage};

async fn expect_400(server: &crate::support::Server, path: &str, expected: &str) {
    let resp = server.export(path).await;
    let (status, code, text) = diagnostics(resp).await;
    assert_eq!((status, code.as_str()), (400, "invalid"), "{path}: {text}");
    assert_eq!(text, expected, "{path}");
}

#[tokio::test]
async fn item_01_export_routes_answer_202_with_an_integer_job_location() {
    let s = server_with_storage(Flavor::Ahds).await;
    let group = serde_json::json!({ "resourceType": "Group", "id": "g1", "type": "person", "actual": true });
    s.http.put(s.url("Group/g1")).json(&group).send().await.unwrap();
    for path in ["$export", "Patient/$export", "Group/g1/$export"] {
        let resp = s.export(path).await;
        assert_eq!(resp.status(), 202, "{path}");
        let location = resp.headers()["content-location"].to_str().unwrap().to_string();
        let id = location
            .strip_prefix(&format!("{}/_operations/export/", s.emu.base_url))
            .unwrap();
        assert!(id.parse::<u64>().is_ok(), "{location}");
        assert!(resp.headers().get("retry-after").is_none());
        assert!(resp.text().await.unwrap().is_empty(), "empty body");
    }
    expect_400(
        &s,
        "Observation/$export",
        "Requested operation does not support resource type: Observation.",
    )
    .await;
    expect_400(
        &s,
        "Patient/p1/$export",
        "Requested operation does not support resource type: Patient.",
    )
    .await;
    let resp = s
        .http
        .post(s.url("$export"))
        .header("accept", FHIR_JSON)
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    let (status, code, _) = diagnostics(resp).await;
    assert_eq!((status, code.as_str()), (405, "not-supported"));
}

#[tokio::test]
async fn item_02_accept_must_be_exactly_fhir_json() {
    let s = server(Flavor::Ahds).await;
    for accept in [
        Some("application/json"),
        Some("*/*"),
        Some("application/fhir+json; charset=utf-8"),
        None,
    ] {
        let mut req = s.get("$export").header("prefer", "respond-async");
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let (status, _, text) = diagnostics(req.send().await.unwrap()).await;
        assert_eq!(status, 400, "{accept:?}");
        // Without an Accept header of its own, the HTTP client sends */*.
        assert_eq!(
            text,
            format!(
                "Value supplied, {},  for the \"Accept\" header is not supported.",
                accept.unwrap_or("*/*")
            )
        );
    }
    let ok = s
        .get("$export")
        .header("accept", "APPLICATION/FHIR+JSON")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_ne!(ok.status(), 400, "case-insensitive match");
}

#[tokio::test]
async fn item_03_prefer_needs_respond_async_and_only_known_tokens() {
    let s = server_with_storage(Flavor::Ahds).await;
    let send = |prefer: Option<&'static str>| {
        let mut req = s.get("$export").header("accept", FHIR_JSON);
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        req.send()
    };
    let (status, _, text) = diagnostics(send(None).await.unwrap()).await;
    assert_eq!((status, text.as_str()), (400, "Missing required header; Prefer"));
    let (_, _, text) = diagnostics(send(Some("handling=strict")).await.unwrap()).await;
    assert_eq!(
        text,
        "Missing required header value; header=Prefer,value=respond-async."
    );
    for bad in ["respond-async, wait=10", "respond-status", "*"] {
        let (status, _, _) = diagnostics(send(Some(bad)).await.unwrap()).await;
        assert_eq!(status, 400, "{bad}");
    }
    for good in ["Respond-Async", "respond-async, handling=lenient"] {
        assert_eq!(send(Some(good)).await.unwrap().status(), 202, "{good}");
    }
}

#[tokio::test]
async fn item_04_parameters_outside_the_whitelist_are_refused_case_sensitively() {
    let s = server(Flavor::Ahds).await;
    for p in ["_elements", "patient", "_until", "_Type"] {
        expect_400(
            &s,
            &format!("$export?{p}=x"),
            &format!("The \"{p}\" parameter is not supported."),
        )
        .await;
    }
}

#[tokio::test]
async fn item_05_output_format_must_be_ndjson() {
    let s = server_with_storage(Flavor::Ahds).await;
    expect_400(
        &s,
        "$export?_outputFormat=application/json",
        "The output format 'application/json' is not supported.",
    )
    .await;
    for ok in ["application%2Ffhir%2Bndjson", "application/ndjson", "ndjson"] {
        assert_eq!(
            s.export(&format!("$export?_outputFormat={ok}")).await.status(),
            202,
            "{ok}"
        );
    }
}

#[tokio::test]
async fn item_06_unparseable_since_or_till_is_400_including_an_unencoded_plus() {
    let s = server_with_storage(Flavor::Ahds).await;
    for bad in [
        "_since=time",
        "_since=2021-06-13T00:00:00Z%20",
        "_till=2021-06-13T00:00:00+02:00",
    ] {
        let (status, _, text) = diagnostics(s.export(&format!("$export?{bad}")).await).await;
        assert_eq!(status, 400, "{bad}: {text}");
    }
    assert_eq!(
        s.export("$export?_since=2021-06-13T00:00:00%2B02:00").await.status(),
        202
    );
}

#[tokio::test]
async fn item_07_type_filter_rules() {
    let s = server_with_storage(Flavor::Ahds).await;
    expect_400(
        &s,
        "$export?_typeFilter=Patient%3F_id%3Dp1",
        "The _type parameter must be included when using the _typeFilter parameter.",
    )
    .await;
    expect_400(
        &s,
        "$export?_type=Patient&_typeFilter=Patient",
        "The _typeFilter segment 'Patient' could not be parsed.",
    )
    .await;
    expect_400(
        &s,
        "$export?_type=Patient&_typeFilter=Patient%3Fa%3Db%3Dc",
        "The _typeFilter segment 'Patient?a=b=c' could not be parsed.",
    )
    .await;
    expect_400(
        &s,
        "$export?_type=Patient&_typeFilter=Patient%3Fbogus%3D1",
        "1 invalid search parameter(s) found: [type: Patient, parameter: bogus]",
    )
    .await;
    let lenient = s
        .get("$export?_type=Patient&_typeFilter=Patient%3Fbogus%3D1")
        .header("accept", FHIR_JSON)
        .header("prefer", "respond-async, handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), 202);
}

#[tokio::test]
async fn item_08_include_associated_data_values_and_type_filter_clash() {
    let s = server_with_storage(Flavor::Ahds).await;
    expect_400(
        &s,
        "$export?includeAssociatedData=history,_deleted",
        "The export parameter \"includeAssociatedData\" contains an invalid value. Supported values are: history.",
    )
    .await;
    expect_400(
        &s,
        "$export?_type=Patient&_typeFilter=Patient%3F_id%3Dp1&includeAssociatedData=_history",
        "The request \"_typeFilter\" cannot be used with an export request with historical or soft deleted resources.",
    )
    .await;
    assert_eq!(
        s.export("$export?includeAssociatedData=_history,_deleted")
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn item_09_max_count_range() {
    let s = server_with_storage(Flavor::Ahds).await;
    expect_400(
        &s,
        "$export?_maxCount=10001",
        "Export operation parameter 'MaximumNumberOfResourcesPerQuery' was out of the range of valid values. Please specify a different value within a range '1' - '10000'.",
    )
    .await;
    let (status, _, _) = diagnostics(s.export("$export?_maxCount=-1").await).await;
    assert_eq!(status, 400);
    for ok in ["0", "1", "10000"] {
        assert_eq!(s.export(&format!("$export?_maxCount={ok}")).await.status(), 202, "{ok}");
    }
}

#[tokio::test]
async fn item_10_container_path_traversal_is_refused() {
    let s = server(Flavor::Ahds).await;
    for bad in ["..%2Fother", "a%2F..%2Fb", "..%252f"] {
        let (status, _, text) = diagnostics(s.export(&format!("$export?_container={bad}")).await).await;
        assert_eq!(status, 400, "{bad}");
        assert!(text.ends_with("Path traversal characters are not allowed."), "{text}");
    }
}

#[tokio::test]
async fn item_11_anonymization_parameter_combinations() {
    let s = server(Flavor::Ahds).await;
    expect_400(
        &s,
        "$export?_anonymizationConfig=c.json",
        "Missing '_container' for anonymized export",
    )
    .await;
    expect_400(
        &s,
        "$export?_container=c&_anonymizationConfigEtag=x",
        "Missing '_anonymizationConfig' for anonymized export",
    )
    .await;
    expect_400(
        &s,
        "$export?_container=c&_anonymizationConfig=c.json&_anonymizationConfigEtag=x&_anonymizationConfigCollectionReference=r",
        "The parameters '_anonymizationConfigEtag' and '_anonymizationConfigCollectionReference' cannot be given in the same request.",
    )
    .await;
}

#[tokio::test]
async fn item_12_identical_kickoffs_create_distinct_jobs_and_never_409() {
    let s = server_with_storage(Flavor::Aapi).await;
    let a = s.export_ok("$export?_type=Patient").await;
    let b = s.export_ok("$export?_type=Patient").await;
    assert_ne!(a, b);
}
