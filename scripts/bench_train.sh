#!/usr/bin/env bash
# Training throughput of the quickstart model, e2llm vs its PyTorch twin, on this machine:
# `e2llm bench train` (cpu and wgpu) and scripts/bench_torch.py (cpu, and cuda if torch sees a
# GPU). Writes JSON into OUT_DIR (default runs/bench). Needs python3 with torch + transformers
# for the twin; without them only the e2llm rows are measured.
# Usage: scripts/bench_train.sh [path/to/e2llm] [OUT_DIR]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/e2llm}"
OUT_DIR="${2:-runs/bench}"
STEPS="${STEPS:-20}"
mkdir -p "$OUT_DIR"
echo "== host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
command -v nvidia-smi >/dev/null && nvidia-smi -L
"$BIN" bench train --backends cpu,wgpu --steps "$STEPS" --json "$OUT_DIR/e2llm.json"
if python3 -c "import torch, transformers" 2>/dev/null; then
    python3 scripts/bench_torch.py --device cpu --steps "$STEPS" --json "$OUT_DIR/torch_cpu.json"
    if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
        python3 scripts/bench_torch.py --device cuda --steps "$STEPS" --json "$OUT_DIR/torch_cuda.json"
    fi
else
    echo "(torch/transformers not importable: PyTorch twin skipped)"
fi
