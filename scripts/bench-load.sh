#!/usr/bin/env bash
# Load benchmark, side by side on this machine: tenantai (`tenantai dev`: keys,
# rate limits and caching on) and LiteLLM's proxy, both in front of the same
# `gpu-worker serve`, driven by wrk on loopback at the same paced rates, then
# flat out for cache hits. Prints requests/s, latency percentiles, each
# gateway's overhead and the ratio.
#
# Overhead: tenantai's is its `x-tenantai-overhead-ms` header (time not spent
# waiting on the backend). LiteLLM's is its own `x-litellm-overhead-duration-ms`
# header where (nearly) every answer carries it; otherwise, for misses, its
# latency above the worker's at the same rate, and for cache hits its whole
# latency (no backend call).
#
# Every run is bounded in time (BENCH_SECONDS, default 10) and in requests
# (BENCH_MAX per wrk thread). Everything started here stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/moto.sh  # free_port
. scripts/lib/tools.sh

SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
MAX_PER_THREAD="${BENCH_MAX:-200000}"
LITELLM_VERSION=1.80.17
LITELLM_VENV="$TOOLS_DIR/litellm-venv"
MODEL=all-MiniLM-L6-v2

if ! command -v wrk >/dev/null; then
    echo "==> installing wrk (Debian)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q wrk >/dev/null; else sudo apt-get install -y -q wrk >/dev/null; fi
fi
if [ ! -f "$LITELLM_VENV/.v-$LITELLM_VERSION" ]; then
    echo "==> installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV"
    rm -rf "$LITELLM_VENV"
    python3 -m venv "$LITELLM_VENV"
    "$LITELLM_VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
    touch "$LITELLM_VENV/.v-$LITELLM_VERSION"
fi
scripts/fetch-model.sh
cargo build --profile local -p tenantai-cli -p gpu-worker

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { # port, pid, name
    for _ in $(seq 1 600); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then echo "$3 exited; its log:" >&2; cat "$WORK/$3.log" >&2; exit 1; fi
        sleep 0.2
    done
    echo "$3 did not listen on $1" >&2; exit 1
}

W_PORT="$(free_port)"; T_PORT="$(free_port)"; L_PORT="$(free_port)"
# The worker runs at a lower CPU priority. Deployed, it has a GPU host of its own;
# here its model threads would take both cores from whichever gateway is under
# test (the same for both), and its compute time is not gateway overhead.
nice -n 10 target/local/gpu-worker serve --host 127.0.0.1 --port "$W_PORT" --model "models/$MODEL" >"$WORK/worker.log" 2>&1 &
PIDS+=($!); wait_port "$W_PORT" "$!" worker

# Limits high enough never to refuse: the limiter still runs on every request.
export TENANTAI_TIERS='{"pro": {"requests_per_minute": 100000000, "tokens_per_minute": 10000000000000,
  "max_inputs_per_request": 2048, "monthly_budget_micros": 1000000000000000, "shared_cache_allowed": true}}'
RUST_LOG=warn target/local/tenantai dev --data-dir "$WORK/data" --port "$T_PORT" \
    --worker-url "http://127.0.0.1:$W_PORT" >"$WORK/tenantai.log" 2>&1 &
PIDS+=($!); wait_port "$T_PORT" "$!" tenantai
for _ in $(seq 1 100); do [ -f "$WORK/data/credentials.json" ] && break; sleep 0.1; done
T_KEY="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['api_key'])" "$WORK/data/credentials.json")"

L_KEY=sk-bench-master
cat >"$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: $MODEL
    litellm_params:
      model: openai/$MODEL
      api_base: http://127.0.0.1:$W_PORT/v1
      api_key: unused
litellm_settings:
  cache: true
  cache_params:
    type: local
general_settings:
  master_key: $L_KEY
YAML
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR \
    "$LITELLM_VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$L_PORT" \
    >"$WORK/litellm.log" 2>&1 &
