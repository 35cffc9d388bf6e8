//! The code's structure stays a tree: no two top-level modules of the application crate use each other (directly
//! or around a loop), and neither do two modules inside one folder. A cycle means neither can be understood,
//! tested or changed alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module names that follow `prefix` in code (comments left out).
fn uses(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            rest = &rest[at + prefix.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// A cycle in `graph`, if there is one (as the list of its nodes).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

/// The module a file belongs to at one level: `dir/name.rs` or `dir/name/...` is `name`.
fn module_of(base: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(base).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    Some(first.trim_end_matches(".rs").to_string())
}

fn graph(base: &Path, prefix: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(base, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(base, file) else { continue };
        if matches!(module.as_str(), "lib" | "main" | "mod") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(uses(&text, prefix).into_iter().filter(|d| *d != module));
    }
    let known: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| known.contains(d));
    }
    graph
}

#[test]
fn top_level_modules_form_no_cycle() {
    let top = graph(&src(), "crate::");
    assert!(top.len() > 10, "{top:?}");
    assert_eq!(cycle(&top), None, "top-level modules that use each other");
}

#[test]
fn modules_inside_each_folder_form_no_cycle() {
    let mut checked = 0;
    for entry in std::fs::read_dir(src()).unwrap().flatten() {
        if entry.path().is_dir() {
            let inner = graph(&entry.path(), "super::");
            assert_eq!(cycle(&inner), None, "in {}", entry.path().display());
            checked += 1;
        }
    }
    assert!(checked >= 8);
}

#[test]
fn a_planted_cycle_is_found() {
    let g: BTreeMap<String, BTreeSet<String>> = [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
        .collect();
    assert_eq!(cycle(&g).map(|c| c.len()), Some(3));
    assert_eq!(
        uses("use crate::fhir::x; // crate::state", "crate::"),
        BTreeSet::from(["fhir".to_string()])
    );
}
