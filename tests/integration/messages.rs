//! Every operator-facing error says what failed and what to do about it (issue 18): token refused, storage or
//! server unreachable, a missing role, the destination locked, a failure key that does not exist, … Each is
//! built as the tool builds it and must carry a fix an operator can act on.

use fhir_migration_tool::engine::failures::RequestError;
use fhir_migration_tool::fhir::FhirError;
use fhir_migration_tool::fhir::auth::{MANAGED_IDENTITY_HINT, TokenError};
use fhir_migration_tool::storage::blob::BlobError;
use fhir_migration_tool::storage::tables::TableError;

/// Words that start an instruction in the tool's messages.
const FIXES: &[&str] = &[
    "check ",
    "Check ",
    "grant ",
    "set ",
    "switch ",
    "sign in",
    "list them",
    "say why",
    "it is retried",
];

#[tokio::test]
async fn every_operator_facing_error_carries_a_fix() {
    let refused = reqwest::Client::new()
        .get("http://127.0.0.1:1/")
        .send()
        .await
        .expect_err("nothing listens on port 1");
    let rejected = |status: u16| FhirError::Rejected {
        status,
        url: "https://dst.example/$import".into(),
        diagnostics: "refused".into(),
        retry_after: None,
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "no token (managed identity on a workstation)",
            FhirError::Token(TokenError {
                scope: "https://dst.example/.default".into(),
                message: "no managed identity endpoint".into(),
                hint: MANAGED_IDENTITY_HINT,
            })
            .to_string(),
        ),
        ("token not accepted", rejected(401).to_string()),
        ("missing FHIR role", rejected(403).to_string()),
        ("wrong URL", rejected(404).to_string()),
        ("destination in initial import mode", rejected(423).to_string()),
        ("server busy", rejected(503).to_string()),
        (
            "server unreachable",
            FhirError::Transport {
                url: "https://dst.example/metadata".into(),
                message: "could not connect: Connection refused".into(),
            }
            .to_string(),
        ),
        (
            "storage unreachable",
            TableError::Transport {
                operation: "create table",
                endpoint: "http://127.0.0.1:1/devstoreaccount1".into(),
                source: refused,
            }
            .to_string(),
        ),
        (
            "storage role missing",
            TableError::Service {
                operation: "insert",
                table: "chunk".into(),
                status: 403,
                code: "AuthorizationPermissionMismatch".into(),
                message: "not allowed".into(),
            }
            .to_string(),
        ),
        ("storage token", TableError::Token("no identity".into()).to_string()),
        (
            "blob role missing",
            BlobError::Service {
                operation: "upload",
                container: "import-1".into(),
                name: "payload.json".into(),
                status: 403,
                code: "AuthorizationPermissionMismatch".into(),
            }
            .to_string(),
        ),
        (
            "unknown failure key",
            RequestError::Unknown("Patient|nope|1".into()).to_string(),
        ),
        ("accepting a loss without a reason", RequestError::NoReason.to_string()),
    ];
    let without_fix: Vec<_> = cases
        .iter()
        .filter(|(_, message)| !FIXES.iter().any(|f| message.contains(f)))
        .collect();
    assert!(
        without_fix.is_empty(),
        "errors that do not say what to do: {without_fix:#?}"
    );
}
