//! The model against HF transformers: logits of every fixture case (CPU ≤ 1e-4, wgpu ≤ 1e-3,
//! each with the reference attention and the fused kernel), RoPE frequencies, the tokenizer,
//! greedy generation with the KV cache (both attention paths, CPU and wgpu).

use std::path::Path;

use e2llm_model::generate::{generate, GenerateOptions};
use e2llm_model::{backend, checkpoint, Device, Kernels, Llama, Positions, Tokenizer};
use e2llm_tests::{hf_cases, hf_fixtures, max_abs_diff, read_golden, GoldenTensor};

const CPU_TOL: f64 = 1e-4;
const WGPU_TOL: f64 = 1e-3;

struct Golden {
    ids: Vec<u32>,
    positions: Vec<f32>,
    t: std::collections::HashMap<String, GoldenTensor>,
}

fn golden(dir: &Path) -> Golden {
    let t = read_golden(&dir.join("golden.safetensors"));
    let ids: Vec<u32> = t["input_ids"].values.iter().map(|&v| v as u32).collect();
    let positions: Vec<f32> = match t.get("position_ids") {
        Some(p) => p.values.iter().map(|&v| v as f32).collect(),
        None => (0..ids.len()).map(|i| i as f32).collect(),
    };
    Golden { ids, positions, t }
}

fn logits(model: &Llama, g: &Golden) -> Vec<f32> {
    model
        .forward(&g.ids, &Positions::row(g.positions.clone(), 1.0), None)
        .expect("forward")
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 logits")
}

