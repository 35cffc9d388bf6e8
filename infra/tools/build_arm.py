"""Writes infra/main.json, the ARM form of infra/main.bicep, for the Deploy-to-Azure button and `az deployment`.

No Bicep compiler can be installed where this project is built, so the ARM template is produced here, resource by
resource, mirroring main.bicep and its modules. check_templates.py proves the two agree (parameters, resource
types and API versions, app settings, role assignments), and `--check` fails when main.json is stale.

Usage: target/py-tools/bin/python infra/tools/build_arm.py [--check]   (./scripts/test creates that environment)
"""

import json
import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parent.parent
OUT = INFRA / "main.json"

API = {
    "storage": "2025-06-01",
    "web": "2024-11-01",
    "insights": "2020-02-02",
    "workspace": "2025-02-01",
    "keyvault": "2024-11-01",
    "roles": "2022-04-01",
    "deployments": "2022-09-01",
    "fhir": "2024-03-31",
    "network": "2024-05-01",
    "dns": "2024-06-01",
    "dashboard": "2020-09-01-preview",
    "actiongroups": "2023-01-01",
    "rules": "2023-12-01",
    "identity": "2023-01-31",
}

ROLES = {
    "fhirDataExporter": "3db33094-8700-4567-8da5-1501d4e7e843",
    "fhirDataImporter": "4465e953-8ced-4406-a58e-0f6e3f3b530b",
    "fhirDataReader": "4c8d0bbc-75d3-4935-991f-5f3c56d81508",
    "fhirDataWriter": "3f88fce4-5892-4214-ae73-ba5294559913",
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
    "reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}


def version():
    """The project's version (Cargo.toml): the release the template deploys by default."""
    for line in (INFRA.parent / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise SystemExit("no version in Cargo.toml")


RELEASES = "https://github.com/fhir-migration-tool/fhir-migration-tool/releases/download"
# Learn ("Automate resource deployment for your function app", Flex Consumption, Deployment package): the package
# file must be named released-package.zip.
PACKAGE_NAME = "released-package.zip"


def default_package_uri():
    return f"{RELEASES}/v{version()}/{PACKAGE_NAME}"


def p(name):
    return f"parameters('{name}')"


def v(name):
    return f"variables('{name}')"


def x(expression):
    """An ARM expression value."""
    return f"[{expression}]"


def kql(relative):
    return (INFRA / relative).read_text()


def param(type_, description, default=None, **rules):
    out = {"type": type_, "metadata": {"description": description}}
    if default is not None:
        out["defaultValue"] = default
    out.update(rules)
    return out


def parameters():
    return {
        "prefix": param("string", "Short prefix for every resource name: 1-6 lower-case letters or digits (a leading digit is fine: the Key Vault name starts with \"kv-\"). A unique suffix is added.", "mig", minLength=1, maxLength=6),
        "location": param("string", "Region of the tool's resources.", "[resourceGroup().location]"),
        "typeOfMigration": param("string", "AzureAPIforFhir: Azure API for FHIR to an AHDS FHIR service. FhirService: AHDS FHIR service to another.", "AzureAPIforFhir", allowedValues=["AzureAPIforFhir", "FhirService"]),
        "apiForFhirId": param("string", "Source when typeOfMigration is AzureAPIforFhir: resource id of the Azure API for FHIR (/subscriptions/…/providers/Microsoft.HealthcareApis/services/<name>).", ""),
        "sourceFhirServiceId": param("string", "Source when typeOfMigration is FhirService: resource id of the AHDS FHIR service (…/workspaces/<ws>/fhirservices/<name>).", ""),
        "fhirServiceId": param("string", "Destination: resource id of the AHDS FHIR service (…/workspaces/<ws>/fhirservices/<name>).", minLength=1),
        "sourceFhirUrl": param("string", "Source base URL. Managed identity: empty for the server's own URL. Client secret: required (nothing reads the source's Azure resource in that mode).", ""),
        "sourceAudience": param("string", "Token audience of the source (the tool asks for <audience>/.default). Managed identity: empty for the server's configured audience. Client secret: empty for sourceFhirUrl.", ""),
        "destinationFhirUrl": param("string", "Destination base URL; empty: the server's own URL (tokens are still requested for the server's configured audience).", ""),
        "exportWithHistory": param("bool", "Migrate every version, not only the current one.", True),
        "exportWithDelete": param("bool", "Migrate deleted resources (soft deletes) too.", True),
        "isParallel": param("bool", "One system-level export per window (true), or one export per resource type (false).", True),
        "exportDeidentified": param("bool", "Export de-identified data with the anonymization config named by configFile.", False),
        "configFile": param("string", "Anonymization config blob in the export account's \"anonymization\" container (see infra/Anonymization).", ""),
        "pauseDm": param("bool", "Pause new exports daily between startTime and endTime (UTC hours).", False),
        "startTime": param("int", "UTC hour at which the daily pause starts.", 8, minValue=0, maxValue=23),
        "endTime": param("int", "UTC hour at which the daily pause ends.", 17, minValue=0, maxValue=23),
        "specificRun": param("bool", "Migrate only data last updated between startDate and endDate.", False),
        "startDate": param("string", "ISO 8601, e.g. 2020-01-01T00:00:00Z; empty: from the oldest data.", ""),
        "endDate": param("string", "ISO 8601; empty: up to now, continuously.", ""),
        "useClientCredentials": param("bool", "Call the source with a client secret (an app registration in the source's tenant) instead of the managed identity. No deployment then touches the source: its URL and audience are parameters, and its roles are granted by an administrator of its tenant (docs/deploy.md).", False),
        "clientId": param("string", "Application (client) id of the app registration.", ""),
        "tenantId": param("string", "Tenant of the app registration.", ""),
        "clientSecret": param("securestring", "Stored in Key Vault; the app setting only references it.", ""),
        "hostingPlan": param("string", "FlexConsumption: cheapest, scales to zero. Premium (EP1) and Dedicated (B1): always-on instances.", "FlexConsumption", allowedValues=["FlexConsumption", "Premium", "Dedicated"]),
        "packageUri": param("string", "The release package the app runs: by default the release matching this template's version. Upgrading is changing this URL (docs/deploy.md). Empty: the template deploys no code (azd deploys it itself).", default_package_uri()),
        "keyVaultCreateMode": param("string", "default: create the Key Vault (client-credential mode). recover: take back the soft-deleted vault of an earlier deployment of this prefix in this resource group (30 days after teardown).", "default", allowedValues=["default", "recover"]),
        "enablePrivateNetworking": param("bool", "Reach the state storage through private endpoints only (VNet integration, private DNS zones).", False),
        "vnetAddressPrefix": param("string", "Address space of the VNet created when enablePrivateNetworking is on.", "10.60.0.0/16"),
        "vnetIntegrationSubnetPrefix": param("string", "Subnet (inside vnetAddressPrefix) for the function app's outbound traffic.", "10.60.0.0/24"),
        "vnetEndpointsSubnetPrefix": param("string", "Subnet (inside vnetAddressPrefix) for the private endpoints.", "10.60.1.0/24"),
        "alertEmail": param("string", "Email notified by the alert rules; empty: no notification.", ""),
        "noProgressHours": param("int", "Alert when no window has been committed for this many hours, once the first one has. Only the windows the alert service accepts and that leave room for the 2-day look-back.", 6, allowedValues=[1, 2, 3, 4, 5, 6, 24]),
        "appInsightsLocalAuth": param("bool", "false (default): Application Insights takes Entra-authenticated telemetry only (the app's identity is Monitoring Metrics Publisher). true: the connection string's instrumentation key is accepted too.", False),
        "dashboardTimeRange": param("string", "Time range of the dashboard tiles that show recent activity.", "P7D", allowedValues=["P1D", "P7D", "P30D", "P90D"]),
        "logRetentionDays": param("int", "Days Log Analytics keeps the telemetry.", 90, minValue=30, maxValue=730),
        "migrationStarterCron": param("string", "NCRONTAB schedule of MigrationOrchestrator, which starts exports.", "0 */5 * * * *"),
        "functionAppCustomSettings": param("object", "More app settings (AZURE_*), applied last; see the README's settings table.", {}),
    }


TILES = [
    # x, y, w, h, title, subtitle, whole, chart, series, file
    (0, 2, 4, 2, "Migration status", "Data migrated till", True, "", "", "migration-status"),
    (4, 2, 8, 2, "Migration progress", "Migrated through vs now, lag in hours", True, "", "", "migration-progress"),
    (0, 4, 3, 2, "Completed exports", "Whole migration", True, "", "", "completed-exports-count"),
    (3, 4, 3, 2, "Completed imports", "Whole migration", True, "", "", "completed-imports-count"),
    (6, 4, 3, 2, "Running exports", "Started, not completed or failed", True, "", "", "running-exports-count"),
    (9, 4, 3, 2, "Running imports", "Started, not completed or failed", True, "", "", "running-imports-count"),
    (12, 4, 3, 2, "Failed exports", "In the time range", False, "", "", "failed-exports-count"),
    (15, 4, 3, 2, "Failed imports", "In the time range", False, "", "", "failed-imports-count"),
    (0, 6, 9, 4, "Resources migrated per hour", "Versions imported", False, "StackedColumn", "Resources", "resources-per-hour"),
    (9, 6, 9, 4, "Windows per day", "Windows committed (skipped empty ranges included)", False, "StackedColumn", "Windows", "windows-per-day"),
    (0, 10, 9, 4, "Running exports", "Details", True, "", "", "running-exports"),
    (9, 10, 9, 4, "Running imports", "Details", True, "", "", "running-imports"),
    (0, 14, 9, 4, "Completed exports", "Details", False, "", "", "completed-exports"),
    (9, 14, 9, 4, "Completed imports", "Details", False, "", "", "completed-imports"),
    (0, 18, 9, 4, "Failed exports", "Details and reasons", False, "", "", "failed-exports"),
    (9, 18, 9, 4, "Failed imports", "Details and reasons", False, "", "", "failed-imports"),
    (0, 22, 9, 4, "Import errors per window", "Lines the destination refused, by kind", False, "", "", "import-errors"),
    (9, 22, 9, 4, "Export and import resources", "Per import", False, "", "", "export-import-resources"),
    (0, 26, 6, 3, "Total resource count", "Source and destination, latest", True, "", "", "total-resource-count"),
    (6, 26, 6, 3, "Retry latch", "Halts and resets", True, "", "", "retry-latch"),
    (12, 26, 6, 3, "Skipped ranges", "Empty at the source, no export needed", False, "", "", "skipped-windows"),
    (0, 29, 6, 4, "Surface check", "Results", False, "", "", "surface-check"),
    (6, 29, 6, 4, "Deep check", "Results", False, "", "", "deep-check"),
    (12, 29, 6, 4, "Full check", "Every version compared", False, "", "", "full-check"),
    (0, 37, 18, 2, "Progress and ETA", "Versions of the source total, rate over the last hour, hours to caught up", True, "", "", "progress-and-eta"),
    (0, 33, 18, 4, "Unresolved import failures", "Versions not at the destination (failure ledger)", True, "", "", "unresolved-import-failures"),
]

METRIC_TILES = [
    (0, 39, "Failed invocations", 3, [("requests/failed", 7, "Failed invocations")]),
    (6, 39, "Invocation duration", 2, [("requests/duration", 4, "Average duration")]),
    (12, 39, "Exceptions and dependency failures", 3, [("exceptions/count", 7, "Exceptions"), ("dependencies/failed", 7, "Failed FHIR and storage calls")]),
    (0, 43, "FHIR and storage call duration", 2, [("dependencies/duration", 4, "Average duration")]),
    (6, 43, "FHIR and storage calls", 3, [("dependencies/count", 7, "Calls")]),
]

RULES = [
    ("job-failed", "FHIR migration: an export or import failed", "An $export or $import job failed or was refused. The tool retries it; check the FailureReason (dashboard: Failed exports / Failed imports).", 1, "PT15M", "PT15M", "GreaterThan", 0, "export-or-import-failed"),
    ("retry-latch", "FHIR migration: halted by the retry latch", "Exports or imports failed too many times in a row and the migration has stopped. Fix the cause (export table, FailureReason column), then call ClearMaxExportRetries_Http.", 0, "PT15M", "PT15M", "GreaterThan", 0, "retry-latch-reached"),
    ("no-progress", "FHIR migration: no progress", None, 2, "PT1H", None, "LessThan", 1, "no-progress"),  # window and look-back: see resources()
    ("import-failure", "FHIR migration: a resource version could not be imported", "The destination refused a resource version for good (a conflicting version, an invalid resource). It is not migrated until someone fixes the cause and runs failures retry, or accepts the loss with failures accept (dashboard: Unresolved import failures).", 1, "PT15M", "PT15M", "GreaterThan", 0, "permanent-import-failure"),
    ("verification-failed", "FHIR migration: verification found differences", "A surface, deep or full check found a difference between source and destination (dashboard: Surface / Deep / Full check).", 2, "PT15M", "PT15M", "GreaterThan", 0, "verification-failed"),
]

REMINDER = """## Before and after cut-over
- **Custom search parameters** are copied once, at the start. Any added later must be created on the destination by hand.
- **Run `$reindex`** on the destination after the migration, so custom search parameters index the migrated data.
- **Cut over** when *Migration progress* shows a lag you can accept, nothing is running or failed, and the last **Full check** passed. See the README's Operate section for the runbook.
"""

GUIDE = """## Reading this dashboard
Counts, progress and running jobs cover **the whole migration**. Details, charts and checks cover the **{0}** time range chosen at deployment.
Alerts (if deployed) fire on failed exports or imports, on the retry latch, when no window is committed for hours, and on a failed verification.
"""


def variables():
    tiles = [
        {"x": t[0], "y": t[1], "w": t[2], "h": t[3], "title": t[4], "subtitle": t[5], "whole": t[6], "chart": t[7], "series": t[8],
         "query": kql(f"dashboard/queries/{t[9]}.kql")}
        for t in TILES
    ]
    metric_tiles = [
        {"x": m[0], "y": m[1], "title": m[2], "chartType": m[3],
         "metrics": [{"resourceMetadata": {"id": x(v("appInsightsId"))}, "name": n, "aggregationType": a, "namespace": "microsoft.insights/components",
                      "metricVisualization": {"displayName": label}} for n, a, label in m[4]]}
        for m in METRIC_TILES
    ]
    return {
        "tags": {"AppID": "fhir-migration-tool"},
        "cleanPrefix": x(f"toLower(replace(replace({p('prefix')}, '-', ''), '_', ''))"),
        "suffix": x(f"take(uniqueString(resourceGroup().id, {p('prefix')}), 6)"),
        "base": x(f"format('{{0}}{{1}}', {v('cleanPrefix')}, {v('suffix')})"),
        "isFlex": x(f"equals({p('hostingPlan')}, 'FlexConsumption')"),
        "isPremium": x(f"equals({p('hostingPlan')}, 'Premium')"),
        # Client-secret mode never reads or changes the source's Azure resource: it may be in another tenant.
        "sourceId": x(f"if({p('useClientCredentials')}, '', if(equals({p('typeOfMigration')}, 'AzureAPIforFhir'), {p('apiForFhirId')}, {p('sourceFhirServiceId')}))"),
        "sourceParts": x(f"split({v('sourceId')}, '/')"),
        "sourceKnown": x(f"greater(length({v('sourceParts')}), 8)"),
        "sourceName": x(f"if({v('sourceKnown')}, {v('sourceParts')}[8], 'none')"),
        "sourceSubscription": x(f"if({v('sourceKnown')}, {v('sourceParts')}[2], subscription().subscriptionId)"),
        "sourceGroup": x(f"if({v('sourceKnown')}, {v('sourceParts')}[4], resourceGroup().name)"),
        "destinationParts": x(f"split({p('fhirServiceId')}, '/')"),
        "checkedStartDate": x(f"if(empty({p('startDate')}), '', dateTimeAdd({p('startDate')}, 'PT0S'))"),
        "checkedEndDate": x(f"if(empty({p('endDate')}), '', dateTimeAdd({p('endDate')}, 'PT0S'))"),
        "storageName": x(f"format('{{0}}state', {v('base')})"),
        "appName": x(f"format('{{0}}-fhirmig', {v('base')})"),
        "planName": x(f"format('{{0}}-plan', {v('base')})"),
        "vaultName": x(f"format('kv-{{0}}', {v('base')})"),
        "identityName": x(f"format('{{0}}-platform', {v('base')})"),
        "contentName": x(f"format('{{0}}content', {v('base')})"),
        "workspaceName": x(f"format('{{0}}-logs', {v('base')})"),
        "insightsName": x(f"format('{{0}}-insights', {v('base')})"),
        "vnetName": x(f"format('{{0}}-vnet', {v('base')})"),
        "dashboardName": x(f"format('{{0}}-dashboard', {v('base')})"),
        "appInsightsId": x(f"resourceId('Microsoft.Insights/components', {v('insightsName')})"),
        "storageId": x(f"resourceId('Microsoft.Storage/storageAccounts', {v('storageName')})"),
        "siteId": x(f"resourceId('Microsoft.Web/sites', {v('appName')})"),
        "identityId": x(f"resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', {v('identityName')})"),
        "planKind": {"FlexConsumption": "functionapp", "Premium": "elastic", "Dedicated": "linux"},
        # Flex Consumption refuses ftpsState, linuxFxVersion, alwaysOn and vnetRouteAllEnabled (ARM error 51021).
        "flexSiteConfig": {"minTlsVersion": "1.2", "http20Enabled": True},
        "classicSiteConfig": {"minTlsVersion": "1.2", "http20Enabled": True, "ftpsState": "Disabled", "linuxFxVersion": "",
                              "alwaysOn": x(f"equals({p('hostingPlan')}, 'Dedicated')"), "vnetRouteAllEnabled": x(p("enablePrivateNetworking"))},
        "sku": {
            "FlexConsumption": {"name": "FC1", "tier": "FlexConsumption"},
            "Premium": {"name": "EP1", "tier": "ElasticPremium"},
            "Dedicated": {"name": "B1", "tier": "Basic"},
        },
        "flexConfig": {
            "deployment": {
                "storage": {
                    "type": "blobContainer",
                    "value": x(f"format('https://{{0}}.blob.{{1}}/app-package', {v('storageName')}, environment().suffixes.storage)"),
                    "authentication": {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": x(v("identityId"))},
                }
            },
            "scaleAndConcurrency": {"maximumInstanceCount": 40, "instanceMemoryMB": 512},
            "runtime": {"name": "custom", "version": "1.0"},
        },
        "storageServices": ["blob", "table"],
        "rangeMilliseconds": {"P1D": 86400000, "P7D": 604800000, "P30D": 2592000000, "P90D": 7776000000},
        "tiles": tiles,
        "metricTiles": metric_tiles,
        "rules": [
            {"key": r[0], "displayName": r[1], "description": r[2], "severity": r[3], "frequency": r[4], "window": r[5], "operator": r[6], "threshold": r[7],
             "lookback": "P2D" if r[0] == "no-progress" else "", "query": kql(f"alerts/{r[8]}.kql")}
            for r in RULES
        ],
        "reminder": REMINDER,
        "guideTemplate": GUIDE,
        "guide": x(f"replace({v('guideTemplate')}, '{{0}}', {p('dashboardTimeRange')})"),
        "classicRuntimeSettings": {"FUNCTIONS_EXTENSION_VERSION": "~4", "FUNCTIONS_WORKER_RUNTIME": "custom", "WEBSITE_RUN_FROM_PACKAGE": "1"},
        "optionalSettings": x(
            "union("
            f"if(empty({p('configFile')}), createObject(), createObject('AZURE_ConfigFile', {p('configFile')})), "
            f"if(empty({v('checkedStartDate')}), createObject(), createObject('AZURE_StartDate', {v('checkedStartDate')})), "
            f"if(empty({v('checkedEndDate')}), createObject(), createObject('AZURE_EndDate', {v('checkedEndDate')})), "
            f"if({p('useClientCredentials')}, createObject(), createObject('AZURE_SourceResourceId', {v('sourceId')})), "
            f"if({p('appInsightsLocalAuth')}, createObject(), createObject('APPLICATIONINSIGHTS_AUTHENTICATION_STRING', 'Authorization=AAD')))"
        ),
    }


def copied_assignment(name_expr, scope_expr):
    """One role assignment per entry of the nested template's `roles` parameter, to its `principalId`."""
    return {
        "type": "Microsoft.Authorization/roleAssignments",
        "apiVersion": API["roles"],
        "name": f"[guid({name_expr}, parameters('principalId'), parameters('roles')[copyIndex()])]",
        "scope": f"[{scope_expr}]",
        "copy": {"name": "roles", "count": "[length(parameters('roles'))]"},
        "properties": {
            "roleDefinitionId": "[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', parameters('roles')[copyIndex()])]",
            "principalId": "[parameters('principalId')]",
            "principalType": "ServicePrincipal",
        },
    }


def nested_roles(name, scope_type, scope_name_expr, roles, principal_expr, condition=None, depends=None, container=None):
    """Role assignments for one principal on one resource of this resource group (or one blob container of a storage
    account), in a nested deployment: ARM cannot use reference() in a resource name, and the name must include the
    principal id (mirrors the Bicep modules storage-roles, insights-roles and the vault's assignment)."""
    if container:
        id_expr = f"resourceId('{scope_type}/blobServices/containers', parameters('scopeName'), 'default', '{container}')"
        scope_expr = f"format('{scope_type}/{{0}}/blobServices/default/containers/{container}', parameters('scopeName'))"
    else:
        id_expr = f"resourceId('{scope_type}', parameters('scopeName'))"
        scope_expr = f"format('{scope_type}/{{0}}', parameters('scopeName'))"
    inner = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"scopeName": {"type": "string"}, "principalId": {"type": "string"}, "roles": {"type": "array"}},
        "resources": [copied_assignment(id_expr, scope_expr)],
    }
    res = {
        "type": "Microsoft.Resources/deployments",
        "apiVersion": API["deployments"],
        "name": x(f"format('{name}-{{0}}', {v('suffix')})"),
        "dependsOn": depends or [],
        "properties": {
            "mode": "Incremental",
            "expressionEvaluationOptions": {"scope": "inner"},
            "parameters": {
                "scopeName": {"value": x(scope_name_expr)},
                "principalId": {"value": x(principal_expr)},
                "roles": {"value": [ROLES[r] for r in roles]},
            },
            "template": inner,
        },
    }
    if condition:
        res["condition"] = x(condition)
    return res


def fhir_roles_deployment(name, id_expr, roles, condition=None, subscription_expr=None, group_expr=None):
    """A nested deployment into the FHIR server's own subscription and resource group (cross-subscription)."""
    inner_roles = [ROLES[r] for r in roles]
    # One resource whose scope depends on the server kind (two resources would need two copy loop names).
    scope = ("if(variables('isApiForFhir'), format('Microsoft.HealthcareApis/services/{0}', variables('parts')[8]), "
             "format('Microsoft.HealthcareApis/workspaces/{0}/fhirservices/{1}', variables('parts')[8], last(variables('parts'))))")
    inner = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"fhirId": {"type": "string"}, "principalId": {"type": "string"}, "roles": {"type": "array"}},
        "variables": {
            "parts": "[split(parameters('fhirId'), '/')]",
            "isApiForFhir": "[and(equals(toLower(variables('parts')[6]), 'microsoft.healthcareapis'), equals(toLower(variables('parts')[7]), 'services'))]",
        },
        "resources": [copied_assignment("parameters('fhirId')", scope)],
    }
    res = {
        "type": "Microsoft.Resources/deployments",
        "apiVersion": API["deployments"],
        "name": x(f"format('{name}-{{0}}', {v('suffix')})"),
        "subscriptionId": x(subscription_expr or f"split({id_expr}, '/')[2]"),
        "resourceGroup": x(group_expr or f"split({id_expr}, '/')[4]"),
        "dependsOn": [x(f"resourceId('Microsoft.Web/sites', {v('appName')})")],
        "properties": {
            "mode": "Incremental",
            "expressionEvaluationOptions": {"scope": "inner"},
            "parameters": {
                "fhirId": {"value": x(id_expr)},
                "principalId": {"value": x(f"reference({v('siteId')}, '{API['web']}', 'full').identity.principalId")},
                "roles": {"value": inner_roles},
            },
            "template": inner,
        },
    }
    if condition:
        res["condition"] = x(condition)
    return res


