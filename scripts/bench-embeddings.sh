#!/usr/bin/env bash
# Benchmark (not a test): embeds the same workloads with the candle engine of
# gpu-worker and with sentence-transformers (PyTorch on CPU, 2 threads), and
# prints sentences per second for both and their ratio.
#
# usage: scripts/bench-embeddings.sh [--profile]
#   --profile  also print where candle's time goes (candle's tracing spans)
# env: BENCH_THREADS (default 2); BENCH_PROFILE (cargo profile of the engine, default
#      release; `local` builds far quicker, without LTO)
#
# Python dependencies go into the git-ignored venv .tools/bench-venv. PyPI only has
# CUDA builds of torch for Linux x86_64, and libtorch links the CUDA runtime, so a
# CPU-only torch cannot come from PyPI. The lean way taken here: torch is installed
# without its dependency list, plus only the CUDA runtime libraries it cannot load
# without (no triton, no cuda-bindings, no cusolver/nvtx), and sentence-transformers
# and transformers without dependencies, plus their pure-Python ones. Nothing runs
# on a GPU; the model comes from scripts/fetch-model.sh (PyPI), never from a hub.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.tools/bench-venv
STAMP="$VENV/.bench-deps-v1"
TORCH=2.15.0
CUDA_TOOLKIT=13.2.2

install_venv() {
    [ -f "$STAMP" ] && return 0
    echo "==> installing torch $TORCH (CPU use) and sentence-transformers into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    local pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
    "${pip[@]}" --no-deps "torch==$TORCH"
    "${pip[@]}" filelock "typing-extensions>=4.13" "sympy>=1.13.3" networkx jinja2 fsspec
    # The shared libraries libtorch is linked against (loaded at import, unused on CPU).
    "${pip[@]}" "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusparse,nvjitlink,nvrtc]==$CUDA_TOOLKIT" \
        nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 \
        nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2
    "${pip[@]}" --no-deps sentence-transformers==6.2.0 transformers==5.23.0
    "${pip[@]}" huggingface_hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 regex pyyaml tqdm \
        numpy scipy scikit-learn packaging typer
    touch "$STAMP"
}

scripts/fetch-model.sh
install_venv
PROFILE="${BENCH_PROFILE:-release}"
echo "==> building the candle benchmark ($PROFILE)"
cargo build --profile "$PROFILE" --quiet -p gpu-worker --example bench_embeddings
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/examples/bench_embeddings"
echo "==> running (this takes a minute or two)"
"$VENV/bin/python" scripts/bench-embeddings.py "$PWD/models/all-MiniLM-L6-v2" "$BIN" "$@"
