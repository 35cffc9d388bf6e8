//! `$export`: kick-off with the servers' exact validation (reference §1, items 1–13), status with the settle
//! window and manifest (§2.1–2.2, items 14–17, 24–25) and cancel in both generations (§2.5, item 26). The job
//! itself runs in [`runner`].

pub mod anonymize;
mod runner;

use std::collections::{HashMap, HashSet};

use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::query_pairs;
use crate::middleware::{CallerRoles, empty};
use crate::outcome::{FhirError, FhirResult, IssueCode, plain_json};
use crate::time::{Millis, now_ms, parse_partial};
use crate::wire::{ExportManifest, ExportOutput};
use crate::{App, CancelMode, Flavor};

/// The ordinal whitelist of kick-off parameters (item 4).
const ALLOWED: &[&str] = &[
    "_outputFormat",
    "_since",
    "_till",
    "_type",
    "_typeFilter",
    "_container",
    "_format",
    "_isParallel",
    "includeAssociatedData",
    "_maxCount",
    "_anonymizationConfig",
    "_anonymizationConfigEtag",
    "_anonymizationConfigCollectionReference",
];
const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];
/// Export formats a default server configuration defines (`_format` looks them up case-insensitively).
const FORMATS: &[&str] = &["default", "patientinfo"];
/// `_maxCount` of 0 or absent.
pub(crate) const DEFAULT_MAX_COUNT: usize = 10_000;
/// Search parameters the emulator can evaluate inside `_typeFilter`.
const TYPE_FILTER_PARAMS: &[&str] = &["_id", "_lastUpdated"];

/// What is being exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    System,
    Patient,
    Group(String),
}

/// A validated kick-off.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub scope: Scope,
    pub since: Option<Millis>,
    pub till: Option<Millis>,
    /// Where `_till`'s precision ends (exclusive): the inclusive search path reads up to here (reference §11.9).
    pub till_end: Option<Millis>,
    pub types: Option<HashSet<String>>,
    /// (type, [(param, value)]) filters.
    pub type_filters: Vec<(String, Vec<(String, String)>)>,
    pub container: Option<String>,
    pub parallel: bool,
    pub history: bool,
    pub deleted: bool,
    pub max_count: usize,
    pub anonymization: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
pub enum ExportState {
    Running,
    Completed { finished_at: Millis },
    Failed { status: u16, reason: String },
}

#[derive(Debug, Clone)]
pub struct ExportJob {
    pub request_url: String,
    pub created: Millis,
    pub state: ExportState,
    /// Files written so far: (type, url, count), in the order written.
    pub output: Vec<(String, String, usize)>,
    pub cancelled: bool,
    /// The 200→202 flap fault: set once the job has answered 200, cleared after the single 202.
    pub flap: Option<bool>,
}

#[derive(Default)]
pub struct ExportJobs {
    pub jobs: HashMap<u64, ExportJob>,
}

pub async fn kickoff_system(
    State(app): State<App>,
    axum::Extension(roles): axum::Extension<CallerRoles>,
    headers: HeaderMap,
    uri: OriginalUri,
) -> FhirResult<Response> {
    kickoff(&app, &roles, &headers, &uri, Ok(Scope::System))
}

pub async fn kickoff_type(
    State(app): State<App>,
    axum::Extension(roles): axum::Extension<CallerRoles>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path(resource_type): Path<String>,
) -> FhirResult<Response> {
    let scope = if resource_type == "Patient" {
        Ok(Scope::Patient)
    } else {
        Err(unsupported_type(&resource_type))
    };
    kickoff(&app, &roles, &headers, &uri, scope)
}

pub async fn kickoff_instance(
    State(app): State<App>,
    axum::Extension(roles): axum::Extension<CallerRoles>,
    headers: HeaderMap,
    uri: OriginalUri,
    Path((resource_type, id)): Path<(String, String)>,
) -> FhirResult<Response> {
    let scope = if resource_type == "Group" && !id.is_empty() {
        Ok(Scope::Group(id))
    } else {
        Err(unsupported_type(&resource_type))
    };
    kickoff(&app, &roles, &headers, &uri, scope)
}

