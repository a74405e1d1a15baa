// The page: controls, drawing, and the conversation with worker.js (which runs the model).
// `window.e2llm` exposes the page's state for the browser tests (web/tests/browser_test.py).

const $ = (id) => document.getElementById(id);
const MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"];
const MAX_LENGTH = 65536; // the demo's upper bound; the device may hold less (see #capacity)

const state = {
  backend: null, // {label, gpu, reason, max_binding_bytes}
  info: null, // model info from the worker
  source: null, // "model/" or "dropped files"
  last: null, // last trial: {prompt, answer, prefill_ms, tokens_per_s, ...}
  sweep: null, // {lengths, depths, cells}
  kernelCheck: null, // {done, rows: [{request, report, ok, skipped}]} after "Check kernels"
  errors: [], // every error shown on the page
  trace: [], // the worker's progress notes
  status: "starting", // starting | ready | no-model | loading | running | error
};
window.e2llm = state;

let worker = null;
let nextId = 1;
const pending = new Map(); // id -> {resolve, reject, on}
let files = null; // {config, weights, tokenizer} (ArrayBuffers) of the model in use

function showError(message) {
  state.errors.push(message);
  const el = $("error");
  el.textContent = message;
  el.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setStatus(s) {
  state.status = s;
  document.body.dataset.status = s;
  const busy = s === "running" || s === "loading" || s === "starting";
  $("run").disabled = busy || !state.info;
  $("sweep").disabled = busy || !state.info;
  $("kernel-check").disabled = busy || !state.backend;
  $("stop").disabled = s !== "running";
}

// ------------------------------------------------------------------------------- worker --

function call(msg, on) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, on });
    worker.postMessage({ ...msg, id });
  });
}

function onMessage(ev) {
  const m = ev.data;
  if (m.type === "trace") {
    state.trace.push(m.msg);
    return;
  }
  const p = m.id !== undefined ? pending.get(m.id) : undefined;
  if (m.type === "error") {
    if (m.fatal) {
      // A panic leaves the wasm instance unusable: start a fresh worker.
      restart(m.message);
    }
    if (p) {
      pending.delete(m.id);
      p.reject(new Error(m.message));
    } else {
      showError(m.message);
    }
    return;
  }
  if (!p) return;
  if (p.on) p.on(m);
  if (m.type === "backend" || m.type === "loaded" || m.type === "done") {
    pending.delete(m.id);
    p.resolve(m);
  }
}

function startWorker() {
  if (worker) worker.terminate();
  for (const [, p] of pending) p.reject(new Error("the worker was restarted"));
  pending.clear();
  worker = new Worker("worker.js", { type: "module" });
  worker.onmessage = onMessage;
  worker.onerror = (e) => {
    e.preventDefault();
    showError(`the inference worker failed: ${e.message || "unknown error"}`);
    setStatus("error");
  };
}

let restarting = false;
async function restart(reason) {
  if (restarting) return;
  restarting = true;
  showError(`${reason}\n(the inference worker was restarted)`);
  try {
    await boot(false);
  } finally {
    restarting = false;
  }
}

async function boot(loadDefault = true) {
  setStatus("starting");
  startWorker();
  const choice = $("backend-choice").value;
  try {
    const b = await call({ type: "init", backend: choice, attention: params.get("attention") });
    state.backend = b;
    $("backend").textContent = b.reason ? `${b.label} — ${b.reason}` : b.label;
  } catch (e) {
    showError(`starting the backend failed: ${e.message}`);
    setStatus("error");
    return;
  }
  if (files) {
    await loadModel(files, state.source || "dropped files");
  } else if (loadDefault) {
    await loadShipped();
  } else {
    setStatus("no-model");
  }
}

// -------------------------------------------------------------------------------- model --

