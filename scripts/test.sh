#!/usr/bin/env bash
# Runs every test of tenantai: installs what the tests need (the AWS emulator,
# the embedding model), starts the emulator on a free loopback port, runs the
# whole workspace's tests against it, and stops it again, also on failure.
# Extra arguments go to `cargo test` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/moto.sh

if [ -x scripts/fetch-model.sh ]; then
    scripts/fetch-model.sh
fi

moto_start
# The emulator is promised to every test: an AWS case that cannot reach it fails.
export TENANTAI_TEST_AWS=1

cargo test --workspace --all-targets "$@"
