//! The deployment assets under `infra/`: JSON and Bicep parse; main.json is generated, current and agrees with
//! main.bicep (infra/tools/check_templates.py); checkov passes with every skip explained; the template sets only
//! settings something reads; roles are least privilege, typed and principal-bound; no cloud suffix is hard-coded;
//! the README names every parameter. The de-identification assets: deidentification.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::run_python;

/// The project's root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_json_file_under_infra_parses() {
    let mut files = Vec::new();
    walk(&root().join("infra"), &mut files);
    let json: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(!json.is_empty());
    for path in json {
        let text = std::fs::read_to_string(path).unwrap();
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            panic!("{}: {e}", path.display());
        }
    }
}

fn bicep_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    walk(&root().join("infra"), &mut files);
    files.retain(|p| p.extension().is_some_and(|x| x == "bicep"));
    files.sort();
    files
}

#[test]
fn every_bicep_file_parses() {
    let files = bicep_files();
    assert!(files.len() >= 10, "{files:?}");
    let script = "import sys\nfrom pathlib import Path\nfrom pycep import BicepParser\nfailed = 0\nfor f in sys.argv[1:]:\n    try:\n        BicepParser().parse(file_path=Path(f))\n    except Exception as e:\n        failed += 1\n        print(f'{f}: {str(e)[:400]}')\nsys.exit(1 if failed else 0)\n";
    let mut args: Vec<&std::ffi::OsStr> = vec!["-c".as_ref(), script.as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let (ok, text) = run_python(&args);
    assert!(ok, "Bicep syntax errors:\n{text}");
}

/// The app-setting names main.bicep writes (keys of its settings objects).
fn template_settings() -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("infra/main.bicep")).unwrap();
    let start = text.find("var runtimeSettings").expect("the settings objects");
    let end = text[start..]
        .find("resource site ")
        .expect("the settings end before the site")
        + start;
    let mut names = std::collections::BTreeSet::new();
    for line in text[start..end].lines().filter(|l| !l.trim_start().starts_with("//")) {
        for part in line.split(['{', ',']) {
            if let Some((key, _)) = part.split_once(':') {
                let key = key.trim();
                if !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !key.starts_with("var")
                {
                    names.insert(key.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn the_template_sets_only_settings_something_reads_and_all_the_required_ones() {
    let set = template_settings();
    let mut known = crate::layout::settings_read_by_code();
    // Read by the Functions host rather than the tool.
    known.extend(
        [
            "FUNCTIONS_EXTENSION_VERSION",
            "FUNCTIONS_WORKER_RUNTIME",
            "WEBSITE_RUN_FROM_PACKAGE",
            "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
            "WEBSITE_CONTENTSHARE",
            "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
            "AzureWebJobsStorage__accountName",
        ]
        .map(String::from),
    );
    let mut crons = std::collections::BTreeSet::new();
    for spec in fhir_migration_tool::functions::FUNCTIONS {
        let text = std::fs::read_to_string(root().join(spec.name).join("function.json")).unwrap();
        crons.extend(text.split('%').skip(1).step_by(2).map(String::from));
    }
    known.extend(crons.iter().cloned());
    let unknown: Vec<_> = set.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "main.bicep sets settings nothing reads: {unknown:?}"
    );
    let mut required: Vec<String> = [
        "AZURE_SourceUri",
        "AZURE_DestinationUri",
        "AZURE_StagingStorageUri",
        "AZURE_BlobStorageUri",
        "AzureWebJobsStorage__accountName",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
    ]
    .map(String::from)
    .to_vec();
    required.extend(crons);
    for name in required {
        assert!(set.contains(&name), "main.bicep does not set {name}");
    }
    // Secrets never as plain values: the client secret is a Key Vault reference.
    let main = std::fs::read_to_string(root().join("infra/main.bicep")).unwrap();
    assert!(main.contains("AZURE_ClientSecret: vault!.outputs.secretReference"));
    assert!(main.contains("@secure()\nparam clientSecret string"));
}

#[test]
fn role_assignments_are_least_privilege_typed_and_principal_bound() {
    const ALLOWED: &[(&str, &str)] = &[
        ("3db33094-8700-4567-8da5-1501d4e7e843", "FHIR Data Exporter"),
        ("4465e953-8ced-4406-a58e-0f6e3f3b530b", "FHIR Data Importer"),
        ("4c8d0bbc-75d3-4935-991f-5f3c56d81508", "FHIR Data Reader"),
        ("3f88fce4-5892-4214-ae73-ba5294559913", "FHIR Data Writer"),
        ("b7e6dc6d-f1e8-4753-8033-0f276bb0955b", "Storage Blob Data Owner"),
        ("0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3", "Storage Table Data Contributor"),
        ("4633458b-17de-408a-b874-0445c86b69e6", "Key Vault Secrets User"),
        (
            "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
            "Storage Blob Data Contributor (the platform identity, on the package container only)",
        ),
        (
            "3913510d-42f4-4e42-8a64-420c390055eb",
            "Monitoring Metrics Publisher (on the App Insights component only)",
        ),
        ("de139f84-1756-47ae-9be6-808fbbe84772", "Website Contributor"),
        (
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "Reader (on the FHIR resources only)",
        ),
    ];
    const FORBIDDEN: &[(&str, &str)] = &[
        ("5a1fc7df-4bf1-4951-a576-89034ee01acd", "FHIR Data Contributor"),
        ("17d1049b-9a84-46fb-8f53-869881c3d3ab", "Storage Account Contributor"),
        ("974c5e8b-45b9-4653-ba55-5f855dd0fb88", "Storage Queue Data Contributor"),
        ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "Owner"),
        ("b24988ac-6180-42a0-ab88-20f7382dd24c", "Contributor"),
    ];
    let mut assignments = 0;
    for path in bicep_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for (id, role) in FORBIDDEN {
            assert!(!text.contains(id), "{file} grants {role}");
        }
        for guid in text
            .split('\'')
            .filter(|s| s.len() == 36 && s.matches('-').count() == 4)
        {
            assert!(
                ALLOWED.iter().any(|(id, _)| *id == guid),
                "{file}: unexpected GUID {guid}"
            );
        }
        for (i, _) in text.match_indices("'Microsoft.Authorization/roleAssignments@") {
            assignments += 1;
            let block = &text[i..text[i..]
                .find("\n}")
                .or_else(|| text[i..].find("\n  }\n]"))
                .unwrap_or(text.len() - i)
                + i];
            assert!(
                block.contains("principalType: 'ServicePrincipal'"),
                "{file}: an assignment without principalType"
            );
            let name = block
                .lines()
                .find(|l| l.trim_start().starts_with("name: guid("))
                .expect("a guid() name");
            assert!(
                name.contains("principalId") || name.contains("PrincipalId"),
                "{file}: {name} must include the principal id"
            );
            assert!(
                !block.contains("scope: resourceGroup()"),
                "{file}: resource scope, not the resource group"
            );
        }
    }
    // Storage (app), Key Vault (app), and the FHIR roles on either kind of server.
    assert!(assignments >= 4, "{assignments} role assignment resources");
}

#[test]
fn templates_hard_code_no_cloud_suffix_or_resource_id() {
    for path in bicep_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        for literal in [
            "core.windows.net",
            "azurehealthcareapis.com",
            "vault.azure.net",
            "/subscriptions/",
        ] {
            let hits = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with("@description"));
            for line in hits {
                assert!(!line.contains(literal), "{}: {line}", path.display());
            }
        }
    }
}

