//! `scripts/package`: the run-from-package zip has host.json, every function folder and the binary host.json names
//! at its root, the binary executable, and the same bytes when built twice.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{python_tools, unique_name};

/// One zip entry: its name, Unix mode, and (stored or deflated) size.
#[derive(Debug)]
struct Entry {
    name: String,
    mode: u32,
    size: u32,
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the central directory (PKZIP APPNOTE §4.3.12, §4.3.16): enough to check names and modes.
fn entries(zip: &[u8]) -> Vec<Entry> {
    let eocd = (0..=zip.len() - 22)
        .rev()
        .find(|&i| u32_at(zip, i) == 0x0605_4b50)
        .expect("an end-of-central-directory record");
    let count = u16_at(zip, eocd + 10);
    let mut at = u32_at(zip, eocd + 16) as usize;
    let mut out = Vec::new();
    for _ in 0..count {
        assert_eq!(u32_at(zip, at), 0x0201_4b50, "central directory header");
        let made_by_system = zip[at + 5];
        let size = u32_at(zip, at + 24);
        let (name_len, extra_len, comment_len) = (u16_at(zip, at + 28), u16_at(zip, at + 30), u16_at(zip, at + 32));
        let external = u32_at(zip, at + 38);
        assert_eq!(made_by_system, 3, "entries carry Unix modes");
        let name = String::from_utf8(zip[at + 46..at + 46 + name_len].to_vec()).unwrap();
        out.push(Entry {
            name,
            mode: external >> 16,
            size,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    out
}

fn package(out: &Path) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = Command::new(root.join("scripts/package"))
        .args(["--binary", env!("CARGO_BIN_EXE_fhir-migration-tool"), "--out"])
        .arg(out)
        .output()
        .expect("scripts/package runs");
    assert!(
        run.status.success(),
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let zip: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "zip"))
        .collect();
    let versioned = out.join(format!("fhir-migration-tool-{}.zip", env!("CARGO_PKG_VERSION")));
    // The release asset: the name Flex Consumption requires, at the URL the template deploys by default.
    let asset = out.join("released-package.zip");
    assert_eq!(zip.len(), 2, "{zip:?}");
    let bytes = std::fs::read(&versioned).unwrap();
    assert!(
        bytes == std::fs::read(&asset).unwrap(),
        "released-package.zip is the same package"
    );
    let template: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("infra/main.json")).unwrap(),
    )
    .unwrap();
    let uri = template["parameters"]["packageUri"]["defaultValue"].as_str().unwrap();
    assert!(
        uri.ends_with(&format!("/v{}/released-package.zip", env!("CARGO_PKG_VERSION"))),
        "the template deploys this version's release asset by default: {uri}"
    );
    bytes
}

#[test]
fn the_package_has_everything_the_host_needs_at_its_root() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(unique_name("package"));
    let first = package(&dir.join("a"));
    let second = package(&dir.join("b"));
    assert!(first == second, "the same inputs give the same zip");

    let entries = entries(&first);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let host: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("host.json")).unwrap()).unwrap();
    let executable = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .unwrap();
    assert_eq!(executable, "fhir-migration-tool", "host.json names the binary");

    let mut expected = vec!["host.json".to_string()];
    let mut folders: Vec<String> = fhir_migration_tool::functions::FUNCTIONS
        .iter()
        .map(|f| f.name.to_string())
        .collect();
    folders.sort();
    expected.extend(folders.iter().map(|f| format!("{f}/function.json")));
    expected.push(executable.to_string());
    expected.push("release.json".to_string());
    assert_eq!(names, expected);

    for e in &entries {
        assert_eq!(e.mode & 0o170000, 0o100000, "{} is a regular file", e.name);
        let want = if e.name == executable { 0o755 } else { 0o644 };
        assert_eq!(e.mode & 0o777, want, "{} mode", e.name);
        assert!(e.size > 0, "{} is not empty", e.name);
    }
    // The zip's host.json is the repository's; release.json says what was built.
    let unzip = |name: &str| {
        let out = Command::new(python_tools())
            .args([
                "-c",
                "import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))",
            ])
            .arg(
                dir.join("a")
                    .join(format!("fhir-migration-tool-{}.zip", env!("CARGO_PKG_VERSION"))),
            )
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(unzip("host.json"), std::fs::read(root.join("host.json")).unwrap());
    let release: serde_json::Value = serde_json::from_slice(&unzip("release.json")).unwrap();
    assert_eq!(release["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(release["functions"].as_array().unwrap().len(), folders.len());
    assert!(release["libc"].as_str().unwrap().starts_with("glibc >= ") || release["libc"] == "static");
    let _ = std::fs::remove_dir_all(dir);
}
