#!/usr/bin/env bash
# Builds everything tenantai runs on AWS and deploys one stage with the CDK app.
#
# usage: scripts/deploy.sh dev|prod [extra cdk context, e.g. -c sagemaker=true]
#
#   1. the six Lambda functions: `cargo lambda build --release --arm64` (zig cross
#      build; cargo-lambda and ziglang pinned from PyPI into .tools/lambda-zig-venv)
#      -> target/lambda/<function>/bootstrap
#   2. the GPU worker: scripts/build-cuda.sh (CUDA 13 from PyPI) -> the stripped
#      binary, staged with gpu-worker/Dockerfile into target/worker-image (the CDK
#      builds and pushes the image at deploy time: Docker must run here)
#   3. `cdk deploy` of the stage (npm ci in infra/ first)
#
# Needs: AWS credentials for the target account (the CLI's usual chain), a
# bootstrapped environment (`npx cdk bootstrap`, see infra/README.md), Docker.
# Env: SKIP_FUNCTIONS=1 / SKIP_WORKER=1 reuse what the previous run built.
set -euo pipefail
cd "$(dirname "$0")/.."

stage="${1:-}"
case "$stage" in
    dev | prod) shift ;;
    *)
        echo "usage: scripts/deploy.sh dev|prod [cdk context args]" >&2
        exit 2
        ;;
esac

. scripts/lib/worker_image.sh
TOOLS_DIR="${TOOLS_DIR:-$PWD/.tools}"
LAMBDA_ZIG_VENV="$TOOLS_DIR/lambda-zig-venv"
CARGO_LAMBDA_VERSION="1.9.2"
ZIGLANG_VERSION="0.15.2"
FUNCTIONS=(api admin authorizer metering cost-alerts backup)

for tool in docker npm aws; do
    command -v "$tool" >/dev/null || { echo "deploy needs $tool on PATH" >&2; exit 1; }
done
aws sts get-caller-identity >/dev/null || { echo "no AWS credentials: configure the AWS CLI first" >&2; exit 1; }

if [ "${SKIP_FUNCTIONS:-0}" != 1 ]; then
    if [ ! -f "$LAMBDA_ZIG_VENV/.v-$CARGO_LAMBDA_VERSION-$ZIGLANG_VERSION" ]; then
        rm -rf "$LAMBDA_ZIG_VENV"
        python3 -m venv "$LAMBDA_ZIG_VENV"
        "$LAMBDA_ZIG_VENV/bin/pip" install --quiet --disable-pip-version-check \
            "cargo-lambda==$CARGO_LAMBDA_VERSION" "ziglang==$ZIGLANG_VERSION"
        touch "$LAMBDA_ZIG_VENV/.v-$CARGO_LAMBDA_VERSION-$ZIGLANG_VERSION"
    fi
    rustup target add aarch64-unknown-linux-gnu
    # Only the functions that exist in this checkout (backup lands with its issue).
    pkgs=()
    for fn in "${FUNCTIONS[@]}"; do
        if [ -d "functions/$fn" ]; then pkgs+=(-p "$fn"); else echo "warning: functions/$fn is missing" >&2; fi
    done
    echo "==> cargo lambda build --release --arm64 ${pkgs[*]}"
    PATH="$LAMBDA_ZIG_VENV/bin:$PATH" cargo lambda build --release --arm64 "${pkgs[@]}"
fi
for fn in "${FUNCTIONS[@]}"; do
    [ -f "target/lambda/$fn/bootstrap" ] || { echo "target/lambda/$fn/bootstrap is missing: the stack deploys all six functions" >&2; exit 1; }
done

if [ "${SKIP_WORKER:-0}" != 1 ]; then
    scripts/build-cuda.sh
fi
worker_image_stage "${CUDA_TARGET_DIR:-target-cuda}/gpu/gpu-worker" target/worker-image
echo "==> worker image context: target/worker-image ($(du -sh target/worker-image | cut -f1))"

(cd infra && npm ci --no-audit --no-fund)
echo "==> cdk deploy tenantai-$stage"
(cd infra && npx cdk deploy "tenantai-$stage" -c stage="$stage" \
    -c lambdaDir=../target/lambda -c workerImageDir=../target/worker-image \
    --require-approval broadening --outputs-file "../target/tenantai-$stage-outputs.json" "$@")
echo "==> deployed; outputs in target/tenantai-$stage-outputs.json"