fn unsupported_type(t: &str) -> FhirError {
    FhirError::bad_request(format!("Requested operation does not support resource type: {t}."))
}

fn kickoff(
    app: &App,
    roles: &CallerRoles,
    headers: &HeaderMap,
    uri: &OriginalUri,
    scope: FhirResult<Scope>,
) -> FhirResult<Response> {
    let pairs = query_pairs(uri.query());
    let request = validate(app, roles, headers, &pairs, scope)?;
    let id = app.next_job_id();
    let created = now_ms();
    let request_url = format!("{}{}", app.base_url, uri.0);
    app.exports.lock().unwrap_or_else(|p| p.into_inner()).jobs.insert(
        id,
        ExportJob {
            request_url,
            created,
            state: ExportState::Running,
            output: Vec::new(),
            cancelled: false,
            flap: None,
        },
    );
    runner::start(app.clone(), id, created, request);
    let mut response = empty(StatusCode::ACCEPTED);
    let location = format!("{}/_operations/export/{id}", app.base_url);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    Ok(response)
}

/// Kick-off validation in the servers' order (reference §1.4).
fn validate(
    app: &App,
    roles: &CallerRoles,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    scope: FhirResult<Scope>,
) -> FhirResult<ExportRequest> {
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    // 1. Model binding of typed parameters.
    let instant = |name: &str| -> FhirResult<Option<Millis>> {
        match get(name) {
            None => Ok(None),
            Some(v) => parse_partial(v)
                .map(|r| Some(r.start))
                .ok_or_else(|| FhirError::bad_request(format!("'{name}' The value '{v}' is not valid."))),
        }
    };
    let since = instant("_since")?;
    let till = instant("_till")?;
    let till_end = get("_till").and_then(parse_partial).map(|r| r.end);
    let is_parallel = match get("_isParallel") {
        None => None,
        Some(v) => Some(
            v.parse::<bool>()
                .map_err(|_| FhirError::bad_request(format!("'_isParallel' The value '{v}' is not valid.")))?,
        ),
    };
    let max_count = match get("_maxCount") {
        None => 0,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| FhirError::bad_request(format!("'_maxCount' The value '{v}' is not valid.")))?
            as usize,
    };
    // 2. Headers and the parameter whitelist.
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if accept.len() != 1 || !accept[0].trim().eq_ignore_ascii_case("application/fhir+json") {
        return Err(FhirError::bad_request(format!(
            "Value supplied, {},  for the \"Accept\" header is not supported.",
            accept.join(",")
        )));
    }
    let prefer: Vec<String> = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .collect();
    if prefer.is_empty() {
        return Err(FhirError::bad_request("Missing required header; Prefer"));
    }
    let mut lenient = false;
    let mut respond_async = false;
    for token in &prefer {
        let lower = token.to_ascii_lowercase();
        match lower.as_str() {
            "respond-async" => respond_async = true,
            "handling=lenient" => lenient = true,
            "handling=strict" => {}
            _ => {
                return Err(FhirError::bad_request(format!(
                    "Value supplied, {token},  for the \"Prefer\" header is not supported."
                )));
            }
        }
    }
    if !respond_async {
        return Err(FhirError::bad_request(
            "Missing required header value; header=Prefer,value=respond-async.",
        ));
    }
    for (name, _) in pairs {
        if !ALLOWED.contains(&name.as_str()) {
            return Err(FhirError::bad_request(format!(
                "The \"{name}\" parameter is not supported."
            )));
        }
    }
    if let Some(f) = get("_outputFormat")
        && !OUTPUT_FORMATS.contains(&f)
    {
        return Err(FhirError::bad_request(format!(
            "The output format '{f}' is not supported."
        )));
    }
    // 3. Controller checks: the route's type first.
    let scope = scope?;
    let container = get("_container").map(str::to_string);
    if let Some(c) = &container {
        let decoded = percent_encoding::percent_decode_str(c).decode_utf8_lossy().into_owned();
        if decoded.split(['/', '\\']).any(|seg| seg == "..") {
            return Err(FhirError::bad_request(format!(
                "The value '{c}' is not valid. Path traversal characters are not allowed."
            )));
        }
    }
    let anon_config = get("_anonymizationConfig");
    let anon_etag = get("_anonymizationConfigEtag");
    let anon_ref = get("_anonymizationConfigCollectionReference");
    if anon_config.is_some() || anon_etag.is_some() || anon_ref.is_some() {
        if anon_config.is_none() {
            return Err(FhirError::bad_request(
                "Missing '_anonymizationConfig' for anonymized export",
            ));
        }
        if container.is_none() {
            return Err(FhirError::bad_request("Missing '_container' for anonymized export"));
        }
        if anon_etag.is_some() && anon_ref.is_some() {
            return Err(FhirError::bad_request(
                "The parameters '_anonymizationConfigEtag' and '_anonymizationConfigCollectionReference' cannot be given in the same request.",
            ));
        }
        if let Some(r) = anon_ref {
            return Err(FhirError::bad_request(format!(
                "The configuration collection reference '{r}' is not configured."
            )));
        }
    }
    let type_filter = get("_typeFilter");
    let (mut history, mut deleted) = (false, false);
    // includeAssociatedData is accepted, unchecked and ignored on Patient and Group exports.
    if let Some(values) = get("includeAssociatedData").filter(|_| scope == Scope::System) {
        let bad: Vec<&str> = values
            .split(',')
            .filter(|v| !matches!(*v, "_history" | "_deleted"))
            .collect();
        if !bad.is_empty() {
            return Err(FhirError::bad_request(format!(
                "The export parameter \"includeAssociatedData\" contains an invalid value. Supported values are: {}.",
                bad.join(", ")
            )));
        }
        if type_filter.is_some() {
            return Err(FhirError::bad_request(
                "The request \"_typeFilter\" cannot be used with an export request with historical or soft deleted resources.",
            ));
        }
        history = values.split(',').any(|v| v == "_history");
        deleted = values.split(',').any(|v| v == "_deleted");
    }
    // 4. Handler checks, starting with authorization.
    if !roles.may("export") {
        return Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueCode::Forbidden,
            "Authorization failed.",
        ));
    }
    let types: Option<HashSet<String>> =
        get("_type").map(|t| t.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect());
    let mut type_filters = Vec::new();
    if let Some(tf) = type_filter {
        if types.is_none() {
            return Err(FhirError::bad_request(
                "The _type parameter must be included when using the _typeFilter parameter.",
            ));
        }
        let mut invalid = Vec::new();
        for segment in tf.split(',') {
            let (t, query) = segment.split_once('?').ok_or_else(|| {
                FhirError::bad_request(format!("The _typeFilter segment '{segment}' could not be parsed."))
            })?;
            let mut params = Vec::new();
            for part in query.split('&') {
                let kv: Vec<&str> = part.split('=').collect();
                if kv.len() != 2 {
                    return Err(FhirError::bad_request(format!(
                        "The _typeFilter segment '{segment}' could not be parsed."
                    )));
                }
                if !TYPE_FILTER_PARAMS.contains(&kv[0]) {
                    invalid.push(format!("[type: {t}, parameter: {}]", kv[0]));
                    continue;
                }
                params.push((kv[0].to_string(), kv[1].to_string()));
            }
            type_filters.push((t.to_string(), params));
        }
        if !invalid.is_empty() && !lenient {
            return Err(FhirError::bad_request(format!(
                "{} invalid search parameter(s) found: {}",
                invalid.len(),
                invalid.join(", ")
            )));
        }
    }
    if let Some(f) = get("_format")
        && !FORMATS.iter().any(|known| known.eq_ignore_ascii_case(f))
    {
        return Err(FhirError::bad_request(format!("The format '{f}' could not be found.")));
    }
    if max_count > DEFAULT_MAX_COUNT {
        return Err(FhirError::bad_request(
            "Export operation parameter 'MaximumNumberOfResourcesPerQuery' was out of the range of valid values. Please specify a different value within a range '1' - '10000'.",
        ));
    }
    let parallel = match scope {
        Scope::System => type_filter.is_none() && is_parallel.unwrap_or(app.config.flavor == Flavor::Ahds),
        Scope::Patient => true,
        Scope::Group(_) => false,
    };
    // includeAssociatedData is accepted but ignored on Patient and Group exports.
    if scope != Scope::System {
        history = false;
        deleted = false;
    }
    Ok(ExportRequest {
        scope,
        since,
        till,
        till_end,
        types,
        type_filters,
        container,
        parallel,
        history,
        deleted,
        max_count: if max_count == 0 { DEFAULT_MAX_COUNT } else { max_count },
        anonymization: anon_config.map(|c| (c.to_string(), anon_etag.map(str::to_string))),
    })
}

