#!/usr/bin/env python3
"""Headless-Chromium tests of the web demo (run by scripts/web-test.sh after the build).

    browser_test.py --cli PATH/e2llm --out DIR [--length 300] [--keep]

1. Trains a tiny model with the native CLI (`e2llm train`, 2 steps, hidden 32) into a temp dir
   and serves it as the page's shipped model (web/serve.py on 127.0.0.1).
2. WebGPU run: Chromium with --enable-unsafe-webgpu (SwiftShader without a GPU). The page must
   pick WebGPU, answer a passkey prompt of ~LENGTH tokens, and draw the attention strip.
3. CPU run: Chromium without that flag, so requestAdapter() gives nothing; the page must fall
   back to "CPU (WASM)", say why, and answer the same prompt.
4. Both runs against the native CLI: `e2llm logits` on prompt + answer gives, at every answer
   step, the same argmax (= the answer token) and the same top-5 logits within 1e-3; the two
   browser runs agree with each other too.
5. The sweep mode fills its length x depth heatmap (CPU run).
6. Bad model files dropped on the page (truncated safetensors; a config whose shapes disagree
   with the weights; a config that is not JSON) each show a readable error naming the file,
   the worker stays alive (the previous model is kept and answers another prompt). A copy of
   the model whose config says `use_logn_attn` (a model trained with log-n) ticks and fixes the
   log-n box and is read with it; the plain model after it frees the box again.
7. Any SEVERE browser console message fails the test. Screenshots go to --out.
"""

import argparse
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

TOL = 1e-3
KEY = 27182
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # an HF model directory
FAILURES = []


def log(msg):
    print(f"[web-test] {msg}", flush=True)


def check(cond, msg):
    if cond:
        log(f"ok: {msg}")
    else:
        log(f"FAIL: {msg}")
        FAILURES.append(msg)
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_safetensors_f32(path, name):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    t = header[name]
    assert t["dtype"] == "F32", t
    a, b = t["data_offsets"]
    raw = data[8 + n + a : 8 + n + b]
    vals = struct.unpack(f"<{len(raw) // 4}f", raw)
    rows, cols = t["shape"]
    return [vals[r * cols : (r + 1) * cols] for r in range(rows)]


