//! The dashboard and alert definitions under `infra/` against the telemetry the code sends: every KQL file is
//! used by a template, every template's file exists, and every event name, property and status value a query
//! uses is one the code emits (`telemetry::contract`). `docs/telemetry.md` documents every event and property.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fhir_migration_tool::telemetry::contract::{self, EVENTS};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

fn kql_files() -> Vec<PathBuf> {
    let infra = root().join("infra");
    let mut all = files(&infra.join("dashboard/queries"), "kql");
    all.extend(files(&infra.join("alerts"), "kql"));
    all
}

/// The double-quoted strings at the start of `text` (after spaces), as in `== "X"` or `in ("A", "B")`.
fn compared_values(text: &str) -> Vec<String> {
    let t = text.trim_start();
    let rest = if let Some(r) = t.strip_prefix("==").or_else(|| t.strip_prefix("=~")) {
        r.trim_start()
    } else if let Some(r) = t.strip_prefix("in") {
        let r = r.trim_start();
        match r.strip_prefix('(') {
            Some(list) => {
                let end = list.find(')').unwrap_or(list.len());
                return list[..end]
                    .split(',')
                    .filter_map(|v| v.trim().strip_prefix('"')?.strip_suffix('"').map(str::to_string))
                    .collect();
            }
            None => return Vec::new(),
        }
    } else {
        return Vec::new();
    };
    rest.strip_prefix('"')
        .and_then(|r| r.split_once('"'))
        .map(|(v, _)| vec![v.to_string()])
        .unwrap_or_default()
}

/// What a query uses: event names compared with `name`, and (property, compared values) pairs.
struct Usage {
    events: BTreeSet<String>,
    properties: Vec<(String, Vec<String>)>,
}

fn usage(kql: &str) -> Usage {
    let code: String = kql
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut events = BTreeSet::new();
    for (i, _) in code.match_indices("name") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        events.extend(compared_values(&code[i + "name".len()..]));
    }
    let mut properties = Vec::new();
    for (i, _) in code.match_indices("customDimensions") {
        let rest = &code[i + "customDimensions".len()..];
        let (key, after) = if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(r.len());
            (&r[..end], &r[end..])
        } else if let Some(r) = rest.strip_prefix("[\"") {
            let end = r.find('"').unwrap_or(r.len());
            (&r[..end], r[end..].trim_start_matches("\"]"))
        } else {
            panic!("customDimensions used without a key: {rest:.40}");
        };
        // `tostring(customDimensions.X) == "v"`: the comparison follows the closing parenthesis.
        let after = after.trim_start().strip_prefix(')').unwrap_or(after);
        properties.push((key.to_string(), compared_values(after)));
    }
    Usage { events, properties }
}

