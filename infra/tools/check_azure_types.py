"""Checks infra/main.json, host.json and every function.json against the definitions Azure itself publishes.

1. Every resource body in main.json (nested deployments included) against the Bicep type definitions of its type
   and API version (infra/tools/upstream/bicep-types, from Azure/bicep-types-az): unknown property names, wrong
   types, literals outside closed unions, read-only properties set, required ones missing.
2. host.json and every function.json against the SchemaStore schemas (infra/tools/upstream/schemastore).
3. Platform rules the types do not encode (PLATFORM_RULES below, each with its source).
4. dependsOn: every edge ARM needs inside one template (a resource that names, references or is the child of
   another), and every edge Bicep infers between main.bicep's modules (a module that uses another's outputs,
   identity or name, or lists it in dependsOn), is in main.json (directly or through another resource).

Exit status 1 with one line per problem. Usage:
  target/py-tools/bin/python infra/tools/check_azure_types.py [--template F] [--bicep F] [--host F] [--function F]...
"""

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema

TOOLS = Path(__file__).resolve().parent
INFRA = TOOLS.parent
ROOT = INFRA.parent
UPSTREAM = TOOLS / "upstream"

REQUIRED, READ_ONLY = 1, 2
# Keys of an ARM resource that belong to the template language, not to the resource body.
TEMPLATE_KEYS = {"type", "apiVersion", "name", "condition", "copy", "dependsOn", "scope", "comments", "subscriptionId",
                 "resourceGroup", "metadata"}

problems = []


def problem(text):
    problems.append(text)


# --- the upstream types --------------------------------------------------------------------------------------

def load_types():
    index = {}
    for path in sorted((UPSTREAM / "bicep-types").rglob("types.json")):
        entries = json.loads(path.read_text())
        for e in entries:
            if e.get("$type") == "ResourceType":
                index[e["name"]] = (entries, int(e["body"]["$ref"][2:]))
    return index


def deref(entries, ref):
    return entries[int(ref["$ref"][2:])]


# --- values of ARM expressions, as far as they can be known without deploying ------------------------------

class Unknown:
    """A value that only exists at deployment time; `kind` is its ARM type when the expression tells it."""

    def __init__(self, kind=None):
        self.kind = kind

    def __repr__(self):
        return f"<{self.kind or 'unknown'} expression>"


STRING_FUNCS = {"format", "toLower", "toUpper", "replace", "uniqueString", "guid", "resourceId", "string",
                "subscriptionResourceId", "extensionResourceId", "dateTimeAdd", "utcNow", "trim", "substring", "base64"}
BOOL_FUNCS = {"equals", "not", "and", "or", "empty", "contains", "startsWith", "endsWith", "bool", "greater", "less"}
INT_FUNCS = {"length", "int", "add", "sub", "mul", "div", "mod"}


def _format(args):
    return re.sub(r"\{(\d+)\}", lambda m: str(args[1 + int(m.group(1))]), args[0])


def _union(args):
    if not all(isinstance(a, dict) for a in args):
        raise TypeError
    out = {}
    for a in args:
        out.update(a)
    return out


KNOWN_FUNCS = {
    "equals": lambda a: a[0] == a[1],
    "not": lambda a: not a[0] if isinstance(a[0], bool) else (_ for _ in ()).throw(TypeError()),
    "and": lambda a: all(a) if all(isinstance(x, bool) for x in a) else (_ for _ in ()).throw(TypeError()),
    "or": lambda a: any(a) if all(isinstance(x, bool) for x in a) else (_ for _ in ()).throw(TypeError()),
    "empty": lambda a: len(a[0]) == 0,
    "greater": lambda a: a[0] > a[1],
    "startsWith": lambda a: a[0].startswith(a[1]),
    "format": _format,
    "union": _union,
}


