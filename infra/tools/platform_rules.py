"""Platform and service rules the Azure type definitions do not encode, each with its source (PLATFORM_RULES).

Checked by check_azure_types.py, on main.json as it is and once per combination of the wizard's choices.
"""

import json
import re
from pathlib import Path

from arm_model import (Scope, Unknown, declared, dependency_keys, last_name_segment, problem, reachable,  # noqa: F401
                       resources_of)

TOOLS = Path(__file__).resolve().parent

FLEX_REFUSED_SITE_CONFIG = {"ftpsState", "linuxFxVersion", "alwaysOn", "vnetRouteAllEnabled", "use32BitWorkerProcess",
                            "javaVersion", "netFrameworkVersion", "nodeVersion", "phpVersion", "pythonVersion",
                            "powerShellVersion", "windowsFxVersion"}


KEY_VAULT_NAME = re.compile(r"^[A-Za-z](?!.*--)[A-Za-z0-9-]{1,22}[A-Za-z0-9]$")


PLAN_KIND_FOR_TIER = {"FlexConsumption": "functionapp", "ElasticPremium": "elastic", "Basic": "linux",
                      "Standard": "linux", "PremiumV3": "linux"}


SERVICE_RULES = TOOLS / "service-rules"


LEARN_IAC = ("Microsoft Learn, \"Automate resource deployment for your function app in Azure Functions\" "
             "(articles/azure-functions/functions-infrastructure-as-code.md, ms.date 2025-08-05)")


PLATFORM_RULES = {
    "flex-site-config": "A Flex Consumption site sets no siteConfig property Flex refuses (ftpsState, linuxFxVersion, "
                        "alwaysOn, vnetRouteAllEnabled, language versions). Source: Microsoft Learn, \"App settings "
                        "reference for Azure Functions\", Flex Consumption plan deprecations; ARM error 51021; "
                        "Azure/azure-cli#31414.",
    "code-deploy": "Code reaches the app the way Learn documents for its plan: Flex Consumption by one deploy "
                   "(sites/extensions 'onedeploy' with packageUri; 'You must use one deploy to publish your code "
                   "package'), Premium and Dedicated by zip deployment (sites/extensions 'ZipDeploy' with packageUri and "
                   "WEBSITE_RUN_FROM_PACKAGE=1), never a deploymentScripts container (container instances, shared-key "
                   "storage). Source: " + LEARN_IAC + ", Deployment sources, Deployment package, Zip deployment package. "
                   "The upstream types of sites/extensions know only 'MSDeploy' and 'onedeploy' (no properties): Learn's "
                   "documented names and packageUri are checked here instead.",
    "flex-package-name": "The Flex Consumption package is named released-package.zip (\"the name of the package file "
                         "itself must be released-package.zip\"). Source: " + LEARN_IAC + ", Deployment package.",
    "premium-content-share": "An Elastic Premium app keeps its code in an Azure Files content share "
                             "(WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, WEBSITE_CONTENTSHARE), which takes only a "
                             "shared-key connection string; the share's account is not the state account, which keeps "
                             "shared keys off. Source: " + LEARN_IAC + ", Premium plan; Microsoft Learn, \"Storage "
                             "considerations for Azure Functions\", Create an app without Azure Files.",
    "site-app-settings": "Application settings arrive with the site, in siteConfig.appSettings, not in a separate "
                         "sites/config resource applied after it (\"Make sure to always set all required application "
                         "settings in the appSettings collection\"; top-level settings are needed before the deployment "
                         "resources). Source: " + LEARN_IAC + ", Application configuration, Zip deployment package.",
    "deploy-role-first": "Flex Consumption reads its deployment container as a user-assigned (platform) identity whose "
                         "role on the container is assigned before the site exists, and code is deployed last (every "
                         "other resource first), so a role minutes old does not fail the first deployment (one deploy's "
                         "HTTP 400 BlobUploadFailedException carrying a 403 from storage, reported by teams automating "
                         "Flex deployments, e.g. ZeroFailed.Deploy.Azure's Publish-FlexConsumptionFunctionApp). Source: "
                         + LEARN_IAC + ", Deployment container (UserAssignedIdentity authentication); Microsoft Learn, "
                         "\"Troubleshoot Azure RBAC\" (role assignments take minutes to take effect).",
    "key-vault-name": "A Key Vault name is 3-24 letters, digits and hyphens, starts with a letter, ends with a letter "
                      "or digit, has no two hyphens in a row. Source: Microsoft Learn, \"Naming rules and "
                      "restrictions for Azure resources\", Microsoft.KeyVault/vaults.",
    "plan-kind": "A plan's kind fits its SKU: 'functionapp' for Flex Consumption (FC1), 'elastic' for Elastic Premium, "
                 "'linux' for a Linux App Service (Dedicated) plan. Source: Microsoft Learn, \"Automate resource "
                 "deployment for your function app\", per-plan tabs.",
    "alert-window": "A log search alert rule's windowSize is one of the minutes the service accepts, and a query "
                    "range override is longer than the window and at most 2 days. Source: "
                    "infra/tools/service-rules/scheduled-query-rules.json (Azure/azure-rest-api-specs#21258 with the "
                    "service's error text; hashicorp/terraform-provider-azurerm#18886; MicrosoftDocs/azure-docs#22637).",
    "client-secret-source": "In client-secret mode no deployment targets the source's subscription and nothing reads "
                            "its resource: it may be in another tenant, which an ARM deployment cannot reach. Source: "
                            "Microsoft Learn, \"Deploy resources across subscriptions or resource groups\" (cross-"
                            "subscription deployments stay within the deployment's tenant).",
    "entra-ingestion": "By default Application Insights refuses local (instrumentation-key) authentication, the app "
                       "sends with APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD, and its identity is "
                       "Monitoring Metrics Publisher on the component. Source: Microsoft Learn, \"Microsoft Entra "
                       "authentication for Application Insights\"; Azure-Samples/azure-functions-flex-consumption-samples "
                       "(IaC/bicep: disableLocalAuth, Monitoring Metrics Publisher).",
    "dashboard-layout": "No two dashboard tiles overlap (the portal draws overlapping parts over each other).",
}


