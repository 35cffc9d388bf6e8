//! History endpoints (reference §7.3, items 55, 57, 58): system, type and instance level, newest first by
//! default, every version including delete markers, with `request`/`response` on each entry.

use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::search::{encode_ct, inject_empty_page, link_with_ct, page_links};
use super::{BundleBuilder, check_type, full_url, query_pairs};
use crate::App;
use crate::middleware::RequestId;
use crate::outcome::{FhirError, FhirResult, IssueCode};
use crate::store::{HistoryScope, Position, WriteMethod};
use crate::time::{format_instant, now_ms, parse_partial};

pub async fn system(
    State(app): State<App>,
    axum::Extension(rid): axum::Extension<RequestId>,
    uri: OriginalUri,
    RawQuery(raw): RawQuery,
) -> FhirResult<Response> {
    run(&app, &rid.0, &uri, raw.as_deref(), HistoryScope::System)
}

pub async fn type_level(
    State(app): State<App>,
    axum::Extension(rid): axum::Extension<RequestId>,
    uri: OriginalUri,
    Path(resource_type): Path<String>,
    RawQuery(raw): RawQuery,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    run(&app, &rid.0, &uri, raw.as_deref(), HistoryScope::Type(resource_type))
}

pub async fn instance(
    State(app): State<App>,
    axum::Extension(rid): axum::Extension<RequestId>,
    uri: OriginalUri,
    Path((resource_type, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> FhirResult<Response> {
    check_type(&resource_type)?;
    if !app.store.exists(&resource_type, &id) {
        return Err(FhirError::not_found(format!(
            "Resource type '{resource_type}' with id '{id}' couldn't be found."
        )));
    }
    run(
        &app,
        &rid.0,
        &uri,
        raw.as_deref(),
        HistoryScope::Instance(resource_type, id),
    )
}

/// History's own rule-breaking is a 403 (InvalidSearchOperationException on the real server).
fn forbidden(message: String) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, IssueCode::Forbidden, message)
}

struct HistoryRequest {
    from: Option<i64>,
    to: Option<i64>,
    ascending: bool,
    count_only: bool,
    count: usize,
    after: Option<Position>,
    empty_served: bool,
}

fn parse(pairs: &[(String, String)]) -> FhirResult<HistoryRequest> {
    let mut req = HistoryRequest {
        from: None,
        to: None,
        ascending: false,
        count_only: false,
        count: 10,
        after: None,
        empty_served: false,
    };
    let date = |v: &str| {
        parse_partial(v).ok_or_else(|| FhirError::bad_request(format!("The date time value '{v}' is invalid.")))
    };
    let mut at = None;
    let (mut count_zero, mut positive_count, mut summary_count) = (false, false, false);
    for (name, value) in pairs {
        match name.as_str() {
            "_since" => req.from = Some(date(value)?.start),
            "_before" => {
                let before = date(value)?.start;
                if before > now_ms() {
                    return Err(forbidden("Parameter _before cannot a be a value in the future.".into()));
                }
                req.to = Some(before);
            }
            "_at" => at = Some(date(value)?),
            "_count" => match value.parse::<usize>() {
                Ok(0) => count_zero = true,
                Ok(n) => {
                    positive_count = true;
                    req.count = n.min(super::search::MAX_COUNT);
                }
                Err(_) => {
                    return Err(FhirError::bad_request(format!(
                        "The '_count' parameter value '{value}' is invalid."
                    )));
                }
            },
            "_summary" => summary_count |= value.eq_ignore_ascii_case("count"),
            "_sort" => match value.as_str() {
                "_lastUpdated" => req.ascending = true,
                "-_lastUpdated" => req.ascending = false,
                other => {
                    return Err(forbidden(format!(
                        "Sorting by the '{other}' parameter is not supported."
                    )));
                }
            },
            "ct" => {
                let (pos, flag) = decode(value)?;
                req.after = Some(pos);
                req.empty_served = flag;
            }
            // Everything else, _lastUpdated included, is silently ignored on history.
            _ => {}
        }
    }
    // `_count > 0` wins over `_summary=count`; `_count=0` or `_summary=count` alone counts
    // (`fs:src/Microsoft.Health.Fhir.Core/Features/Search/SearchService.cs`, history; reference §11.12).
    req.count_only = if positive_count {
        false
    } else {
        count_zero || summary_count
    };
    if let Some(at) = at {
        if req.from.is_some() || req.to.is_some() {
            return Err(forbidden(
                "Only one of the parameters _at, _since and _before can be used at a time.".into(),
            ));
        }
        // Versions that were current at the instant: approximated by the versions written up to it.
        req.to = Some(at.end);
    }
    Ok(req)
}

fn decode(ct: &str) -> FhirResult<(Position, bool)> {
    use base64::Engine as _;
    let bad = || FhirError::bad_request("The continuation token is invalid.");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(ct)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split(':').collect();
    match parts.as_slice() {
        [ms, seq, flag] => Ok((
            (ms.parse().map_err(|_| bad())?, seq.parse().map_err(|_| bad())?),
            *flag == "1",
        )),
        _ => Err(bad()),
    }
}

fn run(app: &App, request_id: &str, uri: &OriginalUri, raw: Option<&str>, scope: HistoryScope) -> FhirResult<Response> {
    let req = parse(&query_pairs(raw))?;
    let self_link = link_with_ct(app, uri, None);
    if req.count_only {
        let total = app.store.history_count(&scope, req.from, req.to);
        return Ok(BundleBuilder::new(request_id, "history", Some(total), &[("self", self_link)]).finish());
    }
    if inject_empty_page(app, req.empty_served) {
        let position = req.after.unwrap_or(if req.ascending {
            (i64::MIN, 0)
        } else {
            (i64::MAX, u64::MAX)
        });
        let next = link_with_ct(app, uri, Some(encode_ct(position, true)));
        return Ok(BundleBuilder::new(request_id, "history", None, &[("self", self_link), ("next", next)]).finish());
    }
    let (page, more) = app
        .store
        .history_page(&scope, req.from, req.to, req.ascending, req.after, req.count);
    let links = page_links(app, uri, self_link, &page, more);
    let mut bundle = BundleBuilder::new(request_id, "history", None, &links);
    for v in &page {
        let (method, url, status) = match (v.version.deleted, v.version.method) {
            (true, _) => ("DELETE", format!("{}/{}", v.resource_type(), v.id()), "204 NoContent"),
            (false, WriteMethod::Post) => ("POST", format!("{}/", v.resource_type()), "201 Created"),
            (false, _) => ("PUT", format!("{}/{}", v.resource_type(), v.id()), "200 OK"),
        };
        let after = json!({
            "request": { "method": method, "url": url },
            "response": {
                "status": status,
                "lastModified": format_instant(v.version.last_updated, v.version.sub_ms),
                "etag": format!("W/\"{}\"", v.version.version_id)
            }
        });
        bundle.entry(&json!({ "fullUrl": full_url(app, v) }), &v.version.body, &after);
    }
    Ok(bundle.finish())
}
