//! The attention kernel checked against its CPU twin where the page runs: the fused forward
//! (`attention.wgsl` in a chosen build) on seeded random inputs, read back asynchronously, and
//! `e2llm_kernels::cpu::attention` on the same inputs — per query row the largest difference.
//! The browser test runs it on WebGPU (SwiftShader in CI), so every build a browser could be
//! given is checked in a browser, not only natively; `cargo test` runs it on lavapipe.

use burn::tensor::{DType, Tensor, TensorData};
use e2llm_kernels::attention::{set_tuning, tuning, Tuning};
use e2llm_kernels::cpu::{self, AttentionShape};
use serde::{Deserialize, Serialize};

use crate::demo::WebError;

/// What to check: the kernels' build (`Tuning::parse` text: `cpu`, `gpu`, `gpu,block=1`, …,
/// and f32 or f16 keys and values) and the shape — `sq` new queries after `skv − sq` cached keys, heads, head width.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRequest {
    /// The attention build, as `E2LLM_ATTENTION` natively.
    pub tuning: String,
    /// Queries.
    pub sq: usize,
    /// Keys (cached + new).
    pub skv: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads.
    pub hkv: usize,
    /// Head width.
    pub d: usize,
    /// A row is off when some value misses the twin by more than `tol · (1 + |want|)`.
    #[serde(default = "default_tol")]
    pub tol: f32,
    /// Keys and values in f16 (the `--kv-cache f16` build; the twin gets them rounded to f16).
    /// Where the device has no f16 the report says so (`skipped`) instead of running.
    #[serde(default)]
    pub kv_f16: bool,
}

fn default_tol() -> f32 {
    1e-4
}

/// The result: the largest |Δ| of the output over everything, the row it is in, and the rows
/// (query index) off by more than the request's tolerance, at most 16 of them.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The build that ran, in `Tuning`'s debug form.
    pub build: String,
    /// The forward kernel this shape ran: `decode` (split-key), `block` or `rows`.
    pub kernel: &'static str,
    /// Largest |got − want|.
    pub max_abs: f32,
    /// Largest |Δ| of the log-sum-exp of each row's scores (what the backward reads).
    pub lse_max_abs: f32,
    /// Query row of `max_abs`.
    pub worst_row: usize,
    /// Rows off by more than the tolerance: `(row, largest |Δ|)`.
    pub bad_rows: Vec<(usize, f32)>,
    /// How many rows are off in all.
    pub bad_count: usize,
    /// What the runtime logged meanwhile (a kernel the device refused to compile).
    pub logged: Vec<String>,
    /// Why nothing ran (an f16 build on a device without f16); `None` when the check ran.
    pub skipped: Option<String>,
}

