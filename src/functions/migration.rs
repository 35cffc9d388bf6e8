//! `MigrationOrchestrator`: the starter timer. Until the engine lands it proves the wiring end to end: it parses
//! its timer, makes sure the state tables exist (idempotent, so every tick may call it) and reports what it saw.

use super::payload::{InvocationRequest, InvocationResponse};
use super::{FunctionError, FunctionSpec, Trigger};
use crate::app::App;

pub(super) async fn orchestrator(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    let Trigger::Timer { binding, .. } = spec.trigger else {
        return Err(FunctionError::Unrouted(spec.name));
    };
    let timer = request.timer(binding)?;
    let tables = app.ensure_tables().await?;
    let at = request
        .utc_now()
        .map_or_else(|| "unknown time".to_string(), |t| t.to_rfc3339());
    let line = format!(
        "MigrationOrchestrator tick at {at} (past due: {}); state tables ready: {}",
        timer.is_past_due,
        tables.join(", ")
    );
    tracing::info!(past_due = timer.is_past_due, "{line}");
    Ok(InvocationResponse::logs(vec![line]))
}
