#!/usr/bin/env bash
# The README's main job on the embedded defaults: installs what is missing, builds `e2llm`
# (release), and runs it on the small model committed in the repo — `e2llm info`, then
# `e2llm generate` on CPU and, where a Vulkan adapter exists (lavapipe counts), on wgpu.
# No downloads from model hubs. Extra arguments go to `e2llm generate`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

MODEL=tests/fixtures/hf/tokenizer_demo
# The dev profile optimises every dependency (opt-level 2) and shares its build with the
# tests, so one cold build serves both commands.
echo "== building e2llm (the first build takes 15-25 minutes on 2 cores)"
cargo build -p e2llm-cli
BIN="${CARGO_TARGET_DIR:-target}/debug/e2llm"

echo "== e2llm info --model $MODEL"
"$BIN" info --model "$MODEL"

echo "== e2llm generate --model $MODEL (cpu)"
"$BIN" generate --model "$MODEL" --prompt "The pass key is" --max-new-tokens 16 "$@"

echo "== e2llm generate --model $MODEL (wgpu, rope scale 4)"
"$BIN" generate --model "$MODEL" --prompt "The pass key is" --max-new-tokens 16 \
    --backend wgpu --rope-scale 4 "$@" ||
    echo "(wgpu backend unavailable here; the CPU run above is the result)"