def balanced(text):
    """Whether brackets and quotes balance in an expression text."""
    depth, quote = 0, False
    for c in text:
        if quote:
            quote = c != "'"
        elif c == "'":
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and not quote


def split_args(text):
    """Top-level comma-separated arguments of an ARM function call's argument text."""
    args, depth, quote, start = [], 0, False, 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "'":
                if i + 1 < len(text) and text[i + 1] == "'":
                    i += 1
                else:
                    quote = False
        elif c == "'":
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    if text.strip():
        args.append(text[start:].strip())
    return args


def call(text):
    """(name, args) when `text` is exactly one function call, else None."""
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\((.*)\)$", text.strip(), re.S)
    if not m:
        return None
    # The closing parenthesis must close the opening one.
    depth, quote = 0, False
    body = text.strip()[len(m.group(1)):]
    for i, c in enumerate(body):
        if quote:
            quote = c != "'" or (i + 1 < len(body) and body[i + 1] == "'")
        elif c == "'":
            quote = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0 and i != len(body) - 1:
                return None
    return m.group(1), split_args(m.group(2))


class Scope:
    """One template's parameters and variables, with optional assumptions (expression text -> value)."""

    def __init__(self, template, assume=None):
        self.template = template
        self.assume = assume or {}

    def values(self, value):
        """The values a template value can take: concrete Python values and Unknowns."""
        if isinstance(value, str) and value.startswith("[") and not value.startswith("[[") and value.endswith("]"):
            return self.expr(value[1:-1].strip())
        if isinstance(value, str) and value.startswith("[["):
            return [value[1:]]
        return [value]

    def expr(self, text):
        text = text.strip()
        if text in self.assume:
            return [self.assume[text]]
        if re.fullmatch(r"'(?:[^']|'')*'", text):
            return [text[1:-1].replace("''", "'")]
        if re.fullmatch(r"-?\d+", text):
            return [int(text)]
        c = call(text)
        if c:
            name, args = c
            if name == "variables" and len(args) == 1:
                return self.values(self.template.get("variables", {}).get(args[0].strip("'"), None))
            if name == "parameters" and len(args) == 1:
                spec = self.template.get("parameters", {}).get(args[0].strip("'"), {})
                if "allowedValues" in spec:
                    return list(spec["allowedValues"])
                kind = {"securestring": "string", "secureobject": "object"}.get(spec.get("type"), spec.get("type"))
                return [Unknown(kind)]
            if name == "if" and len(args) == 3:
                cond = self.expr(args[0])
                if cond == [True]:
                    return self.expr(args[1])
                if cond == [False]:
                    return self.expr(args[2])
                return self.expr(args[1]) + self.expr(args[2])
            if name == "null":
                return [None]
            if name in ("true", "false"):
                return [name == "true"]
            known = self.known_call(name, args)
            if known is not None:
                return known
            if name in STRING_FUNCS:
                return [Unknown("string")]
            if name in BOOL_FUNCS:
                return [Unknown("bool")]
            if name in INT_FUNCS:
                return [Unknown("int")]
            if name in ("createObject", "union", "json"):
                return [Unknown("object")]
            if name in ("createArray", "split", "range"):
                return [Unknown("array")]
            return [Unknown()]
        # base.property of a known object.
        m = re.match(r"^(.*)\.([A-Za-z_][A-Za-z0-9_]*)$", text, re.S)
        if m and balanced(m.group(1)):
            out = []
            for b in self.expr(m.group(1)):
                out += self.values(b[m.group(2)]) if isinstance(b, dict) and m.group(2) in b else [Unknown()]
            return out
        # base[index]: indexing a known object with a known key.
        m = re.match(r"^(.*)\[([^\[\]]*)\]$", text, re.S)
        if m:
            bases, keys = self.expr(m.group(1)), self.expr(m.group(2))
            out = []
            for b in bases:
                for k in keys:
                    if isinstance(b, dict) and isinstance(k, str) and k in b:
                        out += self.values(b[k])
                    else:
                        out.append(Unknown())
            return out
        return [Unknown()]

    def known_call(self, name, args):
        """The values of a call whose arguments are all known (few enough to enumerate), else None."""
        if name not in ("equals", "not", "and", "or", "empty", "format", "union", "createObject", "greater", "startsWith"):
            return None
        if name == "createObject":
            keys = [self.expr(a) for a in args[0::2]]
            if not all(len(k) == 1 and isinstance(k[0], str) for k in keys):
                return None
            values = [self.expr(a) for a in args[1::2]]
            return [{k[0]: (v[0] if len(v) == 1 else Unknown()) for k, v in zip(keys, values)}]
        choices = [self.expr(a) for a in args]
        if any(isinstance(c, Unknown) for cs in choices for c in cs):
            return None
        combos = [[]]
        for cs in choices:
            combos = [c + [v] for c in combos for v in cs]
            if len(combos) > 64:
                return None
        out = []
        for a in combos:
            try:
                value = KNOWN_FUNCS[name](a)
            except (TypeError, KeyError, IndexError, ValueError):
                return None
            if value not in out:
                out.append(value)
        return out

    def leading_literal(self, text):
        """The characters a string expression is known to start with ('' when unknown)."""
        if text.startswith("[") and not text.startswith("[["):
            return self._lead(text[1:-1].strip())
        return text

    def _lead(self, text):
        if re.fullmatch(r"'(?:[^']|'')*'", text):
            return text[1:-1]
        c = call(text)
        if not c:
            return ""
        name, args = c
        if name == "variables":
            value = self.template.get("variables", {}).get(args[0].strip("'"))
            return self.leading_literal(value) if isinstance(value, str) else ""
        if name == "format" and args and re.fullmatch(r"'(?:[^']|'')*'", args[0]):
            pattern = args[0][1:-1]
            head = pattern.split("{", 1)[0]
            if head:
                return head
            m = re.match(r"\{(\d+)\}", pattern)
            return self._lead(args[1 + int(m.group(1))]) if m and len(args) > 1 + int(m.group(1)) else ""
        if name in ("concat",) and args:
            return self._lead(args[0])
        return ""


