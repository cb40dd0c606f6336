# Sourced by the scripts that need llama.cpp (reference fixtures, the chat benchmark, the
# upstream-provider tests): llama.cpp's sources come vendored in the pinned
# llama-cpp-python sdist from PyPI (pinned by hash). One CMake build gives both
# `llama-server` and the shared libraries that the Python binding loads
# (LLAMA_CPP_LIB_PATH), so llama.cpp is compiled once. Everything is cached outside
# the clone, keyed by the pinned version: a repeat run reuses it.

LLAMA_PY_VERSION="0.3.36"
LLAMA_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CACHE="${TENANTAI_CACHE:-$HOME/.cache/tenantai}/llama-cpp-$LLAMA_PY_VERSION-avx512"
LLAMA_VENV="$LLAMA_CACHE/venv"
LLAMA_SERVER="$LLAMA_CACHE/build/bin/llama-server"
export LLAMA_CPP_LIB_PATH="$LLAMA_CACHE/build/bin"

# The build tools (CMake, Ninja and the sdist's build backend), pinned, in a venv.
llama_tools() {
    [ -f "$LLAMA_VENV/.tools-ok" ] && return 0
    rm -rf "$LLAMA_VENV"
    python3 -m venv "$LLAMA_VENV" || return 1
    timeout 600 "$LLAMA_VENV/bin/pip" install --quiet cmake==4.4.5 ninja==1.13.2 scikit-build-core==0.11.6 || return 1
    touch "$LLAMA_VENV/.tools-ok"
}

# Fetches the sdist (hash-checked) and unpacks it into $LLAMA_CACHE/src.
llama_source() {
    [ -f "$LLAMA_CACHE/src/.ok" ] && return 0
    llama_tools || return 1
    local tmp
    tmp="$(mktemp -d)"
    printf 'llama-cpp-python==%s --hash=sha256:%s\n' "$LLAMA_PY_VERSION" "$LLAMA_SDIST_SHA256" >"$tmp/req.txt"
    # pip reads the sdist's metadata with its build backend, which looks for CMake.
    PATH="$LLAMA_VENV/bin:$PATH" timeout 900 "$LLAMA_VENV/bin/pip" download --quiet --no-deps \
        --no-binary=:all: --no-build-isolation --require-hashes -r "$tmp/req.txt" -d "$tmp/dl" || return 1
    rm -rf "$LLAMA_CACHE/src"
    mkdir -p "$LLAMA_CACHE/src"
    tar xzf "$tmp"/dl/llama_cpp_python-*.tar.gz -C "$LLAMA_CACHE/src" --strip-components=1 || return 1
    touch "$LLAMA_CACHE/src/.ok"
    rm -rf "$tmp"
}

# Builds llama-server and the shared libraries for the CPU, once. Not GGML_NATIVE:
# these machines advertise AMX, whose instructions trap under their hypervisor
# (SIGILL), so the build names its instruction sets itself: AVX2/FMA/F16C and
# AVX-512 with VNNI, VBMI and BF16, AMX off.
llama_build() {
    [ -x "$LLAMA_SERVER" ] && [ -f "$LLAMA_CACHE/build/.ok" ] && return 0
    llama_source || return 1
    llama_tools || return 1
    echo "==> building llama.cpp (llama-cpp-python $LLAMA_PY_VERSION's vendored sources) into $LLAMA_CACHE/build"
    local src="$LLAMA_CACHE/src/vendor/llama.cpp"
    timeout 600 "$LLAMA_VENV/bin/cmake" -S "$src" -B "$LLAMA_CACHE/build" -G Ninja \
        -DCMAKE_MAKE_PROGRAM="$LLAMA_VENV/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
        -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF \
        -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
        -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$LLAMA_CACHE/build/bin" \
        -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$LLAMA_CACHE/build/bin" >/dev/null || return 1
    timeout 7200 "$LLAMA_VENV/bin/cmake" --build "$LLAMA_CACHE/build" --target llama-server llama -j "$(nproc)" || return 1
    touch "$LLAMA_CACHE/build/.ok"
}

# The Python binding, without building llama.cpp again: it loads the libraries above.
llama_python() {
    llama_build || return 1
    [ -f "$LLAMA_VENV/.py-ok" ] && return 0
    echo "==> installing the llama-cpp-python binding into $LLAMA_VENV (no native build)"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" timeout 900 "$LLAMA_VENV/bin/pip" install --quiet \
        "$LLAMA_CACHE/src" numpy==2.4.6 || return 1
    touch "$LLAMA_VENV/.py-ok"
}

# Starts llama-server on MODEL (a GGUF) on a free loopback port with a random API
# key, for the upstream-provider tests; exports TENANTAI_LLAMA_URL, the key as
# TENANTAI_TEST_LLAMA_KEY and a wrong one as TENANTAI_TEST_LLAMA_BAD_KEY (for
# `tenantai dev`, which reads upstream keys from the environment). Stopped on exit.
llama_server_start() {
    local port
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    TENANTAI_TEST_LLAMA_KEY="sk-llama-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    TENANTAI_TEST_LLAMA_BAD_KEY="sk-wrong-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    export TENANTAI_TEST_LLAMA_KEY TENANTAI_TEST_LLAMA_BAD_KEY
    "$LLAMA_SERVER" -m "$1" --host 127.0.0.1 --port "$port" -t 1 --parallel 2 -c 4096 --jinja --no-webui \
        --api-key "$TENANTAI_TEST_LLAMA_KEY" >"${TMPDIR:-/tmp}/tenantai-llama-server.log" 2>&1 &
    LLAMA_PID=$!
    for _ in $(seq 1 240); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=1)" 2>/dev/null; then
            export TENANTAI_LLAMA_URL="http://127.0.0.1:$port"
            echo "==> llama-server on $TENANTAI_LLAMA_URL (pid $LLAMA_PID)"
            return 0
        fi
        kill -0 "$LLAMA_PID" 2>/dev/null || break
        sleep 0.5
    done
    echo "llama-server did not start; its log:" >&2
    cat "${TMPDIR:-/tmp}/tenantai-llama-server.log" >&2
    return 1
}

llama_server_stop() {
    [ -n "${LLAMA_PID:-}" ] && kill "$LLAMA_PID" 2>/dev/null || true
}
