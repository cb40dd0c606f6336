#!/usr/bin/env bash
# Benchmark (not a test): the same embeddings requests through the sync API and
# as one batch on `tenantai dev` (the optimised `local` build, its in-process
# worker and batch worker); prints requests per second of both and their ratio.
#
# usage: scripts/bench-batches.sh [LINES]   (default 2000)
# env: BENCH_BATCH_WORKERS (the dev's --workers, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/tools.sh

scripts/fetch-model.sh
py_install
echo "==> building tenantai (local profile)"
cargo build --profile local --quiet -p tenantai-cli
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/local/tenantai dev --data-dir "$data" --port "$port" --no-chat \
    --workers "${BENCH_BATCH_WORKERS:-2}" > "$data/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 600); do
    [ -f "$data/credentials.json" ] && curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.2
done
key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' "$data/credentials.json")
timeout 1800 "$PY_VENV/bin/python" scripts/bench-batches.py "http://127.0.0.1:$port" "$key" "${1:-2000}"
