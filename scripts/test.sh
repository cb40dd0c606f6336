#!/usr/bin/env bash
# Runs every test of tenantai on a fresh machine:
#   1. installs what the tests need (the AWS emulator, the embedding model),
#      starts the emulator on a free loopback port, runs the workspace's tests;
#   2. invokes every Lambda function through cargo-lambda against the emulator
#      (after cargo has released its build lock: cargo-lambda builds them itself);
#   3. drives `tenantai dev` with the official `openai` Python package.
# The emulator and `tenantai dev` are stopped on exit, also on failure.
# With arguments, runs only `cargo test ARGS` (e.g. -p tenantai-tests --test api) with the emulator up.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/moto.sh
. scripts/lib/tools.sh

scripts/fetch-model.sh
moto_start
# The emulator is promised to every test: an AWS case that cannot reach it fails.
export TENANTAI_TEST_AWS=1

if [ $# -gt 0 ]; then
    # A chosen subset: just those tests, with the emulator up.
    cargo test "$@"
    exit 0
fi

echo "==> phase 1: cargo test"
cargo test --workspace --all-targets

echo "==> phase 2: the functions through cargo-lambda"
lambda_install
cargo build -p api -p admin -p authorizer -p metering -p cost-alerts -p backup -p gpu-worker
lambda_test="$(test_binary tenantai-tests lambda)"
PATH="$LAMBDA_VENV/bin:$PATH" TENANTAI_LAMBDA_E2E=1 "$lambda_test" --nocapture

echo "==> phase 3: tenantai dev with the openai SDK"
py_install
cargo build -p tenantai-cli
dev_start
"$PY_VENV/bin/python" -m pytest -q tests/openai
