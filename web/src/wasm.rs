//! wasm-bindgen exports: the backend, the session, and a panic hook that keeps the message.
//!
//! JavaScript calls `open_gpu()` (or `open_cpu()`), then `new Session(backend, config,
//! weights, tokenizer)`, then per trial `prepare(json)`, `prefill_step(n)` until done,
//! `answer()` and `attention_strip(...)`. Results are JSON strings (parsed by the worker) or
//! `Float32Array`s. Async methods return Promises; they take the trial out of the session
//! while they run, so a second call in the meantime gets a "busy" error instead of a panic.

use std::cell::RefCell;
use std::rc::Rc;

use e2llm_model::Device;
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::demo::{Demo, PromptRequest, Run, WebError};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the panic hook (called once when the module starts).
#[wasm_bindgen(start)]
pub fn start() {
    crate::logged::install();
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("e2llm-web panicked: {info}");
        console_error(&msg);
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
}

/// The warnings and errors burn's runtime logged since the last call (a kernel WebGPU refused
/// to compile, above all), one per line; empty when none.
#[wasm_bindgen]
pub fn take_logged() -> String {
    crate::logged::take().join("\n")
}

/// The message of the last panic, if any (a panic aborts the call that hit it; the worker
/// reports this and restarts).
#[wasm_bindgen]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// A compute device for the session.
#[wasm_bindgen]
pub struct Backend {
    device: Device,
    /// The WebGPU device under it (none on the CPU): error scopes for the kernel check.
    wgpu: Option<wgpu::Device>,
    label: String,
    gpu: bool,
    max_binding_bytes: u64,
}

#[wasm_bindgen]
impl Backend {
    /// "WebGPU: <adapter>" or "CPU (WASM)".
    #[wasm_bindgen(getter)]
    pub fn label(&self) -> String {
        self.label.clone()
    }

    /// True on WebGPU.
    #[wasm_bindgen(getter)]
    pub fn gpu(&self) -> bool {
        self.gpu
    }

    /// The device's `maxStorageBufferBindingSize` (0 on the CPU: no such limit).
    #[wasm_bindgen(getter)]
    pub fn max_binding_bytes(&self) -> f64 {
        self.max_binding_bytes as f64
    }

    /// The attention kernel in the build and shape `request` (JSON of
    /// [`crate::selfcheck::CheckRequest`]) against its CPU twin on this device; resolves to the
    /// JSON of [`crate::selfcheck::CheckReport`]. For the browser test (any build, the block
    /// forward included, whatever the page itself runs).
    pub fn attention_check(&self, request: &str) -> Promise {
        let device = self.device.clone();
        let gpu = self.wgpu.clone();
        let request = serde_json::from_str::<crate::selfcheck::CheckRequest>(request);
        future_to_promise(async move {
            let request = request.map_err(|e| js_err(format!("attention check request: {e}")))?;
            // Errors WebGPU reports for the check's own objects (a kernel it refuses).
            let scopes = gpu.as_ref().map(|d| {
                (
                    d.push_error_scope(wgpu::ErrorFilter::Validation),
                    d.push_error_scope(wgpu::ErrorFilter::Internal),
                )
            });
            let result = crate::selfcheck::attention_check(&device, &request).await;
            let mut refused = Vec::new();
            if let Some((validation, internal)) = scopes {
                let (i, v) = (internal.pop(), validation.pop());
                refused.extend(i.await.map(|e| format!("WebGPU internal error: {e}")));
                refused.extend(v.await.map(|e| format!("WebGPU validation error: {e}")));
            }
            let mut report = result.map_err(js_err)?;
            report.logged.extend(refused);
            // A refused pipeline surfaces as an uncaptured device error, and wgpu's handler
            // panics: the instance is then unusable — reject (the worker reads `last_panic`,
            // reports it and restarts).
            if let Some(panic) = LAST_PANIC.with(|p| p.borrow().clone()) {
                return Err(js_err(panic));
            }
            serde_json::to_string(&report)
                .map(|s| JsValue::from_str(&s))
                .map_err(js_err)
        })
    }
}

/// burn's flex CPU backend, compiled to WASM.
#[wasm_bindgen]
pub fn open_cpu() -> Backend {
    Backend {
        device: Device::flex(),
        wgpu: None,
        label: "CPU (WASM)".into(),
        gpu: false,
        max_binding_bytes: 0,
    }
}

