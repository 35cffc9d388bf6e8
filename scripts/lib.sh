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