def make_model(cli, work):
    run = os.path.join(work, "run")
    sets = {
        "steps": 2,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "batch_size": 2,
        "orig_len": 128,
        "train_len": 128,
        # Two heads of 32 (the width GPU builds are tuned for).
        "model.hidden_size": 64,
        "model.num_hidden_layers": 2,
        "model.num_attention_heads": 2,
        "model.num_key_value_heads": 2,
        "model.intermediate_size": 64,
    }
    cmd = [cli, "train", "--run-dir", run]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    log("training the test model: " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    model = os.path.join(work, "model")
    os.makedirs(model)
    for f in MODEL_FILES:
        shutil.copy(os.path.join(run, "checkpoint", f), model)
    return model


def browser(webgpu, profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("E2LLM_CHROMIUM", "/usr/bin/chromium")
    for a in [
        "--headless=new",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-dev-shm-usage",
        "--window-size=1100,1400",
        f"--user-data-dir={profile}",
    ]:
        opts.add_argument(a)
    if webgpu:
        opts.add_argument("--enable-unsafe-webgpu")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(os.environ.get("E2LLM_CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=opts, service=service)


def wait(driver, js, timeout, what, poll=0.5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = driver.execute_script(js)
        if v:
            return v
        time.sleep(poll)
    state = driver.execute_script("return JSON.stringify({status: window.e2llm && e2llm.status, errors: window.e2llm && e2llm.errors})")
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}; page state {state}")


def console_errors(driver, seen):
    out = []
    for e in driver.get_log("browser"):
        seen.append(e)
        if e.get("level") == "SEVERE":
            out.append(e.get("message"))
    return out


def set_value(driver, elem_id, value):
    driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('change')); e.dispatchEvent(new Event('input'));",
        elem_id,
        str(value),
    )


def run_trial(driver, length, depth, max_new, timeout, logn=False):
    if logn is not None:  # None: leave the box as the page set it
        driver.execute_script("document.getElementById('logn').checked = arguments[0];", logn)
    set_value(driver, "length", length)
    set_value(driver, "depth", depth)
    set_value(driver, "key", KEY)
    set_value(driver, "scale", "auto")
    set_value(driver, "max-new", max_new)
    driver.execute_script("window.e2llm.last = null; window.e2llm.errors.length = 0;")
    driver.find_element(By.ID, "run").click()
    wait(
        driver,
        "return (window.e2llm.last && window.e2llm.last.strip) || window.e2llm.errors.length > 0;",
        timeout,
        "the trial's answer and attention strip",
    )
    errors = driver.execute_script("return window.e2llm.errors")
    if errors:
        raise RuntimeError(f"the page showed an error: {errors}")
    return driver.execute_script("return window.e2llm.last")


def compare_native(cli, model, result, work, tag):
    p, a = result["prompt"], result["answer"]
    ids = p["ids"] + a["ids"][:-1]
    out = os.path.join(work, f"native-{tag}.safetensors")
    # The native run reads the way the page read: plain PI, or with log-n attention scaling.
    subprocess.run(
        [cli, "logits", "--model", model, "--ids", ",".join(map(str, ids)),
         "--rope-scale", repr(p["g"]), "--out", out] + (["--logn"] if p.get("logn") else []),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows = read_safetensors_f32(out, "logits")
    n = len(p["ids"])
    worst = 0.0
    ok_argmax = True
    ok_top = True
    for i, top in enumerate(a["top"]):
        row = rows[n - 1 + i]
        best = max(range(len(row)), key=lambda j: (row[j], -j))
        # The browser's greedy token must be the native argmax (or tie with it within TOL).
        if best != a["ids"][i] and row[best] - row[a["ids"][i]] > TOL:
            ok_argmax = False
        native_top = sorted(range(len(row)), key=lambda j: (-row[j], j))[:5]
        for (tid, val) in top:
            worst = max(worst, abs(row[tid] - val))
        kth = row[native_top[-1]]
        for tid in native_top:
            if tid not in [t for t, _ in top] and row[tid] - kth > TOL:
                ok_top = False
    check(ok_argmax, f"{tag}: every answer token is the native argmax ({len(a['top'])} steps)")
    check(ok_top, f"{tag}: top-5 ids equal the native top-5")
    check(worst <= TOL, f"{tag}: top-5 logits equal native within {TOL} (max diff {worst:.2e})")
    nll = a.get("key_nll")
    check(isinstance(nll, (int, float)) and math.isfinite(nll) and nll >= 0,
          f"{tag}: the key's NLL is a finite number of nats ({nll})")
    return worst


def sweep_check(driver):
    """A 2 × 2 sweep (1 trial per cell) fills every heatmap cell."""
    set_value(driver, "sweep-lengths", "200,260")
    set_value(driver, "sweep-depths", "0,1")
    set_value(driver, "sweep-trials", 1)
    driver.execute_script("window.e2llm.errors.length = 0; window.e2llm.sweep = null;")
    driver.find_element(By.ID, "sweep").click()
    wait(driver, "const s = window.e2llm.sweep; return (window.e2llm.status === 'ready' && s &&"
         " s.cells.flat().every((c) => c.done === 1)) || window.e2llm.errors.length > 0;", 300, "the sweep")
    s = driver.execute_script("return {errors: e2llm.errors, cells: e2llm.sweep.cells}")
    check(not s["errors"] and all(c["done"] == 1 for row in s["cells"] for c in row),
          f"sweep: 2 lengths x 2 depths filled ({s['cells']}, errors {s['errors']})")


def kernel_checks(driver, tag, out):
    """The page's "Check kernels" (web/src/selfcheck.rs through the worker): the attention kernel
    in each build the page can use — rows, the block forward, the split-key decode, f16 K/V
    where the adapter has shader-f16 — against its CPU twin on the page's WebGPU device."""
    driver.execute_script("document.getElementById('check-details').open = true;")
    driver.find_element(By.ID, "kernel-check").click()
    wait(driver, "return window.e2llm.kernelCheck && window.e2llm.kernelCheck.done;", 300, "the kernel check")
    rows = driver.execute_script("return window.e2llm.kernelCheck.rows")
    driver.execute_script("document.getElementById('kernel-table').scrollIntoView();")
    driver.save_screenshot(os.path.join(out, f"web-{tag}-kernel-check.png"))
    ran = set()
    for row in rows:
        req, r = row["request"], row["report"]
        kernel = "the" if row["skipped"] else r["kernel"]
        what = (f"{kernel} attention ({req['tuning']}{', f16 K/V' if req['kv_f16'] else ''}, "
                f"{req['sq']} queries after {req['skv'] - req['sq']} keys, {req['hq']}/{req['hkv']} heads of {req['d']})")
        if row["skipped"]:
            log(f"{tag}: {what}: skipped ({r['skipped']})")
            continue
        ran.add(r["kernel"])
        check(row["ok"], f"{tag}: {what} matches its CPU twin on WebGPU (max |Δ| {r['max_abs']:.1e}, "
              f"lse {r['lse_max_abs']:.1e}, {r['bad_count']} rows off: {r['bad_rows']}; runtime log: {r['logged']})")
    check(ran >= {"rows", "block", "decode"}, f"{tag}: the kernel check ran the rows, block and decode forwards ({sorted(ran)})")
    errors = driver.execute_script("return window.e2llm.errors")
    check(not errors, f"{tag}: the kernel check showed no error ({errors})")


def drop_files(driver, paths):
    inp = driver.find_element(By.ID, "file-input")
    inp.send_keys("\n".join(paths))


def bad_model_cases(driver, model, work, out):
    good = {f: os.path.join(model, f) for f in MODEL_FILES}
    with open(good["config.json"]) as f:
        cfg = json.load(f)
    cases = []

    d = os.path.join(work, "bad-truncated")
    os.makedirs(d)
    with open(good["model.safetensors"], "rb") as f:
        data = f.read()
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(data[: len(data) // 3])
    shutil.copy(good["config.json"], d)
    shutil.copy(good["tokenizer.json"], d)
    cases.append(("truncated safetensors", d, ["model.safetensors", "not a valid safetensors"]))

    d = os.path.join(work, "bad-shape")
    os.makedirs(d)
    wrong = dict(cfg, hidden_size=cfg["hidden_size"] * 2)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(wrong, f)
    shutil.copy(good["model.safetensors"], d)
    shutil.copy(good["tokenizer.json"], d)
    cases.append(("config disagreeing with the weights", d, ["config.json", "shape"]))

    d = os.path.join(work, "bad-json")
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"hidden_size": 32,')
    shutil.copy(good["model.safetensors"], d)
    shutil.copy(good["tokenizer.json"], d)
    cases.append(("config that is not JSON", d, ["config.json"]))

    for name, d, needles in cases:
        driver.execute_script("window.e2llm.errors.length = 0;")
        drop_files(driver, [os.path.join(d, f) for f in MODEL_FILES])
        wait(driver, "return window.e2llm.errors.length > 0 && window.e2llm.status === 'ready';", 120,
             f"the error for a {name}")
        shown = driver.find_element(By.ID, "error").text
        shot = os.path.join(out, f"web-bad-model-{os.path.basename(d)}.png")
        driver.save_screenshot(shot)
        log(f"screenshot {shot}")
        check(all(s in shown for s in needles),
              f"bad model ({name}) shows a readable error: {shown.splitlines()[0][:160]!r}")
        check("kept the previous model" in shown and driver.execute_script("return !!window.e2llm.info"),
              f"bad model ({name}): the previous model is kept")


def logn_model_case(driver, model, work, length):
    """A model trained with log-n (`use_logn_attn` in config.json) is always read with it: the
    page ticks its log-n box and fixes it, the trial reads with log-n, and the next model without
    the key gets the box back as it was."""
    d = os.path.join(work, "logn-trained")
    os.makedirs(d)
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(cfg, use_logn_attn=True), f)
    for f in ("model.safetensors", "tokenizer.json"):
        shutil.copy(os.path.join(model, f), d)
    box = "const b = document.getElementById('logn'); return [b.checked, b.disabled];"

    def load(src, trained):
        driver.execute_script("window.e2llm.info = null; window.e2llm.errors.length = 0;")
        drop_files(driver, [os.path.join(src, f) for f in MODEL_FILES])
        wait(driver, "return window.e2llm.status === 'ready' && !!window.e2llm.info && "
             f"window.e2llm.info.logn_trained === {'true' if trained else 'false'};", 120,
             f"the {'log-n-trained' if trained else 'plain'} model to load")

    load(d, True)
    check(driver.execute_script(box) == [True, True],
          "log-n-trained model: the log-n box is ticked and fixed")
    r = run_trial(driver, length, 0.5, 2, 600, logn=None)
    check(r["prompt"].get("logn") is True, "log-n-trained model: the trial read with log-n scaling")
    load(model, False)
    check(driver.execute_script(box) == [False, False],
          "back to the plain model: the log-n box is unticked and free again")


def session(cli, url, model, work, out, webgpu, length, tag, extra):
    profile = tempfile.mkdtemp(prefix=f"chromium-{tag}-", dir=work)
    driver = browser(webgpu, profile)
    logs = []
    try:
        driver.get(url)
        wait(driver, "return window.e2llm && (window.e2llm.status === 'ready' || window.e2llm.status === 'no-model' || window.e2llm.errors.length > 0);",
             180, "the backend and the shipped model")
        st = driver.execute_script("return {status: e2llm.status, backend: e2llm.backend, errors: e2llm.errors, info: e2llm.info}")
        log(f"{tag}: backend {st['backend']}")
        check(st["status"] == "ready" and not st["errors"], f"{tag}: page ready with the shipped model (errors {st['errors']})")
        if webgpu:
            check(st["backend"]["gpu"] and st["backend"]["label"].startswith("WebGPU"),
                  f"{tag}: the page runs on WebGPU ({st['backend']['label']})")
            check(st["info"]["attention"] == "fused",
                  f"{tag}: attention runs the fused kernel (attention.wgsl) on WebGPU ({st['info']['attention']})")
        else:
            check((not st["backend"]["gpu"]) and st["backend"]["label"] == "CPU (WASM)" and st["backend"]["reason"],
                  f"{tag}: the page falls back to CPU (WASM) and says why ({st['backend']['reason']})")
        check(driver.execute_script("return document.getElementById('logn').checked") is False,
              f"{tag}: the page reads with plain PI by default (log-n unticked)")
        t0 = time.time()
        r = run_trial(driver, length, 0.5, 6, 600)
        p, a = r["prompt"], r["answer"]
        log(f"{tag}: {len(p['ids'])} prompt tokens, g {p['g']}, key {a['key']}, answer {a['text']!r} "
            f"({'right' if a['correct'] else 'wrong'}), prefill {r['prefill_ms']:.0f} ms = "
            f"{r['tokens_per_s']:.1f} tokens/s, answer {r['answer_ms']:.0f} ms, trial {time.time() - t0:.1f} s")
        check(a["key"] == KEY and f"The pass key is {KEY}." in p["text"], f"{tag}: the typed key is in the prompt")
        check(abs(sum(r["strip"]) - 1.0) < 1e-2, f"{tag}: attention strip drawn ({len(r['strip'])} bins, sums to {sum(r['strip']):.4f})")
        shot = os.path.join(out, f"web-{tag}.png")
        driver.save_screenshot(shot)
        log(f"{tag}: screenshot {shot}")
        compare_native(cli, model, r, work, tag)
        check(p.get("logn") is False, f"{tag}: the trial read with plain PI")
        if webgpu and tag == "webgpu":
            # The same prompt length with log-n attention scaling ticked, against native --logn.
            rl = run_trial(driver, length, 0.5, 6, 600, logn=True)
            check(rl["prompt"].get("logn") is True, f"{tag}-logn: the trial read with log-n scaling")
            compare_native(cli, model, rl, work, f"{tag}-logn")
            kernel_checks(driver, tag, out)
        if not webgpu:
            sweep_check(driver)
        if extra:
            extra(driver)
            # The worker survived: the previous model answers again.
            r2 = run_trial(driver, length, 0.25, 2, 600)
            check(len(r2["answer"]["ids"]) == 2, f"{tag}: after the bad files the worker still answers")
            driver.save_screenshot(os.path.join(out, f"web-{tag}-after-bad-files.png"))
        errs = console_errors(driver, logs)
        check(not errs, f"{tag}: no browser console errors ({len(logs)} console messages)" + (f": {errs}" if errs else ""))
        return r
    finally:
        with open(os.path.join(out, f"console-{tag}.json"), "w") as f:
            json.dump(logs, f, indent=1)
        driver.quit()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--length", type=int, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    web = os.path.dirname(here)
    work = tempfile.mkdtemp(prefix="e2llm-web-test-")
    server = None
    try:
        model = make_model(a.cli, work)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, os.path.join(web, "serve.py"), "--static", os.path.join(web, "static"),
             "--pkg", os.path.join(web, "pkg"), "--model", model, "--port", str(port)],
            stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        log(line.strip())
        url = f"http://127.0.0.1:{port}/"
        gpu = session(a.cli, url, model, work, a.out, True, a.length, "webgpu", None)
        # The attention kernels' GPU build (what a browser on GPU hardware gets; SwiftShader gets
        # the CPU rasteriser's): compiled by Chromium's Tint and run, against native logits.
        gpu2 = session(a.cli, url + "?attention=gpu", model, work, a.out, True, a.length, "webgpu-gpu-build", None)
        check("attention build: rows by head width, 64 tiles per dispatch" in gpu2["backend"],
              f"webgpu-gpu-build: the page ran the GPU build ({gpu2['backend']})")
        check(gpu2["answer"]["ids"] == gpu["answer"]["ids"], "WebGPU CPU-rasteriser and GPU builds: same answer")
        cpu = session(a.cli, url, model, work, a.out, False, a.length, "cpu",
                      lambda d: (bad_model_cases(d, model, work, a.out),
                                 logn_model_case(d, model, work, a.length)))
        check(gpu["prompt"]["ids"] == cpu["prompt"]["ids"] and gpu["answer"]["ids"] == cpu["answer"]["ids"],
              "WebGPU and CPU runs: same prompt ids and same answer")
        diff = max(abs(x - y) for s, t in zip(gpu["answer"]["top"], cpu["answer"]["top"]) for (_, x), (_, y) in zip(s, t))
        check(diff <= TOL, f"WebGPU and CPU runs: top-5 logits within {TOL} (max diff {diff:.2e})")
        summary = {
            "length": len(gpu["prompt"]["ids"]),
            "webgpu": {"backend": gpu["backend"], "tokens_per_s": gpu["tokens_per_s"], "prefill_ms": gpu["prefill_ms"]},
            "cpu": {"backend": cpu["backend"], "tokens_per_s": cpu["tokens_per_s"], "prefill_ms": cpu["prefill_ms"]},
            "failures": FAILURES,
        }
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        log(f"summary {os.path.join(a.out, 'summary.json')}: {json.dumps(summary)}")
    finally:
        if server:
            server.terminate()
            server.wait()
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if FAILURES:
        log(f"{len(FAILURES)} check(s) failed:")
        for f in FAILURES:
            log(f"  - {f}")
        sys.exit(1)
    log("all browser checks passed")


if __name__ == "__main__":
    main()
