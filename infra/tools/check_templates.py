"""Checks the deployment templates without Azure and without a Bicep compiler.

1. infra/main.json is what build_arm.py generates (no hand edits, no stale copy).
2. Every ARM expression in main.json is well formed, calls known functions, and names parameters and variables
   that exist in its own template (nested templates have their own).
3. main.json and main.bicep agree: the same parameters (names, types, defaults, allowed values, bounds), the same
   resource types and API versions, the same app-setting names and the same role definitions, every role
   assignment typed ServicePrincipal and named from the principal id.
4. The portal wizard (uiDefForm.json), ARMmain.parameters.json and azd's main.parameters.json fit the template's
   parameters.
5. packageUri defaults to the release matching the project's version.
6. azure.yaml (azd) agrees with the Azure Developer CLI's schema (vendored from Azure/azure-dev) and with this
   project: it provisions infra/main.bicep, packages with scripts/package, and deploys to the app main.bicep tags.

Exit status 1 with one line per problem.
Usage: target/py-tools/bin/python infra/tools/check_templates.py [--azure-yaml FILE] [--template FILE]
"""

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema
import referencing
import referencing.jsonschema
import yaml
from pycep import BicepParser

INFRA = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import build_arm  # noqa: E402

problems = []


def problem(text):
    problems.append(text)


# --- 1. generated file is current ---------------------------------------------------------------------------

def check_generated():
    expected = json.dumps(build_arm.template(), indent=2, ensure_ascii=False) + "\n"
    if (INFRA / "main.json").read_text() != expected:
        problem("infra/main.json is out of date: run target/py-tools/bin/python infra/tools/build_arm.py")


# --- 2. ARM expressions -------------------------------------------------------------------------------------

FUNCTIONS = {
    "and", "or", "not", "if", "equals", "empty", "concat", "format", "toLower", "toUpper", "replace", "split", "take",
    "last", "first", "length", "union", "createObject", "createArray", "uniqueString", "guid", "resourceGroup",
    "subscription", "resourceId", "subscriptionResourceId", "extensionResourceId", "reference", "parameters",
    "variables", "copyIndex", "string", "int", "bool", "null", "true", "false", "dateTimeAdd", "utcNow",
    "environment", "startsWith", "cidrSubnet", "div", "mul", "add", "sub", "contains", "coalesce", "json", "skip", "trim",
    "greater", "listKeys", "map", "items", "lambda", "lambdaVariables",
}
TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


def lint_expression(text, where, params, variables, copies):
    body = text[1:-1]
    depth = []
    tokens = [m for m in TOKEN.finditer(body) if m.group(0).strip()]
    for i, m in enumerate(tokens):
        literal, _number, ident, punct = m.groups()
        punct = punct or ""
        if punct and punct in "([":
            depth.append(punct)
        elif punct and punct in ")]":
            if not depth or {"(": ")", "[": "]"}[depth.pop()] != punct:
                problem(f"{where}: unbalanced brackets in {text[:120]}")
                return
        elif ident and i + 1 < len(tokens) and tokens[i + 1].group(4) == "(":
            previous = tokens[i - 1].group(4) if i > 0 else None
            if previous != "." and ident not in FUNCTIONS:
                problem(f"{where}: unknown function {ident}()")
            argument = tokens[i + 2].group(1) if i + 2 < len(tokens) else None
            if argument and ident in ("parameters", "variables", "copyIndex"):
                name = argument[1:-1].replace("''", "'")
                known = {"parameters": params, "variables": variables, "copyIndex": copies}[ident]
                if name not in known:
                    problem(f"{where}: {ident}('{name}') is not defined in this template")
        elif literal is None and punct and punct not in ".,":
            problem(f"{where}: unexpected '{punct}' in {text[:120]}")
    if depth:
        problem(f"{where}: unclosed brackets in {text[:120]}")


def props(resource):
    """A resource's properties when they are an object (they may be one expression)."""
    value = resource.get("properties")
    return value if isinstance(value, dict) else {}


def walk_values(value, where, visit):
    if isinstance(value, dict):
        for k, v in value.items():
            walk_values(k, f"{where}.{k}", visit)
            walk_values(v, f"{where}.{k}", visit)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            walk_values(v, f"{where}[{i}]", visit)
    elif isinstance(value, str) and value.startswith("[") and not value.startswith("[[") and value.endswith("]"):
        visit(value, where)


