#!/usr/bin/env python3
"""Average the weights of HF model directories (a "checkpoint average").

    python3 scripts/average_weights.py OUT DIR1 DIR2 [DIR3 ...]

Every DIR holds model.safetensors with the same tensor names and shapes (e.g. the `step-N/`
directories `e2llm train --set keep_every=N` keeps along one run); OUT gets their element-wise
mean (computed in float64, stored in each tensor's own dtype) and DIR1's config.json and
tokenizer.json, so `e2llm passkey --model OUT` reads it. Needs `pip install numpy safetensors`.
Used for the checkpoint-average rows of README's session-18 results; not part of the tests.
"""
import argparse
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to write (created)")
    ap.add_argument("dirs", nargs="+", help="HF model directories to average")
    a = ap.parse_args()
    if len(a.dirs) < 2:
        sys.exit("average_weights.py: give at least two directories to average")
    tensors = []
    for d in a.dirs:
        path = os.path.join(d, "model.safetensors")
        if not os.path.isfile(path):
            sys.exit(f"average_weights.py: {path} not found (is {d} an HF model directory?)")
        tensors.append(load_file(path))
    names = set(tensors[0])
    for d, t in zip(a.dirs[1:], tensors[1:]):
        if set(t) != names or any(t[k].shape != tensors[0][k].shape for k in names):
            sys.exit(f"average_weights.py: {d} has other tensor names or shapes than {a.dirs[0]}")
    mean = {
        k: (sum(t[k].astype(np.float64) for t in tensors) / len(tensors)).astype(tensors[0][k].dtype)
        for k in sorted(names)
    }
    os.makedirs(a.out, exist_ok=True)
    save_file(mean, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(os.path.join(a.dirs[0], f), a.out)
    print(f"averaged {len(tensors)} models -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