async function loadShipped() {
  let listed = [];
  try {
    const r = await fetch("model/manifest.json", { cache: "no-store" });
    if (r.ok) listed = (await r.json()).files || [];
  } catch (_) {
    listed = [];
  }
  if (!MODEL_FILES.every((f) => listed.includes(f))) {
    $("files-note").textContent =
      "No demo model is shipped with this page (model/ is empty): drop the three files of an " +
      "e2llm model directory below.";
    state.info = null;
    setStatus("no-model");
    return;
  }
  $("files-note").textContent = "Loading the demo model from model/…";
  setStatus("loading");
  try {
    const get = async (f) => {
      const r = await fetch(`model/${f}`, { cache: "no-store" });
      if (!r.ok) throw new Error(`model/${f}: HTTP ${r.status}`);
      return r.arrayBuffer();
    };
    const [config, weights, tokenizer] = await Promise.all(MODEL_FILES.map(get));
    await loadModel({ config, weights, tokenizer }, "model/");
  } catch (e) {
    showError(e.message);
    setStatus("no-model");
  }
}

// Loads `f` in the worker. On failure the page says why and, if another model was loaded
// before, loads that one again (the worker dropped it when it started on the new files).
async function loadModel(f, source) {
  const prev = files && files !== f ? { files, source: state.source } : null;
  setStatus("loading");
  $("model").textContent = `loading (${source})…`;
  try {
    // Sent as copies (no transfer list): the page keeps them to reload after a worker restart.
    const m = await call({ type: "load", ...f, source });
    files = f;
    state.source = source;
    applyLoaded(m, source);
    return true;
  } catch (e) {
    const msg = `could not load the model (${source}): ${e.message}`;
    if (restarting) return false; // boot() reloads the last good model on the fresh worker
    state.info = null;
    $("model").textContent = "not loaded";
    setStatus("no-model");
    if (prev && (await loadModel(prev.files, prev.source))) {
      showError(`${msg}\n(kept the previous model)`);
    } else {
      files = null;
      showError(msg);
    }
    return false;
  }
}

function fillSelect(sel, n, value) {
  sel.replaceChildren(...Array.from({ length: n }, (_, i) => new Option(String(i), String(i))));
  sel.value = String(value);
}

async function onFiles(list) {
  const byName = {};
  for (const f of list) byName[f.name] = f;
  const extra = Object.keys(byName).filter((n) => !MODEL_FILES.includes(n));
  const missing = MODEL_FILES.filter((n) => !byName[n]);
  $("file-input").value = "";
  if (extra.length || missing.length) {
    showError(
      `expected exactly ${MODEL_FILES.join(", ")}` +
        (missing.length ? `; missing ${missing.join(", ")}` : "") +
        (extra.length ? `; unexpected ${extra.join(", ")}` : ""),
    );
    return;
  }
  const [config, weights, tokenizer] = await Promise.all(
    MODEL_FILES.map((n) => byName[n].arrayBuffer()),
  );
  clearError();
  await loadModel({ config, weights, tokenizer }, "dropped files");
}

// The log-n box's own explanation, shown again when a plain model follows a log-n-trained one.
const LOGN_TITLE = $("logn").parentElement.title;

function applyLoaded(m, source) {
  const i = m.info;
  state.info = i;
  $("model").textContent =
    `${source}: ${i.layers} layers, hidden ${i.hidden}, ${i.heads} heads, vocab ${i.vocab}, ` +
    `${(i.params / 1e6).toFixed(2)} M parameters, trained window L = ${i.orig_len}, ` +
    `attention: ${i.attention === "fused" ? "fused WGSL kernel" : "plain ops"} ` +
    `(loaded in ${(m.ms / 1000).toFixed(1)} s)`;
  $("files-note").textContent = `Model: ${source}. Drop other files below to replace it.`;
  $("capacity").textContent =
    `This device holds contexts up to about ${i.max_length.toLocaleString()} tokens with this ` +
    `model (estimate); longer requests are refused with a message.`;
  $("length").max = String(Math.min(MAX_LENGTH, i.max_length));
  // A model trained with log-n (use_logn_attn) is always read with it: say so on the box.
  const logn = $("logn");
  if (i.logn_trained) {
    state.lognAsked = state.lognAsked ?? logn.checked;
    logn.checked = true;
  } else if (logn.disabled) {
    logn.checked = state.lognAsked ?? false;
    state.lognAsked = undefined;
  }
  logn.disabled = i.logn_trained;
  logn.parentElement.title = i.logn_trained
    ? "This model was trained with log-n attention scaling (use_logn_attn in its config.json) " +
      "and is always read with it."
    : LOGN_TITLE;
  fillSelect($("layer"), i.layers, i.layers - 1);
  fillSelect($("head"), i.heads, 0);
  setStatus("ready");
}

