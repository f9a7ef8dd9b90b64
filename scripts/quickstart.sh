#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install packages, build, and generate text.
#   scripts/quickstart.sh [MODEL_PATH] [PROMPT]
# MODEL_PATH: a Hugging Face model directory or a .gguf file (default ../shared/models/ref-mha).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
MODEL="${1:-${PALU_SHARED_DIR:-../shared}/models/ref-mha}"
PROMPT="${2:-The history of the city}"
./build/tools/palu-generate --model "$MODEL" --prompt "$PROMPT" --max-tokens 64 --temperature 0.7 --seed 1
