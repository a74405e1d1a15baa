#!/usr/bin/env python3
"""Prefill tokens/s of the web demo in headless Chromium, beside the native CLI.

    bench.py --cli PATH/e2llm --model DIR --lengths 512,1024 [--backends webgpu,cpu]
             [--attention rows=4,rows=8] [--native cpu,wgpu] [--json out.json]

Needs web/pkg built (scripts/web.sh --build-only). Per browser backend: one untimed warm-up
trial (shader compilation, allocator growth), then one passkey trial per length; the page's own
prefill timing (first chunk to last read-back, in the worker) gives tokens/s. Natively, the same
prompt ids go through `e2llm logits` (one forward, no cache) and the time of a 1-token run
(process start + model load) is subtracted. Prints a markdown table.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser_test as bt  # noqa: E402


def native_seconds(cli, model, ids, backend, g):
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([cli, "logits", "--model", model, "--ids", ",".join(map(str, ids)),
                        "--rope-scale", repr(g), "--backend", backend, "--out",
                        os.path.join(d, "l.safetensors")], check=True, stdout=subprocess.DEVNULL)
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--lengths", default="512,1024")
    ap.add_argument("--backends", default="webgpu,cpu")
    ap.add_argument("--attention", default="",
                    help="WebGPU attention builds to compare (the page's ?attention=…, e.g. "
                         "rows=4,rows=8,gpu); default: the page's own choice")
    ap.add_argument("--native", default="cpu,wgpu")
    ap.add_argument("--json")
    a = ap.parse_args()
    web = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lengths = [int(x) for x in a.lengths.split(",")]
    port = bt.free_port()
    server = subprocess.Popen(
        [sys.executable, os.path.join(web, "serve.py"), "--static", os.path.join(web, "static"),
         "--pkg", os.path.join(web, "pkg"), "--model", a.model, "--port", str(port)],
        stdout=subprocess.PIPE, text=True)
    server.stdout.readline()
    rows = []
    prompts = {}
    try:
        runs = []
        for backend in [b for b in a.backends.split(",") if b]:
            builds = [x for x in a.attention.split(",") if x] if backend == "webgpu" else []
            runs += [(backend, x) for x in builds] or [(backend, None)]
        for backend, build in runs:
            work = tempfile.mkdtemp(prefix="e2llm-web-bench-")
            d = bt.browser(backend == "webgpu", work)
            try:
                d.get(f"http://127.0.0.1:{port}/" + (f"?attention={build}" if build else ""))
                bt.wait(d, "return window.e2llm && window.e2llm.status === 'ready';", 180, "the page")
                info = d.execute_script("return {b: e2llm.backend, i: e2llm.info}")
                bt.run_trial(d, 200, 0.5, 2, 900)  # warm-up
                for n in lengths:
                    r = bt.run_trial(d, n, 0.5, 2, 1800)
                    p = r["prompt"]
                    prompts[n] = (p["ids"], p["g"])
                    # The page's label names its attention build.
                    rows.append({"where": "browser", "backend": info["b"]["label"], "tokens": len(p["ids"]),
                                 "prefill_s": r["prefill_ms"] / 1000, "tokens_per_s": r["tokens_per_s"],
                                 "max_length_estimate": info["i"]["max_length"]})
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                d.quit()
        for backend in [b for b in a.native.split(",") if b]:
            base = native_seconds(a.cli, a.model, [1], backend, 1.0)
            for n in lengths:
                if n not in prompts:
                    continue
                ids, g = prompts[n]
                t = native_seconds(a.cli, a.model, ids, backend, g) - base
                rows.append({"where": "native e2llm logits", "backend": backend, "tokens": len(ids),
                             "prefill_s": t, "tokens_per_s": len(ids) / max(t, 1e-6)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait()
    print("\n| where | backend | prompt tokens | prefill s | tokens/s |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['where']} | {r['backend']} | {r['tokens']} | {r['prefill_s']:.2f} | {r['tokens_per_s']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