fn job_not_found(id: &str) -> FhirError {
    FhirError::not_found(format!("The requested job \"{id}\" was not found."))
}

pub(crate) fn manifest(job: &ExportJob) -> Value {
    let mut output = job.output.clone();
    output.sort_by(|a, b| a.0.cmp(&b.0));
    let manifest = ExportManifest {
        transaction_time: crate::time::format_ms(job.created),
        request: job.request_url.clone(),
        requires_access_token: false,
        output: output
            .into_iter()
            .map(|(resource_type, url, count)| ExportOutput {
                resource_type,
                url,
                count: count as u64,
            })
            .collect(),
        error: Vec::new(),
        issues: Vec::new(),
    };
    serde_json::to_value(manifest).expect("plain data serialises")
}

pub async fn status(State(app): State<App>, Path(id): Path<String>) -> FhirResult<Response> {
    let settle = app.config.settle.as_millis() as Millis;
    let flap_enabled = app.faults().export_status_flap;
    let mut jobs = app.exports.lock().unwrap_or_else(|p| p.into_inner());
    let job = id
        .parse::<u64>()
        .ok()
        .and_then(|n| jobs.jobs.get_mut(&n))
        .ok_or_else(|| job_not_found(&id))?;
    if job.cancelled {
        return match app.config.cancel_mode {
            CancelMode::Bulkdata2 => Err(job_not_found(&id)),
            CancelMode::Legacy => Ok(plain_json(StatusCode::OK, &manifest(job))),
        };
    }
    match &job.state {
        ExportState::Running => Ok(empty(StatusCode::ACCEPTED)),
        ExportState::Completed { finished_at } if now_ms() < finished_at + settle => Ok(empty(StatusCode::ACCEPTED)),
        ExportState::Completed { .. } => {
            match job.flap {
                Some(true) if flap_enabled => {
                    job.flap = Some(false);
                    return Ok(empty(StatusCode::ACCEPTED));
                }
                None => job.flap = Some(true),
                _ => {}
            }
            Ok(plain_json(StatusCode::OK, &manifest(job)))
        }
        ExportState::Failed { status, reason } => Err(FhirError::new(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            IssueCode::Processing,
            format!("export operation failed for reason: {reason}"),
        )),
    }
}

pub async fn cancel(State(app): State<App>, Path(id): Path<String>) -> FhirResult<Response> {
    let mut jobs = app.exports.lock().unwrap_or_else(|p| p.into_inner());
    let job = id
        .parse::<u64>()
        .ok()
        .and_then(|n| jobs.jobs.get_mut(&n))
        .ok_or_else(|| job_not_found(&id))?;
    match app.config.cancel_mode {
        CancelMode::Bulkdata2 => {
            if job.cancelled {
                return Err(job_not_found(&id));
            }
            job.cancelled = true;
            Ok(empty(StatusCode::ACCEPTED))
        }
        CancelMode::Legacy => match job.state {
            ExportState::Running => {
                job.cancelled = true;
                Ok(empty(StatusCode::ACCEPTED))
            }
            _ if job.cancelled => Ok(empty(StatusCode::ACCEPTED)),
            _ => Err(FhirError::new(
                StatusCode::CONFLICT,
                IssueCode::Processing,
                "The export job has already completed.",
            )),
        },
    }
}
