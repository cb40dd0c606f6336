#!/usr/bin/env bash
# Runs every test of tenantai on a fresh machine:
#   1. installs what the tests need (the AWS emulator, the embedding model),
#      starts the emulator on a free loopback port, runs the workspace's tests;
#   2. invokes every Lambda function through cargo-lambda against the emulator
#      (after cargo has released its build lock: cargo-lambda builds them itself);
#   3. drives `tenantai dev` with the official `openai` Python package (and, when
#      llama.cpp's build is cached, llama-server as an upstream provider behind it),
#      and its console in headless Chromium (Debian's, with Selenium), then
#      schemathesis through both OpenAPI documents (scripts/lib/fuzz.sh);
#   4. checks the CDK app in infra/ offline: npm ci + jest, cdk synth for dev and
#      prod (cdk-nag), cfn-lint and checkov on the templates, hadolint on the worker's
#      Dockerfile and its steps run outside a container (scripts/lib/infra.sh).
# The emulator and `tenantai dev` are stopped on exit, also on failure.
# With arguments, runs only `cargo test ARGS` (e.g. -p tenantai-tests --test api) with the emulator up.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/moto.sh
. scripts/lib/tools.sh
. scripts/lib/infra.sh
. scripts/lib/worker_image.sh
. scripts/lib/llama.sh
. scripts/lib/fuzz.sh
. scripts/lib/mkl.sh

scripts/fetch-model.sh
# oneMKL runs the CPU encoder's products in every test that loads the model; its
# tests in tenantai-mkl and gpu-worker's cpu module then must find it.
mkl_install
if [ -n "${TENANTAI_MKL_LIB:-}" ]; then
    export TENANTAI_REQUIRE_MKL=1
fi
moto_start
# The emulator is promised to every test: an AWS case that cannot reach it fails.
export TENANTAI_TEST_AWS=1

if [ $# -gt 0 ]; then
    # A chosen subset: just those tests, with the emulator up.
    cargo test "$@"
    exit 0
fi

echo "==> phase 1: cargo test"
disk_report
cargo test --workspace --all-targets

echo "==> phase 2: the functions through cargo-lambda"
disk_report
lambda_install
cargo build -p api -p admin -p authorizer -p metering -p cost-alerts -p backup -p gpu-worker
lambda_test="$(test_binary tenantai-tests lambda)"
PATH="$LAMBDA_VENV/bin:$PATH" TENANTAI_LAMBDA_E2E=1 "$lambda_test" --nocapture

echo "==> phase 3: tenantai dev with the openai SDK"
disk_report
py_install
browser_install
cargo build -p tenantai-cli
# llama.cpp's server as an upstream provider, when its cached build is here (a cold
# build takes over half an hour on two cores: scripts/lib/llama.sh llama_build).
if [ -x "$LLAMA_SERVER" ] && [ -f "$LLAMA_CACHE/build/.ok" ]; then
    llama_server_start models/SmolLM2-135M-Instruct/model.gguf
fi
dev_start
"$PY_VENV/bin/python" -m pytest -q tests/openai
fuzz_install
fuzz_run

echo "==> phase 4: infra"
disk_report
infra_start=$(date +%s)
infra_tools_install
infra_npm_ci
(cd infra && timeout 900 npm test -- --ci)
infra_synth dev -c stage=dev
infra_synth prod -c stage=prod
# prod with the SageMaker endpoint, as jest synthesized it (infra/cdk.out/test-templates).
infra_lint infra/cdk.out/dev/*.template.json infra/cdk.out/prod/*.template.json \
    infra/cdk.out/test-templates/prodSagemaker.template.json
infra_dockerfile
worker_image_exercise target/debug/gpu-worker models/all-MiniLM-L6-v2
echo "==> phase 4: infra passed in $(($(date +%s) - infra_start)) s"
