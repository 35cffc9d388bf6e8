//! The Functions app layout at the repository root agrees with the code: one folder per function with exactly
//! the function.json the handler expects, a host.json that starts this binary in payload mode, and a
//! local.settings.sample.json that lists every setting the code reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fhir_migration_tool::functions::{FUNCTIONS, FunctionSpec};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn function_folders() -> BTreeSet<String> {
    std::fs::read_dir(root())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_folder_has_a_route_and_every_route_has_a_folder() {
    let folders = function_folders();
    let routes: BTreeSet<String> = FUNCTIONS.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(folders, routes);
}

#[test]
fn each_function_json_declares_what_its_handler_parses() {
    for spec in FUNCTIONS {
        let on_disk = read_json(&root().join(spec.name).join("function.json"));
        assert_eq!(
            on_disk,
            spec.function_json(),
            "{}/function.json differs from its FunctionSpec",
            spec.name
        );
        assert_eq!(FunctionSpec::find(spec.name), Some(spec));
        // The host refuses an HTTP call without a function (or admin) key only if the binding says so.
        if on_disk["bindings"][0]["type"] == "httpTrigger" {
            let level = on_disk["bindings"][0]["authLevel"].as_str();
            assert!(
                matches!(level, Some("function" | "admin")),
                "{} must require a key, has authLevel {level:?}",
                spec.name
            );
        }
    }
}

#[test]
fn host_json_starts_this_binary_in_payload_mode() {
    let host = read_json(&root().join("host.json"));
    assert_eq!(host["version"], "2.0");
    let handler = &host["customHandler"];
    assert_eq!(handler["description"]["defaultExecutablePath"], env!("CARGO_PKG_NAME"));
    assert_eq!(handler["description"]["arguments"], serde_json::json!(["serve"]));
    // Payload mode: every trigger arrives as Data/Metadata at /<FunctionName>.
    assert_eq!(handler["enableForwardingHttpRequest"], false);
    assert_eq!(
        host["extensionBundle"]["id"],
        "Microsoft.Azure.Functions.ExtensionBundle"
    );
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    let timeout = host["functionTimeout"].as_str().unwrap();
    let parts: Vec<u32> = timeout.split(':').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "functionTimeout is hh:mm:ss");
    assert!(
        parts[0] * 3600 + parts[1] * 60 + parts[2] <= 600,
        "Consumption plans allow at most 10 minutes"
    );
}

/// Every `"AZURE_..."` (and `AzureWebJobsStorage`, `APPLICATIONINSIGHTS_CONNECTION_STRING`) literal in src/
/// outside unit tests names a setting the code reads.
pub(crate) fn settings_read_by_code() -> BTreeSet<String> {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests at the bottom of a file use made-up names; only production code counts.
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for chunk in code.split('"').skip(1).step_by(2) {
                    let is_name = chunk.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    let other = ["AzureWebJobsStorage", "APPLICATIONINSIGHTS_CONNECTION_STRING"];
                    if is_name && (chunk.starts_with("AZURE_") || other.contains(&chunk)) {
                        found.insert(chunk.to_string());
                    }
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&root().join("src"), &mut found);
    found
}

#[test]
fn the_sample_settings_list_every_setting_the_code_reads() {
    let sample = read_json(&root().join("local.settings.sample.json"));
    let values = sample["Values"].as_object().expect("a Values object");
    assert_eq!(values["FUNCTIONS_WORKER_RUNTIME"], "custom");
    assert!(
        values.values().all(Value::is_string),
        "local.settings.json values must be strings"
    );
    let read = settings_read_by_code();
    assert!(
        read.contains("AZURE_ChunkTableName"),
        "the scan finds settings: {read:?}"
    );
    for name in &read {
        assert!(
            values.contains_key(name),
            "{name} is read by the code but missing from local.settings.sample.json"
        );
    }
    // Every %Setting% a function.json refers to must be listed too, or the host cannot resolve the binding.
    for spec in FUNCTIONS {
        let text = std::fs::read_to_string(root().join(spec.name).join("function.json")).unwrap();
        for reference in text.split('%').skip(1).step_by(2) {
            assert!(
                values.contains_key(reference),
                "{}: %{reference}% is not in the sample settings",
                spec.name
            );
        }
    }
}

/// docs/reliability.md names its evidence as `module::test`; every one must exist, so the table cannot drift
/// from the suite.
#[test]
fn every_test_named_in_the_reliability_doc_exists() {
    let doc = std::fs::read_to_string(root().join("docs/reliability.md")).unwrap();
    let mut sources = String::new();
    for dir in ["tests/integration", "src"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    sources.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
    }
    let mut named = 0;
    for quoted in doc.split('`').skip(1).step_by(2) {
        let Some((module, rest)) = quoted.split_once("::") else {
            continue;
        };
        if !module.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let names: Vec<&str> = match rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            Some(list) => list.split(',').map(str::trim).collect(),
            None => vec![rest],
        };
        for name in names.into_iter().filter(|n| !n.contains('*') && !n.contains('…')) {
            named += 1;
            assert!(
                sources.contains(&format!("fn {name}(")),
                "docs/reliability.md names {module}::{name}, which does not exist"
            );
        }
    }
    assert!(named >= 15, "{named} tests named");
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The README is a first screen that links into docs/; every relative link of the README and of every page in
/// docs/ names a file that exists and, with `#anchor`, a heading that file has.
#[test]
fn the_readme_and_docs_links_resolve() {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let anchors = |path: &Path| -> BTreeSet<String> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut in_code = false;
        text.lines()
            .filter(|l| {
                if l.starts_with("```") {
                    in_code = !in_code;
                }
                !in_code && l.starts_with('#')
            })
            .map(|l| slug(l.trim_start_matches('#')))
            .collect()
    };
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.starts_with("http://") || target.starts_with("https://") || target.contains(' ') {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file_path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !file_path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
            } else if !anchor.is_empty()
                && file_path.extension().is_some_and(|e| e == "md")
                && !anchors(&file_path).contains(anchor)
            {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(checked > 20, "the scan finds links: {checked}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.len() < 15 * 1024,
        "the README stays a first screen: {} bytes",
        readme.len()
    );
}
