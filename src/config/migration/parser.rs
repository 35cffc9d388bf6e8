//! Reading one setting at a time: each reader records a problem naming the setting instead of failing, so
//! start-up reports every problem at once.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use url::Url;

use super::super::SettingsSource;

pub(super) struct Parser<'a> {
    pub(super) source: &'a SettingsSource,
    pub(super) problems: &'a mut Vec<String>,
}

impl Parser<'_> {
    pub(super) fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    pub(super) fn parse_url(&mut self, name: &str, value: &str) -> Option<Url> {
        match Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            Ok(_) => {
                self.problem(format!("{name} '{value}' must be an http(s) URL"));
                None
            }
            Err(e) => {
                self.problem(format!("{name} '{value}' is not a valid URL: {e}"));
                None
            }
        }
    }

    pub(super) fn url(&mut self, name: &str) -> Option<Url> {
        match self.source.get(name) {
            Some(v) => self.parse_url(name, v),
            None => {
                self.problem(format!("{name} is required"));
                None
            }
        }
    }

    pub(super) fn flag(&mut self, names: &[&str], default: bool) -> bool {
        self.source.note_default(names[0], default);
        match self.source.get_any(names) {
            None => default,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                self.problem(format!("{} '{v}' is not true or false", names[0]));
                default
            }
        }
    }

    pub(super) fn number<T: std::str::FromStr + Copy + std::fmt::Display>(&mut self, name: &str, default: T) -> T {
        self.source.note_default(name, default);
        match self.source.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.problem(format!("{name} '{v}' is not a valid number"));
                default
            }),
        }
    }

    /// An Azure resource id (`/subscriptions/…`) or its full Resource Manager URL.
    pub(super) fn resource_id(&mut self, name: &str) -> Option<String> {
        let v = self.source.get(name)?.to_string();
        let path = match v.split_once("://") {
            Some((scheme, rest)) if scheme == "https" || scheme == "http" => {
                rest.split_once('/').map(|(_, p)| format!("/{p}")).unwrap_or_default()
            }
            _ => v.clone(),
        };
        if !path.to_ascii_lowercase().starts_with("/subscriptions/") || v.contains(['?', '#', ' ']) {
            self.problem(format!(
                "{name} '{v}' is not an Azure resource id (/subscriptions/…/providers/Microsoft.HealthcareApis/…)"
            ));
            return None;
        }
        Some(v)
    }

    pub(super) fn positive(&mut self, name: &str, default: u32) -> u32 {
        let n = self.number(name, default);
        if n == 0 {
            self.problem(format!("{name} must be at least 1"));
            return default;
        }
        n
    }

    pub(super) fn key(&mut self, name: &str, default: &str) -> String {
        let v = self.source.get_or(name, default).to_string();
        if v.chars().any(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control()) || v.len() > 200 {
            self.problem(format!("{name} '{v}' cannot be used as a table key"));
        }
        v
    }

    pub(super) fn date(&mut self, name: &str) -> Option<DateTime<Utc>> {
        let v = self.source.get(name)?;
        let parsed = DateTime::parse_from_rfc3339(v)
            .map(|d| d.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                    .ok()
                    .map(|d| d.and_utc())
            })
            .or_else(|| {
                NaiveDate::parse_from_str(v, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc())
            });
        if parsed.is_none() {
            self.problem(format!(
                "{name} '{v}' is not a date (use 2024-01-31 or 2024-01-31T00:00:00Z; times are UTC)"
            ));
        }
        parsed
    }

    /// A list setting: `NAME` as a comma-separated value, or `NAME__0`, `NAME__1`, …; either replaces the default.
    pub(super) fn list(&mut self, name: &str, default: &[&str]) -> Vec<String> {
        self.source.note_default(name, default.join(","));
        if let Some(v) = self.source.get(name) {
            return v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        let indexed: Vec<String> = (0..)
            .map_while(|i| self.source.get(&format!("{name}__{i}")).map(str::to_string))
            .collect();
        if indexed.is_empty() {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            indexed
        }
    }
}
