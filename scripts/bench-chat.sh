#!/usr/bin/env bash
# Chat engine benchmark, side by side on this machine: `gpu-worker serve` (the
# candle engine, continuous batching) against llama.cpp's own `llama-server`
# (built from the pinned llama-cpp-python sdist's vendored sources, continuous
# batching on, --parallel slots), on the same GGUF with the same threads, one after
# the other. At each concurrency (1, 8 and 32 streams by default) every stream asks
# for 128-token answers to short prompts, greedy, for BENCH_SECONDS; the client
# (scripts/bench-chat.py, the official openai SDK) reports aggregate completion
# tokens/s, time to first token and inter-token latency. Prints a table and the
# ratios (engine / llama-server; for latencies, llama-server / engine, so > 1 is
# better for the engine on every column).
#
# Env: BENCH_SECONDS (20), BENCH_STREAMS ("1 8 32"), BENCH_THREADS (2),
# BENCH_MAX_TOKENS (128). Everything started here stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/moto.sh  # free_port
. scripts/lib/tools.sh
. scripts/lib/llama.sh

SECS="${BENCH_SECONDS:-20}"
STREAMS="${BENCH_STREAMS:-1 8 32}"
THREADS="${BENCH_THREADS:-2}"
MAX_TOKENS="${BENCH_MAX_TOKENS:-128}"
MODEL_DIR=models/SmolLM2-135M-Instruct
MODEL_ID=SmolLM2-135M-Instruct
max_streams=$(for s in $STREAMS; do echo "$s"; done | sort -n | tail -1)

scripts/fetch-model.sh SmolLM2-135M-Instruct
llama_build
py_install
cargo build --profile local -p gpu-worker

WORK="$(mktemp -d)"
PID=""
stop_server() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap 'stop_server; rm -rf "$WORK"' EXIT

wait_ready() { # url, name
    for _ in $(seq 1 600); do
        if python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$1', timeout=1).status == 200 else 1)" 2>/dev/null; then return 0; fi
        if ! kill -0 "$PID" 2>/dev/null; then echo "$2 exited; its log:" >&2; cat "$WORK/$2.log" >&2; exit 1; fi
        sleep 0.5
    done
    echo "$2 did not become ready" >&2; exit 1
}

run_levels() { # name, base url
    for s in $STREAMS; do
        timeout $((SECS * 3 + 300)) "$PY_VENV/bin/python" scripts/bench-chat.py "$2" "$MODEL_ID" "$s" "$SECS" "$MAX_TOKENS" \
            | sed "s/^/$1 /" | tee -a "$WORK/results.txt"
    done
}

port="$(free_port)"
echo "==> llama-server: $THREADS threads, $max_streams slots, continuous batching"
"$LLAMA_SERVER" -m "$MODEL_DIR/model.gguf" --host 127.0.0.1 --port "$port" -t "$THREADS" -tb "$THREADS" \
    --parallel "$max_streams" -c $((max_streams * 512)) --cont-batching --jinja --no-webui \
    --alias "$MODEL_ID" >"$WORK/llama-server.log" 2>&1 &
PID=$!
wait_ready "http://127.0.0.1:$port/health" llama-server
run_levels llama-server "http://127.0.0.1:$port/v1"
stop_server

port="$(free_port)"
echo "==> gpu-worker serve: $THREADS threads, continuous batching"
target/local/gpu-worker serve --host 127.0.0.1 --port "$port" --model none --chat-model "$MODEL_DIR" \
    --chat-threads "$THREADS" >"$WORK/engine.log" 2>&1 &
PID=$!
wait_ready "http://127.0.0.1:$port/health" engine
run_levels engine "http://127.0.0.1:$port/v1"
stop_server

python3 - "$WORK/results.txt" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    name, doc = line.split(" ", 1)
    d = json.loads(doc)
    rows[(name, d["streams"])] = d
cols = ["tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"]
print(f"\n{'server':<13}{'streams':>8}" + "".join(f"{c:>14}" for c in cols) + f"{'requests':>10}")
for (name, s), d in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{name:<13}{s:>8}" + "".join(f"{d[c] if d[c] is not None else '-':>14}" for c in cols) + f"{d['requests']:>10}")
print("\nratios (engine vs llama-server; > 1 favours the engine):")
for s in sorted({k[1] for k in rows}):
    e, l = rows.get(("engine", s)), rows.get(("llama-server", s))
    if not e or not l:
        continue
    parts = [f"tokens/s x{e['tokens_per_s'] / l['tokens_per_s']:.2f}"]
    for c in cols[1:]:
        if e[c] and l[c]:
            parts.append(f"{c} x{l[c] / e[c]:.2f}")
    print(f"  {s:>3} streams: " + ", ".join(parts))
PY