/// burn's wgpu runtime on the browser's WebGPU. Initialised asynchronously (a browser cannot
/// block on adapter or device requests) and probed with one small op read back; rejects with
/// the reason when there is no adapter or the device fails.
#[wasm_bindgen]
pub async fn open_gpu() -> Result<Backend, JsValue> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| js_err(format!("WebGPU unavailable: {e}")))?;
    let info = setup.adapter.get_info();
    let limits = setup.device.limits();
    let probe = burn::tensor::Tensor::<1>::from_floats([1.0f32, 2.0], &device)
        .sum()
        .into_data_async()
        .await
        .map_err(|e| js_err(format!("WebGPU probe failed: {e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| js_err(format!("WebGPU probe failed: {e:?}")))?;
    if probe.first() != Some(&3.0) {
        return Err(js_err(format!(
            "WebGPU probe computed {probe:?} instead of [3.0]"
        )));
    }
    // The attention kernels' build: the GPU one only where the browser says it is GPU hardware
    // (SwiftShader, or an adapter that does not say, keeps the CPU rasteriser's).
    e2llm_kernels::attention::set_tuning(e2llm_kernels::gpu::tuning_for(&info));
    let name = if info.name.is_empty() {
        String::new()
    } else {
        format!("{}, ", info.name)
    };
    Ok(Backend {
        device,
        wgpu: Some(setup.device.clone()),
        label: format!("wgpu: {name}{:?}, {:?}", info.backend, info.device_type),
        gpu: true,
        max_binding_bytes: limits.max_storage_buffer_binding_size,
    })
}

/// Builds the attention kernels with `text` instead of the adapter's choice (`cpu`, `gpu` or
/// `rows=R,tiles=T`, as `E2LLM_ATTENTION` natively); call after [`open_gpu`]. Returns the build
/// in words. The page takes it from `?attention=…` (the browser test runs the GPU build on
/// SwiftShader this way, since a software adapter gets the CPU rasteriser's).
#[wasm_bindgen]
pub fn set_attention_tuning(text: &str) -> Result<String, JsValue> {
    let t = e2llm_kernels::attention::Tuning::parse(text)
        .map_err(|e| js_err(format!("attention build `{text}`: {e}")))?;
    e2llm_kernels::attention::set_tuning(t);
    let rows = if t.rows == 0 {
        "by head width".to_string()
    } else {
        t.rows.to_string()
    };
    Ok(format!(
        "attention build: rows {rows}, {} tiles per dispatch{}",
        t.tiles_per_dispatch,
        if t.block {
            ", block forward for short prefills at head width 32"
        } else {
            ""
        }
    ))
}

/// A loaded model and the trial in progress.
#[wasm_bindgen]
pub struct Session {
    demo: Rc<Demo>,
    run: Rc<RefCell<Option<Run>>>,
    max_binding_bytes: u64,
}

fn take(run: &Rc<RefCell<Option<Run>>>) -> Result<Run, JsValue> {
    run.try_borrow_mut()
        .ok()
        .and_then(|mut r| r.take())
        .ok_or_else(|| js_err("no prompt prepared (or another step is still running)"))
}

#[wasm_bindgen]
impl Session {
    /// Loads the three HF files (bytes) onto `backend`. Errors name the file and the problem.
    #[wasm_bindgen(constructor)]
    pub fn new(
        backend: &Backend,
        config: &[u8],
        weights: &[u8],
        tokenizer: &[u8],
    ) -> Result<Session, JsValue> {
        let demo = Demo::load(config, weights, tokenizer, &backend.device).map_err(js_err)?;
        Ok(Session {
            demo: Rc::new(demo),
            run: Rc::new(RefCell::new(None)),
            max_binding_bytes: backend.max_binding_bytes,
        })
    }

    /// The model's shape as JSON ([`crate::ModelInfo`]), plus the longest context that fits.
    pub fn info(&self, budget_bytes: f64) -> Result<String, JsValue> {
        let info = self.demo.info();
        let budget = if budget_bytes > 0.0 {
            budget_bytes as u64
        } else {
            crate::demo::DEFAULT_BUDGET_BYTES
        };
        let max = crate::demo::max_length(
            &self.demo.model.config,
            self.max_binding_bytes,
            budget,
            self.demo.model.fused_attention(),
        );
        let mut v = serde_json::to_value(&info).map_err(js_err)?;
        v["max_length"] = max.into();
        Ok(v.to_string())
    }

    /// Builds a trial from a [`PromptRequest`] (JSON) and returns its [`crate::PromptInfo`]
    /// (JSON). Replaces any trial in progress.
    pub fn prepare(&self, request: &str) -> Result<String, JsValue> {
        let mut req: PromptRequest = serde_json::from_str(request)
            .map_err(|e| js_err(WebError::Input(format!("bad request: {e}"))))?;
        if req.max_binding_bytes == 0 {
            req.max_binding_bytes = self.max_binding_bytes;
        }
        let run = self.demo.prepare(&req).map_err(js_err)?;
        let info = serde_json::to_string(&run.info).map_err(js_err)?;
        *self
            .run
            .try_borrow_mut()
            .map_err(|_| js_err("a step is still running"))? = Some(run);
        Ok(info)
    }

    /// Prefills up to `tokens` more tokens; resolves to the number done so far.
    pub fn prefill_step(&self, tokens: usize) -> Promise {
        let (demo, cell) = (self.demo.clone(), self.run.clone());
        future_to_promise(async move {
            let mut run = take(&cell)?;
            let r = run.prefill_step(&demo.model, tokens).await;
            *cell.borrow_mut() = Some(run);
            r.map(|d| JsValue::from(d as u32)).map_err(js_err)
        })
    }

    /// Logits of the last prefilled token.
    pub fn last_logits(&self) -> Result<Vec<f32>, JsValue> {
        self.run
            .try_borrow()
            .ok()
            .and_then(|r| r.as_ref().and_then(|r| r.last.clone()))
            .ok_or_else(|| js_err("no logits yet: prefill first"))
    }

    /// Greedy answer ([`crate::Answer`] as JSON), with the top `top` logits of every step.
    pub fn answer(&self, top: usize) -> Promise {
        let (demo, cell) = (self.demo.clone(), self.run.clone());
        future_to_promise(async move {
            let mut run = take(&cell)?;
            let r = run.answer(&demo.model, &demo.tok, top).await;
            *cell.borrow_mut() = Some(run);
            let a = r.map_err(js_err)?;
            Ok(JsValue::from(serde_json::to_string(&a).map_err(js_err)?))
        })
    }

    /// The last prompt token's attention (layer, head) over the prompt in `width` bins;
    /// resolves to a `Float32Array`.
    pub fn attention_strip(&self, layer: usize, head: usize, width: usize) -> Promise {
        let (demo, cell) = (self.demo.clone(), self.run.clone());
        future_to_promise(async move {
            let run = take(&cell)?;
            let r = run.attention_strip(&demo.model, layer, head, width).await;
            *cell.borrow_mut() = Some(run);
            let img = r.map_err(js_err)?;
            Ok(js_sys::Float32Array::from(img.data.as_slice()).into())
        })
    }
}
