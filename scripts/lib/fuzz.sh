# Sourced by scripts/test.sh: schemathesis (pinned) runs every operation of both
# OpenAPI documents against the running `tenantai dev` (dev_start): examples,
# coverage, fuzzing and stateful phases, bounded in examples per operation and in
# time per document. Fails on any 5xx, any answer its document does not describe
# (status, content type, schema) and any request that hangs past its timeout.

FUZZ_VENV="$TOOLS_DIR/fuzz-venv"
SCHEMATHESIS_VERSION="4.32.5"
FUZZ_MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-20}"
FUZZ_MAX_SECONDS="${FUZZ_MAX_SECONDS:-150}"
FUZZ_CHECKS="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"

# A Python of 3.12 or later: under 3.11 hypothesis's strategy descriptions trip
# CPython's "AST constructor recursion depth mismatch" on schemathesis's deep
# schemas (a runtime error, not a finding).
fuzz_python() {
    local p
    for p in python3.13 python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python \
        "$HOME"/.pyenv/versions/3.12*/bin/python; do
        # (a pyenv shim may exist for a version it is not set to run)
        if "$p" -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1; then
            "$p" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    echo "fuzz: schemathesis needs Python 3.12 or later; none found" >&2
    return 1
}

fuzz_install() {
    if [ -x "$FUZZ_VENV/bin/st" ] && [ -f "$FUZZ_VENV/.v-$SCHEMATHESIS_VERSION" ]; then
        return 0
    fi
    local python
    python="$(fuzz_python)"
    echo "==> installing schemathesis==$SCHEMATHESIS_VERSION into $FUZZ_VENV ($python)"
    rm -rf "$FUZZ_VENV"
    "$python" -m venv "$FUZZ_VENV"
    timeout 600 "$FUZZ_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
    touch "$FUZZ_VENV/.v-$SCHEMATHESIS_VERSION"
}

# fuzz_document NAME SCHEMA_PATH [st options]: one document's run, its JUnit
# report under target/test-artifacts/.
fuzz_document() {
    local name="$1" path="$2"
    shift 2
    mkdir -p target/test-artifacts
    echo "==> schemathesis: $name ($TENANTAI_BASE_URL$path)"
    timeout $((FUZZ_MAX_SECONDS + 120)) "$FUZZ_VENV/bin/st" run "$TENANTAI_BASE_URL$path" \
        --checks "$FUZZ_CHECKS" --max-examples "$FUZZ_MAX_EXAMPLES" \
        --max-time "$FUZZ_MAX_SECONDS" --request-timeout 30 --workers 2 \
        --report junit --report-junit-path "target/test-artifacts/schemathesis-$name.xml" \
        --no-color "$@"
}

# Both documents: the tenant API with a key made for the run through the admin
# API (tests/fuzz/hooks.py), then the admin API with the operator's token (its
# stateful phase chains tenants, keys, overrides and versions). The tenant run
# goes first: the admin run registers models with made-up endpoints, and a
# tenant calling one of those rightly gets a 503 (no backend can serve it).
fuzz_run() {
    local admin_token
    admin_token="$(python3 -c 'import json, os; print(json.load(open(os.environ["TENANTAI_CREDENTIALS"]))["admin_token"])')"
    SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$PWD/tests/fuzz" fuzz_document tenant /openapi.json
    fuzz_document admin /admin/v1/openapi.json -H "Authorization: Bearer $admin_token"
}
