//! Where setting values come from: `local.settings.json` (its `Values`), then the process environment, later
//! layers winning. Names are matched case-insensitively, as the original tool's .NET binder did.

use std::collections::HashMap;
use std::path::Path;

/// A flat, case-insensitive view of every setting value.
#[derive(Debug, Clone, Default)]
pub struct SettingsSource {
    values: HashMap<String, (String, String)>,
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

    /// Every (name, value) pair, names as first given (to hand the same settings to a child process).
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.values().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `name` (any case); blank values count as unset, as they did in the original.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(&name.to_ascii_lowercase())
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The first of several accepted names that is set (for settings the original spelled two ways).
    pub fn get_any(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.get(n))
    }
}

#[cfg(test)]
mod tests {
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
