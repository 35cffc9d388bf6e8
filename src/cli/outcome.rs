//! How a command ends: its exit code (one table, in docs/operate.md#exit-codes) and, with `--json`, the one JSON
//! document on stdout also when it could not run (`{"error": {"message", "fix", "exitCode"}}`).

use serde::Serialize;

use crate::engine::EngineError;
use crate::fhir::FhirError;
use crate::storage::tables::TableError;

/// Exit codes: the one table (docs/operate.md#exit-codes keeps the same).
pub mod exit {
    /// It ran, and all is well (READY, no difference, checks passed).
    pub const OK: u8 = 0;
    /// It ran and found something wrong: differences, NOT READY, preflight problems, a halted migration, versions
    /// not at the destination.
    pub const FOUND: u8 = 1;
    /// It could not run: invalid settings or arguments, storage or a server unreachable or refusing.
    pub const COULD_NOT_RUN: u8 = 2;
    /// Interrupted (Ctrl-C or SIGTERM) before it finished.
    pub const INTERRUPTED: u8 = 130;
}

/// Why a command could not run, and what the operator can do about it.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct CommandError {
    pub message: String,
    pub fix: String,
}

impl CommandError {
    pub fn new(message: impl Into<String>, fix: impl Into<String>) -> CommandError {
        CommandError {
            message: message.into(),
            fix: fix.into(),
        }
    }
}

const STORAGE_FIX: &str = "check the tool's storage: AZURE_StorageConnectionString (or AZURE_StagingStorageUri and AZURE_BlobStorageUri), that the account is running (locally: Azurite) and reachable from here, and that the identity holds Storage Table Data Contributor and Storage Blob Data Contributor; `preflight` checks each";
const FHIR_FIX: &str = "check AZURE_SourceUri and AZURE_DestinationUri, that both servers are running and reachable from here (DNS, firewall, private endpoint), and the identity's FHIR roles; `preflight` checks each";
const TOKEN_FIX: &str = "check the credential: AZURE_CredentialType (DeveloperTools needs `az login`), AZURE_ManagedIdentityClientId, or the client-secret settings";
const SETTINGS_FIX: &str =
    "fix the settings named in the message; `fhir-migration-tool check-config` lists every problem at once";

fn fhir_fix(e: &FhirError) -> String {
    match e {
        FhirError::Rejected { status: 401, .. } => "the token was not accepted: check AZURE_SourceAudience/AZURE_DestinationAudience (default: the server's URL) and the credential".into(),
        FhirError::Rejected { status: 403, .. } => "grant the identity FHIR Data Exporter and Reader on the source, FHIR Data Importer, Writer and Reader on the destination; `preflight` names what is missing".into(),
        FhirError::Rejected { status: 429 | 500..=599, .. } => "the server is busy or failing: try again in a few minutes; `status` shows whether the timers are waiting for it".into(),
        FhirError::Token(_) => TOKEN_FIX.into(),
        _ => FHIR_FIX.into(),
    }
}

impl From<FhirError> for CommandError {
    fn from(e: FhirError) -> CommandError {
        let fix = fhir_fix(&e);
        CommandError::new(e.to_string(), fix)
    }
}

impl From<TableError> for CommandError {
    fn from(e: TableError) -> CommandError {
        CommandError::new(e.to_string(), STORAGE_FIX)
    }
}

impl From<EngineError> for CommandError {
    fn from(e: EngineError) -> CommandError {
        match e {
            EngineError::Fhir(f) => f.into(),
            EngineError::Table(t) => t.into(),
            other => CommandError::new(other.to_string(), STORAGE_FIX),
        }
    }
}

impl From<crate::cutover::CutoverError> for CommandError {
    fn from(e: crate::cutover::CutoverError) -> CommandError {
        match e {
            crate::cutover::CutoverError::Engine(e) => e.into(),
            crate::cutover::CutoverError::Fhir(e) => e.into(),
            crate::cutover::CutoverError::Reconcile(e) => e.into(),
        }
    }
}

