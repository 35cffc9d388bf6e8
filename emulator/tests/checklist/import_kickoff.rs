//! Import kick-off: items 27–33.

use fhir_emulator::Flavor;
use serde_json::{Value, json};

use crate::support::{Server, diagnostics, server_with_storage};

pub fn parameters(inputs: &[(&str, Option<&str>, Option<&str>)], extra: &[Value]) -> Value {
    let mut parameter = vec![
        json!({ "name": "inputFormat", "valueString": "application/fhir+ndjson" }),
        json!({ "name": "mode", "valueString": "IncrementalLoad" }),
    ];
    for (url, resource_type, etag) in inputs {
        let mut part = vec![json!({ "name": "url", "valueUri": url })];
        if let Some(t) = resource_type {
            part.push(json!({ "name": "type", "valueString": t }));
        }
        if let Some(e) = etag {
            part.push(json!({ "name": "etag", "valueString": e }));
        }
        parameter.push(json!({ "name": "input", "part": part }));
    }
    parameter.extend(extra.iter().cloned());
    json!({ "resourceType": "Parameters", "parameter": parameter })
}

async fn expect_400(s: &Server, body: &Value, expected: &str) {
    let (status, code, text) = diagnostics(s.import(body).await).await;
    assert_eq!((status, code.as_str()), (400, "invalid"), "{text}");
    assert_eq!(text, expected);
}

fn blob(s: &Server, name: &str) -> String {
    format!("{}/import/{name}", s.azurite.as_ref().unwrap().blob_endpoint())
}