def resources():
    storage_id = v("storageId")
    site_dep = x(f"resourceId('Microsoft.Web/sites', {v('appName')})")
    storage_dep = x(f"resourceId('Microsoft.Storage/storageAccounts', {v('storageName')})")
    principal = f"reference({v('siteId')}, '{API['web']}', 'full').identity.principalId"
    identity_principal = f"reference({v('identityId')}, '{API['identity']}').principalId"
    out = []
    # The platform identity (identity.bicep): created first, its roles assigned before the app exists.
    out.append({"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": API["identity"], "name": x(v("identityName")),
                "location": x(p("location")), "tags": x(v("tags"))})
    # State storage.
    out += [
        {
            "type": "Microsoft.Storage/storageAccounts", "apiVersion": API["storage"], "name": x(v("storageName")),
            "location": x(p("location")), "tags": x(v("tags")), "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
            "properties": {
                "minimumTlsVersion": "TLS1_2", "supportsHttpsTrafficOnly": True, "allowBlobPublicAccess": False,
                "allowSharedKeyAccess": False, "defaultToOAuthAuthentication": True,
                "publicNetworkAccess": x(f"if({p('enablePrivateNetworking')}, 'Disabled', 'Enabled')"),
                "networkAcls": {"defaultAction": x(f"if({p('enablePrivateNetworking')}, 'Deny', 'Allow')"), "bypass": "AzureServices"},
            },
        },
        {"type": "Microsoft.Storage/storageAccounts/tableServices", "apiVersion": API["storage"], "name": x(f"format('{{0}}/default', {v('storageName')})"), "dependsOn": [storage_dep]},
        *[
            {"type": "Microsoft.Storage/storageAccounts/tableServices/tables", "apiVersion": API["storage"], "name": x(f"format('{{0}}/default/{t}', {v('storageName')})"),
             "dependsOn": [x(f"resourceId('Microsoft.Storage/storageAccounts/tableServices', {v('storageName')}, 'default')")]}
            for t in ("chunk", "export")
        ],
        {"type": "Microsoft.Storage/storageAccounts/blobServices", "apiVersion": API["storage"], "name": x(f"format('{{0}}/default', {v('storageName')})"),
         "dependsOn": [storage_dep], "properties": {"deleteRetentionPolicy": {"enabled": True, "days": 7}}},
        {"type": "Microsoft.Storage/storageAccounts/blobServices/containers", "apiVersion": API["storage"], "condition": x(v("isFlex")),
         "name": x(f"format('{{0}}/default/app-package', {v('storageName')})"), "properties": {"publicAccess": "None"},
         "dependsOn": [x(f"resourceId('Microsoft.Storage/storageAccounts/blobServices', {v('storageName')}, 'default')")]},
    ]
    # Monitoring.
    out += [
        {"type": "Microsoft.OperationalInsights/workspaces", "apiVersion": API["workspace"], "name": x(v("workspaceName")), "location": x(p("location")),
         "tags": x(v("tags")), "properties": {"sku": {"name": "PerGB2018"}, "retentionInDays": x(p("logRetentionDays"))}},
        {"type": "Microsoft.Insights/components", "apiVersion": API["insights"], "name": x(v("insightsName")), "location": x(p("location")),
         "tags": x(v("tags")), "kind": "web",
         "dependsOn": [x(f"resourceId('Microsoft.OperationalInsights/workspaces', {v('workspaceName')})")],
         "properties": {"Application_Type": "web", "WorkspaceResourceId": x(f"resourceId('Microsoft.OperationalInsights/workspaces', {v('workspaceName')})"),
                        "IngestionMode": "LogAnalytics", "RetentionInDays": x(p("logRetentionDays")),
                        "publicNetworkAccessForIngestion": "Enabled", "publicNetworkAccessForQuery": "Enabled",
                        # Entra-only ingestion by default, as the official Flex Consumption samples do.
                        "DisableLocalAuth": x(f"not({p('appInsightsLocalAuth')})")}},
    ]
    # Private networking (optional).
    private = p("enablePrivateNetworking")
    vnet_id = f"resourceId('Microsoft.Network/virtualNetworks', {v('vnetName')})"
    service = f"{v('storageServices')}[copyIndex()]"
    out += [
        {"type": "Microsoft.Network/virtualNetworks", "apiVersion": API["network"], "condition": x(private), "name": x(v("vnetName")),
         "location": x(p("location")), "tags": x(v("tags")),
         "properties": {
             "addressSpace": {"addressPrefixes": [x(p("vnetAddressPrefix"))]},
             "subnets": [
                 {"name": "integration", "properties": {"addressPrefix": x(p("vnetIntegrationSubnetPrefix")),
                                                       "delegations": [{"name": "functions", "properties": {"serviceName": x(f"if({v('isFlex')}, 'Microsoft.App/environments', 'Microsoft.Web/serverFarms')")}}]}},
                 {"name": "endpoints", "properties": {"addressPrefix": x(p("vnetEndpointsSubnetPrefix")), "privateEndpointNetworkPolicies": "Disabled"}},
             ],
         }},
        {"type": "Microsoft.Network/privateDnsZones", "apiVersion": API["dns"], "condition": x(private),
         "name": x(f"format('privatelink.{{0}}.{{1}}', {service}, environment().suffixes.storage)"), "location": "global", "tags": x(v("tags")),
         "copy": {"name": "zones", "count": x(f"length({v('storageServices')})")}},
        {"type": "Microsoft.Network/privateDnsZones/virtualNetworkLinks", "apiVersion": API["dns"], "condition": x(private),
         "name": x(f"format('privatelink.{{0}}.{{1}}/{{2}}-{{0}}-link', {service}, environment().suffixes.storage, {v('base')})"), "location": "global",
         "copy": {"name": "zoneLinks", "count": x(f"length({v('storageServices')})")},
         "dependsOn": ["zones", x(vnet_id)],
         "properties": {"registrationEnabled": False, "virtualNetwork": {"id": x(vnet_id)}}},
        {"type": "Microsoft.Network/privateEndpoints", "apiVersion": API["network"], "condition": x(private),
         "name": x(f"format('{{0}}-{{1}}-pe', {v('base')}, {service})"), "location": x(p("location")), "tags": x(v("tags")),
         "copy": {"name": "endpoints", "count": x(f"length({v('storageServices')})")},
         "dependsOn": [x(vnet_id), storage_dep],
         "properties": {"subnet": {"id": x(f"resourceId('Microsoft.Network/virtualNetworks/subnets', {v('vnetName')}, 'endpoints')")},
                        "privateLinkServiceConnections": [{"name": x(service), "properties": {"privateLinkServiceId": x(storage_id), "groupIds": [x(service)]}}]}},
        {"type": "Microsoft.Network/privateEndpoints/privateDnsZoneGroups", "apiVersion": API["network"], "condition": x(private),
         "name": x(f"format('{{0}}-{{1}}-pe/default', {v('base')}, {service})"),
         "copy": {"name": "zoneGroups", "count": x(f"length({v('storageServices')})")},
         "dependsOn": ["endpoints", "zones"],
         "properties": {"privateDnsZoneConfigs": [{"name": x(service), "properties": {"privateDnsZoneId": x(f"resourceId('Microsoft.Network/privateDnsZones', format('privatelink.{{0}}.{{1}}', {service}, environment().suffixes.storage))")}}]}},
    ]
    # Flex Consumption: the platform identity may write the package to the deployment container.
    out.append(nested_roles("platform-roles", "Microsoft.Storage/storageAccounts", v("storageName"), ["storageBlobDataContributor"], identity_principal,
                            condition=v("isFlex"), container="app-package",
                            depends=[x(v("identityId")), x(f"resourceId('Microsoft.Storage/storageAccounts/blobServices/containers', {v('storageName')}, 'default', 'app-package')")]))
    # Premium only: the Azure Files content share's account (shared keys on; it holds only the code).
    content_id = f"resourceId('Microsoft.Storage/storageAccounts', {v('contentName')})"
    out.append({
        "type": "Microsoft.Storage/storageAccounts", "apiVersion": API["storage"], "condition": x(v("isPremium")), "name": x(v("contentName")),
        "location": x(p("location")), "tags": x(v("tags")), "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
        "properties": {"minimumTlsVersion": "TLS1_2", "supportsHttpsTrafficOnly": True, "allowBlobPublicAccess": False, "allowSharedKeyAccess": True,
                       "publicNetworkAccess": "Enabled", "networkAcls": {"defaultAction": "Allow", "bypass": "AzureServices"}},
    })
    # Key Vault for the client secret (client-credential mode only), read by the platform identity.
    creds = p("useClientCredentials")
    vault_id = f"resourceId('Microsoft.KeyVault/vaults', {v('vaultName')})"
    secret_id = f"resourceId('Microsoft.KeyVault/vaults/secrets', {v('vaultName')}, 'source-client-secret')"
    out += [
        {"type": "Microsoft.KeyVault/vaults", "apiVersion": API["keyvault"], "condition": x(creds), "name": x(v("vaultName")), "location": x(p("location")),
         "tags": x(v("tags")),
         "properties": {"createMode": x(p("keyVaultCreateMode")), "tenantId": x("subscription().tenantId"), "sku": {"family": "A", "name": "standard"}, "enableRbacAuthorization": True,
                        "enableSoftDelete": True, "softDeleteRetentionInDays": 30, "enablePurgeProtection": True, "publicNetworkAccess": "Enabled"}},
        {"type": "Microsoft.KeyVault/vaults/secrets", "apiVersion": API["keyvault"], "condition": x(creds),
         "name": x(f"format('{{0}}/source-client-secret', {v('vaultName')})"), "dependsOn": [x(vault_id)],
         "properties": {"value": x(p("clientSecret")), "contentType": "client secret for the source FHIR server"}},
        nested_roles("vault-roles", "Microsoft.KeyVault/vaults", v("vaultName"), ["keyVaultSecretsUser"], identity_principal, condition=creds,
                     depends=[x(vault_id), x(v("identityId"))]),
    ]
    # App settings, all in siteConfig.appSettings: every value is known without the app's own identity.
    api = p("typeOfMigration")
    source_api = f"reference(resourceId({v('sourceSubscription')}, {v('sourceGroup')}, 'Microsoft.HealthcareApis/services', {v('sourceName')}), '{API['fhir']}')"
    source_svc = f"reference(resourceId({v('sourceSubscription')}, {v('sourceGroup')}, 'Microsoft.HealthcareApis/workspaces/fhirservices', {v('sourceName')}, last({v('sourceParts')})), '{API['fhir']}')"
    source_audience = f"if(equals({api}, 'AzureAPIforFhir'), {source_api}.authenticationConfiguration.audience, {source_svc}.authenticationConfiguration.audience)"
    source_host = f"split({source_audience}, '/')[2]"
    # Azure API for FHIR: https://<name>.<the audience's host without "<name>.">; AHDS: the audience is the URL; an
    # audience that is not a URL gives no URL (pass sourceFhirUrl).
    source_own_url = (f"if(not(startsWith({source_audience}, 'https://')), '', if(equals({api}, 'AzureAPIforFhir'), "
                      f"format('https://{{0}}', if(startsWith({source_host}, format('{{0}}.', {v('sourceName')})), {source_host}, format('{{0}}.{{1}}', {v('sourceName')}, {source_host}))), {source_audience}))")
    destination_audience = (f"reference(resourceId({v('destinationParts')}[2], {v('destinationParts')}[4], 'Microsoft.HealthcareApis/workspaces/fhirservices', "
                            f"{v('destinationParts')}[8], last({v('destinationParts')})), '{API['fhir']}').authenticationConfiguration.audience")
    storage_endpoint = f"reference({storage_id}, '{API['storage']}').primaryEndpoints"
    core = [
        ("AzureWebJobsStorage__accountName", v("storageName")),
        ("APPLICATIONINSIGHTS_CONNECTION_STRING", f"reference(resourceId('Microsoft.Insights/components', {v('insightsName')}), '{API['insights']}').ConnectionString"),
        ("AZURE_StagingStorageUri", f"{storage_endpoint}.table"),
        ("AZURE_BlobStorageUri", f"{storage_endpoint}.blob"),
        ("AZURE_SourceUri", f"if(or({creds}, not(empty({p('sourceFhirUrl')}))), {p('sourceFhirUrl')}, {source_own_url})"),
        ("AZURE_DestinationUri", f"if(empty({p('destinationFhirUrl')}), if(startsWith({destination_audience}, 'https://'), {destination_audience}, ''), {p('destinationFhirUrl')})"),
        ("AZURE_SourceAudience", f"if(not(empty({p('sourceAudience')})), {p('sourceAudience')}, if({creds}, {p('sourceFhirUrl')}, {source_audience}))"),
        ("AZURE_DestinationAudience", destination_audience),
        ("AZURE_ExportWithHistory", f"string({p('exportWithHistory')})"),
        ("AZURE_ExportWithDelete", f"string({p('exportWithDelete')})"),
        ("AZURE_IsParallel", f"string({p('isParallel')})"),
        ("AZURE_IsExportDeidentified", f"string({p('exportDeidentified')})"),
        ("AZURE_PauseDm", f"string({p('pauseDm')})"),
        ("AZURE_StartTime", f"string({p('startTime')})"),
        ("AZURE_EndTime", f"string({p('endTime')})"),
        ("AZURE_SpecificRun", f"string({p('specificRun')})"),
        ("AZURE_DestinationResourceId", p("fhirServiceId")),
        ("AZURE_ResourceManagerUri", "environment().resourceManager"),
        ("AZURE_MaxExportRetriesEnabled", "'true'"),
        ("AZURE_MaxExportRetries", "'5'"),
        ("MigrationStarterCron", p("migrationStarterCron")),
        ("ExportStatusCron", "'*/30 * * * * *'"),
        ("ImportStatusCron", "'*/30 * * * * *'"),
        ("VerificationCron", "'0 */1 * * * *'"),
    ]
    core_object = "createObject(" + ", ".join(f"'{k}', {e}" for k, e in core) + ")"
    content_settings = (f"createObject('WEBSITE_CONTENTAZUREFILECONNECTIONSTRING', format('DefaultEndpointsProtocol=https;AccountName={{0}};EndpointSuffix={{1}};AccountKey={{2}}', "
                        f"{v('contentName')}, environment().suffixes.storage, listKeys({content_id}, '{API['storage']}').keys[0].value), "
                        f"'WEBSITE_CONTENTSHARE', format('{{0}}-fhirmig', {v('base')}))")
    runtime = f"if({v('isFlex')}, createObject(), union({v('classicRuntimeSettings')}, if({v('isPremium')}, {content_settings}, createObject())))"
    secret_ref = f"format('@Microsoft.KeyVault(SecretUri={{0}})', reference({secret_id}, '{API['keyvault']}').secretUri)"
    credentials = f"if({creds}, createObject('AZURE_ClientCredential', 'true', 'AZURE_ClientId', {p('clientId')}, 'AZURE_TenantId', {p('tenantId')}, 'AZURE_ClientSecret', {secret_ref}), createObject())"
    settings = f"union({runtime}, {core_object}, {v('optionalSettings')}, {credentials}, {p('functionAppCustomSettings')})"
    app_settings = f"map(items({settings}), lambda('setting', createObject('name', lambdaVariables('setting').key, 'value', lambdaVariables('setting').value)))"
    # Function app.
    out += [
        {"type": "Microsoft.Web/serverfarms", "apiVersion": API["web"], "name": x(v("planName")), "location": x(p("location")), "tags": x(v("tags")),
         "kind": x(f"{v('planKind')}[{p('hostingPlan')}]"), "sku": x(f"{v('sku')}[{p('hostingPlan')}]"), "properties": {"reserved": True}},
        {"type": "Microsoft.Web/sites", "apiVersion": API["web"], "name": x(v("appName")), "location": x(p("location")),
         "tags": x(f"union({v('tags')}, createObject('azd-service-name', 'migration'))"),
         "kind": "functionapp,linux", "identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {x(v("identityId")): {}}},
         "dependsOn": [x(f"resourceId('Microsoft.Web/serverfarms', {v('planName')})"), x(f"resourceId('Microsoft.Network/virtualNetworks', {v('vnetName')})"),
                       "zones", "zoneLinks", "endpoints", "zoneGroups", x(v("identityId")), storage_dep, x(content_id),
                       x(f"resourceId('Microsoft.Insights/components', {v('insightsName')})"), x(secret_id),
                       # The platform identity's roles exist before the app (Flex deployment container, Key Vault).
                       x(f"resourceId('Microsoft.Resources/deployments', format('platform-roles-{{0}}', {v('suffix')}))"),
                       x(f"resourceId('Microsoft.Resources/deployments', format('vault-roles-{{0}}', {v('suffix')}))")],
         "properties": {
             "serverFarmId": x(f"resourceId('Microsoft.Web/serverfarms', {v('planName')})"),
             "httpsOnly": True, "clientCertEnabled": False,
             "virtualNetworkSubnetId": x(f"if({private}, resourceId('Microsoft.Network/virtualNetworks/subnets', {v('vnetName')}, 'integration'), null())"),
             "keyVaultReferenceIdentity": x(v("identityId")),
             "siteConfig": x(f"union(if({v('isFlex')}, {v('flexSiteConfig')}, {v('classicSiteConfig')}), createObject('appSettings', {app_settings}))"),
             "functionAppConfig": x(f"if({v('isFlex')}, {v('flexConfig')}, null())"),
         }},
        *[
            {"type": "Microsoft.Web/sites/basicPublishingCredentialsPolicies", "apiVersion": API["web"], "name": x(f"format('{{0}}/{kind}', {v('appName')})"),
             "dependsOn": [site_dep], "properties": {"allow": False}}
            for kind in ("ftp", "scm")
        ],
        nested_roles("storage-roles", "Microsoft.Storage/storageAccounts", v("storageName"), ["storageBlobDataOwner", "storageTableDataContributor"],
                     principal, depends=[site_dep, storage_dep]),
        nested_roles("insights-roles", "Microsoft.Insights/components", v("insightsName"), ["monitoringMetricsPublisher"], principal,
                     condition=f"not({p('appInsightsLocalAuth')})",
                     depends=[site_dep, x(f"resourceId('Microsoft.Insights/components', {v('insightsName')})")]),
    ]
    # FHIR roles in the servers' own subscriptions and resource groups; never on the source in client-secret mode.
    out += [
        fhir_roles_deployment("source-fhir-roles", v("sourceId"), ["fhirDataExporter", "fhirDataReader", "reader"], condition=f"not({creds})",
                              subscription_expr=v("sourceSubscription"), group_expr=v("sourceGroup")),
        fhir_roles_deployment("destination-fhir-roles", p("fhirServiceId"), ["fhirDataImporter", "fhirDataWriter", "fhirDataReader", "reader"]),
    ]
    # Dashboard.
    out.append(dashboard())
    # Alerts.
    email = p("alertEmail")
    group_id = f"resourceId('Microsoft.Insights/actionGroups', format('{{0}}-operators', {v('base')}))"
    rule = f"{v('rules')}[copyIndex()]"
    no_progress = f"equals({rule}.key, 'no-progress')"
    out += [
        {"type": "Microsoft.Insights/actionGroups", "apiVersion": API["actiongroups"], "condition": x(f"not(empty({email}))"),
         "name": x(f"format('{{0}}-operators', {v('base')})"), "location": "global", "tags": x(v("tags")),
         "properties": {"groupShortName": "fhirmig", "enabled": True,
                        "emailReceivers": [{"name": "operator", "emailAddress": x(email), "useCommonAlertSchema": True}]}},
        {"type": "Microsoft.Insights/scheduledQueryRules", "apiVersion": API["rules"], "name": x(f"format('{{0}}-{{1}}', {v('base')}, {rule}.key)"),
         "location": x(p("location")), "tags": x(v("tags")), "copy": {"name": "alertRules", "count": x(f"length({v('rules')})")},
         "dependsOn": [x(f"resourceId('Microsoft.Insights/components', {v('insightsName')})"), x(group_id)],
         "properties": {
             "displayName": x(f"{rule}.displayName"),
             "description": x(f"if({no_progress}, format('No window has been committed for {{0}} hours. Check that the function app runs, the dashboard''s running jobs, and the MigrationStatus_Http function.', {p('noProgressHours')}), {rule}.description)"),
             "severity": x(f"{rule}.severity"), "enabled": True, "scopes": [x(v("appInsightsId"))],
             "evaluationFrequency": x(f"{rule}.frequency"),
             "windowSize": x(f"if({no_progress}, format('PT{{0}}H', {p('noProgressHours')}), {rule}.window)"),
             "overrideQueryTimeRange": x(f"if(empty({rule}.lookback), null(), {rule}.lookback)"),
             "criteria": {"allOf": [{"query": x(f"if({no_progress}, format('let window = {{0}}h;\n{{1}}', {p('noProgressHours')}, {rule}.query), {rule}.query)"),
                                     "timeAggregation": "Count", "operator": x(f"{rule}.operator"), "threshold": x(f"{rule}.threshold"),
                                     "failingPeriods": {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1}}]},
             "autoMitigate": False,
             "actions": {"actionGroups": x(f"if(empty({email}), createArray(), createArray({group_id}))")},
         }},
    ]
    # Code, as Learn documents it per plan; last, so the roles it relies on have had the whole deployment to
    # propagate. Flex Consumption: one deploy. Premium and Dedicated: zip deploy, run from the package.
    deploy_depends = [site_dep, x(vnet_id), "zones", "zoneLinks", "endpoints", "zoneGroups",
                      x(f"resourceId('Microsoft.Resources/deployments', format('storage-roles-{{0}}', {v('suffix')}))"),
                      x(f"resourceId('Microsoft.Resources/deployments', format('insights-roles-{{0}}', {v('suffix')}))"),
                      x(f"resourceId({v('sourceSubscription')}, {v('sourceGroup')}, 'Microsoft.Resources/deployments', format('source-fhir-roles-{{0}}', {v('suffix')}))"),
                      x(f"resourceId(split({p('fhirServiceId')}, '/')[2], split({p('fhirServiceId')}, '/')[4], 'Microsoft.Resources/deployments', format('destination-fhir-roles-{{0}}', {v('suffix')}))"),
                      x(f"resourceId('Microsoft.Portal/dashboards', {v('dashboardName')})"), x(group_id), "alertRules"]
    has_package = f"not(empty({p('packageUri')}))"
    out += [
        {"type": "Microsoft.Web/sites/extensions", "apiVersion": API["web"], "name": x(f"format('{{0}}/onedeploy', {v('appName')})"),
         "condition": x(f"and({v('isFlex')}, {has_package})"), "dependsOn": list(deploy_depends),
         "properties": {"packageUri": x(p("packageUri")), "remoteBuild": False}},
        {"type": "Microsoft.Web/sites/extensions", "apiVersion": API["web"], "name": x(f"format('{{0}}/ZipDeploy', {v('appName')})"),
         "condition": x(f"and(not({v('isFlex')}), {has_package})"), "dependsOn": list(deploy_depends),
         "properties": {"packageUri": x(p("packageUri"))}},
    ]
    return add_module_edges(out)


