#!/usr/bin/env bash
# Lean-function benchmark: builds the Lambda functions with the release profile
# (LTO, one codegen unit, stripped, panic=abort) and reports each one's binary
# size, init time (process start to the first poll of the Runtime API, through a
# small Runtime API emulator) and peak memory, against a baseline process.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile lambda -p api -p admin -p authorizer -p metering -p cost-alerts
python3 scripts/lib/lambda_init_bench.py "${CARGO_TARGET_DIR:-target}/lambda" authorizer api admin metering cost-alerts
