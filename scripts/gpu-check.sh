#!/usr/bin/env bash
# Runs on a GPU host (no Rust toolchain needed): checks the CUDA build of gpu-worker
# against sentence-transformers' reference vectors through `gpu-worker serve` (f32:
# cosine >= 0.9999; with --tf32: >= 0.999), runs scripts/bench-gpu.py (candle against
# sentence-transformers on the same GPU) and, where Nsight Compute is installed,
# sums the kernel times of one long and one short forward pass.
#
# usage: scripts/gpu-check.sh [STAGE_DIR...]   (default .gpu/a .gpu/b)
#   STAGE_DIRs hold what scripts/build-cuda.sh staged: gpu-worker.xz,
#   bench_embeddings.xz, model-a.bin, model-b.bin, model-meta.tar (the files may be
#   spread over several directories, as when they travel in two transfers).
# env: OUT (where logs and results are written; default /tmp/gpu-check-out),
#      CUDA_LIB_DIR (cuBLAS/cuRAND/NVRTC/cudart 13; default: found in PyTorch's
#      nvidia/cu13/lib), GPU_CHECK_ONLY=1 (skip the benchmark),
#      GPU_DEVICE (default cuda:0; cpu for a dry run of the check)
#
# The recipe, from a machine without a GPU to one with:
#   1. scripts/build-cuda.sh                       (here: toolkit from PyPI, build, stage)
#   2. copy the repository with .gpu/ to the GPU host and run this script there.
#      Through a transfer limited to 64 MiB, .gpu/a and .gpu/b travel in two calls:
#      the first copies .gpu/a somewhere outside the tree (say /root/stage), the
#      second runs `scripts/gpu-check.sh /root/stage .gpu/b`.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-/tmp/gpu-check-out}"
WORK=/tmp/tenantai-gpu
MODEL="$WORK/models/all-MiniLM-L6-v2"
mkdir -p "$OUT_DIR" "$WORK/models"
[ $# -gt 0 ] || set -- .gpu/a .gpu/b

find_staged() {
    local f
    for dir in "$@"; do
        f="$dir/$STAGED"
        [ -f "$f" ] && { echo "$f"; return 0; }
    done
    echo "missing $STAGED in: $*" >&2
    return 1
}
staged() { STAGED="$1" find_staged "${@:2}"; }

if [ ! -f "$MODEL/model.safetensors" ]; then
    tar -C "$WORK/models" -xf "$(staged model-meta.tar "$@")"
    cat "$(staged model-a.bin "$@")" "$(staged model-b.bin "$@")" >"$MODEL/model.safetensors.part"
    mv "$MODEL/model.safetensors.part" "$MODEL/model.safetensors"
fi
for bin in gpu-worker bench_embeddings; do
    xz -dc "$(staged "$bin.xz" "$@")" >"$WORK/$bin"
    chmod +x "$WORK/$bin"
done

if [ -z "${CUDA_LIB_DIR:-}" ]; then
    cublas=$(python3 -c 'import nvidia, os, glob; print(next(p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "cu13/lib/libcublas.so.13"))))' 2>/dev/null ||
        find / -xdev -name libcublas.so.13 2>/dev/null | head -1)
    CUDA_LIB_DIR=$(dirname "$cublas")
fi
export LD_LIBRARY_PATH="$CUDA_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "==> $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader); CUDA libraries from $CUDA_LIB_DIR"
if ldd "$WORK/gpu-worker" | grep 'not found'; then
    echo "gpu-worker cannot load its libraries" >&2
    exit 1
fi
"$WORK/gpu-worker" --version

# The check: every reference text through the HTTP API, batched and one by one.
check() {
    local port="$1" bar="$2" log="$OUT_DIR/serve-$1.log"
    "$WORK/gpu-worker" serve --device "${GPU_DEVICE:-cuda:0}" --host 127.0.0.1 --port "$port" \
        --model "$MODEL" --model-cache-dir "$WORK/cache" "${@:3}" >"$log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log"; return 1; }
        sleep 0.1
    done
    python3 - "$port" gpu-worker/tests/fixtures/minilm-reference.json "$bar" "${*:3}" <<'EOF'
import json, sys, urllib.request
import numpy as np
port, fixture, bar, flags = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
items = [i for i in json.load(open(fixture))["items"] if i["text"]]
def embed(texts):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings",
        data=json.dumps({"model": "all-MiniLM-L6-v2", "input": texts}).encode(),
        headers={"content-type": "application/json"})
    body = json.load(urllib.request.urlopen(req, timeout=60))
    return [np.array(d["embedding"], dtype=np.float64) for d in body["data"]], body["usage"]["prompt_tokens"]
batched, _ = embed([i["text"] for i in items])
cosines, token_errors = [], 0
for item, vec in zip(items, batched):
    alone, tokens = embed([item["text"]])
    token_errors += tokens != item["tokens_with_special"]
    ref = np.array(item["embedding"], dtype=np.float64)
    for v in (vec, alone[0]):
        cosines.append(float(v @ ref / (np.linalg.norm(v) * np.linalg.norm(ref))))
worst = min(cosines)
print(f"check f32 {flags}: {len(items)} reference texts, batched and alone: min cosine {worst:.7f}, "
      f"mean {np.mean(cosines):.7f}, token count mismatches {token_errors}")
sys.exit(0 if worst >= bar and token_errors == 0 else 1)
EOF
    local rc=$?
    curl -fsS "http://127.0.0.1:$port/health" | head -c 600
    echo
    kill "$pid"
    wait "$pid" || true
    return $rc
}
status=0
check 18080 0.9999 || status=1
check 18081 0.999 --tf32 || status=1
[ "${GPU_CHECK_ONLY:-0}" = 1 ] && exit $status

echo "==> benchmark: candle (CUDA) against sentence-transformers on the same GPU"
BENCH_OUT="$OUT_DIR/bench-gpu.json" PYTHONUNBUFFERED=1 timeout 480 \
    python3 scripts/bench-gpu.py "$MODEL" "$WORK/bench_embeddings" || status=1

# Where the GPU's time goes in one long forward pass (256 inputs of 250 tokens) and
# in short ones (1024 inputs of ~15 tokens, 32 per pass): each kernel's duration
# from Nsight Compute, summed by kernel.
if command -v ncu >/dev/null; then
    echo "==> kernel times (ncu, clocks as found)"
    for w in long_b256 short_b32; do
        python3 scripts/bench-gpu.py --ncu-workload "$w" >"$WORK/ncu-$w.json"
        TENANTAI_DEVICE=cuda:0 timeout 45 ncu --clock-control none --metrics gpu__time_duration.sum \
            --print-units base --csv --log-file "$OUT_DIR/ncu-$w.csv" \
            "$WORK/bench_embeddings" "$MODEL" "$WORK/ncu-$w.json" >/dev/null 2>"$OUT_DIR/ncu-$w.err" || {
            echo "ncu $w failed:"
            tail -5 "$OUT_DIR/ncu-$w.err"
            continue
        }
        python3 scripts/bench-gpu.py --ncu-summary "$OUT_DIR/ncu-$w.csv" "$w"
    done
fi
exit $status