def lint_template(template, where):
    params = set(template.get("parameters", {}))
    variables = set(template.get("variables", {})) - {"copy"}
    copies = set()
    for c in template.get("variables", {}).get("copy", []):
        variables.add(c["name"])
        copies.add(c["name"])
    for r in template.get("resources", []):
        if "copy" in r:
            if r["copy"]["name"] in copies:
                problem(f"{where}: copy loop name {r['copy']['name']} is used twice")
            copies.add(r["copy"]["name"])
    names = [(r["type"], r["name"]) for r in template.get("resources", [])]
    for dup in {n for n in names if names.count(n) > 1}:
        problem(f"{where}: resource {dup} is defined twice")
    nested = []

    def visit(text, path):
        lint_expression(text, path, params, variables, copies)

    for key in ("variables", "outputs"):
        walk_values(template.get(key, {}), f"{where}.{key}", visit)
    for section in ("parameters",):
        for name, spec in template.get(section, {}).items():
            walk_values(spec.get("defaultValue"), f"{where}.parameters.{name}", visit)
    for i, r in enumerate(template.get("resources", [])):
        inner = props(r).get("template")
        scope_inner = props(r).get("expressionEvaluationOptions", {}).get("scope") == "inner"
        if inner is not None:
            nested.append((inner, f"{where}.resources[{i}].template"))
            if not scope_inner:
                problem(f"{where}.resources[{i}]: nested templates use inner expression scope")
            shallow = {k: v for k, v in r.items() if k != "properties"}
            shallow["properties"] = {k: v for k, v in r["properties"].items() if k != "template"}
            walk_values(shallow, f"{where}.resources[{i}]", visit)
        else:
            walk_values(r, f"{where}.resources[{i}]", visit)
    for inner, path in nested:
        lint_template(inner, path)


# --- 3. drift between main.bicep and main.json --------------------------------------------------------------

def parse_bicep(path):
    return BicepParser().parse(file_path=path)


def bicep_default(value):
    """A Bicep default as main.json writes it: literals as they are, the two expressions used as ARM text."""
    if isinstance(value, dict):
        text = json.dumps(value)
        if '"resource_group"' in text and '"location"' in text:
            return "[resourceGroup().location]"
        if "utc_now" in text:
            return "[utcNow()]"
        if not value:
            return {}
        return ("unsupported", text[:80])
    return value


def check_parameters(bicep, arm):
    bp, ap = bicep["parameters"], arm["parameters"]
    if set(bp) != set(ap):
        problem(f"parameters differ: only in main.bicep {sorted(set(bp) - set(ap))}, only in main.json {sorted(set(ap) - set(bp))}")
    for name in sorted(set(bp) & set(ap)):
        b, a = bp[name], ap[name]
        decorators = {d["type"]: d.get("argument") for d in b.get("decorators", [])}
        btype = "securestring" if "secure" in decorators and b["type"] == "string" else b["type"]
        if btype != a["type"]:
            problem(f"parameter {name}: type {btype} in main.bicep, {a['type']} in main.json")
        bdefault = bicep_default(b.get("default")) if "default" in b else None
        if bdefault != a.get("defaultValue"):
            problem(f"parameter {name}: default {bdefault!r} in main.bicep, {a.get('defaultValue')!r} in main.json")
        for bicep_key, arm_key in (("allowed", "allowedValues"), ("min_length", "minLength"), ("max_length", "maxLength"),
                                   ("min_value", "minValue"), ("max_value", "maxValue")):
            if decorators.get(bicep_key) != a.get(arm_key):
                problem(f"parameter {name}: {arm_key} {decorators.get(bicep_key)!r} in main.bicep, {a.get(arm_key)!r} in main.json")


def bicep_resources(path, seen=None):
    """(type, apiVersion) of every resource main.bicep deploys, through its modules; `existing` ones excluded."""
    seen = seen or set()
    if path in seen:
        return set(), ""
    seen.add(path)
    tree = parse_bicep(path)
    found = {(r["type"], r["api_version"]) for r in tree.get("resources", {}).values() if not r.get("existing")}
    text = path.read_text()
    for module in tree.get("modules", {}).values():
        inner, inner_text = bicep_resources((path.parent / module["detail"]["path"]).resolve(), seen)
        found |= inner
        text += inner_text
    return found, text


def arm_resources(template):
    found = set()
    for r in template.get("resources", []):
        inner = props(r).get("template")
        if inner is not None:
            found |= arm_resources(inner)
        else:
            found.add((r["type"], r["apiVersion"]))
    return found