/// Runs the check on `device` (the process's attention build is restored afterwards).
pub async fn attention_check(
    device: &burn::tensor::Device,
    req: &CheckRequest,
) -> Result<CheckReport, WebError> {
    let t = Tuning::parse(&req.tuning).map_err(|e| WebError::Input(format!("tuning: {e}")))?;
    let (sq, skv, hq, hkv, d) = (req.sq, req.skv, req.hq, req.hkv, req.d);
    if !(sq > 0 && sq <= skv && hkv > 0 && hq % hkv == 0 && d % 2 == 0 && d <= 128) {
        return Err(WebError::Input(format!(
            "shape sq {sq}, skv {skv}, hq {hq}, hkv {hkv}, d {d}: need 0 < sq ≤ skv, hq a \
             multiple of hkv, d even and ≤ 128"
        )));
    }
    let s = AttentionShape::new(sq, skv, hq, hkv, d, 1.0);
    // A fixed LCG: the same inputs in every browser and natively.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    };
    let (q, mut k, mut v) = (rand(sq * hq * d), rand(skv * hkv * d), rand(skv * hkv * d));
    if req.kv_f16 {
        if !device.supports_dtype(DType::F16) {
            return Ok(CheckReport {
                build: format!("{t:?}"),
                kernel: "none",
                max_abs: 0.0,
                lse_max_abs: 0.0,
                worst_row: 0,
                bad_rows: Vec::new(),
                bad_count: 0,
                logged: crate::logged::take(),
                skipped: Some("the device has no f16 (WebGPU: shader-f16)".into()),
            });
        }
        // The twin reads what the kernel reads: the values rounded to f16 (burn's own cast).
        let flex = burn::tensor::Device::flex();
        for x in [&mut k, &mut v] {
            let n = x.len();
            let t = Tensor::<1>::from_data(TensorData::new(x.clone(), [n]), &flex);
            *x = e2llm_model::backend::read_f32(t.cast(DType::F16).cast(DType::F32))?;
        }
    }
    // E²-LLM-like positions: 4 sinks, then an offset, divided by g = 3.
    let kpos: Vec<f32> = (0..skv)
        .map(|i| if i < 4 { i as f32 } else { (i + 37) as f32 } / 3.0)
        .collect();
    let qpos = kpos[skv - sq..].to_vec();
    let inv_freq = cpu::inv_freq(d, 10000.0);
    let (want, want_lse) = cpu::attention(&q, &k, &v, &qpos, &kpos, &inv_freq, s);

    let previous = tuning();
    set_tuning(t);
    // What runs (natively `E2LLM_ATTENTION` overrides `set_tuning`), and nothing logged before.
    let t = tuning();
    crate::logged::take();
    let shape4 = |n: usize, h: usize| [1, n, h, d];
    let tensor = |x: &[f32], shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), device)
    };
    let aux = [qpos.as_slice(), &kpos, &inv_freq].concat();
    let n_aux = aux.len();
    let stored = |x: &[f32]| {
        let t = tensor(x, shape4(skv, hkv));
        if req.kv_f16 {
            t.cast(DType::F16)
        } else {
            t
        }
    };
    let (o, stats) = e2llm_kernels::fused::rope_attention_forward(
        tensor(&q, shape4(sq, hq)),
        stored(&k),
        stored(&v),
        Tensor::<1>::from_data(TensorData::new(aux, [n_aux]), device),
        s.scale,
        1.0,
    );
    let got = e2llm_model::backend::read_f32_async(o.reshape([sq * hq * d])).await;
    let stats = e2llm_model::backend::read_f32_async(stats).await;
    set_tuning(previous);
    let (got, stats) = (got?, stats?);
    // lse: the first Hq·Sq statistics.
    let lse_max_abs = stats[..hq * sq]
        .iter()
        .zip(&want_lse)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);

    let row_err: Vec<(f32, bool)> = (0..sq)
        .map(|i| {
            let at = i * hq * d..(i + 1) * hq * d;
            got[at.clone()]
                .iter()
                .zip(&want[at])
                .fold((0.0f32, false), |(m, bad), (a, b)| {
                    let e = (a - b).abs();
                    let off = e.is_nan() || e > req.tol * (1.0 + b.abs());
                    (
                        if e.is_nan() { f32::INFINITY } else { m.max(e) },
                        bad || off,
                    )
                })
        })
        .collect();
    let (worst_row, max_abs) = row_err.iter().enumerate().fold(
        (0, 0.0f32),
        |(wi, w), (i, &(e, _))| if e > w { (i, e) } else { (wi, w) },
    );
    let bad: Vec<(usize, f32)> = row_err
        .iter()
        .enumerate()
        .filter(|(_, (_, bad))| *bad)
        .map(|(i, &(e, _))| (i, e))
        .collect();
    Ok(CheckReport {
        build: format!("{t:?}"),
        kernel: if !e2llm_kernels::fused::is_gpu(device) {
            "cpu"
        } else if e2llm_kernels::attention::decode_splits(s) > 0 {
            "decode"
        } else if t.block_forward(s, 1) {
            "block"
        } else {
            "rows"
        },
        max_abs,
        lse_max_abs,
        worst_row,
        bad_count: bad.len(),
        logged: crate::logged::take(),
        bad_rows: bad.into_iter().take(16).collect(),
        skipped: None,
    })
}
