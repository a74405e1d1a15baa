#!/usr/bin/env bash
# Training on wgpu against the CPU, on a machine with a GPU (RESULTS.md, session 27):
#  1. four 100-step runs of the quickstart's extension (data seed 2): wgpu twice (fused kernels),
#     wgpu with reference kernels, and the CPU; their log.jsonl files show where the losses part;
#  2. the model's logits over 2,048 tokens at g = 8 on the CPU and on wgpu (fused and reference,
#     each twice), compared;
#  3. three 3,000-step extensions on wgpu with reference kernels (data seeds 2-4), stopped after
#     DEADLINE seconds, to read at home with `e2llm passkey`.
# The kernel tests themselves run with `cargo test` (or their built binaries) on that machine.
# Needs python3 with numpy + safetensors for step 2. Vulkan loader and driver must be present
# (a bare container may need libvulkan1 unpacked and VK_DRIVER_FILES set).
# Usage: scripts/wgpu_vs_cpu.sh BIN BASE_CHECKPOINT MODEL OUT_DIR [DEADLINE_S]
#   e.g. scripts/wgpu_vs_cpu.sh target/debug/e2llm runs/quickstart/base/checkpoint \
#        runs/quickstart/e2llm/average runs/wgpu-vs-cpu 480
set -uo pipefail
BIN=$1 BASE=$2 MODEL=$3 OUT=$4 DEADLINE=${5:-480}
T0=$(date +%s)
el() { echo "t=$(($(date +%s) - T0)) s"; }
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi -L
Q=(quickstart --base "$BASE" --train-only --set-extend threads=1)
S=(--set-extend steps=${SHORT_STEPS:-100} --set-extend keep_every=0 --set-extend average_last=0 --set-extend seed=2)
"$BIN" "${Q[@]}" "${S[@]}" --backend wgpu --out "$OUT/short-wgpu-a" >"$OUT/short-wgpu-a.log" 2>&1 &
"$BIN" "${Q[@]}" "${S[@]}" --backend wgpu --out "$OUT/short-wgpu-b" >"$OUT/short-wgpu-b.log" 2>&1 &
"$BIN" "${Q[@]}" "${S[@]}" --backend wgpu --set-extend kernels=reference \
    --out "$OUT/short-wgpu-ref" >"$OUT/short-wgpu-ref.log" 2>&1 &
"$BIN" "${Q[@]}" "${S[@]}" --backend cpu --out "$OUT/short-cpu" >"$OUT/short-cpu.log" 2>&1 &
wait
echo "short runs done, $(el)"
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
L = {r: [json.loads(l) for l in open(f"{out}/short-{r}/e2llm/log.jsonl")]
     for r in ("wgpu-a", "wgpu-b", "wgpu-ref", "cpu")}
for a, b in [("wgpu-a", "wgpu-b"), ("wgpu-a", "wgpu-ref"), ("wgpu-a", "cpu"), ("wgpu-ref", "cpu")]:
    d = [abs(x["loss"] - y["loss"]) for x, y in zip(L[a], L[b])]
    g = [abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(L[a], L[b])]
    first = next((i + 1 for i, v in enumerate(d) if v > 0), None)
    print(f"{a} vs {b}: loss |d| step 1 {d[0]:.3g}, max {max(d):.3g}, first step apart {first}; "
          f"grad norm |d| step 1 {g[0]:.3g}")
PY
IDS=$(python3 -c "
from tokenizers import Tokenizer
t = Tokenizer.from_file('$MODEL/tokenizer.json')
print(','.join(map(str, t.encode(open('README.md').read() + open('RESULTS.md').read()).ids[:2048])))" 2>/dev/null)
if [ -n "$IDS" ]; then
    "$BIN" logits --model "$MODEL" --ids "$IDS" --rope-scale 8 --backend cpu --out "$OUT/lg-cpu.st"
    for r in 1 2; do
        "$BIN" logits --model "$MODEL" --ids "$IDS" --rope-scale 8 --backend wgpu --out "$OUT/lg-fused$r.st"
        "$BIN" logits --model "$MODEL" --ids "$IDS" --rope-scale 8 --backend wgpu --kernels reference --out "$OUT/lg-ref$r.st"
    done
    python3 - "$OUT" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
out = sys.argv[1]
L = lambda n: load_file(f"{out}/lg-{n}.st")["logits"]
scale = np.abs(L("cpu")).max()
for a, b in [("cpu", "fused1"), ("cpu", "ref1"), ("fused1", "ref1"), ("fused1", "fused2"), ("ref1", "ref2")]:
    x, y = L(a), L(b)
    d = np.abs(x - y)
    print(f"logits {a} vs {b}: max {d.max():.3g} mean {d.mean():.3g} (largest logit {scale:.3g}); "
          f"same argmax {np.mean(x.argmax(1) == y.argmax(1)):.4f}")
PY
else
    echo "(python3 tokenizers not importable: the logits comparison is skipped)"
fi
for s in 2 3 4; do
    "$BIN" "${Q[@]}" --backend wgpu --set-extend keep_every=750 --set-extend seed=$s \
        --set-extend kernels=reference --out "$OUT/ref-s$s" >"$OUT/ref-s$s.log" 2>&1 &
done
while [ $(($(date +%s) - T0)) -lt "$DEADLINE" ] && pgrep -f "$OUT/ref-s" >/dev/null; do sleep 5; done
pkill -f "$OUT/ref-s"
echo "long runs stopped, $(el)"
for s in 2 3 4; do tail -1 "$OUT/ref-s$s/e2llm/log.jsonl" 2>/dev/null || echo "ref-s$s: no steps logged"; done
echo "read each with: $BIN passkey --model $OUT/ref-sN/e2llm/average --lengths 256,512,1024,2048,4096,8192 --trials 4 --rope-scale safe --json OUT.json"