# --- 1. resource bodies against the types --------------------------------------------------------------------

def kind_of(entries, t):
    kind = t["$type"]
    if kind in ("StringType", "StringLiteralType"):
        return "string"
    if kind == "IntegerType":
        return "int"
    if kind == "BooleanType":
        return "bool"
    if kind in ("ObjectType", "DiscriminatedObjectType"):
        return "object"
    if kind == "ArrayType":
        return "array"
    if kind == "UnionType":
        kinds = {kind_of(entries, deref(entries, e)) for e in t["elements"]}
        return kinds.pop() if len(kinds) == 1 else None
    return None  # AnyType and the like


def python_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return None


def check_value(scope, entries, t, value, where, out):
    """Appends to `out` what is wrong with one template value against type entry `t`."""
    for candidate in scope.values(value):
        check_candidate(scope, entries, t, candidate, where, out)


def check_candidate(scope, entries, t, value, where, out):
    if value is None:
        return  # ARM treats null as "not set"
    expected = kind_of(entries, t)
    if isinstance(value, Unknown):
        if value.kind and expected and value.kind != expected:
            out.append(f"{where}: an expression of type {value.kind} where Azure expects {expected}")
        return
    actual = python_kind(value)
    if expected and actual != expected:
        out.append(f"{where}: {actual} {json.dumps(value)[:60]} where Azure expects {expected}")
        return
    kind = t["$type"]
    if kind == "StringLiteralType" and value != t["value"]:
        out.append(f"{where}: '{value}' where Azure allows only '{t['value']}'")
    elif kind == "StringType":
        if "pattern" in t and not re.search(t["pattern"], value):
            out.append(f"{where}: '{value}' does not match {t['pattern']}")
        if len(value) < t.get("minLength", 0) or len(value) > t.get("maxLength", 1 << 30):
            out.append(f"{where}: '{value}' is outside the length {t.get('minLength', 0)}-{t.get('maxLength', '')}")
    elif kind == "IntegerType":
        if value < t.get("minValue", -(1 << 62)) or value > t.get("maxValue", 1 << 62):
            out.append(f"{where}: {value} is outside {t.get('minValue')}..{t.get('maxValue')}")
    elif kind == "UnionType":
        elements = [deref(entries, e) for e in t["elements"]]
        attempts = []
        for e in elements:
            found = []
            check_candidate(scope, entries, e, value, where, found)
            if not found:
                return
            attempts.append(found)
        literals = [e["value"] for e in elements if e["$type"] == "StringLiteralType"]
        if isinstance(value, str) and literals:
            out.append(f"{where}: '{value}' is not one of {literals}")
        else:
            out.extend(min(attempts, key=len))
    elif kind == "ArrayType":
        item = deref(entries, t["itemType"])
        for i, v in enumerate(value):
            check_value(scope, entries, item, v, f"{where}[{i}]", out)
    elif kind == "ObjectType":
        check_object(scope, entries, t.get("properties", {}), t.get("additionalProperties"), value, where, out)
    elif kind == "DiscriminatedObjectType":
        check_discriminated(scope, entries, t, value, where, out)