def dashboard():
    tile = f"{v('tiles')}[copyIndex('logParts')]"
    metric = f"{v('metricTiles')}[copyIndex('metricParts')]"
    ai = v("appInsightsId")
    log_inputs = (
        f"concat(createArray("
        f"createObject('name', 'resourceTypeMode', 'isOptional', true(), 'value', 'components'), "
        f"createObject('name', 'ComponentId', 'isOptional', true(), 'value', {ai}), "
        f"createObject('name', 'Scope', 'isOptional', true(), 'value', createObject('resourceIds', createArray({ai}))), "
        f"createObject('name', 'PartId', 'isOptional', true(), 'value', guid({v('dashboardName')}, {tile}.title, {tile}.subtitle)), "
        f"createObject('name', 'Version', 'isOptional', true(), 'value', '2.0'), "
        f"createObject('name', 'TimeRange', 'isOptional', true(), 'value', {p('dashboardTimeRange')}), "
        f"createObject('name', 'IsQueryContainTimeRange', 'isOptional', true(), 'value', {tile}.whole), "
        f"createObject('name', 'Query', 'isOptional', true(), 'value', {tile}.query), "
        f"createObject('name', 'PartTitle', 'isOptional', true(), 'value', {tile}.title), "
        f"createObject('name', 'PartSubTitle', 'isOptional', true(), 'value', {tile}.subtitle), "
        f"createObject('name', 'ControlType', 'isOptional', true(), 'value', if(empty({tile}.chart), 'AnalyticsGrid', 'FrameControlChart'))), "
        f"if(empty({tile}.chart), createArray(), createArray("
        f"createObject('name', 'SpecificChart', 'isOptional', true(), 'value', {tile}.chart), "
        f"createObject('name', 'Dimensions', 'isOptional', true(), 'value', createObject('xAxis', createObject('name', 'timestamp', 'type', 'datetime'), 'yAxis', createArray(createObject('name', {tile}.series, 'type', 'long')), 'splitBy', createArray(), 'aggregation', 'Sum')), "
        f"createObject('name', 'LegendOptions', 'isOptional', true(), 'value', createObject('isEnabled', true(), 'position', 'Bottom')))))"
    )
    markdown = lambda x0, content: {  # noqa: E731
        "position": {"x": x0, "y": 0, "colSpan": 9, "rowSpan": 2},
        "metadata": {"type": "Extension/HubsExtension/PartType/MarkdownPart", "inputs": [],
                     "settings": {"content": {"settings": {"content": content, "title": "", "subtitle": "", "markdownSource": 1}}}},
    }
    return {
        "type": "Microsoft.Portal/dashboards", "apiVersion": API["dashboard"], "name": x(v("dashboardName")), "location": x(p("location")),
        "tags": x(f"union({v('tags')}, createObject('hidden-title', format('FHIR migration ({{0}})', {v('base')})))"),
        "dependsOn": [x(f"resourceId('Microsoft.Insights/components', {v('insightsName')})")],
        "properties": {
            "lenses": [{"order": 0, "parts": x(f"concat(createArray(variables('markdownParts')[0], variables('markdownParts')[1]), variables('logParts'), variables('metricParts'))")}],
            "metadata": {"model": {"timeRange": {"value": {"relative": {"duration": x(f"div({v('rangeMilliseconds')}[{p('dashboardTimeRange')}], 3600000)"), "timeUnit": 1}},
                                                  "type": "MsPortalFx.Composition.Configuration.ValueTypes.TimeRange"}}},
        },
        "_copyVariables": {
            "markdownParts": [markdown(0, x(v("reminder"))), markdown(9, x(v("guide")))],
            "logParts": {
                "position": {"x": x(f"{tile}.x"), "y": x(f"{tile}.y"), "colSpan": x(f"{tile}.w"), "rowSpan": x(f"{tile}.h")},
                "metadata": {"type": "Extension/Microsoft_OperationsManagementSuite_Workspace/PartType/LogsDashboardPart",
                             "inputs": x(log_inputs),
                             "settings": {"content": {"PartTitle": x(f"{tile}.title"), "PartSubTitle": x(f"{tile}.subtitle")}}},
            },
            "metricParts": {
                "position": {"x": x(f"{metric}.x"), "y": x(f"{metric}.y"), "colSpan": 6, "rowSpan": 4},
                "metadata": {"type": "Extension/HubsExtension/PartType/MonitorChartPart",
                             "inputs": [{"name": "options", "isOptional": True}, {"name": "sharedTimeRange", "isOptional": True}],
                             "settings": {"content": {"options": {"chart": {
                                 "title": x(f"{metric}.title"), "titleKind": 2,
                                 "metrics": x(f"{v('metricTiles')}[copyIndex('metricParts')].metrics"),
                                 "visualization": {"chartType": x(f"{metric}.chartType"),
                                                   "legendVisualization": {"isVisible": True, "position": 2, "hideSubtitle": False},
                                                   "axisVisualization": {"x": {"isVisible": True, "axisType": 2}, "y": {"isVisible": True, "axisType": 1}}},
                                 "timespan": {"relative": {"duration": x(f"{v('rangeMilliseconds')}[{p('dashboardTimeRange')}]")}, "showUTCTime": True, "grain": 1},
                             }}}}},
            },
        },
    }


