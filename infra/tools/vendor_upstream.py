"""Refreshes infra/tools/upstream/ from a copy of the upstream data (maintenance only; no test runs this).

Replaces upstream/bicep-types and upstream/schemastore (their LICENSE files are kept when the copy has none);
other folders under upstream/ (azd/) are vendored by hand and left alone.

Keeps, from each Azure/bicep-types-az `types.json`, only the resource types infra/main.json deploys (nested
templates included), plus Microsoft.Web/sites/extensions and both FHIR resource kinds, and the type entries they
reach (renumbered). Copies the SchemaStore schemas for host.json and function.json as they are.

Usage: target/py-tools/bin/python infra/tools/vendor_upstream.py <folder holding bicep-types/ and schemastore/>
"""

import json
import shutil
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
OUT = TOOLS / "upstream"
EXTRA = {
    "Microsoft.Web/sites/extensions@2024-11-01",
    "Microsoft.HealthcareApis/services@2024-03-31",
    "Microsoft.HealthcareApis/workspaces/fhirservices@2024-03-31",
}


def used_types(template):
    found = set()
    for r in template.get("resources", []):
        found.add(f"{r['type']}@{r['apiVersion']}")
        inner = r.get("properties", {}).get("template") if isinstance(r.get("properties"), dict) else None
        if inner:
            found |= used_types(inner)
    return found


def refs(value):
    if isinstance(value, dict):
        if set(value) == {"$ref"} and value["$ref"].startswith("#/"):
            yield int(value["$ref"][2:])
        for v in value.values():
            yield from refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from refs(v)


def renumber(value, index):
    if isinstance(value, dict):
        if set(value) == {"$ref"} and value["$ref"].startswith("#/"):
            return {"$ref": f"#/{index[int(value['$ref'][2:])]}"}
        return {k: renumber(v, index) for k, v in value.items()}
    if isinstance(value, list):
        return [renumber(v, index) for v in value]
    return value


def trim(entries, wanted):
    roots = [i for i, e in enumerate(entries) if e.get("$type") == "ResourceType" and e["name"] in wanted]
    keep, todo = set(), list(roots)
    while todo:
        i = todo.pop()
        if i not in keep:
            keep.add(i)
            todo.extend(refs(entries[i]))
    order = sorted(keep)
    index = {old: new for new, old in enumerate(order)}
    return [renumber(entries[i], index) for i in order], {entries[i]["name"] for i in roots}


def main():
    source = Path(sys.argv[1])
    template = json.loads((TOOLS.parent / "main.json").read_text())
    wanted = used_types(template) | EXTRA
    licences = {}
    for folder in ("bicep-types", "schemastore"):
        licence = OUT / folder / "LICENSE"
        if licence.exists():
            licences[folder] = licence.read_bytes()
        if (OUT / folder).exists():
            shutil.rmtree(OUT / folder)
    found = set()
    for path in sorted((source / "bicep-types").rglob("types.json")):
        entries = json.loads(path.read_text())
        kept, names = trim(entries, wanted)
        if names:
            target = OUT / "bicep-types" / path.relative_to(source / "bicep-types")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(kept, indent=1) + "\n")
            found |= names
    missing = wanted - found
    if missing:
        sys.exit(f"no upstream types for {sorted(missing)}")
    (OUT / "schemastore").mkdir(parents=True)
    for name in ("host.json", "function.json"):
        shutil.copy(source / "schemastore" / name, OUT / "schemastore" / name)
    for folder in ("bicep-types", "schemastore"):
        if (source / folder / "LICENSE").exists():
            shutil.copy(source / folder / "LICENSE", OUT / folder / "LICENSE")
        elif folder in licences:
            (OUT / folder / "LICENSE").write_bytes(licences[folder])
    print(f"vendored {len(found)} resource types and 2 schemas into {OUT}")


if __name__ == "__main__":
    main()