def check_object(scope, entries, properties, additional, value, where, out, skip=()):
    for key, v in value.items():
        if key in skip:
            continue
        spec = properties.get(key)
        if spec is None:
            if additional is None:
                out.append(f"{where}: unknown property '{key}' (not in Azure's definition)")
            else:
                check_value(scope, entries, deref(entries, additional), v, f"{where}.{key}", out)
            continue
        if spec.get("flags", 0) & READ_ONLY:
            out.append(f"{where}: '{key}' is read-only")
            continue
        check_value(scope, entries, deref(entries, spec["type"]), v, f"{where}.{key}", out)
    for key, spec in properties.items():
        if spec.get("flags", 0) & REQUIRED and not spec.get("flags", 0) & READ_ONLY and key not in value and key not in skip:
            out.append(f"{where}: required property '{key}' is missing")


def check_discriminated(scope, entries, t, value, where, out, skip=(), name_value=None):
    key = t["discriminator"]
    chosen = name_value if key == "name" and name_value is not None else value.get(key)
    if isinstance(chosen, str) and chosen.startswith("["):
        chosen = None
    base = dict(t.get("baseProperties", {}))
    if chosen in t["elements"]:
        element = deref(entries, t["elements"][chosen])
        merged = {**base, **element.get("properties", {})}
        check_object(scope, entries, merged, element.get("additionalProperties"), value, where, out, skip)
    elif chosen is None:
        # Unknown at check time: a property is known when any variant knows it.
        merged = dict(base)
        for ref in t["elements"].values():
            merged.update(deref(entries, ref).get("properties", {}))
        relaxed = {k: {**s, "flags": s.get("flags", 0) & ~REQUIRED} for k, s in merged.items()}
        check_object(scope, entries, relaxed, None, value, where, out, skip)
    else:
        out.append(f"{where}: {key} '{chosen}' is not one of {sorted(t['elements'])}")


def last_name_segment(scope, name):
    """The literal last segment of a resource name ('onedeploy' of format('{0}/onedeploy', ...)), if known."""
    if not name.startswith("["):
        return name.split("/")[-1]
    c = call(name[1:-1])
    if c and c[0] == "format" and re.fullmatch(r"'[^']*'", c[1][0]):
        tail = c[1][0][1:-1].split("/")[-1]
        return None if "{" in tail else tail
    return None