# Edges Bicep infers between main.bicep's modules (a module that uses another's outputs, identity or name waits for
# all of it), written into the flattened template; check_azure_types.py derives them from main.bicep independently.
MODULE_EDGES = {
    "network": ["storage"],
    "platformRoles": ["storage", "identity"],
    "vault": ["identity"],
    "functionApp": ["storage", "network", "identity", "platformRoles", "content", "monitoring", "vault"],
    "sourceRoles": ["functionApp"],
    "destinationRoles": ["functionApp"],
    "insightsRoles": ["monitoring", "functionApp"],
    "dashboard": ["monitoring"],
    "alerts": ["monitoring"],
    "oneDeploy": ["functionApp", "network", "sourceRoles", "destinationRoles", "insightsRoles", "dashboard", "alerts"],
    "zipDeploy": ["functionApp", "network", "sourceRoles", "destinationRoles", "insightsRoles", "dashboard", "alerts"],
}


def add_module_edges(resources):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import check_azure_types as types  # noqa: E402

    template = {"resources": resources}
    scope = types.Scope(template)

    def ref(r):
        if "copy" in r:
            return r["copy"]["name"]
        segments = ", ".join(types.canonical_segments(scope, r["name"]))
        where = f"{r['subscriptionId'][1:-1]}, {r['resourceGroup'][1:-1]}, " if "subscriptionId" in r else ""
        return x(f"resourceId({where}'{r['type']}', {segments})")

    by_key = {key: r for key, r in types.declared(template)}
    for symbol, needs in MODULE_EDGES.items():
        for key in types.symbol_resources(template, symbol):
            r = by_key[key]
            deps = r.setdefault("dependsOn", [])
            for need in needs:
                for other in types.symbol_resources(template, need):
                    d = ref(by_key[other])
                    if d not in deps and by_key[other] is not r:
                        deps.append(d)
    return resources


