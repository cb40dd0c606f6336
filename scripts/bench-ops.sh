#!/usr/bin/env bash
# Backup and restore benchmark: items backed up and restored per second on the
# embedded adapters and on the AWS adapters on the emulator (started here on a
# free loopback port), each beside its floor (a plain scan, plain batch writes),
# and the stored bytes per item. BENCH_OPS_ITEMS sets the item count (20000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/moto.sh
moto_start
cargo bench -p tenantai --bench ops