def resources_of(template, where="main.json", assume=None):
    """(scope, resource, where) for every resource, nested deployments' templates included (assumptions apply to the
    top-level template only)."""
    scope = Scope(template, assume)
    for i, r in enumerate(template.get("resources", [])):
        yield scope, r, f"{where}.resources[{i}] {r['type']}"
        props = r.get("properties")
        if isinstance(props, dict) and isinstance(props.get("template"), dict):
            yield from resources_of(props["template"], f"{where}.resources[{i}].template")


def check_bodies(template, types, assume=None, tag=""):
    for scope, r, where in resources_of(template, assume=assume):
        if assume and not condition_holds(scope, r):
            continue
        key = f"{r['type']}@{r['apiVersion']}"
        if key not in types:
            problem(f"{where}: no upstream type definition for {key} (vendor it with infra/tools/vendor_upstream.py)")
            continue
        entries, body_index = types[key]
        body = entries[body_index]
        value = {k: v for k, v in r.items() if k not in TEMPLATE_KEYS}
        skip = {"name", "id", "type", "apiVersion"}
        # Platform-documented extensions the upstream types lack or leave without properties (PLATFORM_RULES:
        # code-deploy checks their packageUri instead).
        extension = last_name_segment(scope, r["name"]) if r["type"] == "Microsoft.Web/sites/extensions" else None
        if extension == "ZipDeploy":
            continue
        if extension == "onedeploy":
            skip = skip | {"properties"}
        if r["type"] == "Microsoft.Resources/deployments" and isinstance(value.get("properties"), dict):
            value["properties"] = {k: v for k, v in value["properties"].items() if k != "template"}
        out = []
        if body["$type"] == "DiscriminatedObjectType":
            check_discriminated(scope, entries, body, value, where, out, skip, last_name_segment(scope, r["name"]))
        else:
            check_object(scope, entries, body.get("properties", {}), body.get("additionalProperties"), value, where, out, skip)
        for line in dict.fromkeys(out):
            problem(line.replace(": ", f":{tag} ", 1) if tag else line)


# --- 2. host.json and function.json against SchemaStore ------------------------------------------------------

def schema_errors(schema, instance):
    validator = jsonschema.validators.validator_for(schema)(schema)
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        yield "/".join(str(p) for p in error.absolute_path) or "(root)", error.message[:200]


def check_schema(instance_path, schema_name):
    schema = json.loads((UPSTREAM / "schemastore" / schema_name).read_text())
    instance = json.loads(Path(instance_path).read_text())
    if schema_name != "function.json":
        for path, message in schema_errors(schema, instance):
            problem(f"{instance_path}: {path}: {message} (SchemaStore {schema_name})")
        return
    # SchemaStore's binding definitions overlap (its sqlBinding and mySqlBinding accept other bindings too), so
    # its "oneOf" refuses every binding. Each binding is checked against the definitions that name its type.
    bindings = instance.get("bindings")
    for path, message in schema_errors(schema, {k: v for k, v in instance.items() if k != "bindings"}):
        problem(f"{instance_path}: {path}: {message} (SchemaStore {schema_name})")
    if not isinstance(bindings, list):
        problem(f"{instance_path}: bindings: a function.json needs a list of bindings (SchemaStore {schema_name})")
        return
    definitions = schema["definitions"]
    for i, binding in enumerate(bindings):
        kind = binding.get("type") if isinstance(binding, dict) else None
        names = [n for n, d in definitions.items() if n not in ("bindingBase", "dynamicBinding", "sqlBinding", "mySqlBinding")
                 and isinstance(kind, str) and f'"{kind}"' in json.dumps(d.get("properties", {}).get("type", d))]
        if not names:
            problem(f"{instance_path}: bindings/{i}: no SchemaStore binding definition has type {kind!r}")
            continue
        results = []
        for name in names:
            one = {"$schema": schema.get("$schema"), "definitions": definitions,
                   "allOf": [{"$ref": "#/definitions/bindingBase"}, {"$ref": f"#/definitions/{name}"}]}
            results.append([f"bindings/{i}/{p}: {m}" for p, m in schema_errors(one, binding)])
        if all(results):
            for line in min(results, key=len):
                problem(f"{instance_path}: {line} (SchemaStore {schema_name})")