def template():
    params = parameters()
    vars_ = variables()
    vars_.update({k: v_ for k, v_ in ROLES.items()})
    res = resources()
    dash = next(r for r in res if r["type"] == "Microsoft.Portal/dashboards")
    copies = dash.pop("_copyVariables")
    vars_["markdownParts"] = copies["markdownParts"]
    vars_["copy"] = [
        {"name": "logParts", "count": len(TILES), "input": copies["logParts"]},
        {"name": "metricParts", "count": len(METRIC_TILES), "input": copies["metricParts"]},
    ]
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"_generator": {"name": "infra/tools/build_arm.py", "source": "infra/main.bicep"}},
        "parameters": params,
        "variables": vars_,
        "resources": res,
        "outputs": {
            "functionAppName": {"type": "string", "value": x(v("appName"))},
            "functionAppPrincipalId": {"type": "string", "value": x(f"reference({v('siteId')}, '{API['web']}', 'full').identity.principalId")},
            "appInsightsName": {"type": "string", "value": x(v("insightsName"))},
            "dashboardName": {"type": "string", "value": x(v("dashboardName"))},
            "storageAccountName": {"type": "string", "value": x(v("storageName"))},
        },
    }


def main():
    text = json.dumps(template(), indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print("infra/main.json is out of date: run target/py-tools/bin/python infra/tools/build_arm.py")
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(INFRA.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