SETTING = re.compile(r"^(AZURE_\w+|AzureWebJobsStorage__accountName|APPLICATIONINSIGHTS_CONNECTION_STRING|FUNCTIONS_\w+|WEBSITE_\w+|\w+Cron)$")


def bicep_settings():
    text = (INFRA / "main.bicep").read_text()
    start, end = text.index("var runtimeSettings"), text.index("resource site ")
    names = set()
    for line in text[start:end].splitlines():
        if line.strip().startswith("//"):
            continue
        for part in re.split(r"[{,]", line):
            key = part.split(":")[0].strip() if ":" in part else ""
            if SETTING.match(key):
                names.add(key)
    return names


def arm_settings(arm):
    site = next(r for r in arm["resources"] if r["type"] == "Microsoft.Web/sites")
    text = site["properties"]["siteConfig"] + json.dumps(arm["variables"]["classicRuntimeSettings"]) + arm["variables"]["optionalSettings"]
    names = re.findall(r"(?<!parameters\()(?<!variables\()['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]", text)
    return {m for m in names if SETTING.match(m)}


def role_guids(text):
    return set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", text))


def check_role_assignments(template, where):
    for i, r in enumerate(template.get("resources", [])):
        inner = props(r).get("template")
        if inner is not None:
            check_role_assignments(inner, f"{where}.resources[{i}]")
        elif r["type"] == "Microsoft.Authorization/roleAssignments":
            if r["properties"].get("principalType") != "ServicePrincipal":
                problem(f"{where}.resources[{i}]: role assignment without principalType ServicePrincipal")
            if "principalId" not in r["name"]:
                problem(f"{where}.resources[{i}]: role assignment name {r['name']} does not include the principal id")
            if "reference(" in r["name"]:
                problem(f"{where}.resources[{i}]: reference() in a resource name is refused by ARM")


# Every resource, property by property: the shape (object keys at every depth, array lengths, literal leaves) of
# each resource Bicep declares against the main.json resource of the same type. Values that are expressions on
# either side only count as "some value": main.json writes Bicep's expressions its own way.
ANY = "<expression>"
BODY_KEYS = ("kind", "sku", "identity", "properties")