#[test]
fn main_json_is_generated_current_and_agrees_with_main_bicep() {
    let script = root().join("infra/tools/check_templates.py");
    let (ok, text) = run_python(&[script.as_os_str()]);
    assert!(ok, "template checks failed:\n{text}");
}

#[test]
fn checkov_passes_on_bicep_and_arm_with_every_skip_explained() {
    let infra = root().join("infra");
    let (_, text) = run_python(&[
        "-m".as_ref(),
        "checkov.main".as_ref(),
        "-d".as_ref(),
        infra.as_os_str(),
        "--framework".as_ref(),
        "bicep".as_ref(),
        "arm".as_ref(),
        "--quiet".as_ref(),
        "--compact".as_ref(),
        "--skip-download".as_ref(),
        "-o".as_ref(),
        "cli".as_ref(),
    ]);
    for framework in ["arm", "bicep"] {
        let section = text
            .split(&format!("{framework} scan results:"))
            .nth(1)
            .unwrap_or_else(|| panic!("checkov scanned no {framework} files:\n{text}"));
        let summary = section.lines().find(|l| l.starts_with("Passed checks:")).unwrap();
        assert!(summary.contains("Failed checks: 0,"), "{framework}: {summary}\n{text}");
        assert!(!summary.contains("Parsing errors"), "{framework}: {summary}");
    }
    for path in bicep_files() {
        for line in std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| l.contains("checkov:skip="))
        {
            let reason = line
                .split_once("checkov:skip=")
                .unwrap()
                .1
                .split_once(':')
                .map(|(_, r)| r.trim());
            assert!(
                reason.is_some_and(|r| r.len() >= 30),
                "{}: a skip without a reason: {line}",
                path.display()
            );
        }
    }
}

