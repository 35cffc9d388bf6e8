//! Search over current resources as the migration tool uses it (reference §7, items 54, 56, 58, 59):
//! `_summary=count` / `_count=0`, `_lastUpdated` bounds, `_sort=±_lastUpdated`, `_count` with the 1000 clamp,
//! `_id`, `_elements=id`, system-level `_type`, and `next` links with an opaque `ct`.

use std::collections::HashSet;

use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{BundleBuilder, check_type, full_url, query_pairs};
use crate::App;
use crate::middleware::RequestId;
use crate::outcome::{FhirError, FhirResult, IssueCode, outcome_body};
use crate::store::{Position, SearchFilter};
use crate::time::parse_partial;

pub(crate) const MAX_COUNT: usize = 1000;
const DEFAULT_COUNT: usize = 10;

pub async fn system(
    State(app): State<App>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    uri: OriginalUri,
    RawQuery(raw): RawQuery,
) -> FhirResult<Response> {
    run(&app, &rid.0, &headers, &uri, raw.as_deref(), None)
}

pub async fn type_level(
    State(app): State<App>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(resource_type): Path<String>,
    RawQuery(raw): RawQuery,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    run(&app, &rid.0, &headers, &uri, raw.as_deref(), Some(&resource_type))
}

/// A parsed search request.
pub(crate) struct SearchRequest {
    /// Informational outcome entries (the `_count` clamp).
    pub notes: Vec<String>,
    pub filter: SearchFilter,
    pub count_only: bool,
    pub count: usize,
    pub ids_only: bool,
    pub after: Option<Position>,
    /// Set on a `ct` that already served an injected empty page.
    pub empty_served: bool,
    pub warnings: Vec<String>,
}

fn strict(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("handling=strict"))
}

pub(crate) fn parse(
    pairs: &[(String, String)],
    resource_type: Option<&str>,
    strict: bool,
) -> FhirResult<SearchRequest> {
    let mut req = SearchRequest {
        filter: SearchFilter {
            types: resource_type.map(|t| HashSet::from([t.to_string()])),
            ..SearchFilter::default()
        },
        count_only: false,
        count: DEFAULT_COUNT,
        ids_only: false,
        after: None,
        empty_served: false,
        warnings: Vec::new(),
        notes: Vec::new(),
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_summary" if value.eq_ignore_ascii_case("count") => req.count_only = true,
            "_summary" => {}
            "_count" => {
                let n: usize = value.parse().map_err(|_| {
                    FhirError::bad_request(format!("The '_count' parameter value '{value}' is invalid."))
                })?;
                if n == 0 {
                    req.count_only = true;
                } else if n > MAX_COUNT {
                    req.notes.push(format!(
                        "The '_count' parameter exceeds limit configured for server. Current limit is {MAX_COUNT} while `_count` parameter set to {n}."
                    ));
                    req.count = MAX_COUNT;
                } else {
                    req.count = n;
                }
            }
            "_lastUpdated" => apply_last_updated(&mut req.filter, value)?,
            "_sort" => match value.as_str() {
                "_lastUpdated" => req.filter.descending = false,
                "-_lastUpdated" => req.filter.descending = true,
                other => {
                    return Err(FhirError::bad_request(format!(
                        "Sorting by the '{other}' parameter is not supported."
                    )));
                }
            },
            "_id" => req.filter.ids = Some(value.split(',').map(str::to_string).collect()),
            "_elements" => req.ids_only = value.split(',').all(|e| e == "id"),
            "_type" if resource_type.is_none() => {
                let types: HashSet<String> = value.split(',').filter(|t| !t.is_empty()).map(str::to_string).collect();
                for t in &types {
                    if !crate::resource_types::is_resource_type(t) {
                        req.warnings.push(format!("The resource type '{t}' is not supported."));
                    }
                }
                req.filter.types = Some(types);
            }
            "ct" => {
                let (position, flag) =
                    decode_ct(value).ok_or_else(|| FhirError::bad_request("The continuation token is invalid."))?;
                req.after = Some(position);
                req.empty_served = flag;
            }
            "_format" | "_total" => {}
            other => {
                let message = format!(
                    "The search parameter '{other}' is not supported for resource type '{}'.",
                    resource_type.unwrap_or("Resource")
                );
                if strict {
                    return Err(FhirError::bad_request(message));
                }
                req.warnings.push(message);
            }
        }
    }
    Ok(req)
}

/// `_lastUpdated=[prefix]date`, AND-ed with any earlier bound.
pub(crate) fn apply_last_updated(filter: &mut SearchFilter, value: &str) -> FhirResult<()> {
    let (prefix, date) = match value.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq" | "ne" | "sa" | "eb" | "ap")) => (p, &value[2..]),
        _ => ("eq", value),
    };
    let range = parse_partial(date)
        .ok_or_else(|| FhirError::bad_request(format!("The date time value '{date}' is invalid.")))?;
    let (lo, hi) = match prefix {
        "ge" => (Some(range.start), None),
        "gt" => (Some(range.end), None),
        "le" => (None, Some(range.end)),
        "lt" => (None, Some(range.start)),
        "eq" => (Some(range.start), Some(range.end)),
        other => {
            return Err(FhirError::bad_request(format!(
                "The prefix '{other}' is not supported for parameter '_lastUpdated'."
            )));
        }
    };
    if let Some(lo) = lo {
        filter.from = Some(filter.from.map_or(lo, |f| f.max(lo)));
    }
    if let Some(hi) = hi {
        filter.to = Some(filter.to.map_or(hi, |t| t.min(hi)));
    }
    Ok(())
}