class BicepShapes:
    def __init__(self, tree):
        self.vars = {k: v["value"] for k, v in tree.get("variables", {}).items()}
        self.names = set(self.vars) | set(tree.get("parameters", {})) | set(tree.get("resources", {})) | set(tree.get("modules", {}))

    def of(self, value, depth=0):
        if depth > 60:
            return ANY
        if isinstance(value, dict):
            if "loop_type" in value:
                return {"[*]": self.of(value["config"], depth + 1)}
            if set(value) == {"condition", "config"}:
                return self.of(value["config"], depth + 1)
            if "function" in value and value["function"].get("type") == "concat":
                parts = [self.of(v, depth + 1) for v in value["function"]["parameters"].values()]
                if all(isinstance(part, (list, dict)) for part in parts):
                    return {"[seq]": parts}
                return ANY
            if "operator" in value or "function" in value:
                return ANY
            return {("<key>" if "${" in k else k.strip("'")): self.of(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.of(v, depth + 1) for v in value]
        if isinstance(value, str):
            if value in self.vars:
                return self.of(self.vars[value], depth + 1)
            if value in self.names or "${" in value:
                return ANY
        return value


class ArmShapes:
    def __init__(self, template):
        self.vars = dict(template.get("variables", {}))
        for copy in self.vars.pop("copy", []):
            self.vars[copy["name"]] = {"[*]": copy["input"]}

    def of(self, value, depth=0):
        if depth > 60:
            return ANY
        if isinstance(value, dict):
            return {("<key>" if k.startswith("[") and k not in ("[*]", "[seq]") else k): self.of(v, depth + 1)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.of(v, depth + 1) for v in value]
        if isinstance(value, str) and value.startswith("[") and not value.startswith("[["):
            return self.expr(value[1:-1].strip(), depth)
        return value

    def expr(self, text, depth):
        m = re.fullmatch(r"variables\('(\w+)'\)", text)
        if m and m.group(1) in self.vars:
            return self.of(self.vars[m.group(1)], depth + 1)
        m = re.fullmatch(r"variables\('(\w+)'\)\[(\d+)\]", text)
        if m and isinstance(self.vars.get(m.group(1)), list):
            return self.of(self.vars[m.group(1)][int(m.group(2))], depth + 1)
        # An array property of a copied variable's element: every element's value, as one loop.
        m = re.fullmatch(r"variables\('(\w+)'\)\[copyIndex\('\w+'\)\]\.(\w+)", text)
        if m and isinstance(self.vars.get(m.group(1)), list):
            values = [item.get(m.group(2)) for item in self.vars[m.group(1)] if isinstance(item, dict)]
            if values and all(isinstance(v, list) for v in values):
                return [self.of(x, depth + 1) for v in values for x in v]
            return ANY
        for name in ("concat", "createArray"):
            if text.startswith(name + "(") and text.endswith(")"):
                args = [self.expr(a, depth + 1) for a in split_args(text[len(name) + 1:-1])]
                if name == "createArray":
                    return args
                if all(isinstance(a, (list, dict)) for a in args):
                    return {"[seq]": args}
        return ANY


def split_args(text):
    args, depth, quote, start = [], 0, False, 0
    for i, c in enumerate(text):
        if quote:
            quote = c != "'"
        elif c == "'":
            quote = True
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return args


def flatten_seq(shape):
    """A concatenation of arrays as one array of items ('[*]' loops stay one item each)."""
    items = []
    for part in shape["[seq]"]:
        items += part if isinstance(part, list) else [part]
    return items


def compare_shapes(b, a, where, out):
    if b == ANY or a == ANY:
        return
    if isinstance(b, dict) and "[seq]" in b:
        b = flatten_seq(b)
    if isinstance(a, dict) and "[seq]" in a:
        a = flatten_seq(a)
    if isinstance(b, dict) and "[*]" in b and isinstance(a, list):
        for i, item in enumerate(a):
            compare_shapes(b["[*]"], item, f"{where}[{i}]", out)
        return
    if isinstance(a, dict) and "[*]" in a and isinstance(b, list):
        for i, item in enumerate(b):
            compare_shapes(item, a["[*]"], f"{where}[{i}]", out)
        return
    if isinstance(b, dict) and isinstance(a, dict):
        if ("[*]" in b) != ("[*]" in a):
            return
        only_b, only_a = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        if only_b or only_a:
            out.append(f"{where}: only in main.bicep {only_b}, only in main.json {only_a}")
        for k in sorted(set(a) & set(b)):
            compare_shapes(b[k], a[k], f"{where}.{k}", out)
        return
    if isinstance(b, list) and isinstance(a, list):
        if all(isinstance(x, dict) and "[*]" in x for x in b + a) and len(b) == len(a):
            for i, (x, y) in enumerate(zip(b, a)):
                compare_shapes(x, y, f"{where}[{i}]", out)
            return
        if len(b) != len(a):
            out.append(f"{where}: {len(b)} items in main.bicep, {len(a)} in main.json")
            return
        for i, (x, y) in enumerate(zip(b, a)):
            compare_shapes(x, y, f"{where}[{i}]", out)
        return
    if isinstance(b, (dict, list)) or isinstance(a, (dict, list)):
        out.append(f"{where}: {type(b).__name__} in main.bicep, {type(a).__name__} in main.json")
    elif b != a and not (isinstance(b, str) and isinstance(a, str) and (b in a or a in b)):
        out.append(f"{where}: {b!r} in main.bicep, {a!r} in main.json")


def bicep_bodies(path, seen=None):
    """(type, shape of its body) for every resource main.bicep deploys, through its modules."""
    seen = seen if seen is not None else set()
    if path in seen:
        return []
    seen.add(path)
    tree = parse_bicep(path)
    shapes = BicepShapes(tree)
    out = []
    for name, r in tree.get("resources", {}).items():
        if r.get("existing"):
            continue
        config = r["config"]
        while isinstance(config, dict) and "config" in config and ("loop_type" in config or set(config) == {"condition", "config"}):
            config = config["config"]
        out.append((r["type"], f"{path.name}:{name}", {k: shapes.of(config[k]) for k in BODY_KEYS if k in config}))
    for module in tree.get("modules", {}).values():
        out += bicep_bodies((path.parent / module["detail"]["path"]).resolve(), seen)
    return out


def arm_bodies(template):
    shapes = ArmShapes(template)
    out = []
    for r in template.get("resources", []):
        inner = props(r).get("template")
        if inner is not None:
            out += arm_bodies(inner)
        else:
            out.append((r["type"], r["name"], {k: shapes.of(r[k]) for k in BODY_KEYS if k in r}))
    return out


def check_bodies_drift(arm, bicep_path=None):
    bicep = bicep_bodies((bicep_path or INFRA / "main.bicep").resolve())
    json_side = arm_bodies(arm)
    for type_ in sorted({t for t, _, _ in bicep} | {t for t, _, _ in json_side}):
        bs = [(n, s) for t, n, s in bicep if t == type_]
        as_ = [(n, s) for t, n, s in json_side if t == type_]
        if len(bs) != len(as_):
            problem(f"{type_}: {len(bs)} resources in main.bicep ({[n for n, _ in bs]}), {len(as_)} in main.json")
            continue
        # Pair each Bicep resource with the main.json resource of its type it differs least from.
        remaining = list(as_)
        for name, shape in bs:
            scored = []
            for other in remaining:
                out = []
                compare_shapes(shape, other[1], f"{type_} ({name})", out)
                scored.append((len(out), out, other))
            count, out, best = min(scored, key=lambda x: x[0])
            remaining.remove(best)
            for line in out:
                problem(f"drift: {line}")


def check_drift(arm):
    bicep = parse_bicep(INFRA / "main.bicep")
    check_parameters(bicep, arm)
    b_res, b_text = bicep_resources((INFRA / "main.bicep").resolve())
    a_res = arm_resources(arm)
    if b_res != a_res:
        problem(f"resources differ: only in main.bicep {sorted(b_res - a_res)}, only in main.json {sorted(a_res - b_res)}")
    b_set, a_set = bicep_settings(), arm_settings(arm)
    if b_set != a_set:
        problem(f"app settings differ: only in main.bicep {sorted(b_set - a_set)}, only in main.json {sorted(a_set - b_set)}")
    known_roles = set(build_arm.ROLES.values())
    b_roles = role_guids(b_text) & known_roles
    a_roles = role_guids(json.dumps(arm)) & known_roles
    if b_roles != a_roles or b_roles != known_roles:
        problem(f"role definitions differ: main.bicep {sorted(b_roles)}, main.json {sorted(a_roles)}")
    check_role_assignments(arm, "main.json")
    check_bodies_drift(arm)


# --- 4. wizard and parameters file --------------------------------------------------------------------------

def check_wizard(arm):
    params = arm["parameters"]
    ui = json.loads((INFRA / "uiDefForm.json").read_text())["parameters"]
    outputs = ui["outputs"]
    for name in outputs:
        if name not in params:
            problem(f"uiDefForm.json output {name} is not a template parameter")
    for name, spec in params.items():
        if "defaultValue" not in spec and name not in outputs:
            problem(f"uiDefForm.json does not set the required parameter {name}")
    steps = {s["name"]: {e["name"] for e in s["elements"]} for s in ui["steps"]}
    basics = {e["name"] for e in ui["basics"]}
    for name, value in outputs.items():
        for step, element in re.findall(r"steps\('(\w+)'\)\.(\w+)", value):
            if element not in steps.get(step, set()):
                problem(f"uiDefForm.json output {name} reads steps('{step}').{element}, which does not exist")
        for element in re.findall(r"basics\('(\w+)'\)", value):
            if element not in basics:
                problem(f"uiDefForm.json output {name} reads basics('{element}'), which does not exist")
    for step in ui["steps"]:
        for e in step["elements"]:
            if e["name"] == "clientSecret" and e["type"] != "Microsoft.Common.PasswordBox":
                problem("uiDefForm.json asks for the client secret without a password box")
    # Values offered by the wizard must be allowed by the template.
    for element in ui["basics"] + [e for s in ui["steps"] for e in s["elements"]]:
        spec = params.get(element["name"], {})
        allowed = element.get("constraints", {}).get("allowedValues")
        if allowed and "allowedValues" in spec:
            offered = {a["value"] for a in allowed}
            if not offered <= set(spec["allowedValues"]):
                problem(f"uiDefForm.json offers {element['name']} values the template refuses: {sorted(offered - set(spec['allowedValues']))}")
        if element["type"] == "Microsoft.Common.Slider" and spec:
            if "allowedValues" in spec:
                problem(f"uiDefForm.json offers {element['name']} on a slider, but the template allows only {spec['allowedValues']}")
            if element["min"] < spec.get("minValue", element["min"]) or element["max"] > spec.get("maxValue", element["max"]):
                problem(f"uiDefForm.json's {element['name']} slider goes beyond the template's bounds")
        if element["name"] == "packageUri" and element.get("defaultValue") != spec.get("defaultValue"):
            problem(f"uiDefForm.json's packageUri default {element.get('defaultValue')} is not the template's {spec.get('defaultValue')}")

    values = json.loads((INFRA / "ARMmain.parameters.json").read_text())["parameters"]
    types = {"string": str, "securestring": str, "bool": bool, "int": int, "object": dict}
    for name, value in values.items():
        if name not in params:
            problem(f"ARMmain.parameters.json sets {name}, which is not a template parameter")
        elif not isinstance(value.get("value"), types[params[name]["type"]]):
            problem(f"ARMmain.parameters.json: {name} should be a {params[name]['type']}")
    for name, spec in params.items():
        if "defaultValue" not in spec and name not in values:
            problem(f"ARMmain.parameters.json does not set the required parameter {name}")
    # azd's parameters file (azure.yaml provisions infra/main.bicep with infra/main.parameters.json).
    azd = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    for name in azd:
        if name not in params:
            problem(f"main.parameters.json sets {name}, which is not a template parameter")
    for name, spec in params.items():
        if "defaultValue" not in spec and name not in azd:
            problem(f"main.parameters.json does not set the required parameter {name}")
    if azd.get("packageUri", {}).get("value") != "":
        problem("main.parameters.json must set packageUri to '' (azd deploys the code itself)")


# --- 5. the release the template deploys -------------------------------------------------------------------

def check_pinned_release(arm):
    uri = arm["parameters"]["packageUri"].get("defaultValue", "")
    cargo_version = build_arm.version()
    if f"/v{cargo_version}/" not in uri or "/latest/" in uri:
        problem(f"packageUri's default {uri} is not the release v{cargo_version} this template belongs to")


# --- 6. azd ----------------------------------------------------------------------------------------------------

def check_azd(path):
    root = INFRA.parent
    config = yaml.safe_load(Path(path).read_text())
    schema = json.loads((INFRA / "tools/upstream/azd/azure.yaml.json").read_text())
    # The schema names extension schemas by URL (Azure AI hosts only); they are not vendored and nothing is fetched:
    # they read as schemas that accept anything.
    registry = referencing.Registry(retrieve=lambda uri: referencing.Resource.from_contents({}, default_specification=referencing.jsonschema.DRAFT201909))
    validator = jsonschema.validators.validator_for(schema)(schema, registry=registry)
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        problem(f"azure.yaml: {where}: {error.message[:200]} (Azure/azure-dev schema)")
    infra = config.get("infra", {})
    module = root / infra.get("path", "infra") / f"{infra.get('module', 'main')}.bicep"
    if infra.get("provider", "bicep") != "bicep" or module != INFRA / "main.bicep":
        problem(f"azure.yaml provisions {module.relative_to(root) if module.is_relative_to(root) else module}, not infra/main.bicep")
    services = config.get("services") or {}
    bicep = (INFRA / "modules/functionapp.bicep").read_text()
    tagged = re.search(r"'azd-service-name': '([^']+)'", bicep)
    if list(services) != [tagged.group(1) if tagged else None]:
        problem(f"azure.yaml's services {sorted(services)} are not the one app functionapp.bicep tags "
                f"azd-service-name {tagged.group(1) if tagged else '(none)'}")
    for name, service in services.items():
        if service.get("host") != "function":
            problem(f"azure.yaml: service {name} is not hosted as a function app")
        if service.get("language") != "custom":
            problem(f"azure.yaml: service {name} is not language 'custom' (azd would try to build it as another language)")
        if service.get("dist") != "dist/released-package.zip":
            problem(f"azure.yaml: service {name} deploys {service.get('dist')}, not the zip scripts/package writes (dist/released-package.zip)")
        hook = (service.get("hooks") or {}).get("prepackage") or {}
        if "scripts/package" not in str(hook.get("run", "")):
            problem(f"azure.yaml: service {name} does not package with scripts/package before deploying")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--azure-yaml", default=str(INFRA.parent / "azure.yaml"))
    parser.add_argument("--template", default=str(INFRA / "main.json"), help="a main.json to check instead (tests)")
    args = parser.parse_args()
    arm = json.loads(Path(args.template).read_text())
    check_generated()
    lint_template(arm, "main.json")
    check_drift(arm)
    check_wizard(arm)
    check_pinned_release(arm)
    check_azd(args.azure_yaml)
    for p in problems:
        print(p)
    if not problems:
        print("templates: main.json current, expressions well formed, main.bicep and main.json agree, wizard and "
              "parameters fit, the release is pinned, azure.yaml fits azd's schema and this project")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