#[test]
fn the_deploy_page_names_every_parameter() {
    let deploy = std::fs::read_to_string(root().join("docs/deploy.md")).unwrap();
    let arm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.json")).unwrap()).unwrap();
    for name in arm["parameters"].as_object().unwrap().keys() {
        assert!(
            deploy.contains(&format!("`{name}`")),
            "docs/deploy.md does not name `{name}`"
        );
    }
}

/// Runs check_templates.py with a changed copy of azure.yaml.
fn check_azure_yaml(change: impl FnOnce(&str) -> String) -> (bool, String) {
    let text = std::fs::read_to_string(root().join("azure.yaml")).unwrap();
    let dir = std::env::temp_dir().join(crate::support::unique_name("azd"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("azure.yaml");
    std::fs::write(&path, change(&text)).unwrap();
    let script = root().join("infra/tools/check_templates.py");
    run_python(&[script.as_os_str(), "--azure-yaml".as_ref(), path.as_os_str()])
}

#[test]
fn azure_yaml_fits_azds_schema_and_this_project() {
    // As it is: checked by main_json_is_generated_current_and_agrees_with_main_bicep. Each rule broken once:
    for (change, expected) in [
        (
            ("    host: function\n", ""),
            "'host' is a required property (Azure/azure-dev schema)",
        ),
        (
            ("dist/released-package.zip", "dist/fhir-migration-tool.zip"),
            "not the zip scripts/package writes",
        ),
        (
            ("run: ./scripts/package", "run: cargo build --release"),
            "does not package with scripts/package",
        ),
        (
            ("  migration:\n", "  tool:\n"),
            "are not the one app functionapp.bicep tags azd-service-name migration",
        ),
        (
            ("  path: infra\n", "  path: deploy\n"),
            "azure.yaml provisions deploy/main.bicep, not infra/main.bicep",
        ),
        (("    language: custom", "    language: go"), "is not language 'custom'"),
    ] {
        let (ok, text) = check_azure_yaml(|t| {
            assert!(t.contains(change.0), "azure.yaml has {:?}", change.0);
            t.replacen(change.0, change.1, 1)
        });
        assert!(
            !ok && text.contains(expected),
            "{change:?}: expected {expected:?} in:\n{text}"
        );
    }
}

#[test]
fn the_template_deploys_the_release_of_its_own_version() {
    let arm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.json")).unwrap()).unwrap();
    let uri = arm["parameters"]["packageUri"]["defaultValue"].as_str().unwrap();
    assert_eq!(
        uri,
        format!(
            "https://github.com/fhir-migration-tool/fhir-migration-tool/releases/download/v{}/released-package.zip",
            env!("CARGO_PKG_VERSION")
        ),
        "a pinned release, never releases/latest: redeploying must not upgrade the code"
    );
    let bicep = std::fs::read_to_string(root().join("infra/main.bicep")).unwrap();
    assert!(bicep.contains(&format!("param packageUri string = '{uri}'")));
    let form = std::fs::read_to_string(root().join("infra/uiDefForm.json")).unwrap();
    assert!(form.contains(&format!("\"defaultValue\": \"{uri}\"")));
    // azd deploys the code itself: the template deploys none there.
    let azd: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.parameters.json")).unwrap()).unwrap();
    assert_eq!(azd["parameters"]["packageUri"]["value"], "");
}

/// Undoes bash's `printf %q` quoting of one word.
fn unquote(word: &str) -> String {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a `printf %q`-quoted command line into words (spaces inside words are escaped).
fn words(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            out.last_mut().unwrap().push('\\');
            out.last_mut().unwrap().push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ' ' {
            out.push(String::new());
        } else {
            out.last_mut().unwrap().push(c);
        }
    }
    out.into_iter().filter(|w| !w.is_empty()).map(|w| unquote(&w)).collect()
}

#[test]
fn the_smoke_scripts_dry_run_deploys_with_the_templates_parameters() {
    let arm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.json")).unwrap()).unwrap();
    let params = arm["parameters"].as_object().unwrap();
    for plan in ["FlexConsumption", "Premium", "Dedicated"] {
        // No az on the PATH: a dry run must not need one.
        let out = Command::new("bash")
            .arg(root().join("scripts/azure-smoke"))
            .args(["--dry-run", "--plan", plan, "--patients", "3"])
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("dry run: nothing was run"), "{stdout}");
        // Every step says what it checks and what success looks like.
        for step in 0..=7 {
            assert!(
                stdout.contains(&format!("==> {step}. ")),
                "step {step} missing:\n{stdout}"
            );
        }
        let checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("check: ")).collect();
        assert!(checks.len() >= 10, "{checks:?}");
        assert!(
            checks.iter().all(|c| c.contains("(success: ") || c.contains("deleted")),
            "{checks:?}"
        );
        let commands: Vec<Vec<String>> = stderr.lines().filter_map(|l| l.strip_prefix("+ ")).map(words).collect();
        assert!(commands.iter().all(|c| c[0] == "az" || c[0] == "curl"), "{stderr}");
        let deploys: Vec<&Vec<String>> = commands
            .iter()
            .filter(|c| {
                c.len() > 3 && c[1] == "deployment" && c[2] == "group" && (c[3] == "create" || c[3] == "what-if")
            })
            .collect();
        assert_eq!(deploys.len(), 2, "what-if, then create:\n{stderr}");
        for deploy in deploys {
            let file = &deploy[deploy.iter().position(|w| w == "--template-file").unwrap() + 1];
            assert_eq!(file, "infra/main.json");
            let start = deploy.iter().position(|w| w == "--parameters").unwrap() + 1;
            let given: std::collections::BTreeMap<&str, &str> = deploy[start..]
                .iter()
                .take_while(|w| !w.starts_with('-'))
                .map(|w| w.split_once('=').expect("name=value"))
                .collect();
            for (name, value) in &given {
                let spec = params
                    .get(*name)
                    .unwrap_or_else(|| panic!("{name} is not a template parameter"));
                if let Some(allowed) = spec["allowedValues"].as_array() {
                    assert!(
                        allowed.iter().any(|a| a == value),
                        "{name}={value} is not allowed: {allowed:?}"
                    );
                }
            }
            for (name, spec) in params {
                if spec.get("defaultValue").is_none() {
                    assert!(
                        given.contains_key(name.as_str()),
                        "the script does not set the required {name}"
                    );
                }
            }
            assert_eq!(given["hostingPlan"], plan);
            assert_eq!(given["typeOfMigration"], "FhirService");
            assert!(given["sourceFhirServiceId"].contains("/fhirservices/"));
        }
        // It tears down what it created.
        assert!(
            commands
                .iter()
                .any(|c| c.starts_with(&["az".into(), "group".into(), "delete".into()]))
        );
    }
}

