//! `$import` (ahds only): kick-off validation and idempotent registration (reference §4, items 27–33), status
//! with partial results, error files and failures (§5.1–5.4, items 34–40, 42), and cancel (§5.5, item 41). The
//! processing itself is in [`runner`].

mod runner;

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::{first, query_pairs};
use crate::middleware::empty;
use crate::outcome::{FhirError, FhirResult, IssueCode, plain_json};
use crate::resource_types::is_resource_type;
use crate::time::{Millis, format_ms, now_ms};
use crate::wire::{ImportError, ImportOutput, ImportResult};
use crate::{App, Flavor};

/// Default processing unit size (reference §4.2).
const DEFAULT_UNIT_BYTES: i64 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImportInput {
    pub resource_type: Option<String>,
    pub url: String,
    pub etag: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub inputs: Vec<ImportInput>,
    pub initial_load: bool,
    pub allow_negative_versions: bool,
    /// The unit size: the parsed `processingUnitBytesToRead`, or the default for 0 (negative plans no unit).
    pub unit_bytes: i64,
    pub error_container: String,
    /// The job definition as the server builds it from the request (see [`definition_key`]).
    pub definition: Definition,
}

/// What `CreateImportRequestHandler` puts into the orchestrator job's definition, before any default is applied
/// (`fs:src/Microsoft.Health.Fhir.Core/Features/Operations/Import/CreateImportRequestHandler.cs`): RequestUri,
/// Input, InputFormat, InputSource, StorageDetail, ImportMode, AllowNegativeVersions, EventualConsistency,
/// ErrorContainerName and ProcessingUnitBytesToRead. `force` is not part of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definition {
    pub input_format: Option<String>,
    pub input_source: Option<String>,
    pub storage_type: Option<String>,
    pub initial_load: bool,
    pub allow_negative_versions: bool,
    pub eventual_consistency: bool,
    /// As sent: an omitted container and an explicit `fhirlogs` differ.
    pub error_container: Option<String>,
    /// `int.TryParse` of the value: 0 when omitted or unparsable.
    pub unit_bytes: i32,
}

/// One processing unit: a byte range of one input.
#[derive(Debug, Clone)]
pub struct Unit {
    pub input: usize,
    pub job_id: u64,
    pub offset: usize,
    pub state: UnitState,
}

