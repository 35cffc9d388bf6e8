//! `ImportFailures_Http` (function key required): the failure ledger. `GET` lists it (`?all=true` for resolved
//! and benign entries too); `POST` with `action=retry` (and optionally `ids=Patient|p1|3,…`) queues entries for a
//! retry after the cause was fixed, `action=accept` with `ids` and a `reason` accepts their loss, `action=reopen` with
//! `ids` brings accepted ones back.

use chrono::Utc;
use serde_json::json;

use super::payload::{HttpResponseData, InvocationRequest, InvocationResponse};
use super::requests::{bad_request, json_body, option};
use super::{FunctionError, FunctionSpec, http_output};
use crate::app::App;
use crate::engine::failures::{RequestError, Selection};
use crate::ledger::{State, Summary};

pub(super) async fn failures(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    let req = &request.http("req")?;
    let engine = app.engine();
    let mut logs = Vec::new();
    if req.method.eq_ignore_ascii_case("post") {
        let body = match json_body(req) {
            Ok(b) => b,
            Err(e) => return Ok(bad_request(output, e)),
        };
        let ids: Vec<String> = option(req, &body, "ids")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let which = if ids.is_empty() {
            Selection::AllOpen
        } else {
            Selection::Keys(ids)
        };
        let done = match option(req, &body, "action").as_deref() {
            Some("retry") => engine.retry_failures(&which, Utc::now()).await,
            Some("accept") if matches!(which, Selection::Keys(_)) => {
                let reason = option(req, &body, "reason").unwrap_or_default();
                engine.accept_failures(&which, &reason).await
            }
            Some("accept") => {
                return Ok(bad_request(
                    output,
                    "accept needs ids: name each version whose loss is accepted".into(),
                ));
            }
            Some("reopen") => engine.reopen_failures(&which).await,
            _ => return Ok(bad_request(output, "action must be retry, accept or reopen".into())),
        };
        match done {
            Ok(n) => logs.push(format!("{n} failure(s) changed")),
            Err(
                e @ (RequestError::Unknown(_)
                | RequestError::NoReason
                | RequestError::NotAccepted(_)
                | RequestError::NoIds),
            ) => {
                return Ok(bad_request(output, e.to_string()));
            }
            Err(RequestError::Table(e)) => return Err(crate::engine::EngineError::from(e).into()),
        }
    }
    let all = req.query_param("all").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let entries = engine
        .ledger()
        .list(None)
        .await
        .map_err(crate::engine::EngineError::from)?;
    let summary = Summary::of(&entries);
    let shown: Vec<_> = entries
        .into_iter()
        .filter(|e| all || e.state.unresolved() || e.state == State::Accepted)
        .collect();
    Ok(InvocationResponse::http(
        output,
        HttpResponseData::json(200, &json!({ "summary": summary, "entries": shown })),
        logs,
    ))
}