def iso_minutes(text):
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?", text or "")
    if not m or text in ("P", "PT"):
        return None
    d, h, mi = (int(g) if g else 0 for g in m.groups())
    return d * 1440 + h * 60 + mi


def condition_holds(scope, r):
    """False when the resource's condition is known false under the scope's assumptions."""
    if "condition" not in r:
        return True
    return scope.values(r["condition"]) != [False]


def plan_scopes(template, scope):
    plans = template.get("parameters", {}).get("hostingPlan", {}).get("allowedValues", [])
    return [(plan, Scope(scope.template, {**scope.assume, "parameters('hostingPlan')": plan})) for plan in plans]


def check_code_deploy(template, scope, resources, tag):
    extensions = [(r, last_name_segment(scope, r["name"])) for s, r, _ in resources if s.template is template
                  and r["type"] == "Microsoft.Web/sites/extensions"]
    variables = template.get("variables", {})
    default_uri = template.get("parameters", {}).get("packageUri", {}).get("defaultValue", "")
    for plan, s in plan_scopes(template, scope):
        s = Scope(template, {**s.assume, "parameters('packageUri')": default_uri})
        active = {name for r, name in extensions if condition_holds(s, r)}
        for r, name in extensions:
            if name in active and (not isinstance(r.get("properties"), dict) or "packageUri" not in r["properties"]):
                problem(f"main.json: [code-deploy]{tag} the {name} resource has no properties.packageUri")
        wanted = "onedeploy" if plan == "FlexConsumption" else "ZipDeploy"
        if wanted not in active:
            problem(f"main.json: [code-deploy]{tag} hostingPlan {plan}: no sites/extensions '{wanted}' deploys the code")
        if active - {wanted}:
            problem(f"main.json: [code-deploy]{tag} hostingPlan {plan}: also deployed by {sorted(active - {wanted})}")
        if plan != "FlexConsumption":
            runtime = variables.get("classicRuntimeSettings", {})
            site = next((r for _, r, _ in resources if r["type"] == "Microsoft.Web/sites"), {})
            if runtime.get("WEBSITE_RUN_FROM_PACKAGE") != "1" or "classicRuntimeSettings" not in json.dumps(site):
                problem(f"main.json: [code-deploy]{tag} hostingPlan {plan}: zip deploy without WEBSITE_RUN_FROM_PACKAGE=1 in the site's settings")
    if default_uri and not default_uri.endswith("/released-package.zip"):
        problem(f"main.json: [flex-package-name]{tag} packageUri's default {default_uri} is not a released-package.zip")