PIDS+=($!); wait_port "$L_PORT" "$!" litellm

# run NAME URL KEY BODY(same|unique) CONNECTIONS DELAY_MS OVERHEAD_HEADER
run() {
    local out
    out="$(BENCH_AUTH="$3" BENCH_BODY="$4" BENCH_DELAY_MS="$6" BENCH_OVERHEAD_HEADER="$7" BENCH_MAX="$MAX_PER_THREAD" \
        timeout $((SECONDS_PER_RUN + 30)) wrk -t2 -c"$5" -d"${SECONDS_PER_RUN}s" --timeout 10s \
        -s scripts/lib/load.lua "$2/v1/embeddings" | grep '^RESULT')"
    echo "$1 $out" >>"$WORK/results"
    echo "    $1: ${out#RESULT }"
}

T="http://127.0.0.1:$T_PORT"; L="http://127.0.0.1:$L_PORT"; D="http://127.0.0.1:$W_PORT"
echo "==> warming up (model, caches, connections)"
run warm-t "$T" "$T_KEY" same 2 0 "" >/dev/null
run warm-l "$L" "$L_KEY" same 2 0 "" >/dev/null
echo "==> paced runs: misses 4 connections x 20 ms pause, hits 8 connections x 4 ms pause"
run worker-miss "$D" "" unique 4 20 ""
run tenantai-miss "$T" "$T_KEY" unique 4 20 x-tenantai-overhead-ms
run litellm-miss "$L" "$L_KEY" unique 4 20 x-litellm-overhead-duration-ms
run tenantai-hit "$T" "$T_KEY" same 8 4 x-tenantai-overhead-ms
run litellm-hit "$L" "$L_KEY" same 8 4 x-litellm-overhead-duration-ms
echo "==> flat out, cache hits, 64 connections"
run tenantai-hit-max "$T" "$T_KEY" same 64 0 x-tenantai-overhead-ms
run litellm-hit-max "$L" "$L_KEY" same 64 0 x-litellm-overhead-duration-ms

python3 - "$WORK/results" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    name, _, *fields = line.split()
    rows[name] = {k: float(v) for k, v in (f.split("=") for f in fields)}

def overhead(name, pct):
    r = rows[name]
    # The server's own header, where (nearly) every answer carries it.
    if r["ov_n"] >= 0.9 * r["requests"] and r[f"ov_{pct}_ms"] >= 0:
        return r[f"ov_{pct}_ms"], "header"
    base = {"litellm-miss": "worker-miss"}.get(name)
    if base:  # latency above the worker's own at the same rate
        return max(r[f"{pct}_ms"] - rows[base][f"{pct}_ms"], 0.0), "latency - worker"
    return r[f"{pct}_ms"], "latency (hit)"

print()
print(f"{'run':<18} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'overhead p50':>13} {'overhead p99':>13}  source")
for name, r in rows.items():
    if name.startswith("warm"):
        continue
    if name == "worker-miss":
        o50 = o99 = None
    else:
        (o50, src), (o99, _) = overhead(name, "p50"), overhead(name, "p99")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"{name:<18} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['non2xx'] + r['errors']:>8.0f} "
          f"{fmt(o50):>13} {fmt(o99):>13}  {'' if o50 is None else src}")
print()
for kind in ("miss", "hit", "hit-max"):
    t, l = overhead(f"tenantai-{kind}", "p99")[0], overhead(f"litellm-{kind}", "p99")[0]
    print(f"overhead p99, {kind:<8}: tenantai {t:.3f} ms, LiteLLM {l:.3f} ms, ratio {l / max(t, 1e-3):.0f}x")
t, l = rows["tenantai-hit-max"]["rps"], rows["litellm-hit-max"]["rps"]
print(f"cache-hit throughput: tenantai {t:.0f} req/s, LiteLLM {l:.0f} req/s, ratio {t / max(l, 1e-9):.1f}x")
PY
