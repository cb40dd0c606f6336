#!/usr/bin/env bash
# Builds gpu-worker with the `cuda` feature on a machine without a GPU or a CUDA
# install, and stages what a GPU host needs into .gpu/ (git-ignored).
#
# usage: scripts/build-cuda.sh
# env:   CUDA_COMPUTE_CAP (default 90: H100/H200)
#
# The CUDA 13.0 toolkit pieces come from PyPI (pinned below; 13.0 matches the R580
# driver): nvcc, ptxas and cicc, the C++ headers (cccl, crt), and the runtime, cuBLAS,
# cuRAND and NVRTC libraries to link against. They land in .tools/cuda. Two things
# PyPI lacks are made here:
#   - the wheels ship only versioned libraries (libcublas.so.13); the linker wants
#     libcublas.so, so lib/stubs gets unversioned links;
#   - there is no libcuda stub (the driver API comes with the driver, not the
#     toolkit), so one is compiled from the driver functions cudarc declares, with
#     the driver's soname libcuda.so.1. At run time the real driver library loads.
# candle links these libraries dynamically: the binary runs on a host with the
# driver and with cuBLAS/cuRAND/NVRTC/cudart 13 on the loader path (for example a
# PyTorch cu13x install's nvidia/cu13/lib; see scripts/gpu-check.sh).
#
# Output, in .gpu/a and .gpu/b (each under 64 MiB, so each fits one transfer to a
# lent GPU machine; scripts/gpu-check.sh takes both directories):
#   a/model-a.bin, b/model-b.bin, a/model-meta.tar
#                          the model directory, its weights split in halves;
#                          gpu-worker verifies every file against manifest.json
#   b/gpu-worker.xz        the stripped `cuda` worker binary, compressed
#   a/bench_embeddings.xz  the candle side of the GPU benchmark, compressed
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_PIP=.tools/cuda
CUDA="$PWD/$CUDA_PIP/nvidia/cu13"
STAMP="$CUDA_PIP/.cuda-13.0-v1"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
TARGET_DIR="${CUDA_TARGET_DIR:-target-cuda}"
OUT=.gpu

if [ ! -f "$STAMP" ]; then
    echo "==> installing the CUDA 13.0 toolkit pieces from PyPI into $CUDA_PIP"
    rm -rf "$CUDA_PIP"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$CUDA_PIP" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 \
        nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
    mkdir -p "$CUDA/lib/stubs"
    for lib in cudart cublas cublasLt nvrtc curand; do
        versioned=$(cd "$CUDA/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -1)
        ln -sf "../$versioned" "$CUDA/lib/stubs/lib$lib.so"
    done
    touch "$STAMP"
fi

# The libcuda link stub: every cu* function cudarc's driver bindings declare.
version=$(grep -A1 '^name = "cudarc"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
cudarc_dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$version" | head -1)
stub_src="$CUDA_PIP/libcuda-stub.c"
grep -ohE '^ *fn cu[A-Za-z0-9_]+\('  "$cudarc_dir/src/driver/sys/mod.rs" | sed -E 's/^ *fn //; s/\($//' | sort -u |
    sed 's/.*/void &(void) {}/' >"$stub_src"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" "$stub_src"

export PATH="$CUDA/bin:$PATH" CUDA_PATH="$CUDA" CUDA_ROOT="$CUDA" CUDARC_CUDA_VERSION=13000
nvcc --version | tail -2
echo "==> building gpu-worker with the cuda feature (sm_$CUDA_COMPUTE_CAP) into $TARGET_DIR"
CARGO_TARGET_DIR="$TARGET_DIR" cargo build --profile gpu --locked -p gpu-worker --features cuda \
    --bin gpu-worker --example bench_embeddings

rm -rf "$OUT"
mkdir -p "$OUT/a" "$OUT/b"
for bin in "b:$TARGET_DIR/gpu/gpu-worker" "a:$TARGET_DIR/gpu/examples/bench_embeddings"; do
    part=${bin%%:*} bin=${bin#*:}
    name=$(basename "$bin")
    strip -o "$OUT/$part/$name" "$bin"
    xz -T2 -6 -f "$OUT/$part/$name"
    echo "$name: $(stat -c %s "$bin") bytes built, $(stat -c %s "$OUT/$part/$name.xz") compressed"
done
scripts/fetch-model.sh
model=models/all-MiniLM-L6-v2
size=$(stat -c %s "$model/model.safetensors")
half=$(((size + 1) / 2))
head -c "$half" "$model/model.safetensors" >"$OUT/a/model-a.bin"
tail -c +"$((half + 1))" "$model/model.safetensors" >"$OUT/b/model-b.bin"
tar -C models -cf "$OUT/a/model-meta.tar" --exclude model.safetensors all-MiniLM-L6-v2
echo "==> staged: $OUT/a $(du -sh "$OUT/a" | cut -f1), $OUT/b $(du -sh "$OUT/b" | cut -f1)"
