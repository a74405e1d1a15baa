//! `e2llm bench kernels`: our fused attention — the burn op the model runs
//! (`e2llm_kernels::fused`, attention.wgsl on burn's own wgpu buffers), forward and forward +
//! backward — against the plain matmul–mask–softmax–matmul path (forward, and forward +
//! backward through burn's autodiff) and burn's own `module::attention` (forward only), all on
//! burn's wgpu backend on the same adapter.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use e2llm_kernels::attention::AttentionBuffers;
use e2llm_kernels::cpu::{self, AttentionShape};
use e2llm_kernels::{fused, Gpu};
use rand::{Rng, SeedableRng};

use crate::util::{open_device, parse_list};

/// Arguments of `e2llm bench kernels`.
#[derive(clap::Args, Debug)]
pub struct KernelArgs {
    /// Sequence lengths (tokens), comma-separated.
    #[arg(long, default_value = "512,1024,2048,4096")]
    lengths: String,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// Head width.
    #[arg(long, default_value_t = 32)]
    head_dim: usize,
    /// Timed repetitions per measurement.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Untimed warm-up runs before them (pipeline compilation, allocator growth); 0 for lengths
    /// where one run takes minutes (the timed run then includes compiling the kernels).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Skip a reference whose score matrix would exceed this many MiB.
    #[arg(long, default_value_t = 2048)]
    max_matrix_mib: usize,
    /// How the attention kernels are built: `auto` (for the adapter), `cpu` (8 rows per
    /// invocation up to head width 32, else 4; 8 tiles per dispatch), `gpu` (fewer rows by head
    /// width, 64 tiles, the block forward), or either followed by (or alone) `rows=R`
    /// (1, 2, 4 or 8), `tiles=T`, `block=0|1` (e.g. `gpu,block=0`).
    #[arg(long, default_value = "auto")]
    tuning: String,
    /// Only the decode-step table (one query against a cache of each length).
    #[arg(long)]
    decode_only: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn time_ms(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let t0 = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(1e3 * t0.elapsed().as_secs_f64() / reps as f64)
}

/// One timing: milliseconds, or why there is none.
enum Measured {
    Ms(f64),
    Failed(String),
    Skipped(String),
}

impl Measured {
    /// `other ÷ self`-style speed ratio of a reference against ours.
    fn ratio(&self, ours: &Measured) -> String {
        match (self, ours) {
            (Measured::Ms(r), Measured::Ms(o)) => format!("{:.2}×", r / o),
            _ => "–".into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Measured::Ms(v) => (*v).into(),
            Measured::Failed(why) => serde_json::json!({ "failed": why }),
            Measured::Skipped(why) => serde_json::json!({ "skipped": why }),
        }
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Measured::Ms(v) if *v < 10.0 => write!(f, "{v:.2}"),
            Measured::Ms(v) => write!(f, "{v:.1}"),
            Measured::Failed(why) => write!(f, "failed: {why}"),
            Measured::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// [`time_ms`], with a failure (an allocation the adapter refuses, above all) reported by its
/// root cause instead of ending the benchmark.
fn measure((warmup, reps): (usize, usize), f: impl FnMut() -> Result<()>) -> Measured {
    match time_ms(warmup, reps, f) {
        Ok(ms) => Measured::Ms(ms),
        Err(e) => {
            let text = format!("{e:#}");
            // One table cell: "out of memory (N MiB buffer)" for a refused allocation (the
            // expected failure of the quadratic paths: one line on stderr), else the first
            // line (the whole error on stderr).
            let why = match e2llm_model::backend::refused_buffer_mib(&text) {
                Some(mib) => {
                    let why = format!("out of memory ({mib} MiB buffer)");
                    eprintln!("  {why}");
                    why
                }
                None => {
                    eprintln!("  failed: {text}");
                    text.lines()
                        .next()
                        .unwrap_or("failed")
                        .chars()
                        .take(80)
                        .collect()
                }
            };
            Measured::Failed(why)
        }
    }
}

/// Reads a reduced result back (which waits for everything it depends on) and checks it.
fn read(t: Tensor<1>) -> Result<()> {
    let device = t.device();
    let v = t
        .try_into_data()
        .map_err(|e| anyhow::anyhow!("reading a result back: {e:?}"))?
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    anyhow::ensure!(
        v.iter().all(|x| x.is_finite()),
        "a non-finite result: {v:?}"
    );
    device
        .sync()
        .map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
    Ok(())
}

/// Runs the attention benchmark.
pub fn run(a: KernelArgs) -> Result<()> {
    let lengths: Vec<usize> = parse_list(&a.lengths, "--lengths")?;
    anyhow::ensure!(a.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(
        a.kv_heads > 0 && a.heads.is_multiple_of(a.kv_heads),
        "--heads must be a multiple of --kv-heads"
    );
    let device = open_device("wgpu")?;
    if a.tuning != "auto" {
        let t = e2llm_kernels::attention::Tuning::parse(&a.tuning)
            .map_err(|e| anyhow::anyhow!("--tuning {}: {e}", a.tuning))?;
        e2llm_kernels::attention::set_tuning(t);
    }
    let tuning = e2llm_kernels::attention::tuning();
    let adapter = Gpu::new()
        .map(|g| g.adapter_name)
        .unwrap_or_else(|_| "default wgpu adapter".into());
    let (h, hkv, d) = (a.heads, a.kv_heads, a.head_dim);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let inv_freq = cpu::inv_freq(d, 10000.0);
    let timing = (a.warmup, a.reps);
    let mut rows = Vec::new();
    // Per length: the forward kernel and the backward's rows per invocation (both depend on
    // the length under the GPU tuning).
    let mut builds = Vec::new();
    println!(
        "attention, {h} query / {hkv} kv heads of {d}, causal; adapter: {}; {} timed reps after {} warm-up; \
         forward: {}; backward: {} rows per invocation (the GPU tuning takes fewer from 1,024 tokens \
         below {} dq workgroups); {} tiles per dispatch\n",
        adapter,
        a.reps,
        a.warmup,
        if tuning.block && d == e2llm_kernels::attention::BLOCK_WIDTH {
            format!(
                "block (64 queries per workgroup) below {} workgroups of {} rows per invocation",
                e2llm_kernels::attention::BLOCK_BELOW_GROUPS,
                tuning.forward_rows(d)
            )
        } else {
            format!("{} rows per invocation", tuning.forward_rows(d))
        },
        tuning.backward_rows(d),
        e2llm_kernels::attention::BLOCK_BELOW_GROUPS,
        tuning.tiles_per_dispatch
    );
    println!(
        "| length | e2llm fwd ms | e2llm fwd+bwd ms | e2llm memory MiB | plain fwd ms | plain fwd+bwd ms | plain matrix MiB | burn attention fwd ms | plain ÷ e2llm fwd | plain ÷ e2llm fwd+bwd | burn ÷ e2llm fwd |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &s in lengths.iter().filter(|_| !a.decode_only) {
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (q, k, v, d_o) = (
            rand(s * h * d),
            rand(s * hkv * d),
            rand(s * hkv * d),
            rand(s * h * d),
        );
        let pos: Vec<f32> = (0..s).map(|i| i as f32).collect();
        let shape = AttentionShape::new(s, s, h, hkv, d, 1.0);
        let ours_mib = AttentionBuffers::bytes_for(shape, 1, true) as f64 / (1 << 20) as f64;
        let t = |data: &[f32], heads: usize| {
            Tensor::<4>::from_data(TensorData::new(data.to_vec(), [1, s, heads, d]), &device)
        };
        let (fq, fk, fv, fdo) = (t(&q, h), t(&k, hkv), t(&v, hkv), t(&d_o, h));
        let aux_host = [pos.as_slice(), &pos, &inv_freq].concat();
        let aux = Tensor::<1>::from_data(TensorData::new(aux_host, [2 * s + d / 2]), &device);
        let scale = shape.scale;
        let forward = || {
            fused::rope_attention_forward(
                fq.clone(),
                fk.clone(),
                fv.clone(),
                aux.clone(),
                scale,
                1.0,
            )
        };
        let fwd = measure(timing, || read(forward().0.sum()));
        let fwd_bwd = measure(timing, || {
            let (o, stats) = forward();
            let (dq, dk, dv) = fused::rope_attention_backward(
                fq.clone(),
                fk.clone(),
                fv.clone(),
                aux.clone(),
                o,
                stats,
                fdo.clone(),
                scale,
                1.0,
            );
            read(dq.sum() + dk.sum() + dv.sum())
        });

        let matrix_mib = (h * s * s * 4) as f64 / (1 << 20) as f64;
        let bq = Tensor::<4>::random([1, h, s, d], Distribution::Normal(0.0, 1.0), &device);
        let bk = Tensor::<4>::random([1, hkv, s, d], Distribution::Normal(0.0, 1.0), &device);
        let bv = Tensor::<4>::random([1, hkv, s, d], Distribution::Normal(0.0, 1.0), &device);
        let (plain, plain_bwd, burn_attn) = if matrix_mib <= a.max_matrix_mib as f64 {
            // burn's attention first: a failure of the plain path cannot then be what
            // makes it fail.
            let burn_attn = measure(timing, || {
                let rep = h / hkv;
                let (k, v) = if rep > 1 {
                    (bk.clone().repeat_dim(1, rep), bv.clone().repeat_dim(1, rep))
                } else {
                    (bk.clone(), bv.clone())
                };
                let o = burn::tensor::module::attention(
                    bq.clone(),
                    k,
                    v,
                    None,
                    None,
                    burn::tensor::ops::AttentionModuleOptions {
                        scale: None,
                        softcap: None,
                        is_causal: true,
                    },
                );
                read(o.sum())
            });
            let plain = measure(timing, || {
                let o = e2llm_model::attention::attention_reference(
                    bq.clone(),
                    bk.clone(),
                    bv.clone(),
                    0,
                );
                read(o.sum())
            });
            let ad = device.clone().autodiff();
            let track = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &ad).require_grad();
            let (aq, ak, av) = (track(&bq), track(&bk), track(&bv));
            let ado = Tensor::<4>::from_data(fdo.clone().swap_dims(1, 2).to_data(), &ad);
            let plain_bwd = measure(timing, || {
                let o = e2llm_model::attention::attention_reference(
                    aq.clone(),
                    ak.clone(),
                    av.clone(),
                    0,
                );
                let grads = (o * ado.clone()).sum().backward();
                for x in [&aq, &ak, &av] {
                    if let Some(g) = x.grad(&grads) {
                        read(g.sum())?;
                    }
                }
                Ok(())
            });
            (plain, plain_bwd, burn_attn)
        } else {
            let skip =
                || Measured::Skipped(format!("matrix over --max-matrix-mib {}", a.max_matrix_mib));
            (skip(), skip(), skip())
        };
        println!(
            "| {s} | {fwd} | {fwd_bwd} | {ours_mib:.1} | {plain} | {plain_bwd} | {matrix_mib:.0} | {burn_attn} | {} | {} | {} |",
            plain.ratio(&fwd),
            plain_bwd.ratio(&fwd_bwd),
            burn_attn.ratio(&fwd)
        );
        let kernel = if tuning.block_forward(shape, 1) {
            "block"
        } else {
            "rows"
        };
        let bwd_rows = tuning.backward_rows_for(shape, 1);
        builds.push(format!("{s}: {kernel} / {bwd_rows}"));
        rows.push(serde_json::json!({
            "length": s, "forward_kernel": kernel, "backward_rows": bwd_rows, "e2llm_fwd_ms": fwd.json(), "e2llm_fwd_bwd_ms": fwd_bwd.json(),
            "e2llm_mib": ours_mib, "plain_fwd_ms": plain.json(), "plain_fwd_bwd_ms": plain_bwd.json(),
            "plain_matrix_mib": matrix_mib, "burn_attention_fwd_ms": burn_attn.json(),
        }));
    }
    if !builds.is_empty() {
        println!(
            "\nForward kernel / backward rows per invocation by length: {}.",
            builds.join(", ")
        );
    }
    println!(
        "\ne2llm's kernel also applies RoPE to q and k inside; the references get pre-rotated inputs. \
         Every time includes reading back a sum (one value per output). Memory: e2llm's is every \
         buffer of its forward and backward (linear in length); the plain path needs at least the \
         score matrix, forward and backward more."
    );

    // A decode step: one new query against a cache of `s` keys (the split-key decode path).
    // With the adapter's f16, also the cache in f16 (`--kv-cache f16`: the kernel reads half
    // the bytes per key and sums in f32).
    let f16 = device.supports_dtype(DType::F16);
    println!(
        "\ndecode step (1 query, causal against the whole cache){}\n",
        if f16 {
            ""
        } else {
            "; no f16 K/V column: this adapter has no shader-f16"
        }
    );
    println!(
        "| cache length | cache MiB f32 / f16 | e2llm ms | e2llm f16 K/V ms | plain ms | plain ÷ e2llm | f32 ÷ f16 K/V |\n\
         |---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut decode = Vec::new();
    for &s in &lengths {
        let rand = |shape: [usize; 4]| {
            Tensor::<4>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
        };
        let (q1, kc, vc) = (
            rand([1, 1, h, d]),
            rand([1, s, hkv, d]),
            rand([1, s, hkv, d]),
        );
        let pos: Vec<f32> = (0..s).map(|i| i as f32).collect();
        let aux = [&pos[s - 1..], pos.as_slice(), inv_freq.as_slice()].concat();
        let n = aux.len();
        let aux = Tensor::<1>::from_data(TensorData::new(aux, [n]), &device);
        let scale = 1.0 / (d as f32).sqrt();
        let step = |k: &Tensor<4>, v: &Tensor<4>| {
            measure(timing, || {
                let (o, _) = fused::rope_attention_forward(
                    q1.clone(),
                    k.clone(),
                    v.clone(),
                    aux.clone(),
                    scale,
                    1.0,
                );
                read(o.sum())
            })
        };
        let ours = step(&kc, &vc);
        let ours16 = if f16 {
            step(&kc.clone().cast(DType::F16), &vc.clone().cast(DType::F16))
        } else {
            Measured::Skipped("no shader-f16".into())
        };
        let cache_mib = (2 * s * hkv * d * 4) as f64 / (1 << 20) as f64;
        let (pq, pk, pv) = (
            q1.clone().swap_dims(1, 2),
            kc.clone().swap_dims(1, 2),
            vc.clone().swap_dims(1, 2),
        );
        let plain = measure(timing, || {
            let o = e2llm_model::attention::attention_reference(
                pq.clone(),
                pk.clone(),
                pv.clone(),
                s - 1,
            );
            read(o.sum())
        });
        println!(
            "| {s} | {cache_mib:.1} / {:.1} | {ours} | {ours16} | {plain} | {} | {} |",
            cache_mib / 2.0,
            plain.ratio(&ours),
            ours.ratio(&ours16)
        );
        decode.push(serde_json::json!({
            "cache_length": s, "cache_mib_f32": cache_mib, "e2llm_ms": ours.json(),
            "e2llm_f16_kv_ms": ours16.json(), "plain_ms": plain.json(),
        }));
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "adapter": adapter, "forward_rows": tuning.forward_rows(d),
            "backward_rows": tuning.backward_rows(d),
            "tiles_per_dispatch": tuning.tiles_per_dispatch, "block": tuning.block, "heads": h, "kv_heads": hkv, "head_dim": d,
            "reps": a.reps, "warmup": a.warmup, "results": rows, "decode": decode,
        });
        e2llm_model::weights::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
