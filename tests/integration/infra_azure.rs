//! The templates against Azure's own definitions (infra/tools/check_azure_types.py, data vendored under
//! infra/tools/upstream): every resource body of main.json against the Bicep types of its API version, host.json
//! and every function.json against the SchemaStore schemas, the platform rules the types do not encode, and every
//! dependsOn edge Bicep infers. Each check is shown to catch its fault by breaking a copy once.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::{run_python, unique_name};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn checker(args: &[&Path]) -> (bool, String) {
    let script = root().join("infra/tools/check_azure_types.py");
    let mut all = vec![script.as_os_str()];
    all.extend(args.iter().map(|a| a.as_os_str()));
    run_python(&all)
}

fn main_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.json")).unwrap()).unwrap()
}

/// Writes `value` to a fresh temporary file.
fn temp(value: &Value, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("azuretypes"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value).unwrap()).unwrap();
    path
}

/// Runs the checker on a changed copy of main.json (host.json and function.json as they are).
fn check_template(change: impl FnOnce(&mut Value)) -> (bool, String) {
    let mut template = main_json();
    change(&mut template);
    let path = temp(&template, "main.json");
    checker(&["--template".as_ref(), path.as_path()])
}

fn resource<'a>(template: &'a mut Value, type_: &str) -> &'a mut Value {
    template["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["type"] == type_)
        .unwrap_or_else(|| panic!("main.json has a {type_}"))
}

fn assert_caught(result: (bool, String), expected: &str) {
    let (ok, text) = result;
    assert!(!ok, "the checker passed a broken copy (expected {expected:?}):\n{text}");
    assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
}

#[test]
fn main_json_host_json_and_every_function_json_agree_with_azures_definitions() {
    let (ok, text) = checker(&[]);
    assert!(ok, "{text}");
    let functions = fhir_migration_tool::functions::FUNCTIONS.len();
    assert!(text.contains(&format!("{functions} function.json files")), "{text}");
}

#[test]
fn the_vendored_upstream_data_names_its_source_and_licence() {
    let upstream = root().join("infra/tools/upstream");
    let source = std::fs::read_to_string(upstream.join("SOURCE.md")).unwrap();
    for needed in [
        "Azure/bicep-types-az",
        "1f896de2db966ad91e8f7d7d981e11d32e4f5d8d",
        "SchemaStore/schemastore",
        "3b6446ad8a077bac56f4a4796c0b7fd88927fc8e",
        "MIT",
        "Apache-2.0",
    ] {
        assert!(source.contains(needed), "SOURCE.md does not name {needed}");
    }
    assert!(upstream.join("bicep-types/LICENSE").exists());
    assert!(upstream.join("schemastore/LICENSE").exists());
}

#[test]
fn an_unknown_property_is_caught() {
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.Storage/storageAccounts")["properties"]["allowSharedKeyAcess"] = json!(false);
        }),
        "unknown property 'allowSharedKeyAcess'",
    );
}

#[test]
fn an_unknown_property_in_a_nested_deployment_is_caught() {
    assert_caught(
        check_template(|t| {
            let nested = t["resources"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|r| r["type"] == "Microsoft.Resources/deployments")
                .unwrap();
            nested["properties"]["template"]["resources"][0]["properties"]["principalKind"] = json!("App");
        }),
        "unknown property 'principalKind'",
    );
}

#[test]
fn a_wrong_type_is_caught() {
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.Storage/storageAccounts")["properties"]["supportsHttpsTrafficOnly"] = json!("yes");
        }),
        "where Azure expects bool",
    );
}

#[test]
fn a_literal_outside_a_closed_union_is_caught() {
    assert_caught(
        check_template(|t| resource(t, "Microsoft.Web/sites")["identity"]["type"] = json!("Managed")),
        "'Managed' is not one of",
    );
    // Also behind an expression: each branch of if() is checked.
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.Storage/storageAccounts")["properties"]["networkAcls"]["defaultAction"] =
                json!("[if(parameters('enablePrivateNetworking'), 'Deny', 'Block')]");
        }),
        "'Block' is not one of ['Allow', 'Deny']",
    );
}

#[test]
fn a_read_only_property_set_is_caught() {
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.Storage/storageAccounts")["properties"]["provisioningState"] = json!("Succeeded");
        }),
        "'provisioningState' is read-only",
    );
}

#[test]
fn a_missing_required_property_is_caught() {
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.Storage/storageAccounts")
                .as_object_mut()
                .unwrap()
                .remove("sku");
        }),
        "required property 'sku' is missing",
    );
}

#[test]
fn a_dropped_depends_on_edge_is_caught() {
    // The app settings hold a Key Vault reference: applied before the vault's role exists, the failure is cached.
    assert_caught(
        check_template(|t| {
            let deps = resource(t, "Microsoft.Web/sites/config")["dependsOn"]
                .as_array_mut()
                .unwrap();
            deps.retain(|d| !d.as_str().unwrap().contains("vault-roles"));
        }),
        "does not depend on [format('vault-roles-{0}'",
    );
    // A child without its parent.
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.KeyVault/vaults/secrets")["dependsOn"] = json!([]);
        }),
        "uses Microsoft.KeyVault/vaults [variables('vaultName')] but does not depend on it",
    );
}

#[test]
fn ftps_state_on_the_flex_site_is_caught() {
    assert_caught(
        check_template(|t| t["variables"]["flexSiteConfig"]["ftpsState"] = json!("Disabled")),
        "[flex-site-config] the Flex Consumption site sets ['ftpsState']",
    );
}

#[test]
fn a_key_vault_name_that_may_start_with_a_digit_is_caught() {
    assert_caught(
        check_template(|t| t["variables"]["vaultName"] = json!("[format('{0}-kv', variables('base'))]")),
        "[key-vault-name]",
    );
}

#[test]
fn code_deployed_other_than_by_one_deploy_is_caught() {
    assert_caught(
        check_template(|t| {
            let resources = t["resources"].as_array_mut().unwrap();
            let onedeploy = resources
                .iter()
                .position(|r| r["type"] == "Microsoft.Web/sites/extensions")
                .unwrap();
            resources.remove(onedeploy);
        }),
        "[one-deploy] no Microsoft.Web/sites/extensions 'onedeploy'",
    );
}

#[test]
fn an_elastic_kind_on_a_dedicated_plan_is_caught() {
    assert_caught(
        check_template(|t| t["variables"]["planKind"]["Dedicated"] = json!("elastic")),
        "[plan-kind] hostingPlan Dedicated: kind 'elastic' on a Basic plan",
    );
}

#[test]
fn a_bad_function_json_and_a_bad_host_json_are_caught() {
    let mut function: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("CheckAccess_Http/function.json")).unwrap()).unwrap();
    function["bindings"][0]["authLevel"] = json!("everyone");
    let path = temp(&function, "function.json");
    assert_caught(
        checker(&["--function".as_ref(), path.as_path()]),
        "'authLevel': 'everyone'",
    );
    let mut host: Value = serde_json::from_str(&std::fs::read_to_string(root().join("host.json")).unwrap()).unwrap();
    host["version"] = json!("1.0");
    let path = temp(&host, "host.json");
    assert_caught(checker(&["--host".as_ref(), path.as_path()]), "version");
}
