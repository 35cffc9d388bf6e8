"""Writes the run-from-package zip (called by scripts/package).

The zip is reproducible: entries in a fixed order with a fixed timestamp, so the same inputs give the same bytes.
Every file the Functions host needs sits at the root: host.json, <Function>/function.json, and the binary that
host.json's customHandler.description.defaultExecutablePath names, with mode 0755 (run-from-package mounts the
zip read-only, so the mode must come from the zip itself).
"""

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

EPOCH = (1980, 1, 1, 0, 0, 0)


def glibc_needed(binary: Path) -> str:
    """The newest GLIBC_x.y symbol version the binary needs, or 'static' when it needs none."""
    try:
        text = subprocess.run(["objdump", "-T", str(binary)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (objdump unavailable)"
    versions = {w.strip("()") for w in text.split() if w.strip("()").startswith("GLIBC_")}
    if not versions:
        return "static"
    newest = max(versions, key=lambda v: [int(p) for p in v[len("GLIBC_"):].split(".") if p.isdigit()])
    return "glibc >= " + newest[len("GLIBC_"):]


def add(archive: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, date_time=EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, so the mode below is honoured
    info.external_attr = (0o100000 | mode) << 16  # regular file + permissions
    archive.writestr(info, data)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True, type=Path)
    parser.add_argument("--zip", required=True, type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--commit", required=True)
    args = parser.parse_args()

    root = Path(__file__).resolve().parent.parent
    host = json.loads((root / "host.json").read_text())
    executable = host["customHandler"]["description"]["defaultExecutablePath"]
    functions = sorted(p.parent.name for p in root.glob("*/function.json"))
    if not functions:
        print("no function folders found at the repository root", file=sys.stderr)
        return 1
    if not args.binary.is_file():
        print(f"{args.binary} does not exist; build it first", file=sys.stderr)
        return 1
    release = {
        "name": "fhir-migration-tool",
        "version": args.version,
        "commit": args.commit,
        "libc": glibc_needed(args.binary),
        "functions": functions,
    }
    tmp = args.zip.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        add(archive, "host.json", (root / "host.json").read_bytes(), 0o644)
        for name in functions:
            add(archive, f"{name}/function.json", (root / name / "function.json").read_bytes(), 0o644)
        add(archive, executable, args.binary.read_bytes(), 0o755)
        add(archive, "release.json", (json.dumps(release, indent=2) + "\n").encode(), 0o644)
    tmp.replace(args.zip)
    print(f"    {len(functions)} functions, binary {executable} ({release['libc']}), version {args.version} ({args.commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
