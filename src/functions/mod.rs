//! The Azure Functions entry points, served as a custom handler.
//!
//! The Functions host owns triggers, schedules and function keys; for each invocation it POSTs a JSON payload to
//! `http://127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT/<FunctionName>`. [`FUNCTIONS`] lists every function this
//! binary serves together with the bindings its `function.json` must declare; a test checks the folders at the
//! repository root against this list in both directions. Each handler is thin: it parses its trigger and calls
//! the same operation the CLI calls.

mod failures;
mod migration;
pub mod payload;
mod reconcile;
mod requests;
pub mod verification;

use std::future::Future;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::app::App;
use crate::telemetry::Exception;
use crate::telemetry::context::{self, Operation};
use payload::{HttpResponseData, InvocationRequest, InvocationResponse};

/// How a function is triggered, as its `function.json` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `schedule` is an NCRONTAB expression or an `%AppSetting%` reference to one.
    Timer {
        binding: &'static str,
        schedule: &'static str,
    },
    /// `authLevel` is always `function` or `admin` for our HTTP functions: the host checks the key.
    Http {
        binding: &'static str,
        output: &'static str,
        methods: &'static [&'static str],
        auth_level: &'static str,
        route: Option<&'static str>,
    },
}

/// One Azure Function served by this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionSpec {
    /// The folder name at the repository root, and the path the host POSTs to.
    pub name: &'static str,
    pub trigger: Trigger,
}

/// Every function this binary serves. Later issues add their functions here and as folders.
pub const FUNCTIONS: &[FunctionSpec] = &[
    FunctionSpec {
        name: "MigrationOrchestrator",
        trigger: Trigger::Timer {
            binding: "myTimer",
            schedule: "%MigrationStarterCron%",
        },
    },
    FunctionSpec {
        name: "ExportStatus",
        trigger: Trigger::Timer {
            binding: "myTimer",
            schedule: "%ExportStatusCron%",
        },
    },
    FunctionSpec {
        name: "ImportStatus",
        trigger: Trigger::Timer {
            binding: "myTimer",
            schedule: "%ImportStatusCron%",
        },
    },
    FunctionSpec {
        name: "ClearMaxExportRetries_Http",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["post"],
            auth_level: "function",
            route: None,
        },
    },
    FunctionSpec {
        name: "MigrationStatus_Http",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["get"],
            auth_level: "function",
            route: None,
        },
    },
    FunctionSpec {
        name: "ImportFailures_Http",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["get", "post"],
            auth_level: "function",
            route: None,
        },
    },
    FunctionSpec {
        name: "CheckAccess_Http",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["get"],
            auth_level: "function",
            route: None,
        },
    },
    FunctionSpec {
        name: "E2ETest_Http",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["get", "post"],
            auth_level: "function",
            route: None,
        },
    },
    FunctionSpec {
        name: "E2ETest_Status",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["get"],
            auth_level: "function",
            route: Some("E2ETest_Status/{id}"),
        },
    },
    FunctionSpec {
        name: "Reconcile_Http",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["post"],
            auth_level: "function",
            route: None,
        },
    },
    FunctionSpec {
        name: "Reconcile_Status",
        trigger: Trigger::Http {
            binding: "req",
            output: "res",
            methods: &["get"],
            auth_level: "function",
            route: Some("Reconcile_Status/{id}"),
        },
    },
    FunctionSpec {
        name: "E2ETest_Runner",
        trigger: Trigger::Timer {
            binding: "myTimer",
            schedule: "%VerificationCron%",
        },
    },
];

impl FunctionSpec {
    pub fn find(name: &str) -> Option<&'static FunctionSpec> {
        FUNCTIONS.iter().find(|f| f.name == name)
    }

    /// The `function.json` this function needs; the checked-in file must equal it.
    pub fn function_json(&self) -> Value {
        match self.trigger {
            Trigger::Timer { binding, schedule } => json!({
                "bindings": [{
                    "name": binding, "type": "timerTrigger", "direction": "in",
                    "schedule": schedule, "runOnStartup": false, "useMonitor": true
                }]
            }),
            Trigger::Http {
                binding,
                output,
                methods,
                auth_level,
                route,
            } => {
                let mut trigger = json!({
                    "name": binding, "type": "httpTrigger", "direction": "in",
                    "authLevel": auth_level, "methods": methods
                });
                if let Some(route) = route {
                    trigger["route"] = json!(route);
                }
                json!({ "bindings": [trigger, { "name": output, "type": "http", "direction": "out" }] })
            }
        }
    }
}

