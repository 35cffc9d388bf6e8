//! The custom events this tool sends and the property keys each may carry: the contract the dashboard, the alert
//! rules and operators' own queries rely on. The original tool's events keep their names and keys exactly; the
//! ones marked `added` are new. Tests hold the code, `docs/telemetry.md` and every KQL file under `infra/` to this
//! list.

/// One custom event name and every property key it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    pub name: &'static str,
    pub properties: &'static [&'static str],
    /// Not in the original tool.
    pub added: bool,
}

pub const EVENTS: &[EventSpec] = &[
    EventSpec {
        name: "Export",
        properties: &[
            "ExportStatus",
            "ExportId",
            "StatusUrl",
            "Since",
            "Till",
            "TotalResources",
            "SearchParameterCount",
            "FailedExportCount",
            "FailedExportType",
            "FailureReason",
        ],
        added: false,
    },
    EventSpec {
        name: "Import",
        properties: &[
            "ImportStatus",
            "ImportId",
            "StatusUrl",
            "SourceResourceCount",
            "DestinationResourceCount",
            "SourceError",
            "DestinationError",
            "TotalImportResources",
            "TotalExportResources",
            "FailedImportCount",
            "FailedResourceType",
            "SearchParameterCount",
            "FailedExportCount",
            "FailedExportType",
            "FailureReason",
        ],
        added: false,
    },
    EventSpec {
        name: "ImportTill",
        properties: &["Till"],
        added: false,
    },
    EventSpec {
        name: "SurfaceCheck",
        properties: &["Resource", "SourceCount", "DestinationCount", "Result"],
        added: false,
    },
    EventSpec {
        name: "DeepCheck",
        properties: &["Resource", "id", "Result"],
        added: false,
    },
    EventSpec {
        name: "ExportRetries",
        properties: &[
            "Status",
            "MaxExportRetries",
            "ConfiguredLimit",
            "ExportTableName",
            "PartitionKey",
            "Time",
            "ActionRequired",
        ],
        added: false,
    },
    EventSpec {
        name: "MaxExportRetriesCleared",
        properties: &["PartitionKey", "RowKey", "ClearedAt"],
        added: false,
    },
    EventSpec {
        name: "FullCheck",
        properties: &["Compared", "Missing", "Extra", "Different", "Result"],
        added: true,
    },
    EventSpec {
        name: "ImportErrors",
        properties: &[
            "ImportId",
            "Since",
            "Till",
            "FailedImportCount",
            "FailedResourceType",
            "Conflicts",
            "Duplicates",
            "Invalid",
        ],
        added: true,
    },
    EventSpec {
        name: "Reconcile",
        properties: &[
            "RunId",
            "HardDeletedAtSource",
            "MissingAtDestination",
            "PendingSoftDeletes",
            "Deleted",
            "Applied",
            "Result",
        ],
        added: true,
    },
    EventSpec {
        name: "ReconcileDelete",
        properties: &["RunId", "Resource", "id"],
        added: true,
    },
    EventSpec {
        name: "ImportFailure",
        properties: &[
            "ResourceType",
            "ResourceId",
            "VersionId",
            "LastUpdated",
            "Kind",
            "Class",
            "State",
            "Window",
            "Attempts",
            "Message",
            "ErrorFile",
        ],
        added: true,
    },
    EventSpec {
        name: "ClockSkew",
        properties: &["SkewSeconds", "SafetyLagSeconds"],
        added: true,
    },
    EventSpec {
        name: "WindowSkipped",
        properties: &["Since", "Till", "Reason"],
        added: true,
    },
    EventSpec {
        name: "ExportBoundary",
        properties: &["ExportId", "Since", "Till", "TillEarly", "Reason"],
        added: true,
    },
];

/// Properties whose values are a fixed set (dashboards and alerts compare against them).
pub const VALUES: &[(&str, &str, &[&str])] = &[
    ("Export", "ExportStatus", &["Started", "Running", "Completed", "Failed"]),
    ("Import", "ImportStatus", &["Started", "Running", "Completed", "Failed"]),
    ("SurfaceCheck", "Result", &["Pass", "Fail"]),
    ("DeepCheck", "Result", &["Pass", "Fail"]),
    ("FullCheck", "Result", &["Pass", "Fail"]),
    ("ExportRetries", "Status", &["MaxRetriesReached"]),
    ("Reconcile", "Result", &["Pass", "Fail", "Refused"]),
    ("Reconcile", "Applied", &["true", "false"]),
    ("ImportFailure", "Class", &["Benign", "Transient", "Permanent"]),
    ("ImportFailure", "State", &["Open", "Retrying", "Resolved", "Accepted"]),
    (
        "ImportFailure",
        "Kind",
        &[
            "Duplicate",
            "Conflict",
            "InvalidId",
            "WrongType",
            "SearchParameter",
            "Future",
            "Invalid",
            "Unreadable",
            "SameMillisecond",
        ],
    ),
];

/// The allowed values of `key` on event `name`, when they are a fixed set.
pub fn allowed_values(name: &str, key: &str) -> Option<&'static [&'static str]> {
    VALUES
        .iter()
        .find(|(n, k, _)| *n == name && *k == key)
        .map(|(_, _, v)| *v)
}

/// The spec of an event name.
pub fn spec(name: &str) -> Option<&'static EventSpec> {
    EVENTS.iter().find(|e| e.name == name)
}

/// Why an event breaks the contract, if it does: an unknown name, or a key its spec does not list.
pub fn violation(name: &str, keys: &[&str]) -> Option<String> {
    let Some(spec) = spec(name) else {
        return Some(format!("event '{name}' is not in the telemetry contract"));
    };
    let unknown: Vec<&str> = keys.iter().copied().filter(|k| !spec.properties.contains(k)).collect();
    (!unknown.is_empty()).then(|| format!("event '{name}' carries keys outside the contract: {unknown:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_keys_are_unique_per_event() {
        for (i, e) in EVENTS.iter().enumerate() {
            assert!(EVENTS[i + 1..].iter().all(|o| o.name != e.name), "{}", e.name);
            for (j, k) in e.properties.iter().enumerate() {
                assert!(!e.properties[j + 1..].contains(k), "{}.{k}", e.name);
            }
        }
    }

    #[test]
    fn fixed_values_belong_to_listed_keys() {
        for (name, key, _) in VALUES {
            assert!(spec(name).unwrap().properties.contains(key), "{name}.{key}");
        }
        assert_eq!(allowed_values("FullCheck", "Result"), Some(&["Pass", "Fail"][..]));
        assert_eq!(allowed_values("FullCheck", "Compared"), None);
    }

    #[test]
    fn violations_name_the_problem() {
        assert_eq!(violation("ImportTill", &["Till"]), None);
        assert!(violation("ImportTill", &["till"]).unwrap().contains("[\"till\"]"));
        assert!(
            violation("Exports", &[])
                .unwrap()
                .contains("not in the telemetry contract")
        );
    }
}
