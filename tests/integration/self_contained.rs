//! A clone of this repository alone runs every test: no file reaches into a folder beside the repository (the
//! developers' reference folder is not there for users), and no test or script starts the machine's own Python,
//! whose packages differ between machines; they use the project's environment (support::python_tools, and
//! need_python_venv in scripts/lib.sh). Each rule is also run against planted text, so a rule that stopped
//! matching would fail here too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder beside the repository that holds the developers' reference material. Spelled in two halves so that
/// this file does not name it.
fn sibling_folder() -> String {
    ["..", "/shared"].concat()
}

/// Files of the project: those git tracks plus untracked ones it does not ignore (so a new file is checked before
/// its first commit). Outside a git checkout, every file but build output and installed packages.
fn project_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard", "-z"])
        .current_dir(root())
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .filter(|p| root().join(p).is_file())
            .collect();
    }
    let mut files = Vec::new();
    walk(&root(), Path::new(""), &mut files);
    files
}

fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(base.join(rel)).unwrap().flatten() {
        let name = entry.file_name();
        if [".git", "target", "node_modules", "dist"].iter().any(|n| name == *n) {
            continue;
        }
        let path = rel.join(&name);
        if entry.path().is_dir() {
            walk(base, &path, out);
        } else {
            out.push(path);
        }
    }
}

/// Rule 1: no file outside docs/ names the sibling reference folder.
fn names_sibling_folder(path: &Path, text: &str) -> Vec<String> {
    if path.starts_with("docs") {
        return Vec::new();
    }
    let needle = sibling_folder();
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(&needle))
        .map(|(n, line)| format!("{}:{}: names {needle}: {}", path.display(), n + 1, line.trim()))
        .collect()
}

/// The places allowed to start the machine's Python, each with why.
const PYTHON_ALLOWED: &[(&str, &str)] = &[
    (
        "scripts/lib.sh",
        "need_python_venv creates the project's environment, so it alone must call the system python3",
    ),
    (
        "infra/Anonymization/upload-config.sh",
        "an operator's script for their own workstation or Cloud Shell (checks the config is JSON); tests run it \
         only with --dry-run, which stops before Python",
    ),
];

fn is_python(word: &str) -> bool {
    let base = word.rsplit('/').next().unwrap_or(word);
    base == "python"
        || base
            .strip_prefix("python3")
            .is_some_and(|rest| rest.is_empty() || rest.chars().all(|c| c == '.' || c.is_ascii_digit()))
}

fn is_shell(path: &Path, text: &str) -> bool {
    path.extension().is_some_and(|e| e == "sh")
        || text.starts_with("#!/usr/bin/env bash")
        || text.starts_with("#!/bin/")
}

/// Rule 2: Rust code spawns Python only through support::python_tools; shell scripts only through the variable
/// need_python_venv sets. Reports each other start of a Python interpreter.
fn starts_system_python(path: &Path, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    if path.extension().is_some_and(|e| e == "rs") {
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("Command::new(") {
                rest = &rest[at + "Command::new(".len()..];
                let arg = rest.trim_start();
                if let Some(literal) = arg.strip_prefix('"') {
                    let program = literal.split('"').next().unwrap_or("");
                    if is_python(program) {
                        found.push(format!("{}:{}: spawns {program}", path.display(), n + 1));
                    }
                }
            }
        }
    } else if is_shell(path, text) {
        for (n, line) in text.lines().enumerate() {
            let code = line.split(" #").next().unwrap_or(line);
            if code.trim_start().starts_with('#') {
                continue;
            }
            // A word in command position: the first, or the one after an operator, a subshell, or a keyword.
            let spaced = code
                .replace("$(", " ; ")
                .replace(['(', '|', '&', ';', '`', '{', '}'], " ; ");
            let mut command_position = true;
            for word in spaced.split_whitespace() {
                let word = word.trim_matches(['"', '\'']);
                if command_position && is_python(word) {
                    found.push(format!("{}:{}: runs {word}", path.display(), n + 1));
                }
                command_position = matches!(word, ";" | "!" | "then" | "do" | "else" | "exec" | "time" | "sudo");
            }
        }
    }
    if !found.is_empty() && PYTHON_ALLOWED.iter().any(|(p, _)| Path::new(p) == path) {
        return Vec::new();
    }
    found
}

fn check_all(rule: fn(&Path, &str) -> Vec<String>) -> Vec<String> {
    let files = project_files();
    assert!(files.len() > 100, "the project's files were listed: {}", files.len());
    files
        .iter()
        .filter_map(|p| std::fs::read_to_string(root().join(p)).ok().map(|t| (p, t)))
        .flat_map(|(p, t)| rule(p, &t))
        .collect()
}

#[test]
fn no_file_reaches_outside_the_repository() {
    let found = check_all(names_sibling_folder);
    assert!(
        found.is_empty(),
        "a clone of the project alone has no {}: vendor what these need (tests/fixtures/README.md)\n{}",
        sibling_folder(),
        found.join("\n")
    );
}

#[test]
fn python_starts_only_from_the_projects_environment() {
    let found = check_all(starts_system_python);
    assert!(
        found.is_empty(),
        "start Python through support::python_tools (Rust) or \"$FHIRMIG_PYTHON\" after need_python_venv \
         (scripts/lib.sh):\n{}",
        found.join("\n")
    );
    for (path, why) in PYTHON_ALLOWED {
        assert!(
            root().join(path).is_file(),
            "{path} is allowed ({why}) but does not exist"
        );
    }
}

#[test]
fn the_rules_catch_planted_faults() {
    let reads = format!("const DIR: &str = \"{}/reference/fixtures\";", sibling_folder());
    assert_eq!(names_sibling_folder(Path::new("src/a.rs"), &reads).len(), 1);
    assert_eq!(names_sibling_folder(Path::new("scripts/x"), &reads).len(), 1);
    assert!(names_sibling_folder(Path::new("docs/a.md"), &reads).is_empty());

    let rs = Path::new("tests/integration/x.rs");
    for planted in [
        "let out = Command::new(\"python3\").arg(\"-c\");",
        "Command::new( \"python\" )",
        "std::process::Command::new(\"/usr/bin/python3.11\")",
    ] {
        assert_eq!(starts_system_python(rs, planted).len(), 1, "{planted}");
    }
    assert!(starts_system_python(rs, "Command::new(python_tools())").is_empty());
    assert!(starts_system_python(rs, "Command::new(\"python-dateutil-check\")").is_empty());

    let sh = Path::new("scripts/x.sh");
    for planted in [
        "python3 scripts/package.py --zip z",
        "  out=$(python3 -c 'print(1)')",
        "cd x && python -m pip install y",
        "if ok; then python3 tool.py; fi",
        "exec python3 tool.py",
    ] {
        assert_eq!(starts_system_python(sh, planted).len(), 1, "{planted}");
    }
    for fine in [
        "\"$FHIRMIG_PYTHON\" scripts/package.py",
        "# python3 in a comment",
        "echo run python3 yourself",
        "apt-get install -y python3 python3-venv",
        "command -v python3 >/dev/null",
    ] {
        assert!(starts_system_python(sh, fine).is_empty(), "{fine}");
    }
    // The allowed list is honoured only for its own files.
    assert!(starts_system_python(Path::new("scripts/lib.sh"), "python3 -m venv x").is_empty());
}