# --- 3. platform rules the types do not encode ---------------------------------------------------------------

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


# --- 4. dependsOn --------------------------------------------------------------------------------------------

def canonical_segments(scope, name):
    """A resource name as a tuple of segment texts, comparable with the arguments of resourceId()."""
    if not name.startswith("["):
        return tuple(f"'{s}'" for s in name.split("/"))
    c = call(name[1:-1])
    if c and c[0] == "format" and re.fullmatch(r"'(?:[^']|'')*'", c[1][0]):
        pattern, args = c[1][0][1:-1], c[1][1:]
        out = []
        for seg in pattern.split("/"):
            m = re.fullmatch(r"\{(\d+)\}", seg)
            if m:
                out.append(args[int(m.group(1))])
            elif "{" in seg:
                used = sorted({int(n) for n in re.findall(r"\{(\d+)\}", seg)})
                renumbered = seg
                for new, old in enumerate(used):
                    renumbered = renumbered.replace(f"{{{old}}}", f"{{@{new}}}")
                renumbered = renumbered.replace("{@", "{")
                out.append(f"format('{renumbered}', {', '.join(args[n] for n in used)})")
            else:
                out.append(f"'{seg}'")
        return tuple(out)
    return (name[1:-1],)


def resource_ids_in(text):
    """(type, segments) of every resourceId(...) call in an expression text."""
    found = []
    for m in re.finditer(r"resourceId\(", text):
        if m.start() > 0 and text[m.start() - 1].isalpha():
            continue  # subscriptionResourceId, extensionResourceId
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        args = split_args(text[m.end():i - 1])
        for j, a in enumerate(args):
            if re.fullmatch(r"'[A-Za-z]+\.[A-Za-z]+/[^']*'", a):
                found.append((a[1:-1].lower(), tuple(args[j + 1:])))
                break
    return found