def graph_of(template):
    items = declared(template)
    by_copy = {}
    for key, r in items:
        if "copy" in r:
            by_copy.setdefault(r["copy"]["name"], set()).add(key)
    return items, {key: dependency_keys(template, r, by_copy) for key, r in items}


def check_deploy_order(template, scope, tag):
    items, graph = graph_of(template)
    site = next(((k, r) for k, r in items if r["type"] == "Microsoft.Web/sites"), None)
    if not site:
        return
    flex = Scope(template, {**scope.assume, "parameters('hostingPlan')": "FlexConsumption"})
    auth = [v for v in flex.values(site[1].get("properties", {}).get("functionAppConfig")) if isinstance(v, dict)]
    for config in auth:
        a = config.get("deployment", {}).get("storage", {}).get("authentication", {})
        if a.get("type") != "UserAssignedIdentity":
            problem(f"main.json: [deploy-role-first]{tag} the Flex deployment storage authenticates as {a.get('type')!r}, "
                    "whose role would be assigned after the site")
            continue
        identity = a.get("userAssignedIdentityResourceId", "")
        granting = [k for k, r in items if r["type"] == "Microsoft.Resources/deployments" and identity
                    and identity[1:-1] in json.dumps(r.get("properties", {}).get("parameters", {}).get("principalId", ""))
                    and ROLE_BLOB_CONTRIBUTOR in json.dumps(r)]
        if not granting:
            problem(f"main.json: [deploy-role-first]{tag} no role assignment gives the deployment identity Storage Blob Data Contributor")
        for k in granting:
            if k not in reachable(graph, site[0]):
                problem(f"main.json: [deploy-role-first]{tag} the site does not wait for the deployment identity's role ({items[[i for i, _ in items].index(k)][1]['name']})")
    for key, r in items:
        if r["type"] == "Microsoft.Web/sites/extensions":
            waits = reachable(graph, key)
            missing = [o for o, other in items if o != key and o not in waits and other["type"] != "Microsoft.Web/sites/extensions"]
            for o in missing:
                problem(f"main.json: [deploy-role-first]{tag} {r['name']} is not deployed last: it does not wait for {o[0]} {'/'.join(o[1])}")


ROLE_BLOB_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


ROLE_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"


def check_premium_content(template, scope, resources, tag):
    site = next((r for _, r, _ in resources if r["type"] == "Microsoft.Web/sites"), None)
    if not site:
        return
    text = json.dumps(site.get("properties", {}).get("siteConfig", ""))
    if "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING" not in text or "WEBSITE_CONTENTSHARE" not in text:
        problem(f"main.json: [premium-content-share]{tag} no WEBSITE_CONTENTAZUREFILECONNECTIONSTRING and WEBSITE_CONTENTSHARE for Premium")
        return
    keyed = re.findall(r"listKeys\(resourceId\('Microsoft\.Storage/storageAccounts', ((?:variables|parameters)\('\w+'\)|'[^']*')\)", text)
    premium = Scope(template, {**scope.assume, "parameters('hostingPlan')": "Premium"})
    accounts = {r["name"][1:-1] if r["name"].startswith("[") else r["name"]: r for _, r, _ in resources
                if r["type"] == "Microsoft.Storage/storageAccounts"}
    for name in keyed:
        account = accounts.get(name)
        if account is None:
            problem(f"main.json: [premium-content-share]{tag} the content share's account {name} is not deployed here")
            continue
        if not condition_holds(premium, account):
            problem(f"main.json: [premium-content-share]{tag} the content share's account {name} is not deployed for Premium")
        shared = premium.values(account.get("properties", {}).get("allowSharedKeyAccess"))
        if shared != [True]:
            problem(f"main.json: [premium-content-share]{tag} the content share's account {name} does not allow shared keys")
        if any(t.get("type") == "Microsoft.Storage/storageAccounts/tableServices" and name in t["name"] for _, t, _ in resources):
            problem(f"main.json: [premium-content-share]{tag} the content share is on the state account ({name}), whose shared keys stay off")
    if not keyed:
        problem(f"main.json: [premium-content-share]{tag} the content share's connection string names no account of this template")


