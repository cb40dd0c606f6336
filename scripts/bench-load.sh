#!/usr/bin/env bash
# Load benchmark, side by side on this machine: tenantai (`tenantai dev`: keys,
# rate limits and caching on) and LiteLLM's proxy, both in front of the same
# `gpu-worker serve`, driven by wrk on loopback at the same paced rates, then
# flat out for cache hits. Prints requests/s, latency percentiles, each
# gateway's overhead and the ratio.
#
# Chat: 1, 8 and 32 concurrent streams (scripts/lib/stream_load.py, a new prompt
# per request so no cache answers) straight to the worker and through each gateway;
# time to first token and inter-token latency, each gateway's minus the worker's,
# and tenantai's own account of its share of the time to first token (the
# `overhead_ms` its usage events and EMF carry, read from its log).
#
# Every row runs twice: with all processes sharing both cores ("shared"), and with
# the worker on core 1 and the gateway under test on core 0 ("pinned", taskset, the
# same for both gateways; the load generators float). BENCH_PARTS picks
# "embeddings", "chat" or both (the default); BENCH_CHAT_STREAMS the stream counts
# (default "1 8 32").
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
CHAT_MODEL=SmolLM2-135M-Instruct
CHAT_SECONDS="${BENCH_CHAT_SECONDS:-15}"
CHAT_MAX_TOKENS="${BENCH_CHAT_MAX_TOKENS:-32}"
PARTS="${BENCH_PARTS:-embeddings chat}"

if ! command -v wrk >/dev/null; then
    echo "==> installing wrk (Debian)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -q wrk >/dev/null; else sudo apt-get install -y -q wrk >/dev/null; fi
fi
if [ ! -f "$LITELLM_VENV/.v-$LITELLM_VERSION" ]; then
    echo "==> installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV"
    rm -rf "$LITELLM_VENV"
    python3 -m venv "$LITELLM_VENV"
    timeout 900 "$LITELLM_VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
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
nice -n 10 target/local/gpu-worker serve --host 127.0.0.1 --port "$W_PORT" --model "models/$MODEL" \
    --chat-model "models/$CHAT_MODEL" >"$WORK/worker.log" 2>&1 &
W_PID=$!; PIDS+=($W_PID); wait_port "$W_PORT" "$W_PID" worker

# Limits high enough never to refuse: the limiter still runs on every request.
export TENANTAI_TIERS='{"pro": {"requests_per_minute": 10000000, "tokens_per_minute": 10000000000,
  "max_inputs_per_request": 2048, "monthly_budget_micros": 1000000000000000, "shared_cache_allowed": true}}'
# The pipeline's "served" lines carry each request's overhead_ms (read for chat).
RUST_LOG=warn,tenantai::gateway::pipeline=info NO_COLOR=1 target/local/tenantai dev --data-dir "$WORK/data" \
    --port "$T_PORT" --worker-url "http://127.0.0.1:$W_PORT" >"$WORK/tenantai.log" 2>&1 &
T_PID=$!; PIDS+=($T_PID); wait_port "$T_PORT" "$T_PID" tenantai
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
  - model_name: $CHAT_MODEL
    litellm_params:
      model: openai/$CHAT_MODEL
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
L_PID=$!; PIDS+=($L_PID); wait_port "$L_PORT" "$L_PID" litellm

# pin shared|pinned: all processes on both cores, or the worker on core 1 and the
# gateways on core 0 (every thread, with taskset -a).
pin() {
    if [ "$1" = pinned ]; then
        taskset -a -cp 1 "$W_PID" >/dev/null
        for p in "$T_PID" "$L_PID"; do taskset -a -cp 0 "$p" >/dev/null; done
    else
        for p in "$W_PID" "$T_PID" "$L_PID"; do taskset -a -cp 0,1 "$p" >/dev/null; done
    fi
}

# run NAME URL KEY BODY(same|unique) CONNECTIONS DELAY_MS OVERHEAD_HEADER
run() {
    local out
    out="$(BENCH_RUN="$MODE-$1" BENCH_AUTH="$3" BENCH_BODY="$4" BENCH_DELAY_MS="$6" BENCH_OVERHEAD_HEADER="$7" BENCH_MAX="$MAX_PER_THREAD" \
        timeout $((SECONDS_PER_RUN + 30)) wrk -t2 -c"$5" -d"${SECONDS_PER_RUN}s" --timeout 10s \
        -s scripts/lib/load.lua "$2/v1/embeddings" | grep '^RESULT')"
    echo "$MODE:$1 $out" >>"$WORK/results"
    echo "    $1: ${out#RESULT }"
}

# chat NAME URL KEY STREAMS: streamed chat for CHAT_SECONDS; for tenantai, its own
# overhead_ms of the streamed requests it served meanwhile (from its log).
chat() {
    local out mark
    mark="$(wc -l <"$WORK/tenantai.log")"
    out="$(timeout $((CHAT_SECONDS + 150)) "$LITELLM_VENV/bin/python" scripts/lib/stream_load.py \
        "$2" "$3" "$CHAT_MODEL" "$4" "$CHAT_SECONDS" "$CHAT_MAX_TOKENS" | grep '^RESULT')"
    if [ "$1" = tenantai ]; then
        out="$out $(tail -n +"$((mark + 1))" "$WORK/tenantai.log" | python3 -c '
import re, sys
v = sorted(float(m.group(1)) for line in sys.stdin if " served" in line and "completion_tokens=0 " not in line
           for m in [re.search(r"overhead_ms=([0-9.]+)", line)] if m)
pct = lambda p: v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))] if v else -1
print(f"self_n={len(v)} self_p50_ms={pct(50):.3f} self_p99_ms={pct(99):.3f}")')"
    fi
    echo "$MODE:chat-$1-$4 $out" >>"$WORK/results"
    echo "    chat $1 x$4: ${out#RESULT }"
}

T="http://127.0.0.1:$T_PORT"; L="http://127.0.0.1:$L_PORT"; D="http://127.0.0.1:$W_PORT"
for MODE in shared pinned; do
    pin "$MODE"
    echo "==> $MODE cores"
    if [[ " $PARTS " == *" embeddings "* ]]; then
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
    fi
    if [[ " $PARTS " == *" chat "* ]]; then
        echo "==> chat: $CHAT_MAX_TOKENS tokens per answer, ${CHAT_SECONDS}s per row"
        for n in ${BENCH_CHAT_STREAMS:-1 8 32}; do
            chat worker "$D" "" "$n"
            chat tenantai "$T" "$T_KEY" "$n"
            chat litellm "$L" "$L_KEY" "$n"
        done
    fi
done

python3 scripts/lib/load_report.py "$WORK/results"
