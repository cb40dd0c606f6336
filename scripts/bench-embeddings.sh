#!/usr/bin/env bash
# Benchmark (not a test): embeds the same workloads (64 short sentences; 128 texts
# of 3..250 tokens) with gpu-worker's engine at each precision and with its peer of
# the same tier, 2 threads each: f32 against sentence-transformers on PyTorch f32,
# bf16 against the same under torch.autocast("cpu", bfloat16), int8 against
# sentence-transformers' ONNX backend on its int8 dynamic-quantized export
# (onnxruntime). Prints sentences/s of both, the ratio, and the quality of both
# against the f32 PyTorch vectors (min and mean cosine, top-10 retrieval overlap).
#
# usage: scripts/bench-embeddings.sh [--profile] [--only f32,bf16,int8]
#   --profile  also print where the engine's time goes (its tracing spans)
# env: BENCH_THREADS (default 2); BENCH_PROFILE (cargo profile of the engine, default
#      release; `local` builds far quicker, without LTO); TENANTAI_MATMUL (the engine's
#      matmul library: auto = Intel oneMKL, unpacked by scripts/lib/mkl.sh, else gemmkit;
#      gemmkit to measure without oneMKL)
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

# The int8 peer's venv: optimum's ONNX export (optimum-onnx 0.1) needs transformers
# 4.x, the PyTorch peers' venv has 5.x, so it has its own (same torch, same lean
# CUDA-library set). The export itself is made once, offline, into
# .tools/bench-onnx-model (scripts/bench-embeddings-onnx.py).
ONNX_VENV=.tools/bench-onnx-venv
ONNX_PINS=(onnx==1.23.2 onnxruntime==1.32.0 optimum==2.1.0 optimum-onnx==0.1.0
    sentence-transformers==5.7.0 transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.2
    coloredlogs==15.0.1 flatbuffers==25.12.19 protobuf==7.36.2 numpy==2.4.6 ml_dtypes==0.7.0)

VENV=.tools/bench-venv
STAMP="$VENV/.bench-deps-v1"
TORCH=2.15.0
CUDA_TOOLKIT=13.2.2

install_venv() {
    [ -f "$STAMP" ] && return 0
    echo "==> installing torch $TORCH (CPU use) and sentence-transformers into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    local pip=(timeout 1800 "$VENV/bin/pip" install --quiet --disable-pip-version-check)
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

install_onnx_venv() {
    # Adopted as is when the pinned packages import at their versions.
    if [ -x "$ONNX_VENV/bin/python" ] && timeout 120 "$ONNX_VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, onnxruntime, optimum.onnxruntime, sentence_transformers
assert m.version("onnxruntime") == "1.32.0" and m.version("optimum-onnx") == "0.1.0"
assert m.version("sentence-transformers") == "5.7.0" and m.version("transformers") == "4.57.6"
PY
    then return 0; fi
    echo "==> installing onnxruntime, optimum and sentence-transformers (ONNX) into $ONNX_VENV"
    rm -rf "$ONNX_VENV"
    python3 -m venv "$ONNX_VENV"
    local pip=(timeout 1800 "$ONNX_VENV/bin/pip" install --quiet --disable-pip-version-check)
    "${pip[@]}" --no-deps "torch==$TORCH"
    "${pip[@]}" filelock "typing-extensions>=4.13" "sympy>=1.13.3" networkx jinja2 fsspec
    "${pip[@]}" "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,cusparse,nvjitlink,nvrtc]==$CUDA_TOOLKIT" \
        nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 \
        nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2
    "${pip[@]}" "${ONNX_PINS[@]}" safetensors==0.8.0 regex pyyaml tqdm scipy scikit-learn packaging \
        humanfriendly
}

. scripts/lib/mkl.sh
scripts/fetch-model.sh
mkl_install
install_venv
install_onnx_venv
PROFILE="${BENCH_PROFILE:-release}"
echo "==> building the engine's benchmark ($PROFILE)"
cargo build --profile "$PROFILE" --quiet -p gpu-worker --example bench_embeddings
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE/examples/bench_embeddings"
echo "==> running (a few minutes: three variants and their peers)"
timeout 3600 "$VENV/bin/python" scripts/bench-embeddings.py "$PWD/models/all-MiniLM-L6-v2" "$BIN" \
    "$PWD/$ONNX_VENV/bin/python" "$@"
