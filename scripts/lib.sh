# Shared set-up for ./scripts/test and ./scripts/demo: makes sure the tools the local stack needs are present,
# installing them when they are not (a fresh machine has only the Rust toolchain).

need_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "==> installing Node.js and npm (needed to run Azurite)"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq nodejs npm >/dev/null
    fi
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 18 ]; then
    echo "Node.js $major is too old for Azurite 3.35 (needs 18 or newer); install Node.js 20." >&2
    exit 1
  fi
}

# Installs node_modules from package-lock.json unless they are already current.
need_azurite() {
  need_node
  local stamp=node_modules/.installed-lock
  if [ ! -f node_modules/azurite/dist/src/azurite.js ] || ! cmp -s package-lock.json "$stamp"; then
    echo "==> installing Azurite (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
  fi
}

# Every Python the project runs (template checks, scripts/package) is the interpreter of one virtual environment
# under target/, so it neither needs nor disturbs the machine's Python packages. This is the only place that calls
# the system python3, to create that environment. Tests find it through FHIRMIG_PYTHON
# (tests/integration/support.rs: python_tools).
PY_TOOLS="target/py-tools"
CHECKOV_VERSION="3.3.30"
need_python_venv() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "==> installing Python 3 with venv (needed for the template checks and scripts/package)"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq python3 python3-venv >/dev/null
    fi
  fi
  if [ ! -x "$PY_TOOLS/bin/python" ]; then
    echo "==> creating the project's Python environment in $PY_TOOLS"
    rm -rf "$PY_TOOLS"
    python3 -m venv "$PY_TOOLS"
  fi
  export FHIRMIG_PYTHON="$PWD/$PY_TOOLS/bin/python"
}

# The template checkers (Bicep syntax, main.json drift, checkov) in that environment.
need_template_tools() {
  need_python_venv
  local stamp="$PY_TOOLS/.installed-checkov-$CHECKOV_VERSION"
  if [ ! -f "$stamp" ]; then
    echo "==> installing the template checkers (checkov $CHECKOV_VERSION with its Bicep parser) into $PY_TOOLS"
    "$FHIRMIG_PYTHON" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
    touch "$stamp"
  fi
}

# cargo-deny checks the dependency tree against deny.toml: licences, duplicate versions, sources, and the RustSec
# advisories. Installed once per machine (about 4 minutes on 2 cores).
CARGO_DENY_VERSION="0.20.2"
need_cargo_deny() {
  if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "==> installing cargo-deny $CARGO_DENY_VERSION (once per machine; about 4 minutes on 2 cores)"
    cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
  fi
}

# cargo-mutants, pinned, for ./scripts/mutants (not needed by ./scripts/test).
CARGO_MUTANTS_VERSION="27.1.0"
need_cargo_mutants() {
  if [ "$(cargo mutants --version 2>/dev/null)" != "cargo-mutants $CARGO_MUTANTS_VERSION" ]; then
    echo "==> installing cargo-mutants $CARGO_MUTANTS_VERSION (once per machine; a few minutes on 2 cores)"
    cargo install --locked --quiet "cargo-mutants@$CARGO_MUTANTS_VERSION"
  fi
}

# Runs `cargo deny check`. The advisory database is fetched as usual when the network allows; where it cannot be
# (a closed build network), a snapshot of it is used if one was cloned earlier or if the developers' reference
# folder beside the repository holds one (rustsec-advisory-db.bundle, a git bundle). With neither, the
# advisories part is skipped and says so; licences, bans and sources are always checked.
check_dependencies() {
  need_cargo_deny
  echo "==> cargo deny check (advisories, bans, licences, sources)"
  cargo fetch --locked --quiet
  local log db snapshot
  log="$(mktemp)"
  if cargo deny fetch db >"$log" 2>&1; then
    rm -f "$log"
    cargo deny --offline check
    return
  fi
  db="$(grep -o '/[^" ]*advisory-db-[0-9a-f]\{6,\}' "$log" | head -n1)"
  rm -f "$log"
  # A snapshot cloned earlier cannot be updated from its bundle: try once more without it, so that a machine
  # that has the network again gets the current database.
  if [ -n "$db" ] && [ -d "$db/.git" ] && ! git -C "$db" remote get-url origin 2>/dev/null | grep -q '^https://'; then
    mv "$db" "$db.snapshot"
    if cargo deny fetch db >/dev/null 2>&1; then
      rm -rf "$db.snapshot"
      cargo deny --offline check
      return
    fi
    rm -rf "$db"
    mv "$db.snapshot" "$db"
  fi
  snapshot="$(dirname "$PWD")/shared/upstream/rustsec-advisory-db.bundle"
  if [ -n "$db" ] && [ ! -d "$db/.git" ] && [ -f "$snapshot" ]; then
    echo "==> the RustSec database cannot be fetched: using the snapshot $snapshot"
    rm -rf "$db"
    mkdir -p "$(dirname "$db")"
    git -c init.defaultBranch=main clone --quiet "$snapshot" "$db"
  fi
  if [ -n "$db" ] && [ -d "$db/.git" ]; then
    echo "==> advisories from a snapshot: $(git -C "$db" log -1 --format='%s')"
    cargo deny --offline check
  else
    echo "==> advisories SKIPPED: the RustSec database cannot be fetched and no snapshot is available"
    cargo deny --offline check bans licenses sources
  fi
}
