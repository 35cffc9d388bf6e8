//! The reconciliation functions: `Reconcile_Http` (POST) records a run and answers at once with its status URL,
//! the `E2ETest_Runner` timer works on it in checkpointed slices, and `Reconcile_Status/{id}` reports its
//! progress and, when done, the report.

use serde_json::{Value, json};

use super::payload::{HttpResponseData, InvocationRequest, InvocationResponse};
use super::requests::{bad_request, json_body, option, run_id, run_status, status_uri, types_option};
use super::{FunctionError, FunctionSpec, http_output};
use crate::app::App;
use crate::reconcile::Options;
use crate::reconcile::runs::{MAX_PAGES_PER_SLICE, Runs};

fn runs(app: &App) -> Result<Runs<'_>, FunctionError> {
    let table = app.tables().table(&app.settings().reconcile_table)?;
    Ok(Runs::new(table, app.engine()))
}

/// Runs open reconciliation runs (called by the `E2ETest_Runner` timer).
pub(super) async fn tick(app: &App) -> Result<Vec<String>, FunctionError> {
    Ok(runs(app)?.tick(app.telemetry().as_ref()).await?)
}

/// `Reconcile_Http` (POST; `types=Patient,Observation` default every type, `apply=true` to delete,
/// `maxDeletes=N` default 100, `pagesPerSlice=N` pages read per slice, default 400): records a run and answers
/// 202 with the status URL.
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
    let mut types = match types_option(&req, &body, usize::MAX) {
        Ok(types) => types,
        Err(message) => return Ok(bad_request(output, message)),
    };
    if types.is_empty() {
        types = app.engine().settings().resource_types.clone();
    }
    let apply = match option(&req, &body, "apply").or_else(|| body.get("apply").map(Value::to_string)) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => return Ok(bad_request(output, format!("apply must be true or false, not '{v}'"))),
    };
    let max_deletes = match option(&req, &body, "maxDeletes").map(|v| v.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Ok(bad_request(output, "maxDeletes must be a whole number".into())),
    };
    let pages = match option(&req, &body, "pagesPerSlice").map(|v| v.parse::<u64>()) {
        None => None,
        Some(Ok(n)) if (1..=MAX_PAGES_PER_SLICE).contains(&n) => Some(n),
        Some(_) => {
            return Ok(bad_request(
                output,
                format!("pagesPerSlice must be a whole number from 1 to {MAX_PAGES_PER_SLICE}"),
            ));
        }
    };
    let run = runs(app)?
        .start(
            Options {
                types,
                apply,
                max_deletes,
            },
            pages,
        )
        .await?;
    let status_uri = status_uri(&req, spec.name, "Reconcile_Status", &run.id);
    let mut body = run.status_body();
    body["statusQueryGetUri"] = json!(status_uri);
    let mut res = HttpResponseData::json(202, &body);
    res.headers.insert("Location".into(), status_uri);
    res.headers.insert("Retry-After".into(), "60".into());
    Ok(InvocationResponse::http(
        output,
        res,
        vec![format!(
            "reconciliation run {} recorded (apply: {apply}, cap: {max_deletes})",
            run.id
        )],
    ))
}

/// `Reconcile_Status/{id}` (GET): 202 while open, 200 with the report when done, 404 for an unknown id.
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
    let res = run_status(run, "reconciliation", id);
    Ok(InvocationResponse::http(output, res, Vec::new()))
}