def check_alert_windows(template, scope, resources, tag):
    rules = json.loads((SERVICE_RULES / "scheduled-query-rules.json").read_text())
    accepted, longest = set(rules["windowMinutes"]), rules["maxQueryRangeMinutes"]
    for s, r, where in resources:
        if r["type"] != "Microsoft.Insights/scheduledQueryRules":
            continue
        props = r.get("properties", {})
        entries = [None]
        copy = re.search(r"variables\('(\w+)'\)\[copyIndex\(\)\]", json.dumps(props))
        if "copy" in r and copy:
            entries = s.template.get("variables", {}).get(copy.group(1), [])
        hours = s.template.get("parameters", {}).get("noProgressHours", {}).get("allowedValues") or [None]
        for entry in entries:
            for h in hours:
                assume = dict(s.assume)
                if entry is not None:
                    assume[f"variables('{copy.group(1)}')[copyIndex()]"] = entry
                if h is not None:
                    assume["parameters('noProgressHours')"] = h
                e = Scope(s.template, assume)
                for window in e.values(props.get("windowSize")):
                    minutes = iso_minutes(window) if isinstance(window, str) else None
                    label = f"{(entry or {}).get('key', r['name'])}{'' if h is None else f' (noProgressHours {h})'}"
                    if minutes not in accepted:
                        problem(f"{where}: [alert-window]{tag} {label}: windowSize {window!r} is not one of the service's {sorted(accepted)} minutes")
                        continue
                    for lookback in e.values(props.get("overrideQueryTimeRange")):
                        if lookback is None:
                            continue
                        span = iso_minutes(lookback) if isinstance(lookback, str) else None
                        if span is None or span > longest or span <= minutes:
                            problem(f"{where}: [alert-window]{tag} {label}: overrideQueryTimeRange {lookback!r} must be longer than the window and at most {longest} minutes")


def check_client_secret_source(template, scope, resources, tag):
    creds = Scope(template, {**scope.assume, "parameters('useClientCredentials')": True})
    for s, r, where in resources:
        if s.template is not template:
            continue
        target = " ".join(str(r.get(k) or "") for k in ("subscriptionId", "resourceGroup"))
        if "source" in target.lower() and condition_holds(creds, r):
            problem(f"{where}: [client-secret-source]{tag} {r['name']} is deployed to the source's subscription in client-secret mode")
    site = next((r for _, r, _ in resources if r["type"] == "Microsoft.Web/sites"), {})
    settings = json.dumps(site.get("properties", {}).get("siteConfig", ""))
    for name in ("AZURE_SourceUri", "AZURE_SourceAudience"):
        m = re.search(rf"'{name}', (.*?), '[A-Z]", settings)
        if m and "HealthcareApis" in m.group(1) and "useClientCredentials" not in m.group(1).split("HealthcareApis")[0]:
            problem(f"main.json: [client-secret-source]{tag} {name} reads the source's resource even in client-secret mode")


def check_entra_ingestion(template, scope, resources, tag):
    default = template.get("parameters", {}).get("appInsightsLocalAuth", {}).get("defaultValue")
    scope = Scope(template, {**scope.assume, "parameters('appInsightsLocalAuth')": default})
    for s, r, where in resources:
        if r["type"] == "Microsoft.Insights/components" and s.template is template:
            if scope.values(r.get("properties", {}).get("DisableLocalAuth")) != [True]:
                problem(f"{where}: [entra-ingestion]{tag} the component accepts local authentication by default")
    if not any(ROLE_METRICS_PUBLISHER in json.dumps(r) and "siteId" in json.dumps(r.get("properties", {}).get("parameters", {}))
               for _, r, _ in resources if r["type"] == "Microsoft.Resources/deployments"):
        problem(f"main.json: [entra-ingestion]{tag} the app's identity is not Monitoring Metrics Publisher on the component")
    if "'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', 'Authorization=AAD'" not in json.dumps(template.get("variables", {})):
        problem(f"main.json: [entra-ingestion]{tag} APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD is not set")