def expression_texts(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from expression_texts(k)
            yield from expression_texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from expression_texts(v)
    elif isinstance(value, str) and value.startswith("[") and not value.startswith("[["):
        yield value[1:-1]


def expand_variables(text, variables, depth=0):
    """Inlines variables whose text names a resource (variables('siteId') -> resourceId(...))."""
    def swap(m):
        value = variables.get(m.group(1))
        if isinstance(value, str) and value.startswith("[") and "resourceId(" in value and depth < 5:
            return "(" + expand_variables(value[1:-1], variables, depth + 1) + ")"
        return m.group(0)
    return re.sub(r"variables\('([^']+)'\)", swap, text)


def declared(template):
    scope = Scope(template)
    out = []
    for r in template.get("resources", []):
        out.append(((r["type"].lower(), canonical_segments(scope, r["name"])), r))
    return out


def dependency_keys(template, r, by_copy):
    keys = set()
    for d in r.get("dependsOn", []):
        if d.startswith("["):
            for ref in resource_ids_in(d[1:-1]):
                keys.add(ref)
        else:
            keys |= by_copy.get(d, set())
    return keys


def check_template_edges(template, where="main.json"):
    items = declared(template)
    by_copy = {}
    for key, r in items:
        if "copy" in r:
            by_copy.setdefault(r["copy"]["name"], set()).add(key)
    variables = template.get("variables", {})
    graph = {key: dependency_keys(template, r, by_copy) for key, r in items}
    for key, r in items:
        body = {k: v for k, v in r.items() if k not in ("dependsOn", "name", "type", "apiVersion")}
        props = body.get("properties")
        if isinstance(props, dict) and "template" in props:
            body["properties"] = {k: v for k, v in props.items() if k != "template"}
            check_template_edges(props["template"], f"{where}/{r['type']}")
        used = set()
        for text in expression_texts(body):
            used |= set(resource_ids_in(expand_variables(text, variables)))
        # A child names its parent.
        for other, _ in items:
            if other != key and key[0].startswith(other[0] + "/") and key[1][:len(other[1])] == other[1]:
                used.add(other)
        for other, target in items:
            if other == key or other not in used:
                continue
            if other not in reachable(graph, key):
                problem(f"{where}: {r['type']} {r['name']} uses {target['type']} {target['name']} but does not depend on it")


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        k = todo.pop()
        for n in graph.get(k, ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


# main.bicep's modules and resources as main.json flattens them: symbol -> (type prefix, literal in the name).
BICEP_SYMBOLS = {
    "identity": [("microsoft.managedidentity/", "")],
    "storage": [("microsoft.storage/", "storageName")],
    "content": [("microsoft.storage/storageaccounts", "contentName")],
    "monitoring": [("microsoft.operationalinsights/", ""), ("microsoft.insights/components", "")],
    "network": [("microsoft.network/", "")],
    "platformRoles": [("microsoft.resources/deployments", "platform-roles")],
    "functionApp": [("microsoft.web/serverfarms", ""), ("microsoft.web/sites", "fhirmig"),
                    ("microsoft.web/sites/basicpublishingcredentialspolicies", ""), ("microsoft.resources/deployments", "storage-roles")],
    "sourceRoles": [("microsoft.resources/deployments", "source-fhir-roles")],
    "destinationRoles": [("microsoft.resources/deployments", "destination-fhir-roles")],
    "insightsRoles": [("microsoft.resources/deployments", "insights-roles")],
    "vault": [("microsoft.keyvault/", ""), ("microsoft.resources/deployments", "vault-roles")],
    "dashboard": [("microsoft.portal/", "")],
    "alerts": [("microsoft.insights/actiongroups", ""), ("microsoft.insights/scheduledqueryrules", "")],
    "oneDeploy": [("microsoft.web/sites/extensions", "onedeploy")],
    "zipDeploy": [("microsoft.web/sites/extensions", "ZipDeploy")],
}


def symbol_resources(template, symbol):
    out = []
    for key, r in declared(template):
        for prefix, literal in BICEP_SYMBOLS[symbol]:
            exact = not prefix.endswith("/")
            if (key[0] == prefix if exact else key[0].startswith(prefix)) and literal in r["name"]:
                out.append(key)
    return out


def bicep_edges(bicep_text):
    """symbol -> symbols it depends on, as Bicep infers them (outputs, id, name, identity, properties, dependsOn)."""
    text = re.sub(r"//[^\n]*", "", bicep_text)
    blocks, current = {}, None
    kinds = {}
    for line in text.splitlines():
        m = re.match(r"^(module|resource|var|output|param|targetScope)\s+(\w+)?", line)
        if m:
            current = m.group(2) if m.group(1) in ("module", "resource", "var") else None
            if current:
                kinds[current] = (m.group(1), " existing" in line)
                blocks[current] = ""
        if current:
            blocks[current] += line + "\n"
    symbols = {s for s, (k, existing) in kinds.items() if k in ("module", "resource") and not existing}
    variables = {s for s, (k, _) in kinds.items() if k == "var"}
    direct = {}
    for name, body in blocks.items():
        body_no_head = body.split("=", 1)[1] if "=" in body else body
        refs = {s for s in symbols if re.search(rf"\b{s}!?\.(outputs|id|name|identity|properties)\b", body_no_head)}
        deps = re.search(r"dependsOn:\s*\[([^\]]*)\]", body_no_head)
        if deps:
            refs |= {s for s in re.findall(r"\b(\w+)\b", deps.group(1)) if s in symbols}
        refs |= {("var", v) for v in variables if v != name and re.search(rf"\b{v}\b", body_no_head)}
        direct[name] = refs
    resolved = {}

    def closure(name, seen=()):
        out = set()
        for ref in direct.get(name, ()):
            if isinstance(ref, tuple):
                if ref[1] not in seen:
                    out |= closure(ref[1], seen + (name,))
            else:
                out.add(ref)
        return out

    for s in symbols:
        resolved[s] = closure(s) - {s}
    return resolved


def check_bicep_edges(template, bicep_text):
    items = declared(template)
    by_copy = {}
    for key, r in items:
        if "copy" in r:
            by_copy.setdefault(r["copy"]["name"], set()).add(key)
    graph = {key: dependency_keys(template, r, by_copy) for key, r in items}
    names = {key: r["name"] for key, r in items}
    for symbol, needs in sorted(bicep_edges(bicep_text).items()):
        if symbol not in BICEP_SYMBOLS:
            continue
        for need in sorted(needs):
            if need not in BICEP_SYMBOLS:
                continue
            for a in symbol_resources(template, symbol):
                missing = [b for b in symbol_resources(template, need) if b not in reachable(graph, a)]
                for b in missing:
                    problem(f"main.json: {names[a]} ({symbol}) does not depend on {names[b]} ({need}), "
                            f"as main.bicep's {symbol} uses {need}")


# Parameters whose combinations the wizard offers and that change which resources deploy or how they are built.
COMBINED = ("hostingPlan", "typeOfMigration", "useClientCredentials", "enablePrivateNetworking", "appInsightsLocalAuth")


def form_choices(form_path):
    """Each COMBINED parameter's values the wizard (uiDefForm.json) can produce."""
    form = json.loads(Path(form_path).read_text())["parameters"]
    elements = form["basics"] + [e for step in form["steps"] for e in step["elements"]]
    choices = {}
    for name in COMBINED:
        e = next((e for e in elements if e["name"] == name), None)
        if e is None:
            continue
        if e["type"] == "Microsoft.Common.CheckBox":
            choices[name] = [False, True]
        elif "allowedValues" in e.get("constraints", {}):
            choices[name] = [a["value"] for a in e["constraints"]["allowedValues"]]
    return choices


def check_combinations(template, types, form_path):
    """Every combination of the wizard's choices: each resource it deploys against Azure's types, and the platform
    rules, with the parameters fixed (resources whose condition is false skipped)."""
    combos = [{}]
    for name, values in form_choices(form_path).items():
        combos = [dict(c, **{name: v}) for c in combos for v in values]
    for combo in combos:
        assume = {f"parameters('{k}')": v for k, v in combo.items()}
        tag = " {" + ", ".join(f"{k}={v}" for k, v in combo.items()) + "}"
        check_bodies(template, types, assume, tag)
        check_platform_rules(template, assume, tag)
    return len(combos)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--template", default=str(INFRA / "main.json"))
    parser.add_argument("--bicep", default=str(INFRA / "main.bicep"))
    parser.add_argument("--host", default=str(ROOT / "host.json"))
    parser.add_argument("--function", action="append")
    parser.add_argument("--form", default=str(INFRA / "uiDefForm.json"))
    args = parser.parse_args(argv)
    template = json.loads(Path(args.template).read_text())
    types = load_types()
    check_bodies(template, types)
    check_platform_rules(template)
    combinations = check_combinations(template, types, args.form)
    check_template_edges(template)
    check_bicep_edges(template, Path(args.bicep).read_text())
    check_schema(args.host, "host.json")
    functions = args.function or sorted(str(p) for p in ROOT.glob("*/function.json"))
    if not functions:
        problem("no function.json found")
    for f in functions:
        check_schema(f, "function.json")
    for p in problems:
        print(p)
    if not problems:
        print(f"azure types: main.json, host.json and {len(functions)} function.json files agree with Azure's "
              f"definitions; {len(PLATFORM_RULES)} platform rules hold, also in each of the {combinations} combinations "
              f"the wizard allows; dependsOn has every inferred edge")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
