# Sourced by scripts/deploy.sh and scripts/lib/infra.sh: the worker image's build
# context, and a check of the Dockerfile's steps without a container engine.

WORKER_DOCKERFILE="gpu-worker/Dockerfile"

# worker_image_stage BINARY DIR: DIR becomes the build context (the Dockerfile and
# the stripped binary, nothing else: the context is uploaded whole).
worker_image_stage() {
    local bin="$1" dir="$2"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$WORKER_DOCKERFILE" "$dir/Dockerfile"
    strip -o "$dir/gpu-worker" "$bin" 2>/dev/null || cp "$bin" "$dir/gpu-worker"
    chmod 0755 "$dir/gpu-worker"
}

# The value of a Dockerfile ENV key (single-line `KEY=value` pairs).
_dockerfile_env() {
    grep -oE "\b$1=[^ \\\\]+" "$WORKER_DOCKERFILE" | head -1 | cut -d= -f2-
}

# worker_image_exercise BINARY MODEL_DIR: runs the image's steps outside a container:
# the context holds every COPY source; the entrypoint with its default CMD and the
# Dockerfile's environment serves /health on the Dockerfile's port as the health
# check asks; the SageMaker contract answers /ping; SIGTERM (the STOPSIGNAL) ends
# the process well inside the ECS stop timeout.
worker_image_exercise() {
    local bin="$1" model="$2" ctx port pid code start
    ctx="$(mktemp -d)"
    worker_image_stage "$bin" "$ctx"
    # Every COPY source exists in the context.
    local src
    for src in $(grep -E '^COPY ' "$WORKER_DOCKERFILE" | awk '{print $(NF-1)}'); do
        [ -e "$ctx/$src" ] || { echo "worker image: COPY source $src missing from the context" >&2; return 1; }
    done
    grep -q '^ENTRYPOINT \["/usr/local/bin/gpu-worker"\]' "$WORKER_DOCKERFILE" || { echo "worker image: entrypoint is not the exec-form binary" >&2; return 1; }
    grep -q '^CMD \["serve"\]' "$WORKER_DOCKERFILE" || { echo "worker image: default command is not serve" >&2; return 1; }
    grep -q '^USER 10001' "$WORKER_DOCKERFILE" || { echo "worker image: not a non-root user" >&2; return 1; }
    port="$(free_port)"
    local cache
    cache="$(mktemp -d)"
    # The Dockerfile's environment, with a free port and a CPU device here.
    env -i PATH="$PATH" HOME="$cache" \
        TENANTAI_WORKER_HOST=127.0.0.1 TENANTAI_WORKER_PORT="$port" \
        TENANTAI_MODEL_CACHE_DIR="$cache" TENANTAI_LOG_FORMAT="$(_dockerfile_env TENANTAI_LOG_FORMAT)" \
        TENANTAI_MODEL="$model" TENANTAI_DEVICE=cpu \
        "$ctx/gpu-worker" serve >"$cache/worker.log" 2>&1 &
    pid=$!
    code=1
    for _ in $(seq 1 240); do
        if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then code=0; break; fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if [ "$code" -ne 0 ]; then
        echo "worker image: /health never answered; log:" >&2
        cat "$cache/worker.log" >&2
        kill "$pid" 2>/dev/null || true
        return 1
    fi
    curl -fsS "http://127.0.0.1:$port/ping" >/dev/null || { echo "worker image: /ping failed" >&2; kill "$pid"; return 1; }
    grep -q '"level"' "$cache/worker.log" || { echo "worker image: logs are not JSON" >&2; kill "$pid"; return 1; }
    start=$(date +%s)
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "worker image: still running 20 s after SIGTERM" >&2
        kill -KILL "$pid"
        return 1
    fi
    echo "==> worker image: context ok, /health and /ping answered, SIGTERM stopped it in $(($(date +%s) - start)) s"
    rm -rf "$ctx" "$cache"
}