#[derive(Debug, Clone)]
pub enum UnitState {
    Pending,
    Done {
        succeeded: usize,
        failed: usize,
        error_url: Option<String>,
    },
    Failed {
        status: u16,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub enum Coordinator {
    Running,
    Failed { status: u16, message: String },
    Split,
}

#[derive(Debug, Clone)]
pub struct ImportJob {
    pub request_url: String,
    pub created: Millis,
    pub spec: ImportSpec,
    pub coordinator: Coordinator,
    pub units: Vec<Unit>,
    pub cancelled: bool,
}

#[derive(Default)]
pub struct ImportJobs {
    pub jobs: HashMap<u64, ImportJob>,
    /// Registration is idempotent: the same definition always maps to the same job.
    by_definition: HashMap<String, u64>,
}

fn header_values(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

pub async fn kickoff(
    State(app): State<App>,
    headers: HeaderMap,
    uri: OriginalUri,
    body: Bytes,
) -> FhirResult<Response> {
    let prefer = header_values(&headers, header::HeaderName::from_static("prefer"));
    if prefer.len() != 1 || !prefer[0].trim().eq_ignore_ascii_case("respond-async") {
        return Err(FhirError::bad_request(format!(
            "Value supplied, {},  for the \"Prefer\" header is not supported.",
            prefer.join(",")
        )));
    }
    let content_type = header_values(&headers, header::CONTENT_TYPE).join(",");
    if !content_type.to_ascii_lowercase().contains("application/fhir+json") {
        return Err(FhirError::bad_request(format!(
            "Value supplied, {content_type},  for the \"Content-Type\" header is not supported."
        )));
    }
    if app.config.flavor == Flavor::Aapi {
        return Err(FhirError::bad_request(
            "The requested \"import\" operation is not enabled",
        ));
    }
    let spec = parse_parameters(&app, &body)?;
    let request_url = format!("{}{}", app.base_url, uri.0);
    let definition = definition_key(&request_url, &spec.inputs, &spec.definition);
    let (id, fresh) = {
        let mut imports = app.imports.lock().unwrap_or_else(|p| p.into_inner());
        match imports.by_definition.get(&definition) {
            Some(id) => (*id, false),
            None => {
                let id = app.next_job_id();
                imports.by_definition.insert(definition, id);
                imports.jobs.insert(
                    id,
                    ImportJob {
                        request_url,
                        created: now_ms(),
                        spec: spec.clone(),
                        coordinator: Coordinator::Running,
                        units: Vec::new(),
                        cancelled: false,
                    },
                );
                (id, true)
            }
        }
    };
    if fresh {
        runner::start(app.clone(), id, spec);
    }
    let mut response = empty(StatusCode::ACCEPTED);
    if let Ok(v) = HeaderValue::from_str(&format!("{}/_operations/import/{id}", app.base_url)) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

/// The key identical definitions share. The server hashes the serialized definition (SHA-1) and returns the
/// existing job for a hash held by any job not yet archived — failed and cancelled jobs included
/// (`fs:src/Microsoft.Health.Fhir.SqlServer/Features/Schema/Sql/Sprocs/EnqueueJobs.sql`; reference §11.7). The
/// emulator never archives, so registrations are remembered for its lifetime.
fn definition_key(request_url: &str, inputs: &[ImportInput], d: &Definition) -> String {
    let inputs: Vec<String> = inputs
        .iter()
        .map(|i| {
            format!(
                "{}|{}|{}",
                i.resource_type.as_deref().unwrap_or(""),
                i.url,
                i.etag.as_deref().unwrap_or("")
            )
        })
        .collect();
    let opt = |v: &Option<String>| v.as_deref().map_or("<none>".to_string(), |s| format!("={s}"));
    format!(
        "{request_url}\n{}\nformat{}|source{}|storage{}|initial={}|negative={}|eventual={}|errors{}|unit={}",
        inputs.join("\n"),
        opt(&d.input_format),
        opt(&d.input_source),
        opt(&d.storage_type),
        d.initial_load,
        d.allow_negative_versions,
        d.eventual_consistency,
        opt(&d.error_container),
        d.unit_bytes
    )
}

/// .NET `int.TryParse` with the default style: optional surrounding whitespace and sign, digits, 32 bits.
fn dotnet_int(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok()
}

/// `value[x]` of any type, as text (the server calls ToString on it).
fn value_text(param: &Value) -> Option<String> {
    let map = param.as_object()?;
    map.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn invalid(name: &str) -> FhirError {
    FhirError::bad_request(format!("Value of the following parameter {name} is invalid."))
}

fn parse_parameters(app: &App, body: &[u8]) -> FhirResult<ImportSpec> {
    let not_parameters = || {
        FhirError::bad_request(
            "Import request must be specified as a Paramters.  The body provided in this request is not valid.",
        )
    };
    let json: Value = serde_json::from_slice(body).map_err(|_| not_parameters())?;
    if json["resourceType"] != "Parameters" {
        return Err(not_parameters());
    }
    let params = json["parameter"].as_array().cloned().unwrap_or_default();
    // Top-level parameters are singletons; a repeated one makes the real server fail with an empty 500.
    let mut singles: BTreeMap<&str, &Value> = BTreeMap::new();
    let mut inputs = Vec::new();
    for p in &params {
        let name = p["name"].as_str().unwrap_or_default();
        if name == "input" {
            inputs.push(p);
        } else if singles.insert(name, p).is_some() {
            return Err(FhirError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                IssueCode::Processing,
                "",
            ));
        }
    }
    if inputs.is_empty() {
        return Err(invalid("input"));
    }
    let blob = app
        .blob
        .as_ref()
        .ok_or_else(|| FhirError::bad_request("The import storage account is not configured correctly."))?;
    let mut parsed = Vec::new();
    for input in &inputs {
        let part = |n: &str| {
            input["part"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == n)
                .and_then(value_text)
        };
        parsed.push(ImportInput {
            resource_type: part("type"),
            url: part("url").unwrap_or_default(),
            etag: part("etag"),
        });
    }
    let mut seen = HashMap::new();
    let duplicates: Vec<&str> = parsed
        .iter()
        .filter(|i| seen.insert(i.url.as_str(), ()).is_some())
        .map(|i| i.url.as_str())
        .collect();
    if !duplicates.is_empty() {
        return Err(FhirError::bad_request(format!(
            "Import request cannot have duplicate files. Found duplicates: {}.",
            duplicates.join(", ")
        )));
    }
    for input in &parsed {
        if let Some(t) = &input.resource_type
            && !is_resource_type(t)
        {
            return Err(FhirError::bad_request(format!(
                "Requested operation does not support resource type: {t}."
            )));
        }
    }
    for input in &parsed {
        match url::Url::parse(&input.url) {
            Ok(u) if u.query().is_none() && u.has_host() => {
                if !blob.owns(&u) {
                    return Err(FhirError::bad_request(
                        "input.url must match the configured integration storage account endpoint.",
                    ));
                }
            }
            _ => return Err(invalid("input.url")),
        }
    }
    if parsed
        .iter()
        .any(|i| i.resource_type.as_deref() == Some("SearchParameter"))
    {
        return Err(FhirError::bad_request(
            "Requested operation does not support resource type: SearchParameter.",
        ));
    }
    let text = |name: &str| singles.get(name).and_then(|p| value_text(p));
    if !text("inputFormat").is_some_and(|f| f.eq_ignore_ascii_case("application/fhir+ndjson")) {
        return Err(invalid("inputFormat"));
    }
    let initial_load = match text("mode").unwrap_or_default().to_ascii_lowercase().as_str() {
        "" | "incrementalload" => false,
        "initialload" => true,
        _ => {
            return Err(FhirError::bad_request(
                "Import mode can be either \"InitialLoad\"or \"IncrementalLoad\". Please add appropriate mode value to parameters.",
            ));
        }
    };
    let flag = |name: &str| text(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if initial_load && !app.config.initial_import_mode && !flag("force") {
        return Err(FhirError::bad_request(
            "Initial import mode is not enabled. Please update service configuration to enable initial import mode.",
        ));
    }
    let mut storage_type = None;
    if let Some(detail) = singles.get("storageDetail") {
        let kind = detail["part"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["name"] == "type")
            .and_then(value_text);
        if kind.as_deref().is_some_and(|k| k != "azure-blob") {
            return Err(invalid("storageDetails"));
        }
        storage_type = kind;
    }
    // `inputSource` (a URI) is recorded in the definition and changes nothing else; a value that is not a URI is
    // not taken (`TryGetUriValue`, `fs:src/Microsoft.Health.Fhir.Shared.Api/Features/Operations/Import/ImportRequestExtensions.cs`).
    let input_source = text("inputSource");
    // `int.TryParse`: an unparsable value is silently ignored and 0 means the default
    // (`fs:src/Microsoft.Health.Fhir.Shared.Api/Features/Operations/ParametersExtensions.cs`, `ImportOrchestratorJob.cs`;
    // reference §11.8).
    let raw_unit_bytes = text("processingUnitBytesToRead")
        .and_then(|v| dotnet_int(&v))
        .unwrap_or(0);
    let unit_bytes = if raw_unit_bytes == 0 {
        DEFAULT_UNIT_BYTES
    } else {
        i64::from(raw_unit_bytes)
    };
    let error_container = text("errorContainerName").filter(|v| !v.is_empty());
    Ok(ImportSpec {
        definition: Definition {
            input_format: text("inputFormat"),
            input_source,
            storage_type,
            initial_load,
            allow_negative_versions: flag("allowNegativeVersions"),
            eventual_consistency: flag("eventualConsistency"),
            error_container: error_container.clone(),
            unit_bytes: raw_unit_bytes,
        },
        inputs: parsed,
        initial_load,
        allow_negative_versions: flag("allowNegativeVersions"),
        unit_bytes,
        error_container: error_container.unwrap_or_else(|| "fhirlogs".into()),
    })
}

/// The reason a failed coordinator reports: a 500's message is hidden (`GetImportRequestHandler.cs`).
fn coordinator_reason(status: u16, message: &str) -> &str {
    if status == 500 { "InternalServerError" } else { message }
}

fn job_not_found(id: &str) -> FhirError {
    FhirError::not_found(format!("The requested import job \"{id}\" was not found."))
}

fn failed(status: u16, message: String) -> FhirError {
    FhirError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        IssueCode::Processing,
        message,
    )
}

/// The result body (reference §5.2): per input, or per unit with `_details=true`.
fn result_body(job: &ImportJob, details: bool) -> Value {
    let mut output = Vec::new();
    let mut per_input: BTreeMap<usize, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    for unit in &job.units {
        let input = &job.spec.inputs[unit.input];
        if let UnitState::Done {
            succeeded,
            failed,
            error_url,
        } = &unit.state
        {
            if details {
                output.push(ImportOutput {
                    resource_type: input.resource_type.clone(),
                    count: *succeeded as u64,
                    input_url: input.url.clone(),
                });
            } else {
                *per_input.entry(unit.input).or_default() += *succeeded as u64;
            }
            if let Some(url) = error_url
                && *failed > 0
            {
                errors.push(ImportError {
                    resource_type: input.resource_type.clone(),
                    count: *failed as u64,
                    input_url: input.url.clone(),
                    url: url.clone(),
                });
            }
        }
    }
    for (i, count) in per_input {
        let input = &job.spec.inputs[i];
        output.push(ImportOutput {
            resource_type: input.resource_type.clone(),
            count,
            input_url: input.url.clone(),
        });
    }
    let result = ImportResult {
        transaction_time: format_ms(job.created),
        request: job.request_url.clone(),
        output,
        error: errors,
    };
    serde_json::to_value(result).expect("plain data serialises")
}

pub async fn status(State(app): State<App>, Path(id): Path<String>, RawQuery(raw): RawQuery) -> FhirResult<Response> {
    let delay = app.faults().import_status_delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let details = first(&query_pairs(raw.as_deref()), "_details").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let imports = app.imports.lock().unwrap_or_else(|p| p.into_inner());
    let job = id
        .parse::<u64>()
        .ok()
        .and_then(|n| imports.jobs.get(&n))
        .ok_or_else(|| job_not_found(&id))?;
    if job.cancelled {
        return Err(failed(400, "User requested cancellation of operation.".into()));
    }
    match &job.coordinator {
        Coordinator::Running => return Ok(empty(StatusCode::ACCEPTED)),
        Coordinator::Failed { status, message } => {
            // A 500's message is hidden (`fs:src/Microsoft.Health.Fhir.Core/Features/Operations/Import/GetImportRequestHandler.cs`;
            // reference §11.11).
            let message = coordinator_reason(*status, message);
            return Err(failed(
                *status,
                format!("import operation failed for reason: {message}"),
            ));
        }
        Coordinator::Split => {}
    }
    for unit in &job.units {
        if let UnitState::Failed { status, message } = &unit.state {
            let message = if *status == 500 {
                "InternalServerError"
            } else {
                message.as_str()
            };
            let input = &job.spec.inputs[unit.input].url;
            return Err(failed(
                *status,
                format!("import operation failed for reason: {message} ErrorFile: {input}"),
            ));
        }
    }
    let running = job.units.iter().any(|u| matches!(u.state, UnitState::Pending));
    let status = if running { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok(plain_json(status, &result_body(job, details)))
}

pub async fn cancel(State(app): State<App>, Path(id): Path<String>) -> FhirResult<Response> {
    let mut imports = app.imports.lock().unwrap_or_else(|p| p.into_inner());
    let job = id
        .parse::<u64>()
        .ok()
        .and_then(|n| imports.jobs.get_mut(&n))
        .ok_or_else(|| job_not_found(&id))?;
    if !job.cancelled && cancel_refused(job) {
        return Err(FhirError::new(
            StatusCode::CONFLICT,
            IssueCode::Processing,
            "Import operation has already completed",
        ));
    }
    job.cancelled = true;
    Ok(empty(StatusCode::ACCEPTED))
}

/// Whether a cancel is refused with 409.
fn cancel_refused(job: &ImportJob) -> bool {
    // The group's jobs in id order — the coordinator, then the units (ids follow their random order) — are walked
    // until the first failed one (409) or the first unfinished one (cancel goes ahead): a loop with `break`
    // (`fs:src/Microsoft.Health.Fhir.Core/Features/Operations/Import/CancelImportRequestHandler.cs`; reference §11.11).
    let mut any_failed = false;
    let mut all_done = true;
    let coordinator = match job.coordinator {
        Coordinator::Failed { .. } => Some(true),
        Coordinator::Running => Some(false),
        Coordinator::Split => None,
    };
    let units = job.units.iter().map(|u| match u.state {
        UnitState::Failed { .. } => Some(true),
        UnitState::Pending => Some(false),
        UnitState::Done { .. } => None,
    });
    for state in std::iter::once(coordinator).chain(units) {
        match state {
            Some(true) => {
                any_failed = true;
                break;
            }
            Some(false) => {
                all_done = false;
                break;
            }
            None => {}
        }
    }
    any_failed || all_done
}

#[cfg(test)]
mod tests;