/// The custom handler's HTTP surface: `GET /` for the host's readiness probe, `POST /<FunctionName>` for
/// invocations.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(ready))
        .route("/{function}", post(invoke))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

/// Serves until `shutdown` completes, then lets in-flight invocations finish. Correctness never depends on a
/// graceful stop: the host kills the process on a function timeout, and every state change is ETag-guarded.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready() -> &'static str {
    "fhir-migration-tool custom handler is ready"
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn invoke(State(app): State<App>, Path(function): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(spec) = FunctionSpec::find(&function) else {
        let known: Vec<_> = FUNCTIONS.iter().map(|f| f.name).collect();
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no function named '{function}'; this handler serves: {}",
                known.join(", ")
            ),
        );
    };
    let request: InvocationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("the invocation payload for {function} is not valid custom-handler JSON: {e}"),
            );
        }
    };
    let invocation_id = headers
        .get("x-azure-functions-invocationid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let span = tracing::info_span!("invocation", function = spec.name, invocation_id = %invocation_id);
    // Telemetry from this invocation joins the host's request for it in App Insights.
    let operation = Operation::for_invocation(headers.get("traceparent").and_then(|v| v.to_str().ok()), spec.name);
    let outcome = context::scope(
        operation.clone(),
        dispatch(&app, spec, &request).instrument(span.clone()),
    )
    .await;
    if let Err(e) = &outcome {
        let failure = Exception::new("FunctionFailed", e)
            .with("Function", spec.name)
            .with("InvocationId", &invocation_id);
        context::scope(operation, async { app.telemetry().exception(failure) }).await;
    }
    match (outcome, spec.trigger) {
        (Ok(response), _) => (StatusCode::OK, axum::Json(response)).into_response(),
        // An HTTP function's caller gets a proper error response; the host still sees a successful hand-off.
        (Err(e), Trigger::Http { output, .. }) => {
            tracing::error!(parent: &span, error = %e, "function failed");
            let res = HttpResponseData::json(500, &json!({ "error": e.to_string() }));
            (
                StatusCode::OK,
                axum::Json(InvocationResponse::http(output, res, vec![format!("failed: {e}")])),
            )
                .into_response()
        }
        // A failed timer invocation must look failed to the host, so it is counted and alerted on.
        (Err(e), Trigger::Timer { .. }) => {
            tracing::error!(parent: &span, error = %e, "function failed");
            let body = json!({ "error": e.to_string(), "Logs": [format!("failed: {e}")] });
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
        }
    }
}

/// The name of an HTTP function's output binding (its response goes there).
fn http_output(spec: &FunctionSpec) -> Result<&'static str, FunctionError> {
    match spec.trigger {
        Trigger::Http { output, .. } => Ok(output),
        _ => Err(FunctionError::Unrouted(spec.name)),
    }
}

/// A handler's failure, with a message fit for the operator (no secrets: errors never carry them).
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error(transparent)]
    Payload(#[from] payload::PayloadError),
    #[error(transparent)]
    Tables(#[from] crate::storage::tables::TableError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("function {0} is listed but has no handler in this build")]
    Unrouted(&'static str),
}

async fn dispatch(
    app: &App,
    spec: &FunctionSpec,
    request: &InvocationRequest,
) -> Result<InvocationResponse, FunctionError> {
    match spec.name {
        "MigrationOrchestrator" | "ExportStatus" | "ImportStatus" => migration::timer(app, spec, request).await,
        "ClearMaxExportRetries_Http" => migration::clear_retries(app, spec, request).await,
        "MigrationStatus_Http" => migration::status(app, spec, request).await,
        "ImportFailures_Http" => failures::failures(app, spec, request).await,
        "CheckAccess_Http" => migration::check_access(app, spec, request).await,
        "E2ETest_Http" => verification::start(app, spec, request).await,
        "E2ETest_Status" => verification::status(app, spec, request).await,
        "E2ETest_Runner" => verification::runner(app, spec, request).await,
        "Reconcile_Http" => reconcile::start(app, spec, request).await,
        "Reconcile_Status" => reconcile::status(app, spec, request).await,
        other => Err(FunctionError::Unrouted(other)),
    }
}
