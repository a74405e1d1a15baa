// The inference worker: owns the wasm module (e2llm-web), the backend and the loaded model, so
// the page stays responsive while a long prompt is prefilled. Messages in: init, load, trial,
// stop. Messages out: backend, loaded, prompt, progress, answer, strip, done, error.
// A handled failure (bad file, prompt too long) comes back as {type: "error"} and the worker
// keeps running; a Rust panic also comes back as an error with `fatal: true`, and the page then
// starts a fresh worker (a wasm instance is not usable after a panic).

import init, { open_gpu, open_cpu, set_attention_tuning, take_logged, Session, last_panic } from "./pkg/e2llm_web.js";

const ready = init();
let backend = null;
let session = null;
let stopRequested = false;

const post = (m) => postMessage(m);
// Progress notes for the page's log (and the tests' diagnostics).
const trace = (msg) => post({ type: "trace", msg });

function describe(e) {
  const msg = e instanceof Error ? e.message : String(e);
  const panic = last_panic();
  // wasm traps after a panic ("unreachable"): report the panic's own message instead.
  if (panic) return { message: panic, fatal: true };
  if (e instanceof WebAssembly.RuntimeError) return { message: `wasm trap: ${msg}`, fatal: true };
  return { message: msg, fatal: false };
}

async function adapterReason() {
  if (!("gpu" in navigator) || !navigator.gpu) {
    return { reason: "this browser has no WebGPU (navigator.gpu is missing)" };
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (e) {
    return { reason: `requestAdapter() failed: ${e.message || e}` };
  }
  if (!adapter) {
    return { reason: "WebGPU is present but gave no adapter (disabled, blocked, or no GPU)" };
  }
  const i = adapter.info || {};
  const name = [i.vendor, i.architecture, i.device, i.description].filter(Boolean).join(" ");
  return { adapter: name || "unnamed adapter" };
}

async function openBackend(choice, attention) {
  await ready;
  trace("wasm module ready");
  if (choice !== "cpu") {
    const probe = await adapterReason();
    trace(`WebGPU adapter check: ${JSON.stringify(probe)}`);
    if (probe.adapter !== undefined) {
      try {
        const b = await open_gpu();
        trace("burn's wgpu runtime is up on WebGPU");
        // ?attention=… overrides the kernels' build chosen for the adapter.
        const build = attention ? `; ${set_attention_tuning(attention)}` : "";
        return { b, label: `WebGPU — ${probe.adapter} (${b.label}${build})`, reason: null };
      } catch (e) {
        const d = describe(e);
        if (d.fatal) throw e;
        return { b: open_cpu(), label: "CPU (WASM)", reason: d.message };
      }
    }
    return { b: open_cpu(), label: "CPU (WASM)", reason: probe.reason };
  }
  return { b: open_cpu(), label: "CPU (WASM)", reason: "CPU chosen on the page" };
}

async function trial(m) {
  const t0 = performance.now();
  const prompt = JSON.parse(session.prepare(JSON.stringify(m.request)));
  post({ type: "prompt", id: m.id, prompt, prepare_ms: performance.now() - t0 });
  const n = prompt.ids.length;
  const step = Math.max(1, m.stepTokens || prompt.chunk);
  const t1 = performance.now();
  let done = 0;
  stopRequested = false;
  while (done < n) {
    done = await session.prefill_step(step);
    const ms = performance.now() - t1;
    post({ type: "progress", id: m.id, done, n, ms });
    // Let a "stop" message in (on the CPU backend every step resolves without yielding).
    await new Promise((r) => setTimeout(r, 0));
    if (stopRequested) throw new Error("stopped");
  }
  const prefillMs = performance.now() - t1;
  const t2 = performance.now();
  const answer = JSON.parse(await session.answer(m.top || 5));
  const answerMs = performance.now() - t2;
  post({ type: "answer", id: m.id, answer, prefill_ms: prefillMs, answer_ms: answerMs, n });
  // What burn's runtime logged meanwhile (on wasm a kernel WebGPU refuses is only logged).
  const logged = take_logged();
  if (logged) trace(`runtime log: ${logged}`);
  if (m.strip) {
    const s = m.strip;
    const data = await session.attention_strip(s.layer, s.head, Math.min(s.width, n));
    post({ type: "strip", id: m.id, data, layer: s.layer, head: s.head });
  }
  post({ type: "done", id: m.id });
}

onmessage = async (ev) => {
  const m = ev.data;
  try {
    switch (m.type) {
      case "init": {
        const { b, label, reason } = await openBackend(m.backend, m.attention);
        backend = b;
        post({ type: "backend", id: m.id, label, gpu: b.gpu, reason, max_binding_bytes: b.max_binding_bytes });
        break;
      }
      case "load": {
        if (!backend) throw new Error("backend not ready");
        if (session) { session.free(); session = null; }
        const t0 = performance.now();
        session = new Session(backend, new Uint8Array(m.config), new Uint8Array(m.weights),
          new Uint8Array(m.tokenizer));
        const info = JSON.parse(session.info(0));
        post({ type: "loaded", id: m.id, info, source: m.source, ms: performance.now() - t0 });
        break;
      }
      case "stop":
        stopRequested = true;
        break;
      case "attention_check": {
        // The browser test's kernel check (web/src/selfcheck.rs): one build and shape.
        if (!backend) throw new Error("backend not ready");
        const report = JSON.parse(await backend.attention_check(JSON.stringify(m.request)));
        post({ type: "done", id: m.id, report });
        break;
      }
      case "trial":
        if (!session) throw new Error("load a model first");
        await trial(m);
        break;
      default:
        throw new Error(`unknown message ${m.type}`);
    }
  } catch (e) {
    const d = describe(e);
    post({ type: "error", id: m.id, during: m.type, message: d.message, fatal: d.fatal });
  }
};

ready.then(
  () => post({ type: "ready" }),
  (e) => post({ type: "error", during: "init", message: `loading the wasm module failed: ${e.message || e}`, fatal: true }),
);
