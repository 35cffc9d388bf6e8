//! What the configuration migrates, and so what `verify` and `cutover` check: every resource type or the types
//! of a per-type migration (`AZURE_IsParallel=false` with `AZURE_ResourceTypes`), and every lastUpdated or the
//! range of a specific run (`AZURE_StartDate`, `AZURE_SpecificRun` with `AZURE_EndDate`). Reports name it on
//! their first line, so a check of part of the data is never read as a check of all of it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::MigrationSettings;
use crate::fhir::format_instant;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// The types migrated, when not every type is (per-type mode with a shorter `AZURE_ResourceTypes`).
    pub types: Option<Vec<String>>,
    /// lastUpdated from (inclusive; `AZURE_StartDate`) and to (exclusive; `AZURE_EndDate` of a specific run).
    pub since: Option<DateTime<Utc>>,
    pub till: Option<DateTime<Utc>>,
}

impl Scope {
    pub fn of(m: &MigrationSettings) -> Scope {
        let all = crate::config::default_resource_types();
        let subset = !m.is_parallel && !all.iter().all(|t| m.resource_types.iter().any(|r| r == t));
        Scope {
            types: subset.then(|| m.resource_types.clone()),
            since: m.start_date,
            till: m.end_date.filter(|_| m.specific_run),
        }
    }

    /// The whole server: every type, every lastUpdated.
    pub fn is_whole(&self) -> bool {
        self.types.is_none() && self.since.is_none() && self.till.is_none()
    }

    /// The range in milliseconds, for the full check.
    pub fn millis(&self) -> (Option<i64>, Option<i64>) {
        (
            self.since.map(|t| t.timestamp_millis()),
            self.till.map(|t| t.timestamp_millis()),
        )
    }

    /// Whether an instant is in the range.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.since.is_none_or(|s| t >= s) && self.till.is_none_or(|e| t < e)
    }

    /// The first line of every report: `scope: the whole server (…)` or what part of it.
    pub fn line(&self) -> String {
        if self.is_whole() {
            return "scope: the whole server (every resource type, every lastUpdated)".into();
        }
        let types = match &self.types {
            None => "every resource type".to_string(),
            Some(t) if t.len() <= 6 => format!(
                "{} resource type(s): {} (AZURE_ResourceTypes, per-type mode)",
                t.len(),
                t.join(", ")
            ),
            Some(t) => format!(
                "{} resource types: {}, … (AZURE_ResourceTypes, per-type mode)",
                t.len(),
                t[..6].join(", ")
            ),
        };
        let range = match (self.since, self.till) {
            (None, None) => "every lastUpdated".to_string(),
            (Some(s), None) => format!("lastUpdated from {} (AZURE_StartDate)", format_instant(s)),
            (None, Some(e)) => format!("lastUpdated before {} (AZURE_EndDate)", format_instant(e)),
            (Some(s), Some(e)) => format!(
                "lastUpdated from {} to {} (AZURE_StartDate, AZURE_EndDate)",
                format_instant(s),
                format_instant(e)
            ),
        };
        format!("scope: part of the server, as configured: {types}; {range}. Nothing outside it is checked")
    }
}

/// For `check-config`: a migration of part of the server, said before anyone takes it for all of it.
pub fn warning(m: &MigrationSettings) -> Option<String> {
    let scope = Scope::of(m);
    (!scope.is_whole()).then(|| {
        format!(
            "this configuration migrates part of the source ({}); verify and cutover check that part, and `cutover --final` is NOT READY while whole-server totals differ unless run with --scope configured",
            scope.line().trim_start_matches("scope: part of the server, as configured: ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> MigrationSettings {
        let mut s = crate::config::SettingsSource::default();
        s.extend([
            ("AZURE_SourceUri", "https://source"),
            ("AZURE_DestinationUri", "https://destination"),
        ]);
        s.extend(pairs.iter().copied());
        let mut problems = Vec::new();
        let m = MigrationSettings::from_source(&s, &mut problems).expect("settings");
        assert!(problems.is_empty(), "{problems:?}");
        m
    }

    #[test]
    fn the_scope_follows_the_configuration() {
        let whole = settings(&[]);
        assert!(Scope::of(&whole).is_whole());
        // Every type in parallel mode, whatever AZURE_ResourceTypes says (it orders per-type mode and checks).
        let parallel = settings(&[("AZURE_ResourceTypes", "Patient,Observation")]);
        assert!(Scope::of(&parallel).is_whole());
        let per_type = settings(&[
            ("AZURE_IsParallel", "false"),
            ("AZURE_ResourceTypes", "Patient,Observation"),
        ]);
        let s = Scope::of(&per_type);
        assert_eq!(
            s.types.as_deref(),
            Some(&["Patient".to_string(), "Observation".to_string()][..])
        );
        assert!(
            s.line()
                .starts_with("scope: part of the server, as configured: 2 resource type(s): Patient, Observation")
        );
        let run = settings(&[
            ("AZURE_SpecificRun", "true"),
            ("AZURE_StartDate", "2024-01-01T00:00:00Z"),
            ("AZURE_EndDate", "2024-02-01T00:00:00Z"),
        ]);
        let s = Scope::of(&run);
        assert!(s.contains("2024-01-15T00:00:00Z".parse().unwrap()));
        assert!(!s.contains("2024-02-01T00:00:00Z".parse().unwrap()));
        assert!(
            s.line()
                .contains("lastUpdated from 2024-01-01T00:00:00.000Z to 2024-02-01T00:00:00.000Z"),
            "{}",
            s.line()
        );
        assert!(warning(&run).is_some() && warning(&whole).is_none());
    }
}