def check_dashboard_layout(template):
    variables = template.get("variables", {})
    boxes = []
    for i, part in enumerate(variables.get("markdownParts", [])):
        pos = part["position"]
        boxes.append((f"markdown {i}", pos["x"], pos["y"], pos["colSpan"], pos["rowSpan"]))
    for copy in variables.get("copy", []):
        pos = copy["input"].get("position", {})
        for i in range(copy["count"]):
            def value(v):
                if isinstance(v, int):
                    return v
                m = re.fullmatch(r"\[variables\('(\w+)'\)\[copyIndex\('\w+'\)\]\.(\w+)\]", v)
                return variables[m.group(1)][i][m.group(2)]
            item = variables[re.search(r"variables\('(\w+)'\)", json.dumps(pos)).group(1)][i]
            boxes.append((item.get("title", f"{copy['name']} {i}"), value(pos["x"]), value(pos["y"]), value(pos["colSpan"]), value(pos["rowSpan"])))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]:
                problem(f"main.json: [dashboard-layout] the tiles {a[0]!r} and {b[0]!r} overlap")


def check_platform_rules(template, assume=None, tag=""):
    scope0 = Scope(template, assume)
    resources = list(resources_of(template, assume=assume))
    flex = "variables('isFlex')"
    for scope, r, where in resources:
        if not condition_holds(scope, r):
            continue
        if r["type"] == "Microsoft.Web/sites":
            siteconfig = r.get("properties", {}).get("siteConfig")
            for value in Scope(scope.template, {**scope.assume, flex: True}).values(siteconfig):
                if isinstance(value, dict):
                    refused = sorted(set(value) & FLEX_REFUSED_SITE_CONFIG)
                    if refused:
                        problem(f"{where}: [flex-site-config]{tag} the Flex Consumption site sets {refused} in siteConfig")
                    if "appSettings" not in value:
                        problem(f"{where}: [site-app-settings]{tag} the site is created without siteConfig.appSettings")
                elif value is not None:
                    problem(f"{where}: [flex-site-config]{tag} the Flex Consumption siteConfig cannot be read: {value!r}")
        if r["type"] == "Microsoft.Web/sites/config":
            problem(f"{where}: [site-app-settings]{tag} app settings in a separate sites/config resource, applied after the site")
        if r["type"] == "Microsoft.Resources/deploymentScripts":
            problem(f"{where}: [code-deploy]{tag} a deployment script deploys code; use the per-plan sites/extensions")
        if r["type"] == "Microsoft.KeyVault/vaults":
            name = r["name"]
            lead = scope.leading_literal(name)
            if not name.startswith("["):
                if not KEY_VAULT_NAME.match(name):
                    problem(f"{where}: [key-vault-name]{tag} '{name}' breaks the Key Vault naming rules")
            elif not lead or not lead[0].isalpha() or "--" in lead:
                problem(f"{where}: [key-vault-name]{tag} the name {name} may start with something other than a letter")
        if r["type"] == "Microsoft.Web/serverfarms":
            for plan, s in plan_scopes(template, scope):
                kinds, skus = s.values(r.get("kind")), s.values(r.get("sku"))
                for kind in kinds:
                    for sku in skus:
                        tier = sku.get("tier") if isinstance(sku, dict) else None
                        if isinstance(kind, str) and tier in PLAN_KIND_FOR_TIER and kind != PLAN_KIND_FOR_TIER[tier]:
                            problem(f"{where}: [plan-kind]{tag} hostingPlan {plan}: kind '{kind}' on a {tier} plan "
                                    f"(expected '{PLAN_KIND_FOR_TIER[tier]}')")
    check_code_deploy(template, scope0, resources, tag)
    check_deploy_order(template, scope0, tag)
    check_premium_content(template, scope0, resources, tag)
    check_alert_windows(template, scope0, resources, tag)
    check_client_secret_source(template, scope0, resources, tag)
    if not assume:
        check_entra_ingestion(template, scope0, resources, tag)
        check_dashboard_layout(template)