// -------------------------------------------------------------------------------- trial --

function request(length, depth, key) {
  const scale = $("scale").value;
  return {
    length,
    depth,
    key,
    seed: Math.floor(Math.random() * 2 ** 31),
    scale: scale === "manual" ? { manual: Number($("g").value) } : scale,
    max_new_tokens: Number($("max-new").value) || 8,
    logn: $("logn").checked,
  };
}

function typedKey() {
  const t = $("key").value.trim();
  if (!t) return null;
  const k = Number(t);
  if (!Number.isInteger(k) || k < 1 || k > 4294967295) {
    throw new Error(`the key must be a positive whole number (got "${t}")`);
  }
  return k;
}

async function runTrial(req, { strip = true, show = true } = {}) {
  const result = {};
  const width = Math.min(800, $("strip").width);
  const on = (m) => {
    if (m.type === "prompt") {
      result.prompt = m.prompt;
      if (show) showPrompt(m.prompt);
    } else if (m.type === "progress") {
      const tps = m.done / (m.ms / 1000);
      result.tokens_per_s = tps;
      if (show) {
        $("progress").value = m.done / m.n;
        $("progress-text").textContent =
          `prefill ${m.done.toLocaleString()} / ${m.n.toLocaleString()} tokens — ${tps.toFixed(0)} tokens/s`;
      }
    } else if (m.type === "answer") {
      result.answer = m.answer;
      result.prefill_ms = m.prefill_ms;
      result.answer_ms = m.answer_ms;
      result.tokens_per_s = m.n / (m.prefill_ms / 1000);
      if (show) showAnswer(m, result.tokens_per_s);
    } else if (m.type === "strip") {
      result.strip = Array.from(m.data);
      result.strip_layer = m.layer;
      result.strip_head = m.head;
      if (show) drawStrip(m.data, result.prompt);
    }
  };
  const s = strip ? { layer: Number($("layer").value), head: Number($("head").value), width } : null;
  await call({ type: "trial", request: req, strip: s, top: 5 }, on);
  result.backend = state.backend.label;
  result.gpu = state.backend.gpu;
  return result;
}

function showPrompt(p) {
  $("prompt-info").textContent =
    `${p.ids.length.toLocaleString()} tokens, key ${p.key} at tokens ${p.key_tokens[0]}–${p.key_tokens[1]}, ` +
    `RoPE scale g = ${p.g}${p.logn ? ", log-n attention scaling" : ""}, prefill chunk ${p.chunk}, ~${(p.estimate_bytes / 2 ** 20).toFixed(0)} MiB`;
  $("prompt-text").textContent = p.text;
  $("answer").textContent = "…";
}

function showAnswer(m, tps) {
  const a = m.answer;
  const el = $("answer");
  el.replaceChildren();
  const verdict = document.createElement("span");
  verdict.className = a.correct ? "ok" : "bad";
  verdict.textContent = a.correct ? "✓ right" : "✗ wrong";
  // How sure the model is of the right answer, whatever it said: p(" KEY." | prompt).
  const pKey = Math.exp(-a.key_nll);
  el.append(
    `“${a.text.trim()}” (key ${a.key}) `,
    verdict,
    ` — p(key) ${(100 * pKey).toFixed(pKey > 0.001 ? 1 : 4)} %`,
    ` — prefill ${(m.prefill_ms / 1000).toFixed(2)} s, ${tps.toFixed(0)} tokens/s; answer ${(m.answer_ms / 1000).toFixed(2)} s`,
  );
}

