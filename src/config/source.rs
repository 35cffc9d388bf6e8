//! Where setting values come from: `local.settings.json` (its `Values`), then the process environment, later
//! layers winning. Names are matched case-insensitively, as the original tool's .NET binder did.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A flat, case-insensitive view of every setting value. It remembers which names the parser asked for (and
/// their defaults), so the effective configuration can be listed and names nobody reads can be warned about.
#[derive(Debug, Clone, Default)]
pub struct SettingsSource {
    values: HashMap<String, (String, String)>,
    /// Lower-case name → (name as the code spells it, default as text when the code gave one).
    asked: Arc<Mutex<BTreeMap<String, Asked>>>,
}

/// A name the code asked for: as the code spells it, and its default as text when the code gave one.
type Asked = (String, Option<String>);

/// One line of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveSetting {
    pub name: String,
    /// The value shown: redacted for secrets, summarised when long.
    pub value: String,
    pub is_default: bool,
}

/// Every setting name the tool reads anywhere: the sample settings file lists them all (a test holds it to the
/// code), including those read only in some configurations (the client-secret ones, the de-identification
/// config, …).
fn known_names() -> &'static [String] {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN.get_or_init(|| {
        let sample: serde_json::Value =
            serde_json::from_str(include_str!("../../local.settings.sample.json")).unwrap_or_default();
        sample["Values"]
            .as_object()
            .map(|values| values.keys().cloned().collect())
            .unwrap_or_default()
    })
}

/// Names whose values are never shown.
fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "secret",
        "key",
        "connectionstring",
        "connection_string",
        "password",
        "token",
        "sas",
        "storage",
    ]
    .iter()
    .any(|s| n.contains(s))
        && !n.ends_with("uri")
        && !n.ends_with("clientid")
        && !n.ends_with("tablename")
        && !n.contains("partitionkey")
        && !n.contains("rowkey")
}

/// Values that carry a key or a signature whatever their setting's name (a SAS URL in a `*Uri` setting).
fn secret_value(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    ["sig=", "accountkey=", "sharedaccesssignature=", "clientsecret="]
        .iter()
        .any(|m| v.contains(m))
}

/// Long values (the resource type list) are summarised: the first items and how many in all.
fn summarise(value: &str) -> String {
    if value.len() <= 100 {
        return value.to_string();
    }
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.len() > 5 {
        format!("{} items: {}, …", items.len(), items[..5].join(", "))
    } else {
        format!(
            "{}… ({} characters)",
            &value[..value.floor_char_boundary(97)],
            value.len()
        )
    }
}

/// Edit distance (insertions, deletions, substitutions), case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (
        a.to_ascii_lowercase().chars().collect(),
        b.to_ascii_lowercase().chars().collect(),
    );
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut previous = row[0];
        row[0] = i;
        for j in 1..=b.len() {
            let here = row[j];
            row[j] = (row[j] + 1)
                .min(row[j - 1] + 1)
                .min(previous + usize::from(a[i - 1] != b[j - 1]));
            previous = here;
        }
    }
    row[b.len()]
}

impl SettingsSource {
    /// The process environment.
    pub fn from_env() -> SettingsSource {
        let mut source = SettingsSource::default();
        source.extend(std::env::vars());
        source
    }

