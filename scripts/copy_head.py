#!/usr/bin/env python3
"""Where the copy head points while a model writes a passkey (RESULTS.md, session 26).

For each model, depth and trial of the passkey grid, and each number of answer digits already
written (1..4), runs `e2llm attend --json` and takes the head with the most weight on the key
line. Its most attended key is counted as the right next digit, the digit just written, or
elsewhere; the model's own next token is compared with the head. Steps whose next digit repeats
the last are left out (either would be right).

    scripts/copy_head.py --models runs/paper24/e2llm-g30/average,runs/paper25-s1/e2llm-g30/average

Needs only the standard library and the e2llm binary (`--e2llm`, default: `e2llm` on PATH).
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="model directories, comma-separated")
    ap.add_argument("--e2llm", default="e2llm", help="the e2llm binary")
    ap.add_argument("--length", type=int, default=4096, help="prompt tokens (default 4096)")
    ap.add_argument("--depths", default="0,0.25", help="key depths (default 0,0.25)")
    ap.add_argument("--trials", type=int, default=4, help="grid trials per depth (default 4)")
    ap.add_argument("--digits", type=int, default=4, help="answer digits written, 1..N (default 4)")
    ap.add_argument("--rope-scale", default="safe", help="as e2llm passkey (default safe)")
    a = ap.parse_args()

    tally = collections.defaultdict(collections.Counter)
    heads = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "attend.json")
        for model in a.models.split(","):
            for depth in a.depths.split(","):
                for trial in range(a.trials):
                    for k in range(1, a.digits + 1):
                        cmd = [a.e2llm, "attend", "--model", model, "--passkey", str(a.length),
                               "--depth", depth, "--trial", str(trial), "--answer-digits", str(k),
                               "--rope-scale", a.rope_scale, "--top", "1", "--json", out]
                        r = subprocess.run(cmd, capture_output=True, text=True)
                        if r.returncode != 0:
                            sys.exit(f"{' '.join(cmd)}: {r.stderr.strip()}")
                        with open(out) as f:
                            v = json.load(f)
                        key = str(v["passkey"]["key"])
                        lo, hi = v["passkey"]["key_line"]
                        if k >= len(key) or key[k] == key[k - 1]:
                            continue
                        h = max(v["heads"], key=lambda h: h["key_line"])
                        heads[(model, h["layer"], h["head"])] += 1
                        top = h["top"][0]
                        on_line = lo <= top["pos"] < hi
                        kind = ("next" if on_line and top["text"] == key[k] else
                                "back" if on_line and top["text"] == key[k - 1] else "elsewhere")
                        t = tally[(model, depth)]
                        t[kind] += 1
                        t["steps"] += 1
                        t["model agrees"] += (v["next"][0]["text"] == key[k]) == (kind == "next")
                        t["key line weight"] += h["key_line"]
    print("| model | depth | steps | next digit | one back | elsewhere | model agrees | key line weight |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (model, depth), t in sorted(tally.items()):
        print(f"| {model} | {depth} | {t['steps']} | {t['next']} | {t['back']} | {t['elsewhere']} "
              f"| {t['model agrees']} | {t['key line weight'] / max(t['steps'], 1):.3f} |")
    print("\ncopy head (most weight on the key line), steps per model:")
    for (model, layer, head), n in sorted(heads.items()):
        print(f"  {model}: layer {layer}, head {head}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
