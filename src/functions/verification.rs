//! The verification functions: `E2ETest_Http` records a run and answers at once (a full check can take longer
//! than any HTTP timeout), the `E2ETest_Runner` timer works on open runs in slices, and `E2ETest_Status/{id}`
//! reports progress and, when done, the results.

use serde_json::json;

use super::payload::{HttpResponseData, InvocationRequest, InvocationResponse};
use super::requests::{bad_request, json_body, option, run_id, run_status, status_uri, types_option};
use super::{FunctionError, FunctionSpec, Trigger, http_output};
use crate::app::App;
use crate::verify::deep::MAX_COUNT;
use crate::verify::runs::{Checks, MAX_TYPES, Runs};

fn runs(app: &App) -> Result<Runs<'_>, FunctionError> {
    let table = app.tables().table(&app.settings().export_table)?;
    Ok(Runs::new(table, app.engine()))
}

/// `E2ETest_Http` (GET or POST; `mode=surface|deep|full|all` or a comma-separated mix, default surface,deep;
/// `types=Patient,Observation`, default every type; `count=N`, default `AZURE_DeepCheckCount`): records a run
/// and answers 202 with the status URL to poll, in the body and in `Location`.
pub(super) async fn start(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    let req = request.http("req")?;
    let body = match json_body(&req) {
        Ok(body) => body,
        Err(message) => return Ok(bad_request(output, message)),
    };
    let Some(checks) = Checks::parse(&option(&req, &body, "mode").unwrap_or_default()) else {
        return Ok(bad_request(
            output,
            "mode must be surface, deep, full, all, or a comma-separated mix".into(),
        ));
    };
    let types = match types_option(&req, &body, MAX_TYPES) {
        Ok(types) => types,
        Err(message) => return Ok(bad_request(output, message)),
    };
    let count = match option(&req, &body, "count").map(|c| c.parse::<usize>()) {
        None => None,
        Some(Ok(n)) if (1..=MAX_COUNT).contains(&n) => Some(n),
        Some(_) => {
            return Ok(bad_request(
                output,
                format!("count must be a whole number from 1 to {MAX_COUNT}"),
            ));
        }
    };
    let run = runs(app)?.start(checks, types, count).await?;
    let status_uri = status_uri(&req, spec.name, "E2ETest_Status", &run.id);
    let body = json!({
        "id": run.id,
        "runtimeStatus": run.status,
        "statusQueryGetUri": status_uri,
        "input": { "mode": run.checks.names(), "types": run.types.len(), "count": run.count },
    });
    let mut res = HttpResponseData::json(202, &body);
    res.headers.insert("Location".into(), status_uri);
    res.headers.insert("Retry-After".into(), "60".into());
    Ok(InvocationResponse::http(
        output,
        res,
        vec![format!(
            "verification run {} recorded ({}, {} types)",
            run.id,
            run.checks.names(),
            run.types.len()
        )],
    ))
}

/// `E2ETest_Status/{id}` (GET): the run's status body, or 404.
pub(super) async fn status(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    let req = request.http("req")?;
    let Some(id) = run_id(&req) else {
        return Ok(bad_request(
            output,
            "the run id in the path is missing or malformed".into(),
        ));
    };
    let run = runs(app)?.get(id).await?.map(|run| (run.is_open(), run.status_body()));
    let res = run_status(run, "verification", id);
    Ok(InvocationResponse::http(output, res, Vec::new()))
}

/// `E2ETest_Runner` (timer): one slice of work on every open run.
pub(super) async fn runner(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let Trigger::Timer { binding, .. } = spec.trigger else {
        return Err(FunctionError::Unrouted(spec.name));
    };
    request.timer(binding)?;
    let worked = runs(app)?.tick().await?;
    let mut lines = vec![if worked.is_empty() {
        "no open verification runs".to_string()
    } else {
        format!("worked on verification runs: {}", worked.join(", "))
    }];
    // The same timer runs reconciliation runs (Reconcile_Http).
    let reconciled = super::reconcile::tick(app).await?;
    if !reconciled.is_empty() {
        lines.push(format!("worked on reconciliation runs: {}", reconciled.join(", ")));
    }
    Ok(InvocationResponse::logs(lines))
}