    /// `Values` of a `local.settings.json`, overlaid with the process environment.
    pub fn from_file_and_env(path: &Path) -> Result<SettingsSource, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        let values = json
            .get("Values")
            .and_then(|v| v.as_object())
            .ok_or_else(|| format!("{} has no \"Values\" object", path.display()))?;
        let mut source = SettingsSource::default();
        source.extend(values.iter().map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        }));
        source.extend(std::env::vars());
        Ok(source)
    }

    /// Adds or overrides values (tests build sources this way instead of touching the process environment).
    pub fn extend<K: Into<String>, V: Into<String>>(&mut self, pairs: impl IntoIterator<Item = (K, V)>) {
        for (k, v) in pairs {
            let k = k.into();
            self.values.insert(k.to_ascii_lowercase(), (k, v.into()));
        }
    }

    /// Problems with settings whose value is still an App Service Key Vault reference: the platform replaces
    /// `@Microsoft.KeyVault(...)` with the secret before the app starts, and leaves the text itself when it cannot
    /// read the secret. Used as a secret, that text would only fail later, far from its cause.
    pub fn unresolved_key_vault_references(&self) -> Vec<String> {
        let mut names: Vec<&str> = self
            .values
            .values()
            .filter(|(_, v)| {
                const REFERENCE: &str = "@Microsoft.KeyVault(";
                v.trim_start()
                    .get(..REFERENCE.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(REFERENCE))
            })
            .map(|(k, _)| k.as_str())
            .collect();
        names.sort_unstable();
        names
            .into_iter()
            .map(|name| {
                format!(
                    "{name} is still a Key Vault reference (@Microsoft.KeyVault(...)): the platform could not read \
                     the secret. Check the reference's status (portal: the app's Environment variables; or az \
                     functionapp config appsettings list), that the app's Key Vault reference identity has 'Key \
                     Vault Secrets User' on the vault and that the vault and secret exist and are reachable, then \
                     restart the app"
                )
            })
            .collect()
    }

    /// Every (name, value) pair, names as first given (to hand the same settings to a child process).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.values().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `name` (any case); blank values count as unset, as they did in the original.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_ascii_lowercase())
            .or_insert_with(|| (name.to_string(), None));
        self.values
            .get(&name.to_ascii_lowercase())
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The value of `name`, or `default` (recorded for the configuration listing).
    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.note_default(name, default);
        self.get(name).unwrap_or(default)
    }

    /// Records the default the code uses for `name` when it is unset (shown by the configuration listing).
    pub fn note_default(&self, name: &str, default: impl ToString) {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), (name.to_string(), Some(default.to_string())));
    }

    /// Every setting the code asked for, with its effective value: as set (secrets redacted, long lists
    /// summarised), or its default. Settings neither set nor defaulted are left out.
    pub fn effective(&self) -> Vec<EffectiveSetting> {
        let asked = self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        asked
            .into_values()
            .filter_map(|(name, default)| match (self.get(&name), default) {
                (Some(v), _) => Some(EffectiveSetting {
                    value: if is_secret(&name) || secret_value(v) {
                        "<redacted>".into()
                    } else {
                        summarise(v)
                    },
                    name,
                    is_default: false,
                }),
                (None, Some(d)) => Some(EffectiveSetting {
                    name,
                    value: summarise(&d),
                    is_default: true,
                }),
                (None, None) => None,
            })
            .collect()
    }

    /// `AZURE_*` names that are set but that no code reads (a typo leaves the default in force silently), each
    /// with the nearest name the code does read.
    pub fn unknown(&self) -> Vec<(String, Option<String>)> {
        let asked = self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut known: Vec<String> = asked.values().map(|(name, _)| name.clone()).collect();
        known.extend(known_names().iter().cloned());
        let is_known = |lower: &str| known.iter().any(|k| k.eq_ignore_ascii_case(lower));
        let mut out: Vec<(String, Option<String>)> = self
            .values
            .iter()
            .filter(|(lower, _)| lower.starts_with("azure_") && !is_known(lower))
            .map(|(_, (name, _))| {
                let nearest = known
                    .iter()
                    .map(|k| (distance(name, k), k))
                    .filter(|(d, k)| *d <= 3.max(k.len() / 6))
                    .min()
                    .map(|(_, k)| k.clone());
                (name.clone(), nearest)
            })
            .collect();
        out.sort();
        out
    }

    /// The first of several accepted names that is set (for settings the original spelled two ways).
    pub fn get_any(&self, names: &[&str]) -> Option<&str> {
        names.iter().map(|n| self.get(n)).fold(None, |found, v| found.or(v))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unresolved_key_vault_reference_names_the_setting_and_what_to_check() {
        let mut s = SettingsSource::default();
        s.extend([
            (
                "AZURE_ClientSecret",
                "@Microsoft.KeyVault(SecretUri=https://kv-x.vault.azure.net/secrets/source-client-secret)",
            ),
            ("AZURE_SourceUri", "https://src.example"),
            ("Other", " @microsoft.keyvault(VaultName=kv;SecretName=s)"),
            (
                "AZURE_Note",
                "mentions @Microsoft.KeyVault( later, which is no reference",
            ),
        ]);
        let problems = s.unresolved_key_vault_references();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("AZURE_ClientSecret is still a Key Vault reference"));
        assert!(problems[0].contains("Key Vault Secrets User") && problems[0].contains("restart"));
        assert!(problems[1].starts_with("Other "));
    }

    use super::*;

    #[test]
    fn lookups_ignore_case_and_blank_values() {
        let mut s = SettingsSource::default();
        s.extend([("AZURE_ChunkTableName", "chunk"), ("AZURE_Blank", "  ")]);
        assert_eq!(s.get("azure_chunktablename"), Some("chunk"));
        assert_eq!(s.get("AZURE_BLANK"), None);
        assert_eq!(s.get_any(&["AZURE_Missing", "AZURE_CHUNKTABLENAME"]), Some("chunk"));
    }

    #[test]
    fn the_effective_configuration_marks_defaults_redacts_secrets_and_summarises_lists() {
        let mut s = SettingsSource::default();
        let types = (0..40).map(|i| format!("Type{i}")).collect::<Vec<_>>().join(",");
        s.extend([
            ("AZURE_ClientSecret", "super-secret"),
            ("AZURE_ResourceTypes", types.as_str()),
            ("AZURE_SourceUri", "https://src.example"),
            (
                "AZURE_IntegrationStorageUri",
                "https://acct.blob.core.windows.net/?sv=2024&sig=abc",
            ),
        ]);
        let _ = s.get("AZURE_IntegrationStorageUri");
        let _ = (
            s.get("AZURE_ClientSecret"),
            s.get("AZURE_ResourceTypes"),
            s.get("AZURE_SourceUri"),
        );
        s.note_default("AZURE_ExportChunkTime", 30);
        let _ = s.get("AZURE_NeverSetNoDefault");
        let lines = s.effective();
        let find = |n: &str| lines.iter().find(|l| l.name == n).cloned();
        assert_eq!(find("AZURE_ClientSecret").unwrap().value, "<redacted>");
        assert_eq!(
            find("AZURE_IntegrationStorageUri").unwrap().value,
            "<redacted>",
            "a SAS in a URI"
        );
        assert_eq!(
            find("AZURE_ResourceTypes").unwrap().value,
            "40 items: Type0, Type1, Type2, Type3, Type4, …"
        );
        assert_eq!(
            find("AZURE_ExportChunkTime"),
            Some(EffectiveSetting {
                name: "AZURE_ExportChunkTime".into(),
                value: "30".into(),
                is_default: true
            })
        );
        assert_eq!(find("AZURE_SourceUri").unwrap().value, "https://src.example");
        assert!(find("AZURE_NeverSetNoDefault").is_none());
    }

    #[test]
    fn an_unknown_name_is_reported_with_the_nearest_known_one() {
        let mut s = SettingsSource::default();
        s.extend([
            ("AZURE_ExportChunkTme", "5"),
            ("AZURE_Completely_Different_Thing", "x"),
            ("PATH", "/bin"),
        ]);
        s.note_default("AZURE_ExportChunkTime", 30);
        let _ = s.get("AZURE_ExportChunkDuration");
        assert_eq!(
            s.unknown(),
            vec![
                ("AZURE_Completely_Different_Thing".to_string(), None),
                (
                    "AZURE_ExportChunkTme".to_string(),
                    Some("AZURE_ExportChunkTime".to_string())
                ),
            ]
        );
        assert_eq!(distance("kitten", "sitting"), 3);
        // A name read only in some configurations is known all the same.
        let mut s = SettingsSource::default();
        s.extend([("AZURE_ClientSecret", "x")]);
        assert!(s.unknown().is_empty());
    }

    #[test]
    fn later_layers_win() {
        let mut s = SettingsSource::default();
        s.extend([("AZURE_X", "file")]);
        s.extend([("azure_x", "env")]);
        assert_eq!(s.get("AZURE_X"), Some("env"));
    }

    #[test]
    fn reads_values_from_a_local_settings_file() {
        let dir = std::env::temp_dir().join(format!("fmt-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("local.settings.json");
        std::fs::write(
            &path,
            r#"{"IsEncrypted":false,"Values":{"AZURE_FileSetting":"x","AZURE_Num":5}}"#,
        )
        .unwrap();
        let s = SettingsSource::from_file_and_env(&path).unwrap();
        assert_eq!(s.get("AZURE_FileSetting"), Some("x"));
        assert_eq!(s.get("AZURE_Num"), Some("5"));
        std::fs::write(&path, r#"{"Values": 3}"#).unwrap();
        assert!(SettingsSource::from_file_and_env(&path).unwrap_err().contains("Values"));
    }
}