#[tokio::test]
async fn item_27_prefer_exactly_respond_async_and_fhir_json_content_type() {
    let s = server_with_storage(Flavor::Ahds).await;
    let body = parameters(&[(&blob(&s, "a.ndjson"), Some("Patient"), None)], &[]);
    let send = |prefer: Option<&'static str>, content_type: &'static str| {
        let mut req = s
            .http
            .post(s.url("$import"))
            .header("content-type", content_type)
            .json(&body);
        req = req.header("content-type", content_type);
        if let Some(p) = prefer {
            req = req.header("prefer", p);
        }
        req.send()
    };
    let (status, _, text) = diagnostics(send(None, "application/fhir+json").await.unwrap()).await;
    assert_eq!(
        (status, text.as_str()),
        (400, "Value supplied, ,  for the \"Prefer\" header is not supported.")
    );
    let (status, _, _) = diagnostics(
        send(Some("respond-async, handling=lenient"), "application/fhir+json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = diagnostics(send(Some("respond-async"), "application/json").await.unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(
        send(Some("respond-async"), "application/fhir+json; charset=utf-8")
            .await
            .unwrap()
            .status(),
        202
    );
}

#[tokio::test]
async fn item_27_aapi_has_no_import() {
    let s = server_with_storage(Flavor::Aapi).await;
    let body = parameters(&[(&blob(&s, "a.ndjson"), None, None)], &[]);
    expect_400(&s, &body, "The requested \"import\" operation is not enabled").await;
}

#[tokio::test]
async fn item_28_29_parameters_body_value_types_format_and_mode() {
    let s = server_with_storage(Flavor::Ahds).await;
    expect_400(
        &s,
        &json!({ "resourceType": "Bundle" }),
        "Import request must be specified as a Paramters.  The body provided in this request is not valid.",
    )
    .await;
    let url = blob(&s, "a.ndjson");
    // Any value[x] type is read as text.
    let mut body = parameters(&[(&url, Some("Patient"), None)], &[]);
    body["parameter"][0] = json!({ "name": "inputFormat", "valueCode": "application/fhir+ndjson" });
    assert_eq!(s.import(&body).await.status(), 202);
    body["parameter"][0] = json!({ "name": "inputFormat", "valueString": "application/json" });
    expect_400(&s, &body, "Value of the following parameter inputFormat is invalid.").await;
    let mut body = parameters(&[(&url, Some("Patient"), None)], &[]);
    body["parameter"][1] = json!({ "name": "mode", "valueString": "IncrementalImport" });
    expect_400(&s, &body, "Import mode can be either \"InitialLoad\"or \"IncrementalLoad\". Please add appropriate mode value to parameters.").await;
    body["parameter"][1] = json!({ "name": "mode", "valueString": "InitialLoad" });
    expect_400(
        &s,
        &body,
        "Initial import mode is not enabled. Please update service configuration to enable initial import mode.",
    )
    .await;
    // Names are case-sensitive: "Mode" is not "mode", so the default (IncrementalLoad) applies.
    body["parameter"][1] = json!({ "name": "Mode", "valueString": "bogus" });
    assert_eq!(s.import(&body).await.status(), 202);
}

#[tokio::test]
async fn item_30_input_validation_messages() {
    let s = server_with_storage(Flavor::Ahds).await;
    let url = blob(&s, "a.ndjson");
    expect_400(
        &s,
        &parameters(&[], &[]),
        "Value of the following parameter input is invalid.",
    )
    .await;
    expect_400(
        &s,
        &parameters(&[(&url, None, None), (&url, None, None)], &[]),
        &format!("Import request cannot have duplicate files. Found duplicates: {url}."),
    )
    .await;
    expect_400(
        &s,
        &parameters(&[(&url, Some("Nope"), None)], &[]),
        "Requested operation does not support resource type: Nope.",
    )
    .await;
    expect_400(
        &s,
        &parameters(&[(&url, Some("SearchParameter"), None)], &[]),
        "Requested operation does not support resource type: SearchParameter.",
    )
    .await;
    expect_400(
        &s,
        &parameters(&[("import/a.ndjson", None, None)], &[]),
        "Value of the following parameter input.url is invalid.",
    )
    .await;
    expect_400(
        &s,
        &parameters(&[(&format!("{url}?sv=1&sig=x"), None, None)], &[]),
        "Value of the following parameter input.url is invalid.",
    )
    .await;
    expect_400(
        &s,
        &parameters(&[("https://other.blob.core.windows.net/c/a.ndjson", None, None)], &[]),
        "input.url must match the configured integration storage account endpoint.",
    )
    .await;
    // The port is ignored when matching the account.
    let other_port = url.replacen(&format!(":{}", url::Url::parse(&url).unwrap().port().unwrap()), ":1", 1);
    assert_eq!(
        s.import(&parameters(&[(&other_port, None, None)], &[])).await.status(),
        202
    );
}

#[tokio::test]
async fn item_31_32_33_registration_is_idempotent_and_concurrent_imports_are_accepted() {
    let s = server_with_storage(Flavor::Ahds).await;
    let url = blob(&s, "a.ndjson");
    let location = |r: reqwest::Response| {
        assert_eq!(r.status(), 202);
        r.headers()["content-location"].to_str().unwrap().to_string()
    };
    let body = parameters(&[(&url, Some("Patient"), None)], &[]);
    let first = location(s.import(&body).await);
    assert!(first.rsplit('/').next().unwrap().parse::<u64>().is_ok());
    assert_eq!(
        location(s.import(&body).await),
        first,
        "the same definition maps to the same job"
    );
    let with_etag = location(
        s.import(&parameters(&[(&url, Some("Patient"), Some("\"0x1\""))], &[]))
            .await,
    );
    assert_ne!(with_etag, first, "an etag makes a new job");
    let others: Vec<String> = futures_join(&s, 6).await;
    let distinct: std::collections::HashSet<_> = others.iter().collect();
    assert_eq!(distinct.len(), 6, "six different imports all accepted");
}

/// Kicks off `n` different imports at the same time.
async fn futures_join(s: &Server, n: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let body = parameters(&[(&blob(s, &format!("c{i}.ndjson")), None, None)], &[]);
        let (http, url) = (s.http.clone(), s.url("$import"));
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .header("prefer", "respond-async")
                .header("content-type", "application/fhir+json")
                .json(&body)
                .send()
                .await
                .unwrap()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status(), 202);
        out.push(r.headers()["content-location"].to_str().unwrap().to_string());
    }
    out
}