function drawStrip(data, prompt) {
  const c = $("strip");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const n = prompt.ids.length;
  const w = c.width / data.length;
  const max = Math.max(...data, 1e-9);
  for (let i = 0; i < data.length; i++) {
    const v = Math.sqrt(data[i] / max); // sqrt: small weights stay visible
    ctx.fillStyle = `rgba(20, 80, 200, ${v})`;
    const h = Math.max(1, v * (c.height - 14));
    ctx.fillRect(i * w, c.height - h, Math.max(1, w), h);
  }
  const [k0, k1] = prompt.key_tokens;
  const x0 = (k0 / n) * c.width;
  const x1 = Math.max(x0 + 2, (k1 / n) * c.width);
  ctx.fillStyle = "rgba(220, 60, 40, 0.9)";
  ctx.fillRect(x0, 0, x1 - x0, 10);
  ctx.fillStyle = "#333";
  ctx.font = "10px sans-serif";
  ctx.fillText("key", Math.min(x1 + 3, c.width - 20), 9);
}

async function onRun() {
  clearError();
  let req;
  try {
    const length = Number($("length").value);
    if (!Number.isInteger(length) || length < 1 || length > MAX_LENGTH) {
      throw new Error(`the context length must be a whole number of tokens up to ${MAX_LENGTH.toLocaleString()}`);
    }
    req = request(length, Number($("depth").value), typedKey());
  } catch (e) {
    showError(e.message);
    return;
  }
  setStatus("running");
  $("progress").value = 0;
  $("progress-text").textContent = "building the prompt…";
  try {
    state.last = await runTrial(req);
  } catch (e) {
    $("progress-text").textContent = "";
    showError(e.message);
  } finally {
    if (state.status === "running") setStatus("ready");
  }
}

// -------------------------------------------------------------------------------- sweep --

function parseList(s, what) {
  const v = s.split(",").map((x) => x.trim()).filter(Boolean).map(Number);
  if (!v.length || v.some((x) => !Number.isFinite(x))) throw new Error(`${what}: give numbers separated by commas`);
  return v;
}

async function onSweep() {
  clearError();
  let lengths, depths, trials;
  try {
    lengths = parseList($("sweep-lengths").value, "lengths");
    depths = parseList($("sweep-depths").value, "depths");
    trials = Math.max(1, Number($("sweep-trials").value) || 1);
  } catch (e) {
    showError(e.message);
    return;
  }
  const cells = lengths.map(() => depths.map(() => ({ correct: 0, done: 0 })));
  state.sweep = { lengths, depths, trials, cells };
  setStatus("running");
  drawHeatmap(state.sweep);
  try {
    for (let li = 0; li < lengths.length; li++) {
      for (let di = 0; di < depths.length; di++) {
        for (let t = 0; t < trials; t++) {
          $("progress-text").textContent =
            `sweep: length ${lengths[li]}, depth ${depths[di]}, trial ${t + 1}/${trials}`;
          const r = await runTrial(request(lengths[li], depths[di], null), { strip: false, show: false });
          cells[li][di].done += 1;
          if (r.answer.correct) cells[li][di].correct += 1;
          drawHeatmap(state.sweep);
        }
      }
    }
    $("progress-text").textContent = "sweep done";
  } catch (e) {
    showError(`sweep stopped: ${e.message}`);
  } finally {
    if (state.status === "running") setStatus("ready");
  }
}

function drawHeatmap(s) {
  const c = $("heatmap");
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (!s) {
    ctx.fillStyle = "#6b7583";
    ctx.font = "13px sans-serif";
    ctx.fillText("Run a sweep to fill the accuracy heatmap (rows: lengths, columns: key depths).", 12, 24);
    return;
  }
  const left = 70, top = 24;
  const cw = (c.width - left - 10) / s.depths.length;
  const ch = (c.height - top - 10) / s.lengths.length;
  ctx.font = "12px sans-serif";
  ctx.fillStyle = "#333";
  ctx.fillText("length \\ depth", 2, 14);
  s.depths.forEach((d, j) => ctx.fillText(String(d), left + j * cw + cw / 2 - 10, 16));
  s.lengths.forEach((l, i) => {
    ctx.fillStyle = "#333";
    ctx.fillText(String(l), 4, top + i * ch + ch / 2 + 4);
    s.depths.forEach((_, j) => {
      const cell = s.cells[i][j];
      const acc = cell.done ? cell.correct / cell.done : null;
      ctx.fillStyle = acc === null ? "#eee" : `hsl(${120 * acc}, 65%, 55%)`;
      ctx.fillRect(left + j * cw + 1, top + i * ch + 1, cw - 2, ch - 2);
      if (acc !== null) {
        ctx.fillStyle = "#111";
        ctx.fillText(`${Math.round(100 * acc)}% (${cell.done})`, left + j * cw + 6, top + i * ch + ch / 2 + 4);
      }
    });
  });
}