/// Runs check_templates.py on a changed copy of main.json.
fn check_main_json(change: impl FnOnce(&mut serde_json::Value)) -> (bool, String) {
    let mut arm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.json")).unwrap()).unwrap();
    change(&mut arm);
    let dir = std::env::temp_dir().join(crate::support::unique_name("drift"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("main.json");
    std::fs::write(&path, serde_json::to_string_pretty(&arm).unwrap()).unwrap();
    let script = root().join("infra/tools/check_templates.py");
    run_python(&[script.as_os_str(), "--template".as_ref(), path.as_os_str()])
}

#[test]
fn every_resource_of_main_json_is_compared_with_what_bicep_declares() {
    // The drift the last review found: the dashboard's metric tiles without the resource metadata Bicep gives them.
    let (ok, text) = check_main_json(|t| {
        for tile in t["variables"]["metricTiles"].as_array_mut().unwrap() {
            for metric in tile["metrics"].as_array_mut().unwrap() {
                metric.as_object_mut().unwrap().remove("resourceMetadata");
            }
        }
    });
    assert!(!ok, "{text}");
    assert!(
        text.contains("drift: Microsoft.Portal/dashboards (dashboard.bicep:dashboard)")
            && text.contains("only in main.bicep ['resourceMetadata']"),
        "{text}"
    );
    // A literal that differs, and a property only one side sets.
    let (ok, text) = check_main_json(|t| {
        let storage = t["resources"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|r| r["type"] == "Microsoft.Storage/storageAccounts")
            .unwrap();
        storage["properties"]["minimumTlsVersion"] = serde_json::json!("TLS1_0");
        storage["properties"]
            .as_object_mut()
            .unwrap()
            .remove("allowSharedKeyAccess");
    });
    assert!(!ok, "{text}");
    assert!(text.contains("'TLS1_2' in main.bicep, 'TLS1_0' in main.json"), "{text}");
    assert!(text.contains("only in main.bicep ['allowSharedKeyAccess']"), "{text}");
}