pub(crate) fn encode_ct(position: Position, empty_served: bool) -> String {
    let text = format!("{}:{}:{}", position.0, position.1, u8::from(empty_served));
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_ct(ct: &str) -> Option<(Position, bool)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(ct).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut parts = text.split(':');
    let ms = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let flag = parts.next()? == "1";
    Some(((ms, seq), flag))
}

/// The same request URL with `ct` replaced.
pub(crate) fn link_with_ct(app: &App, uri: &OriginalUri, ct: Option<String>) -> String {
    let pairs: Vec<(String, String)> = query_pairs(uri.query())
        .into_iter()
        .filter(|(k, _)| k != "ct")
        .collect();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        query.append_pair(k, v);
    }
    if let Some(ct) = ct {
        query.append_pair("ct", &ct);
    }
    let query = query.finish();
    let path = uri.path();
    if query.is_empty() {
        format!("{}{path}", app.base_url)
    } else {
        format!("{}{path}?{query}", app.base_url)
    }
}

/// `self`, and `next` (continuing after the page's last entry) when more matches exist.
pub(crate) fn page_links(
    app: &App,
    uri: &OriginalUri,
    self_link: String,
    page: &[crate::store::VersionRef],
    more: bool,
) -> Vec<(&'static str, String)> {
    let mut links = vec![("self", self_link)];
    if more && let Some(last) = page.last() {
        let ct = encode_ct((last.version.last_updated, last.version.seq), false);
        links.push(("next", link_with_ct(app, uri, Some(ct))));
    }
    links
}

/// Whether this page should be the injected empty AAPI page (E-3).
pub(crate) fn inject_empty_page(app: &App, empty_served: bool) -> bool {
    app.config.flavor == crate::Flavor::Aapi && app.faults().empty_pages && !empty_served
}

fn run(
    app: &App,
    request_id: &str,
    headers: &HeaderMap,
    uri: &OriginalUri,
    raw: Option<&str>,
    resource_type: Option<&str>,
) -> FhirResult<Response> {
    let pairs = query_pairs(raw);
    let req = parse(&pairs, resource_type, strict(headers))?;
    let self_link = link_with_ct(app, uri, None);
    if req.count_only {
        let total = app.store.count(&req.filter);
        let mut bundle = BundleBuilder::new(request_id, "searchset", Some(total), &[("self", self_link)]);
        add_warnings(&mut bundle, request_id, &req);
        return Ok(bundle.finish());
    }
    if inject_empty_page(app, req.empty_served) {
        let start = if req.filter.descending {
            (i64::MAX, u64::MAX)
        } else {
            (i64::MIN, 0)
        };
        let position = req.after.unwrap_or(start);
        let next = link_with_ct(app, uri, Some(encode_ct(position, true)));
        return Ok(BundleBuilder::new(request_id, "searchset", None, &[("self", self_link), ("next", next)]).finish());
    }
    let (page, more) = app.store.search_page(&req.filter, req.after, req.count);
    let links = page_links(app, uri, self_link, &page, more);
    let mut bundle = BundleBuilder::new(request_id, "searchset", None, &links);
    add_warnings(&mut bundle, request_id, &req);
    for v in &page {
        let fields = json!({ "fullUrl": full_url(app, v) });
        let search = json!({ "search": { "mode": "match" } });
        if req.ids_only {
            bundle.entry(&fields, &subsetted(&v.version.body).to_string(), &search);
        } else {
            bundle.entry(&fields, &v.version.body, &search);
        }
    }
    Ok(bundle.finish())
}

pub(crate) fn add_warnings(bundle: &mut BundleBuilder, request_id: &str, req: &SearchRequest) {
    let issues = req
        .notes
        .iter()
        .map(|n| ("information", IssueCode::Informational, n))
        .chain(req.warnings.iter().map(|w| ("warning", IssueCode::NotSupported, w)));
    for (severity, code, text) in issues {
        let outcome = outcome_body(request_id, severity, code, text);
        bundle.entry(
            &json!({}),
            &outcome.to_string(),
            &json!({ "search": { "mode": "outcome" } }),
        );
    }
}

/// `_elements=id`: only the mandatory elements, tagged SUBSETTED.
fn subsetted(body: &str) -> Value {
    let full: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut meta = full.get("meta").cloned().unwrap_or_else(|| json!({}));
    meta["tag"] =
        json!([{ "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED" }]);
    json!({ "resourceType": full["resourceType"], "id": full["id"], "meta": meta })
}
