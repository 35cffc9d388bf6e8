//! The status strings of window and payload rows, parsed once where a row is read.

/// A window's export state (`IsExportRunning`), parsed once where the row is read. The strings are the original
/// tool's, plus `Starting` (intent recorded, `$export` not yet confirmed) and `Halted` (a failure that retrying
/// cannot fix: the window waits for an operator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportStatus {
    Starting,
    Started,
    Running,
    Completed,
    Failed,
    Halted,
    /// A value this release does not know (a newer release wrote it): left alone and reported.
    Other(String),
}

/// An import's state (`IsImportRunning`), for a payload and as a window's summary over its payloads. `Posting`
/// means the `$import` POST is in flight (a crash re-posts the same definition, which the server
/// de-duplicates); `Superseded` marks a payload of an export attempt that was replaced (its job cancelled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportStatus {
    NotStarted,
    Posting,
    Started,
    Running,
    Completed,
    Failed,
    Halted,
    Superseded,
    Other(String),
}

impl ExportStatus {
    pub fn as_str(&self) -> &str {
        match self {
            ExportStatus::Starting => "Starting",
            ExportStatus::Started => "Started",
            ExportStatus::Running => "Running",
            ExportStatus::Completed => "Completed",
            ExportStatus::Failed => "Failed",
            ExportStatus::Halted => "Halted",
            ExportStatus::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> ExportStatus {
        match s {
            "Starting" => ExportStatus::Starting,
            "Started" => ExportStatus::Started,
            "Running" => ExportStatus::Running,
            "Completed" => ExportStatus::Completed,
            "Failed" => ExportStatus::Failed,
            "Halted" => ExportStatus::Halted,
            other => ExportStatus::Other(other.to_string()),
        }
    }
}

impl ImportStatus {
    pub fn as_str(&self) -> &str {
        match self {
            ImportStatus::NotStarted => "Not Started",
            ImportStatus::Posting => "Posting",
            ImportStatus::Started => "Started",
            ImportStatus::Running => "Running",
            ImportStatus::Completed => "Completed",
            ImportStatus::Failed => "Failed",
            ImportStatus::Halted => "Halted",
            ImportStatus::Superseded => "Superseded",
            ImportStatus::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> ImportStatus {
        match s {
            "Not Started" | "" => ImportStatus::NotStarted,
            "Posting" => ImportStatus::Posting,
            "Started" => ImportStatus::Started,
            "Running" => ImportStatus::Running,
            "Completed" => ImportStatus::Completed,
            "Failed" => ImportStatus::Failed,
            "Halted" => ImportStatus::Halted,
            "Superseded" => ImportStatus::Superseded,
            other => ImportStatus::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ImportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
