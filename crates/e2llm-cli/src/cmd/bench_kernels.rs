//! `e2llm bench kernels`: our fused attention (e2llm-kernels) against the plain
//! matmul–mask–softmax–matmul path and burn's own `module::attention`, both on burn's wgpu
//! backend, on the same adapter.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{Distribution, Tensor};
use e2llm_kernels::attention::AttentionBuffers;
use e2llm_kernels::cpu::AttentionShape;
use e2llm_kernels::Gpu;
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
    /// Timed repetitions per measurement (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip a reference whose score matrix would exceed this many MiB.
    #[arg(long, default_value_t = 2048)]
    max_matrix_mib: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn time_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t0 = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(1e3 * t0.elapsed().as_secs_f64() / reps as f64)
}

/// Runs the attention benchmark.
pub fn run(a: KernelArgs) -> Result<()> {
    let lengths: Vec<usize> = parse_list(&a.lengths, "--lengths")?;
    anyhow::ensure!(a.reps > 0, "--reps must be at least 1");
    anyhow::ensure!(
        a.kv_heads > 0 && a.heads.is_multiple_of(a.kv_heads),
        "--heads must be a multiple of --kv-heads"
    );
    let gpu = Gpu::new().context("e2llm-kernels needs a GPU adapter (lavapipe counts)")?;
    let device = open_device("wgpu")?;
    let (h, hkv, d) = (a.heads, a.kv_heads, a.head_dim);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let inv_freq: Vec<f32> = (0..d / 2)
        .map(|j| 1.0 / 10000f32.powf(2.0 * j as f32 / d as f32))
        .collect();
    let mut rows = Vec::new();
    println!(
        "attention, {h} query / {hkv} kv heads of {d}, causal; adapter: {}; {} timed reps\n",
        gpu.adapter_name, a.reps
    );
    println!(
        "| length | e2llm fwd ms | e2llm fwd+bwd ms | e2llm memory MiB | plain fwd ms | plain matrix MiB | burn attention fwd ms | plain ÷ e2llm | burn ÷ e2llm |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &s in &lengths {
        let mut rand =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (q, k, v, d_o) = (
            rand(s * h * d),
            rand(s * hkv * d),
            rand(s * hkv * d),
            rand(s * h * d),
        );
        let pos: Vec<f32> = (0..s).map(|i| i as f32).collect();
        let shape = AttentionShape {
            sq: s,
            skv: s,
            hq: h,
            hkv,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
            g: 1.0,
            factor: 1.0,
        };
        let bufs = AttentionBuffers::new(&gpu, &q, &k, &v, &pos, &pos, &inv_freq, &d_o, shape)?;
        let fwd = time_ms(a.reps, || {
            let mut enc = gpu.encoder();
            bufs.record_forward(&gpu, &mut enc);
            Ok(gpu.finish(enc)?)
        })?;
        let fwd_bwd = time_ms(a.reps, || {
            let mut enc = gpu.encoder();
            bufs.record_forward(&gpu, &mut enc);
            bufs.record_backward(&gpu, &mut enc);
            Ok(gpu.finish(enc)?)
        })?;
        let ours_mib = bufs.bytes() as f64 / (1 << 20) as f64;
        drop(bufs);

        let matrix_mib = (h * s * s * 4) as f64 / (1 << 20) as f64;
        let bq = Tensor::<4>::random([1, h, s, d], Distribution::Normal(0.0, 1.0), &device);
        let bk = Tensor::<4>::random([1, hkv, s, d], Distribution::Normal(0.0, 1.0), &device);
        let bv = Tensor::<4>::random([1, hkv, s, d], Distribution::Normal(0.0, 1.0), &device);
        let (plain, burn_attn) = if matrix_mib <= a.max_matrix_mib as f64 {
            let plain = time_ms(a.reps, || {
                let o = e2llm_model::attention::attention_reference(
                    bq.clone(),
                    bk.clone(),
                    bv.clone(),
                    0,
                );
                o.into_data();
                Ok(())
            })?;
            let burn_attn = time_ms(a.reps, || {
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
                o.into_data();
                Ok(())
            })?;
            (Some(plain), Some(burn_attn))
        } else {
            (None, None)
        };
        let show = |v: Option<f64>| v.map_or("skipped".to_string(), |x| format!("{x:.1}"));
        let ratio = |v: Option<f64>| v.map_or("–".to_string(), |x| format!("{:.2}×", x / fwd));
        println!(
            "| {s} | {fwd:.1} | {fwd_bwd:.1} | {ours_mib:.1} | {} | {matrix_mib:.0} | {} | {} | {} |",
            show(plain),
            show(burn_attn),
            ratio(plain),
            ratio(burn_attn)
        );
        rows.push(serde_json::json!({
            "length": s, "e2llm_fwd_ms": fwd, "e2llm_fwd_bwd_ms": fwd_bwd, "e2llm_mib": ours_mib,
            "plain_fwd_ms": plain, "plain_matrix_mib": matrix_mib, "burn_attention_fwd_ms": burn_attn,
        }));
    }
    println!(
        "\ne2llm's kernel also applies RoPE to q and k inside; the references get pre-rotated inputs. \
         Memory: e2llm's is every buffer it allocates; the plain path needs at least the score matrix."
    );
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "adapter": gpu.adapter_name, "heads": h, "kv_heads": hkv, "head_dim": d,
            "reps": a.reps, "results": rows,
        });
        e2llm_model::weights::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
