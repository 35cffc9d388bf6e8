//! The migration's functions: three timers that drive the engine, and two HTTP functions (function key
//! required) to resume after the retry latch and to read progress.

use chrono::Utc;
use serde_json::json;

use super::payload::{HttpResponseData, InvocationRequest, InvocationResponse};
use super::{FunctionError, FunctionSpec, Trigger, http_output};
use crate::app::App;

/// `MigrationOrchestrator`, `ExportStatus`, `ImportStatus`. A conflict with an overlapping invocation is not a
/// failure: that invocation did the work.
pub(super) async fn timer(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let Trigger::Timer { binding, .. } = spec.trigger else {
        return Err(FunctionError::Unrouted(spec.name));
    };
    let timer = request.timer(binding)?;
    let engine = app.engine();
    let now = Utc::now();
    let outcome = match spec.name {
        "MigrationOrchestrator" => engine.starter_tick(now).await,
        "ExportStatus" => engine.export_status_tick(now).await,
        _ => engine.import_status_tick(now).await,
    };
    let mut logs = Vec::new();
    if timer.is_past_due {
        logs.push(format!(
            "{} ran late (past due); state is re-read, so this is harmless",
            spec.name
        ));
    }
    match outcome {
        Ok(report) => {
            logs.extend(report.lines);
            Ok(InvocationResponse::logs(logs))
        }
        Err(e) if e.is_conflict() => {
            logs.push(format!(
                "{}: another invocation changed the same state first; it carries on ({e})",
                spec.name
            ));
            Ok(InvocationResponse::logs(logs))
        }
        Err(e) => Err(e.into()),
    }
}

/// `ClearMaxExportRetries_Http`: resets the retry latch (and accepts imports halted by the error policy).
pub(super) async fn clear_retries(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    request.http("req")?;
    let before = app.engine().clear_failures().await?;
    let line = format!("maxExportRetries cleared successfully (was {before}).");
    Ok(InvocationResponse::http(
        output,
        HttpResponseData::text(200, "maxExportRetries cleared successfully."),
        vec![line],
    ))
}

/// `MigrationStatus_Http`: progress as JSON.
pub(super) async fn status(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    let req = request.http("req")?;
    let status = app.engine().status(Utc::now()).await?;
    let mut body = serde_json::to_value(&status).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    // `?cutover=true`: the cut-over assistant's lag report too (it asks the source, so only on request).
    if req
        .query_param("cutover")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        let options = crate::cutover::Options {
            final_check: false,
            quiet: std::time::Duration::ZERO,
            timeout: std::time::Duration::ZERO,
            poll: std::time::Duration::ZERO,
            scope_configured: false,
            on_wait: None,
        };
        body["cutover"] = match crate::cutover::cutover(app, &options).await {
            Ok(report) => serde_json::to_value(&report).unwrap_or_default(),
            Err(e) => json!({ "error": e.to_string() }),
        };
    }
    Ok(InvocationResponse::http(
        output,
        HttpResponseData::json(200, &body),
        Vec::new(),
    ))
}

/// `CheckAccess_Http`: the preflight checks as JSON (200 either way; `passed` says whether all passed).
pub(super) async fn check_access(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let output = http_output(spec)?;
    request.http("req")?;
    let report = crate::preflight::preflight(app).await;
    let body = serde_json::to_value(&report).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("preflight {} failed: {} (fix: {})", c.name, c.detail, c.fix))
        .collect();
    Ok(InvocationResponse::http(
        output,
        HttpResponseData::json(200, &body),
        failed,
    ))
}
