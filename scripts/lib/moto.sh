# Sourced by the test and benchmark scripts: installs the AWS emulator (moto's
# server, pinned) into a git-ignored venv inside the repo, starts it on a free
# loopback port, exports the AWS environment that points the SDK at it, and
# stops it when the calling script exits (also on failure or Ctrl-C).

MOTO_VERSION="5.2.5"
TOOLS_DIR="${TOOLS_DIR:-$PWD/.tools}"
MOTO_VENV="$TOOLS_DIR/moto-venv"

moto_install() {
    if [ -x "$MOTO_VENV/bin/moto_server" ] && [ -f "$MOTO_VENV/.moto-$MOTO_VERSION" ]; then
        return 0
    fi
    echo "==> installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
    rm -rf "$MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
    timeout 600 "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    touch "$MOTO_VENV/.moto-$MOTO_VERSION"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

moto_stop() {
    if [ -n "${MOTO_PID:-}" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
        kill "$MOTO_PID" 2>/dev/null || true
        wait "$MOTO_PID" 2>/dev/null || true
    fi
    MOTO_PID=""
}

moto_start() {
    moto_install
    local port
    port="$(free_port)"
    mkdir -p "$TOOLS_DIR"
    # moto's server with DynamoDB calls serialised (see moto_server.py).
    "$MOTO_VENV/bin/python" "$(dirname "${BASH_SOURCE[0]}")/moto_server.py" 127.0.0.1 "$port" >"$TOOLS_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    trap moto_stop EXIT
    trap 'moto_stop; exit 130' INT TERM
    for _ in $(seq 1 100); do
        if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$MOTO_PID" 2>/dev/null; then
            echo "moto server failed to start; its log:" >&2
            cat "$TOOLS_DIR/moto.log" >&2
            return 1
        fi
        sleep 0.2
    done
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    unset AWS_PROFILE AWS_SESSION_TOKEN
    export AWS_EC2_METADATA_DISABLED=true
    echo "==> moto $MOTO_VERSION listening on $AWS_ENDPOINT_URL (pid $MOTO_PID)"
}