// ------------------------------------------------------------------------- kernel check --

// Builds and shapes (sq queries after skv − sq cached keys, hq/hkv heads of width d): the rows
// forward in the GPU and CPU-rasteriser builds, the block forward, the split-key decode, and the
// f16 K/V builds (skipped where the adapter has no shader-f16). Tolerance 5e-4 (SwiftShader's
// exp/sin are less precise than a GPU's).
const KERNEL_CHECKS = [
  { tuning: "gpu,block=0", sq: 256, skv: 256, hq: 2, hkv: 2, d: 32 },
  { tuning: "gpu,block=1", sq: 256, skv: 256, hq: 2, hkv: 2, d: 32 },
  { tuning: "gpu,block=1", sq: 44, skv: 300, hq: 2, hkv: 1, d: 32 },
  { tuning: "cpu", sq: 44, skv: 300, hq: 4, hkv: 2, d: 64 },
  { tuning: "gpu", sq: 3, skv: 700, hq: 4, hkv: 1, d: 32 },
  { tuning: "gpu,block=1", sq: 44, skv: 300, hq: 2, hkv: 1, d: 32, kv_f16: true },
  { tuning: "gpu", sq: 3, skv: 700, hq: 4, hkv: 1, d: 32, kv_f16: true },
];
const KERNEL_TOL = 5e-4;

async function onKernelCheck() {
  clearError();
  const body = $("kernel-table").querySelector("tbody");
  body.textContent = "";
  state.kernelCheck = { done: false, rows: [] };
  setStatus("running");
  try {
    for (const c of KERNEL_CHECKS) {
      const req = { ...c, tol: KERNEL_TOL, kv_f16: !!c.kv_f16 };
      const { report: r } = await call({ type: "attention_check", request: req });
      const ok = !r.skipped && r.bad_count === 0 && r.lse_max_abs < KERNEL_TOL && r.logged.length === 0;
      const verdict = r.skipped ? `skipped: ${r.skipped}` : ok ? "✓ matches the CPU twin"
        : `✗ ${r.bad_count} rows off${r.logged.length ? `; ${r.logged.join(" ")}` : ""}`;
      state.kernelCheck.rows.push({ request: req, report: r, ok, skipped: !!r.skipped });
      const tr = document.createElement("tr");
      const cells = [
        `${c.tuning}${c.kv_f16 ? ", f16 K/V" : ""}`, r.skipped ? "–" : r.kernel,
        `${c.sq} after ${c.skv - c.sq}, ${c.hq}/${c.hkv} heads of ${c.d}`,
        r.skipped ? "–" : r.max_abs.toExponential(1), r.skipped ? "–" : r.lse_max_abs.toExponential(1), verdict,
      ];
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.className = r.skipped ? "kc-skip" : ok ? "kc-ok" : "kc-bad";
      body.appendChild(tr);
    }
  } catch (e) {
    showError(`kernel check stopped: ${e.message}`);
  } finally {
    state.kernelCheck.done = true;
    if (state.status === "running") setStatus(state.info ? "ready" : "no-model");
  }
}

// --------------------------------------------------------------------------------- wire --

$("depth").addEventListener("input", () => ($("depth-out").value = Number($("depth").value).toFixed(2)));
$("scale").addEventListener("change", () => ($("g").disabled = $("scale").value !== "manual"));
$("run").addEventListener("click", onRun);
$("sweep").addEventListener("click", onSweep);
$("kernel-check").addEventListener("click", onKernelCheck);
$("stop").addEventListener("click", () => worker && worker.postMessage({ type: "stop" }));
$("backend-choice").addEventListener("change", () => boot(true));
$("file-input").addEventListener("change", (e) => onFiles(e.target.files));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  onFiles(e.dataTransfer.files);
});

drawHeatmap(null);
const params = new URLSearchParams(location.search);
if (params.get("backend") === "cpu") $("backend-choice").value = "cpu";
boot(true);
