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
    // The app settings hold a Key Vault reference: the site (and its plan) wait for the vault's role.
    assert_caught(
        check_template(|t| drop_dependency(t, "vault-roles")),
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
fn flex_code_deployed_other_than_by_one_deploy_is_caught() {
    assert_caught(
        check_template(|t| {
            let resources = t["resources"].as_array_mut().unwrap();
            let onedeploy = resources
                .iter()
                .position(|r| r["type"] == "Microsoft.Web/sites/extensions")
                .unwrap();
            resources.remove(onedeploy);
        }),
        "[code-deploy] hostingPlan FlexConsumption: no sites/extensions 'onedeploy' deploys the code",
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

/// Removes every dependsOn entry naming `what`, from every top-level resource.
fn drop_dependency(template: &mut Value, what: &str) {
    for r in template["resources"].as_array_mut().unwrap() {
        if let Some(deps) = r.get_mut("dependsOn").and_then(Value::as_array_mut) {
            deps.retain(|d| !d.as_str().unwrap().contains(what));
        }
    }
}

fn extension<'a>(template: &'a mut Value, name: &str) -> &'a mut Value {
    template["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["type"] == "Microsoft.Web/sites/extensions" && r["name"].as_str().unwrap().contains(name))
        .unwrap_or_else(|| panic!("main.json has a {name} extension"))
}

fn deployment<'a>(template: &'a mut Value, name: &str) -> &'a mut Value {
    template["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["type"] == "Microsoft.Resources/deployments" && r["name"].as_str().unwrap().contains(name))
        .unwrap_or_else(|| panic!("main.json has a {name} deployment"))
}

#[test]
fn one_deploy_on_premium_or_dedicated_is_caught() {
    assert_caught(
        check_template(|t| {
            extension(t, "onedeploy")["condition"] = json!("[not(empty(parameters('packageUri')))]");
        }),
        "[code-deploy] hostingPlan Premium: also deployed by ['onedeploy']",
    );
}

#[test]
fn zip_deploy_without_run_from_package_is_caught() {
    assert_caught(
        check_template(|t| {
            t["variables"]["classicRuntimeSettings"]
                .as_object_mut()
                .unwrap()
                .remove("WEBSITE_RUN_FROM_PACKAGE");
        }),
        "[code-deploy] hostingPlan Dedicated: zip deploy without WEBSITE_RUN_FROM_PACKAGE=1",
    );
}

#[test]
fn a_flex_package_not_named_released_package_is_caught() {
    assert_caught(
        check_template(|t| {
            t["parameters"]["packageUri"]["defaultValue"] =
                json!("https://github.com/o/r/releases/download/v1.0.0/fhir-migration-tool.zip");
        }),
        "[flex-package-name]",
    );
}

#[test]
fn a_premium_content_share_on_the_state_account_is_caught() {
    assert_caught(
        check_template(|t| {
            let site = resource(t, "Microsoft.Web/sites");
            let text = site["properties"]["siteConfig"].as_str().unwrap().replace(
                "listKeys(resourceId('Microsoft.Storage/storageAccounts', variables('contentName'))",
                "listKeys(resourceId('Microsoft.Storage/storageAccounts', variables('storageName'))",
            );
            site["properties"]["siteConfig"] = json!(text);
        }),
        "[premium-content-share] the content share is on the state account",
    );
}

#[test]
fn app_settings_outside_the_sites_creation_are_caught() {
    assert_caught(
        check_template(|t| {
            resource(t, "Microsoft.Web/sites")["properties"]["siteConfig"] =
                json!("[if(variables('isFlex'), variables('flexSiteConfig'), variables('classicSiteConfig'))]");
        }),
        "[site-app-settings] the site is created without siteConfig.appSettings",
    );
}

#[test]
fn a_deployment_identity_assigned_after_the_site_is_caught() {
    // The site (and so one deploy) no longer waits for the platform identity's role on the package container.
    assert_caught(
        check_template(|t| drop_dependency(t, "platform-roles")),
        "[deploy-role-first] the site does not wait for the deployment identity's role",
    );
    // The package container read as the app's own identity, whose role can only follow the site.
    assert_caught(
        check_template(|t| {
            t["variables"]["flexConfig"]["deployment"]["storage"]["authentication"] =
                json!({ "type": "SystemAssignedIdentity" });
        }),
        "[deploy-role-first] the Flex deployment storage authenticates as 'SystemAssignedIdentity'",
    );
    // Code deployed before everything else has been created.
    assert_caught(
        check_template(|t| {
            extension(t, "onedeploy")["dependsOn"]
                .as_array_mut()
                .unwrap()
                .retain(|d| d != "alertRules");
        }),
        "is not deployed last: it does not wait for microsoft.insights/scheduledqueryrules",
    );
}

#[test]
fn an_alert_window_the_service_refuses_is_caught() {
    assert_caught(
        check_template(|t| {
            t["parameters"]["noProgressHours"]["allowedValues"]
                .as_array_mut()
                .unwrap()
                .push(json!(7));
        }),
        "[alert-window] no-progress (noProgressHours 7): windowSize 'PT7H' is not one of the service's",
    );
    // 48 hours is a window the service takes, but leaves no room for the 2-day look-back.
    assert_caught(
        check_template(|t| {
            t["parameters"]["noProgressHours"]["allowedValues"]
                .as_array_mut()
                .unwrap()
                .push(json!(48));
        }),
        "[alert-window] no-progress (noProgressHours 48): overrideQueryTimeRange 'P2D' must be longer than the window",
    );
}

#[test]
fn the_alert_windows_are_held_to_the_services_own_list() {
    let rules: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("infra/tools/service-rules/scheduled-query-rules.json")).unwrap(),
    )
    .unwrap();
    let listed: Vec<u64> = rules["windowMinutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // The list is the service's own error text, quoted with its source.
    let error = rules["sources"][0]["serviceErrorText"].as_str().unwrap();
    assert!(
        rules["sources"][0]["where"]
            .as_str()
            .unwrap()
            .contains("azure-rest-api-specs#21258")
    );
    let quoted: Vec<u64> = error
        .split(':')
        .nth(1)
        .unwrap()
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(listed, quoted);
    // The template, the Bicep module and the wizard offer only windows from it, with room for the look-back.
    let template = main_json();
    let offered: Vec<u64> = template["parameters"]["noProgressHours"]["allowedValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let longest = rules["maxQueryRangeMinutes"].as_u64().unwrap();
    for hours in &offered {
        assert!(
            listed.contains(&(hours * 60)),
            "{hours} h is not a window the service accepts"
        );
        assert!(hours * 60 < longest, "{hours} h leaves no room for the look-back");
    }
    let form: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/uiDefForm.json")).unwrap()).unwrap();
    let element = form["parameters"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["elements"].as_array().unwrap())
        .find(|e| e["name"] == "noProgressHours")
        .unwrap()
        .clone();
    assert_eq!(element["type"], "Microsoft.Common.DropDown", "a choice, not a slider");
    let choices: Vec<u64> = element["constraints"]["allowedValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["value"].as_u64().unwrap())
        .collect();
    assert_eq!(choices, offered);
    let bicep = std::fs::read_to_string(root().join("infra/modules/alerts.bicep")).unwrap();
    let allowed = bicep.split("@allowed([").nth(1).unwrap().split("])").next().unwrap();
    let in_bicep: Vec<u64> = allowed.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(in_bicep, offered, "alerts.bicep allows the same windows");
}

#[test]
fn client_secret_mode_reaching_into_the_source_is_caught() {
    assert_caught(
        check_template(|t| {
            deployment(t, "source-fhir-roles")
                .as_object_mut()
                .unwrap()
                .remove("condition");
        }),
        "[client-secret-source] [format('source-fhir-roles-{0}', variables('suffix'))] is deployed to the source's subscription in client-secret mode",
    );
}

#[test]
fn local_authentication_on_by_default_is_caught() {
    assert_caught(
        check_template(|t| t["parameters"]["appInsightsLocalAuth"]["defaultValue"] = json!(true)),
        "[entra-ingestion] the component accepts local authentication by default",
    );
}

#[test]
fn overlapping_dashboard_tiles_are_caught() {
    // Where the metric tiles were before: on top of the failure ledger tile.
    assert_caught(
        check_template(|t| t["variables"]["metricTiles"][0]["y"] = json!(33)),
        "[dashboard-layout] the tiles 'Unresolved import failures' and 'Failed invocations' overlap",
    );
}

#[test]
fn each_combination_the_wizard_allows_is_checked_on_its_own() {
    let (ok, text) = checker(&[]);
    assert!(ok, "{text}");
    // Plans x migration types x client secret x private networking x local authentication.
    assert!(
        text.contains("in each of the 48 combinations the wizard allows"),
        "{text}"
    );
    // A fault only some combinations reach is reported with the combination.
    let (ok, text) = check_template(|t| {
        t["variables"]["classicSiteConfig"]["alwaysOn"] =
            json!("[if(parameters('enablePrivateNetworking'), 'yes', equals(parameters('hostingPlan'), 'Dedicated'))]");
    });
    assert!(!ok);
    let faulty: Vec<&str> = text.lines().filter(|l| l.contains("alwaysOn")).collect();
    assert!(
        faulty
            .iter()
            .any(|l| l.contains("hostingPlan=Premium") && l.contains("enablePrivateNetworking=True")),
        "{text}"
    );
    assert!(
        !faulty.iter().any(|l| l.contains("enablePrivateNetworking=False}")),
        "{text}"
    );
}