fn name(dir: &Path) -> String {
    dir.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn fixtures_are_present() {
    let cases = hf_cases();
    assert!(
        cases.len() >= 10,
        "expected the HF golden cases under {}, found {cases:?}",
        hf_fixtures().display()
    );
}

#[test]
fn cpu_logits_match_transformers_for_every_case() {
    let device = Device::flex();
    let mut report = Vec::new();
    for dir in hf_cases() {
        let g = golden(&dir);
        let model = checkpoint::load_dir(&dir, &device)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let got = logits(&model, &g);
        let err = max_abs_diff(&got, &g.t["logits"].values);
        report.push(format!("{:<24} max|Δ| = {err:.2e}", name(&dir)));
        // Dynamic NTK: a shorter forward on a fresh model uses the base for its own span.
        if let Some(prefix) = g.t.get("logits_prefix_fresh") {
            let n = prefix.shape[0];
            let short = Golden {
                ids: g.ids[..n].to_vec(),
                positions: g.positions[..n].to_vec(),
                t: Default::default(),
            };
            let e = max_abs_diff(&logits(&model, &short), &prefix.values);
            assert!(
                e <= CPU_TOL,
                "{}: {n}-token prefix error {e:.3e}",
                name(&dir)
            );
        }
        assert!(
            err <= CPU_TOL,
            "{}: max abs error {err:.3e} > {CPU_TOL:e}",
            name(&dir)
        );
        // Positions and the RoPE variant must visibly matter, or the test proves nothing.
        if let Some(plain) = g.t.get("logits_no_scaling") {
            let gap = g.t["logits"]
                .values
                .iter()
                .zip(&plain.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                gap > 100.0 * CPU_TOL,
                "{}: dropping the RoPE scaling changes the logits by only {gap:.3e}",
                name(&dir)
            );
        }
    }
    println!("{}", report.join("\n"));
}

/// Weights stored in f16 on the device (`checkpoint::load_dir_as`, `--weights f16`): the
/// `f16_weights` case ships f16 weights, so storing them in f16 loses nothing and the logits
/// still match transformers (which computed in f32 from the same values) — on the CPU and, with
/// an adapter that has shader-f16, on wgpu, with both attention paths; every parameter really
/// is f16 on the device.
#[test]
fn f16_weights_match_transformers() {
    use burn::tensor::DType;
    use e2llm_model::Precision;
    let dir = hf_cases()
        .into_iter()
        .find(|d| name(d) == "f16_weights")
        .expect("the f16_weights case");
    let g = golden(&dir);
    let mut devices = vec![(Device::flex(), CPU_TOL)];
    match backend::open("wgpu") {
        Ok(d) if d.supports_dtype(DType::F16) => devices.push((d, WGPU_TOL)),
        Ok(_) => eprintln!("wgpu part skipped: the adapter has no shader-f16"),
        Err(e) => eprintln!("wgpu part skipped: no adapter ({e})"),
    }
    for (device, tol) in devices {
        for kernels in [Kernels::Reference, Kernels::Fused] {
            let model = checkpoint::load_dir_as(&dir, &device, Precision::F16)
                .expect("load as f16")
                .with_kernels(kernels);
            assert_eq!(model.embed_tokens.val().dtype(), DType::F16);
            assert_eq!(
                model.layers[0].self_attn.q_proj.weight.val().dtype(),
                DType::F16
            );
            assert_eq!(model.norm.weight.val().dtype(), DType::F16);
            let err = max_abs_diff(&logits(&model, &g), &g.t["logits"].values);
            println!("{device:?} {kernels}: f16 weights max|Δ| = {err:.2e}");
            assert!(
                err <= tol,
                "{device:?} {kernels}: f16 weights vs HF {err:.3e}"
            );
        }
    }
}

#[test]
fn cpu_fused_attention_matches_transformers_for_every_case() {
    // The fused op on the CPU runs the kernels' CPU twins (what the WGSL is tested against).
    let device = Device::flex();
    for dir in hf_cases() {
        let g = golden(&dir);
        let model = checkpoint::load_dir(&dir, &device)
            .expect("load")
            .with_kernels(Kernels::Fused);
        let err = max_abs_diff(&logits(&model, &g), &g.t["logits"].values);
        println!("{:<24} cpu fused max|Δ| = {err:.2e}", name(&dir));
        assert!(err <= CPU_TOL, "{}: fused vs HF {err:.3e}", name(&dir));
    }
}

#[test]
fn rope_frequencies_match_transformers() {
    for dir in hf_cases() {
        let g = golden(&dir);
        let (Some(inv), Some(scale)) = (g.t.get("inv_freq"), g.t.get("attention_scaling")) else {
            continue;
        };
        let cfg = checkpoint::load_config(&dir).expect("config");
        let span = Positions::row(g.positions.clone(), 1.0).span();
        let f = cfg
            .rope
            .frequencies(cfg.head_dim(), cfg.max_position_embeddings, span);
        assert_eq!(f.inv_freq.len(), inv.values.len(), "{}", name(&dir));
        for (j, (a, b)) in f.inv_freq.iter().zip(&inv.values).enumerate() {
            let rel = (*a as f64 - b).abs() / b.abs().max(1e-30);
            assert!(rel < 1e-5, "{}: inv_freq[{j}] {a} vs HF {b}", name(&dir));
        }
        let s = scale.values[0];
        assert!(
            (f.attention_scaling as f64 - s).abs() < 1e-6,
            "{}: attention scaling {} vs HF {s}",
            name(&dir),
            f.attention_scaling
        );
    }
}

#[test]
fn wgpu_logits_match_cpu() {
    let Ok(gpu) = backend::device("wgpu") else {
        println!("skipped: this build has no wgpu backend");
        return;
    };
    if let Err(e) = backend::probe(&gpu) {
        println!("skipped: no wgpu adapter ({e})");
        return;
    }
    let cpu = Device::flex();
    for dir in hf_cases() {
        let g = golden(&dir);
        let on_cpu = logits(&checkpoint::load_dir(&dir, &cpu).expect("load"), &g);
        let as_f64: Vec<f64> = on_cpu.iter().map(|&v| v as f64).collect();
        let model = checkpoint::load_dir(&dir, &gpu).expect("load");
        assert!(
            model.fused_attention() && model.fused_layers(),
            "auto attention on wgpu should be the fused kernel"
        );
        for kernels in [Kernels::Fused, Kernels::Reference] {
            let on_gpu = logits(&model.clone().with_kernels(kernels), &g);
            let err = max_abs_diff(&on_gpu, &as_f64);
            println!(
                "{:<24} wgpu {kernels:<9} vs cpu max|Δ| = {err:.2e}",
                name(&dir)
            );
            assert!(
                err <= WGPU_TOL,
                "{}: wgpu {kernels} vs cpu {err:.3e}",
                name(&dir)
            );
            let hf = max_abs_diff(&on_gpu, &g.t["logits"].values);
            assert!(
                hf <= WGPU_TOL,
                "{}: wgpu {kernels} vs HF {hf:.3e}",
                name(&dir)
            );
        }
    }
}

#[test]
fn tokenizer_and_greedy_generation_match_transformers() {
    let dir = hf_fixtures().join("tokenizer_demo");
    let g = golden(&dir);
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("golden.json")).expect("golden.json"),
    )
    .expect("golden.json is JSON");
    let cfg = checkpoint::load_config(&dir).expect("config");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"), cfg.vocab_size).expect("tokenizer");
    let text = meta["text"].as_str().expect("text");
    assert_eq!(
        tok.encode(text, true).expect("encode"),
        g.ids,
        "token ids differ from HF"
    );

    let opts = GenerateOptions {
        max_new_tokens: g.t["greedy_ids"].values.len(),
        ..GenerateOptions::default()
    };
    let want: Vec<u32> = g.t["greedy_ids"].values.iter().map(|&v| v as u32).collect();
    let mut devices = vec![("cpu", Device::flex())];
    match backend::open("wgpu") {
        Ok(gpu) => devices.push(("wgpu", gpu)),
        Err(e) => println!("wgpu part skipped: {e}"),
    }
    for (backend, device) in devices {
        let model = checkpoint::load_dir(&dir, &device).expect("load");
        for kernels in [Kernels::Reference, Kernels::Fused] {
            let model = model.clone().with_kernels(kernels);
            let got = generate(&model, &g.ids, &opts, |_| true).expect("generate");
            assert_eq!(
                got, want,
                "{backend} {kernels}: greedy continuation differs from transformers.generate"
            );
        }
    }
}

#[test]
fn loading_from_bytes_equals_loading_from_files() {
    // The browser has no filesystem: the same checkpoint given as bytes must load identically.
    let dir = hf_fixtures().join("sharded");
    let g = golden(&dir);
    let config = std::fs::read_to_string(dir.join("config.json")).expect("config");
    let index = std::fs::read_to_string(dir.join("model.safetensors.index.json")).expect("index");
    let names = e2llm_model::weights::shard_files("index", &index).expect("index parses");
    assert!(
        names.len() >= 2,
        "the sharded fixture should have several shards"
    );
    let bytes: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), std::fs::read(dir.join(n)).expect("shard")))
        .collect();
    let shards: Vec<(&str, &[u8])> = bytes.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
    let model = checkpoint::load_from_bytes(&config, &shards, &Device::flex()).expect("load");
    let err = max_abs_diff(&logits(&model, &g), &g.t["logits"].values);
    assert!(
        err <= CPU_TOL,
        "from-bytes logits differ from HF by {err:.3e}"
    );
    // One shard alone is missing tensors: a clear error, not a panic.
    let e =
        checkpoint::load_from_bytes(&config, &shards[..1], &Device::flex()).expect_err("partial");
    assert!(e.to_string().contains("missing"), "{e}");
}
