# Sourced by scripts/test.sh: test tools pinned into git-ignored venvs inside the
# repo, and `tenantai dev` started for the SDK tests.

TOOLS_DIR="${TOOLS_DIR:-$PWD/.tools}"
LAMBDA_VENV="$TOOLS_DIR/lambda-venv"
PY_VENV="$TOOLS_DIR/py-venv"
CARGO_LAMBDA_VERSION="1.9.2"
OPENAI_VERSION="2.54.0"
PYTEST_VERSION="8.4.2"
SELENIUM_VERSION="4.51.0"
# Validates the OpenAPI documents (tests/openai/test_openapi.py); brings jsonschema.
OPENAPI_VALIDATOR_VERSION="0.9.0"

# cargo-lambda alone (--no-deps: no zig, which only cross builds need).
lambda_install() {
    if [ -x "$LAMBDA_VENV/bin/cargo-lambda" ] && [ -f "$LAMBDA_VENV/.v-$CARGO_LAMBDA_VERSION" ]; then
        return 0
    fi
    echo "==> installing cargo-lambda==$CARGO_LAMBDA_VERSION into $LAMBDA_VENV"
    rm -rf "$LAMBDA_VENV"
    python3 -m venv "$LAMBDA_VENV"
    timeout 600 "$LAMBDA_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "cargo-lambda==$CARGO_LAMBDA_VERSION"
    touch "$LAMBDA_VENV/.v-$CARGO_LAMBDA_VERSION"
}

py_install() {
    local stamp="$PY_VENV/.v-$OPENAI_VERSION-$PYTEST_VERSION-$SELENIUM_VERSION-$OPENAPI_VALIDATOR_VERSION"
    if [ -x "$PY_VENV/bin/python" ] && [ -f "$stamp" ]; then
        return 0
    fi
    echo "==> installing openai==$OPENAI_VERSION, pytest==$PYTEST_VERSION, selenium==$SELENIUM_VERSION and openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION into $PY_VENV"
    rm -rf "$PY_VENV"
    python3 -m venv "$PY_VENV"
    timeout 600 "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" \
        "pytest==$PYTEST_VERSION" "selenium==$SELENIUM_VERSION" \
        "openapi-spec-validator==$OPENAPI_VALIDATOR_VERSION"
    touch "$stamp"
}

# Headless Chromium and its driver from Debian, for the console's browser test
# (tests/openai/test_console.py); skipped when both are installed.
browser_install() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        return 0
    fi
    echo "==> installing chromium and chromium-driver (Debian)"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
    local install=(timeout 900 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
        --no-install-recommends chromium chromium-driver)
    # A clean machine may have no package lists yet: read them once and retry.
    if ! "${install[@]}" >/dev/null; then
        timeout 600 $sudo apt-get update -q >/dev/null
        "${install[@]}" >/dev/null
    fi
    command -v chromium >/dev/null && command -v chromedriver >/dev/null
}

# Free disk where the build lives, printed at each phase (a full disk fails a late phase).
disk_report() {
    df -h --output=avail,used . 2>/dev/null | tail -n 1 | awk '{print "==> disk: " $1 " free, " $2 " used"}'
}

# The path of an integration-test binary, built.
test_binary() {
    cargo test -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2" | tail -n 1
}

# Starts `tenantai dev` (debug build) on a free port with a fresh data dir and
# exports TENANTAI_BASE_URL and TENANTAI_CREDENTIALS; stopped when the script exits.
dev_start() {
    local port data
    port="$(free_port)"
    data="$(mktemp -d)"
    target/debug/tenantai dev --data-dir "$data" --port "$port" --alerts-interval-secs 1 --allow-private-egress >"$TOOLS_DIR/dev.log" 2>&1 &
    DEV_PID=$!
    trap 'kill "$DEV_PID" ${LLAMA_PID:-} 2>/dev/null || true; moto_stop' EXIT
    for _ in $(seq 1 300); do
        if [ -f "$data/credentials.json" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$DEV_PID" 2>/dev/null; then
            echo "tenantai dev exited; its log:" >&2
            cat "$TOOLS_DIR/dev.log" >&2
            return 1
        fi
        sleep 0.5
    done
    export TENANTAI_BASE_URL="http://127.0.0.1:$port" TENANTAI_CREDENTIALS="$data/credentials.json"
    echo "==> tenantai dev on $TENANTAI_BASE_URL (pid $DEV_PID)"
}