#[test]
fn every_query_uses_only_events_properties_and_values_the_code_sends() {
    let queries = kql_files();
    assert!(queries.len() >= 25, "{} KQL files", queries.len());
    let mut failures = Vec::new();
    for path in &queries {
        let file = path.strip_prefix(root()).unwrap().display().to_string();
        let kql = std::fs::read_to_string(path).unwrap();
        assert!(kql.contains("customEvents"), "{file}: queries read customEvents");
        let used = usage(&kql);
        if used.events.is_empty() {
            failures.push(format!("{file}: names no event"));
        }
        for event in &used.events {
            if contract::spec(event).is_none() {
                failures.push(format!("{file}: event '{event}' is not sent by the tool"));
            }
        }
        for (key, values) in &used.properties {
            let owners: Vec<&str> = used
                .events
                .iter()
                .filter(|e| contract::spec(e).is_some_and(|s| s.properties.contains(&key.as_str())))
                .map(String::as_str)
                .collect();
            if owners.is_empty() {
                failures.push(format!("{file}: no event it reads carries '{key}'"));
            }
            for value in values {
                let allowed = owners.iter().any(|e| match contract::allowed_values(e, key) {
                    Some(set) => set.contains(&value.as_str()),
                    None => true,
                });
                if !allowed {
                    failures.push(format!("{file}: {key} is never \"{value}\""));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checker_catches_wrong_names_keys_and_values() {
    let u = usage(
        "customEvents\n| where name == \"Export\" and tostring(customDimensions.ExportStatus) == \"Done\"\n| where name in (\"Import\", \"Nope\")\n| extend x = customDimensions[\"TotalResources\"], y = tostring(customDimensions.Bogus)",
    );
    assert_eq!(
        u.events,
        BTreeSet::from(["Export".into(), "Import".into(), "Nope".into()])
    );
    let keys: Vec<&str> = u.properties.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["ExportStatus", "TotalResources", "Bogus"]);
    assert_eq!(u.properties[0].1, ["Done"]);
    // `name` inside other identifiers, and in comments, does not count.
    let u = usage("// name == \"Fake\"\ncustomEvents | project Event = name, filename == \"x\"");
    assert!(u.events.is_empty());
}

#[test]
fn templates_load_every_query_file_and_nothing_else() {
    let modules = root().join("infra/modules");
    let mut loaded = BTreeSet::new();
    for path in files(&modules, "bicep") {
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices("loadTextContent('") {
            let rest = &text[i + "loadTextContent('".len()..];
            let relative = &rest[..rest.find('\'').unwrap()];
            let target = modules.join(relative);
            assert!(
                target.exists(),
                "{} loads {relative}, which does not exist",
                path.display()
            );
            loaded.insert(target.canonicalize().unwrap());
        }
        // The original's dashboard pointed one tile at a Microsoft test subscription.
        assert!(
            !text.contains("/subscriptions/"),
            "{}: hard-coded resource id",
            path.display()
        );
        for leftover in ["TestDurableFunc", "'Analytics'"] {
            assert!(!text.contains(leftover), "{}: leftover {leftover}", path.display());
        }
    }
    let files: BTreeSet<PathBuf> = kql_files().iter().map(|p| p.canonicalize().unwrap()).collect();
    let unused: Vec<_> = files.difference(&loaded).collect();
    assert!(unused.is_empty(), "KQL files no template loads: {unused:?}");
}

#[test]
fn dashboard_tiles_share_one_time_range() {
    let text = std::fs::read_to_string(root().join("infra/modules/dashboard.bicep")).unwrap();
    // Every tile's TimeRange input is the parameter; no tile fixes its own.
    for (i, _) in text.match_indices("name: 'TimeRange'") {
        let line = text[i..].lines().next().unwrap();
        assert!(line.contains("value: timeRange"), "{line}");
    }
    // Whole-migration tiles carry their own range in the query, and say so.
    assert!(text.contains("name: 'IsQueryContainTimeRange', isOptional: true, value: t.whole"));
    for tile in text.lines().filter(|l| l.contains("whole: true")) {
        let file = tile
            .split("queries/")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .unwrap();
        let kql = std::fs::read_to_string(root().join("infra/dashboard/queries").join(file)).unwrap();
        assert!(
            kql.contains("ago("),
            "{file} is a whole-migration tile but sets no range"
        );
    }
}

#[test]
fn the_telemetry_doc_lists_every_event_and_property() {
    let doc = std::fs::read_to_string(root().join("docs/telemetry.md")).expect("docs/telemetry.md exists");
    for spec in EVENTS {
        assert!(
            doc.contains(&format!("`{}`", spec.name)),
            "docs/telemetry.md lacks event {}",
            spec.name
        );
        let section = doc
            .split("\n### ")
            .find(|s| s.starts_with(&format!("`{}`", spec.name)))
            .unwrap_or_else(|| panic!("docs/telemetry.md has no '### `{}`' section", spec.name));
        for key in spec.properties {
            assert!(
                section.contains(&format!("`{key}`")),
                "docs: {} lacks `{key}`",
                spec.name
            );
        }
    }
}
