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

from arm_model import (Scope, Unknown, call, canonical_segments, declared, dependency_keys, last_name_segment,  # noqa: F401
                       problem, problems, reachable, resource_ids_in, resources_of, split_args)
from platform_rules import PLATFORM_RULES, check_platform_rules, condition_holds

TOOLS = Path(__file__).resolve().parent
INFRA = TOOLS.parent
ROOT = INFRA.parent
UPSTREAM = TOOLS / "upstream"

REQUIRED, READ_ONLY = 1, 2
# Keys of an ARM resource that belong to the template language, not to the resource body.
TEMPLATE_KEYS = {"type", "apiVersion", "name", "condition", "copy", "dependsOn", "scope", "comments", "subscriptionId",
                 "resourceGroup", "metadata"}





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































# --- 4. dependsOn --------------------------------------------------------------------------------------------





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