impl From<crate::reconcile::ReconcileError> for CommandError {
    fn from(e: crate::reconcile::ReconcileError) -> CommandError {
        match e {
            crate::reconcile::ReconcileError::Fhir(e) => e.into(),
            crate::reconcile::ReconcileError::Table(e) => e.into(),
        }
    }
}

impl From<crate::app::StartupError> for CommandError {
    fn from(e: crate::app::StartupError) -> CommandError {
        let fix = match &e {
            crate::app::StartupError::FhirCredential(_) => TOKEN_FIX.to_string(),
            _ => STORAGE_FIX.into(),
        };
        CommandError::new(e.to_string(), fix)
    }
}

impl From<crate::engine::failures::RequestError> for CommandError {
    fn from(e: crate::engine::failures::RequestError) -> CommandError {
        use crate::engine::failures::RequestError as R;
        match e {
            R::Table(t) => t.into(),
            other => CommandError::new(
                other.to_string(),
                "`failures` lists the entries with their keys and states; name them with --ids (and --reason to accept)",
            ),
        }
    }
}

/// Settings and arguments: the message names what to change.
impl From<String> for CommandError {
    fn from(message: String) -> CommandError {
        CommandError::new(message, SETTINGS_FIX)
    }
}

impl From<serde_json::Error> for CommandError {
    fn from(e: serde_json::Error) -> CommandError {
        CommandError::new(format!("could not write the JSON: {e}"), "report this as a bug")
    }
}

/// Why a command did not succeed, which decides its exit code.
#[derive(Debug)]
pub enum Failure {
    /// It ran and found something wrong (exit 1); with `--json` its report is already on stdout.
    Found(String),
    /// It could not run (exit 2).
    CouldNotRun(CommandError),
    /// Ctrl-C or SIGTERM (exit 130), with what that means for this command.
    Interrupted(String),
}

macro_rules! could_not_run_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Failure {
                Failure::CouldNotRun(e.into())
            }
        }
    )*};
}

could_not_run_from!(
    CommandError,
    String,
    FhirError,
    TableError,
    EngineError,
    serde_json::Error,
    crate::cutover::CutoverError,
    crate::reconcile::ReconcileError,
    crate::app::StartupError,
    crate::engine::failures::RequestError
);

impl CommandError {
    /// A failure of the tool's storage (the state tables and blobs).
    pub fn storage(message: impl Into<String>) -> CommandError {
        CommandError::new(message, STORAGE_FIX)
    }
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Found(_) => exit::FOUND,
            Failure::CouldNotRun(_) => exit::COULD_NOT_RUN,
            Failure::Interrupted(_) => exit::INTERRUPTED,
        }
    }

    /// The line for stderr (`error: …`, with the fix on the next line).
    pub fn text(&self) -> String {
        match self {
            Failure::Found(m) => format!("error: {m}"),
            Failure::CouldNotRun(e) => format!("error: {}\nfix: {}", e.message, e.fix),
            Failure::Interrupted(m) => format!("interrupted: {m}"),
        }
    }

    /// The JSON document for stdout when the command printed none (it could not run, or was interrupted).
    pub fn json(&self) -> Option<String> {
        let (message, fix) = match self {
            Failure::Found(_) => return None,
            Failure::CouldNotRun(e) => (e.message.clone(), e.fix.clone()),
            Failure::Interrupted(m) => (m.clone(), "run the command again".to_string()),
        };
        let doc = serde_json::json!({
            "error": { "message": message, "fix": fix, "exitCode": self.exit_code() }
        });
        serde_json::to_string_pretty(&doc).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_document_has_a_message_a_fix_and_the_exit_code() {
        let f = Failure::from(TableError::Token("no identity".into()));
        let v: serde_json::Value = serde_json::from_str(&f.json().unwrap()).unwrap();
        assert_eq!(v["error"]["exitCode"], 2);
        assert!(v["error"]["message"].as_str().unwrap().contains("no identity"));
        assert!(
            v["error"]["fix"]
                .as_str()
                .unwrap()
                .contains("AZURE_StorageConnectionString")
        );
        assert_eq!(Failure::Found("NOT READY".into()).json(), None);
        assert_eq!(Failure::Interrupted("x".into()).exit_code(), 130);
    }
}
