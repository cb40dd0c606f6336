#!/usr/bin/env bash
# Storage benchmark: ops/s of the embedded adapters and of the AWS adapters on
# the emulator (started here on a free loopback port), side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/moto.sh
moto_start
cargo bench -p tenantai --bench storage
