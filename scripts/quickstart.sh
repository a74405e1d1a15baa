#!/usr/bin/env bash
# The README's main job on the embedded defaults: installs what is missing, builds `e2llm`, and
# runs `e2llm quickstart` — trains a BPE tokenizer and a tiny Llama on the committed corpus at
# L = 256 tokens, extends it with E²-LLM, and measures passkey retrieval at 1×..32× L (plain
# PI, and again with log-n attention scaling).
# No downloads from model hubs. Extra arguments go to `e2llm quickstart` (see --help), e.g.
# `--backend wgpu` or `--out DIR`. Re-running reuses finished stages in runs/quickstart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

# The dev profile optimises every dependency (opt-level 2) and shares its build with the
# tests, so one cold build serves both commands.
echo "== building e2llm (the first build takes 30-45 minutes on 2 cores)"
# --workspace: the feature set `cargo test --workspace` uses too, so scripts/test.sh reuses
# this build of burn instead of compiling another one.
cargo build --workspace --bins
BIN="${CARGO_TARGET_DIR:-target}/debug/e2llm"

echo "== e2llm quickstart $*"
"$BIN" quickstart "$@"
