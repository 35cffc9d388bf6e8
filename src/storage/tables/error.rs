/// What can go wrong talking to Table storage. Callers branch on [`TableError::Conflict`] (another writer won
/// the race: re-read and decide again), [`TableError::AlreadyExists`] and [`TableError::NotFound`]; everything
/// else is reported to the operator with the hint in its message.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "row ({partition_key}, {row_key}) in table '{table}' changed since it was read (ETag mismatch); it must be re-read before writing"
    )]
    Conflict {
        table: String,
        partition_key: String,
        row_key: String,
    },
    #[error("row ({partition_key}, {row_key}) already exists in table '{table}'")]
    AlreadyExists {
        table: String,
        partition_key: String,
        row_key: String,
    },
    #[error("row ({partition_key}, {row_key}) does not exist in table '{table}'")]
    NotFound {
        table: String,
        partition_key: String,
        row_key: String,
    },
    #[error("table storage refused {operation} on '{table}': HTTP {status} {code}: {message}{}", hint(*.status, code))]
    Service {
        operation: &'static str,
        table: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "could not reach table storage at {endpoint} for {operation}: {source}. Check that the storage account is running (locally: Azurite) and reachable from where the tool runs (firewall, private endpoint), and the storage setting (AZURE_StorageConnectionString or AZURE_StagingStorageUri); timers try again on their next tick"
    )]
    Transport {
        operation: &'static str,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "could not get an access token for table storage: {0}. In Azure, check that the Function App's managed identity is enabled and has the 'Storage Table Data Contributor' role on the storage account; on a workstation set AZURE_CredentialType=DeveloperTools and sign in with `az login`"
    )]
    Token(String),
    #[error("table storage sent a response the tool cannot read during {operation}: {detail}")]
    InvalidResponse { operation: &'static str, detail: String },
    #[error("'{0}' is not a valid table name: use 3 to 63 letters and digits, starting with a letter")]
    InvalidTableName(String),
    #[error(
        "invalid {which} {value:?}: keys must be at most 1 KiB and must not contain '/', '\\', '#', '?' or control characters"
    )]
    InvalidKey { which: &'static str, value: String },
}

impl TableError {
    /// The table itself is missing (as opposed to a row in it).
    pub fn is_table_missing(&self) -> bool {
        matches!(self, TableError::Service { code, .. } if code == "TableNotFound")
    }
}

fn hint(status: u16, code: &str) -> &'static str {
    match (status, code) {
        (401 | 403, _) => {
            " (the storage credential was refused: check the account key, or the managed identity's 'Storage Table Data Contributor' role)"
        }
        (404, "TableNotFound") => " (the table does not exist; the tool creates its tables at start-up)",
        (503, _) => " (storage is throttling or busy; the next tick retries)",
        _ => "",
    }
}
