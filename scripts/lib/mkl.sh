# Sourced by scripts/dev.sh, scripts/test.sh and scripts/bench-embeddings.sh: Intel
# oneMKL's runtime libraries (from PyPI's `mkl` wheel: the dispatcher, the core,
# the sequential layer and the per-CPU kernels) unpacked once into the cache outside
# the clone, keyed by version. `mkl_install` exports TENANTAI_MKL_LIB, which the CPU
# encoder opens for its dense products (gpu-worker/src/cpu/matmul.rs); without it
# they run on gemmkit. TENANTAI_NO_MKL=1 skips the download.

MKL_VERSION="2025.3.1"
MKL_DIR="${TENANTAI_CACHE_DIR:-$HOME/.cache/tenantai}/mkl-$MKL_VERSION"

mkl_install() {
    if [ "${TENANTAI_NO_MKL:-0}" = 1 ]; then
        return 0
    fi
    if [ ! -f "$MKL_DIR/.complete" ]; then
        echo "==> unpacking Intel oneMKL $MKL_VERSION's runtime (PyPI's mkl wheel, ~200 MB) into $MKL_DIR"
        local tmp
        tmp="$(mktemp -d)"
        rm -rf "$MKL_DIR"
        timeout 900 python3 -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --dest "$tmp" "mkl==$MKL_VERSION"
        timeout 300 python3 - "$tmp" "$MKL_DIR/lib" <<'PY'
import glob, os, re, sys, zipfile
src, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
wanted = re.compile(r"/lib/libmkl_(rt|core|sequential|def|mc3|avx2|avx512|intel_lp64)\.so\.2$")
(wheel,) = glob.glob(os.path.join(src, "mkl-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for entry in z.infolist():
        if wanted.search(entry.filename):
            with z.open(entry) as f, open(os.path.join(dest, os.path.basename(entry.filename)), "wb") as out:
                out.write(f.read())
PY
        rm -rf "$tmp"
        touch "$MKL_DIR/.complete"
    fi
    export TENANTAI_MKL_LIB="$MKL_DIR/lib/libmkl_rt.so.2"
}
