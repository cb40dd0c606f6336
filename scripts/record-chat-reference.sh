#!/usr/bin/env bash
# Records llama.cpp's reference behaviour on the chat model into
# gpu-worker/tests/fixtures/smollm2-reference.json (committed; the tests read it):
# prompt token ids, greedy continuations, teacher-forced argmax and top-two gaps, and
# the last prompt position's logits, for a set of conversations. llama.cpp is built from
# the pinned llama-cpp-python sdist (scripts/lib/llama.sh, cached outside the clone).
#
# usage: scripts/record-chat-reference.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/llama.sh

scripts/fetch-model.sh SmolLM2-135M-Instruct
llama_python
timeout 1200 "$LLAMA_VENV/bin/python" scripts/record-chat-reference.py \
    models/SmolLM2-135M-Instruct/model.gguf gpu-worker/tests/fixtures/smollm2-reference.json
echo "==> wrote gpu-worker/tests/fixtures/smollm2-reference.json"
