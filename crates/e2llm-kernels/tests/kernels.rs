//! Every shader validates with naga (no GPU needed); every kernel matches its CPU twin on
//! seeded random inputs over awkward shapes on whatever adapter exists (lavapipe in CI); every
//! backward twin matches finite differences of its forward twin.

use e2llm_kernels::cpu::{self, AdamWParams, AttentionShape, MapWindow};
use e2llm_kernels::{ops, shaders, Gpu};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// llm.c-style check: |a − b| ≤ tol + |b|·rel for every element.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0.0f32, 0usize);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let err = (a - b).abs();
        assert!(a.is_finite(), "{what}[{i}] = {a}");
        assert!(
            err <= tol + b.abs() * rel,
            "{what}[{i}]: got {a}, want {b} (|Δ| {err})"
        );
        if err > worst.0 {
            worst = (err, i);
        }
    }
    eprintln!("{what}: max |Δ| {:.2e} at {}", worst.0, worst.1);
}

/// The adapter, or `None` with the reason printed (the caller then reports "skipped").
fn gpu() -> Option<Gpu> {
    match Gpu::new() {
        Ok(g) => {
            eprintln!("adapter: {}", g.adapter_name);
            Some(g)
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// Seeded inputs of one attention case: q, k, v, E²-LLM-style positions (4 sinks, then an
/// offset and a fractional step), the shape and the inverse frequencies.
struct Case {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    qpos: Vec<f32>,
    kpos: Vec<f32>,
    s: AttentionShape,
    f: Vec<f32>,
}

fn attention_case(
    rng: &mut ChaCha8Rng,
    (sq, skv, hq, hkv, d, g): (usize, usize, usize, usize, usize, f32),
    (step, offset): (f32, f32),
) -> Case {
    let kpos: Vec<f32> = (0..skv)
        .map(|i| {
            if i < 4 {
                i as f32
            } else {
                i as f32 * step + offset
            }
        })
        .collect();
    Case {
        q: rand_vec(rng, sq * hq * d, 1.0),
        k: rand_vec(rng, skv * hkv * d, 1.0),
        v: rand_vec(rng, skv * hkv * d, 1.0),
        qpos: kpos[skv - sq..].to_vec(),
        kpos,
        s: AttentionShape::new(sq, skv, hq, hkv, d, g),
        f: cpu::inv_freq(d, 10000.0),
    }
}

#[test]
fn every_shader_parses_and_validates_with_naga() {
    for (name, src) in shaders::ALL {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(
            src.starts_with("// ") && src.contains("CPU twin"),
            "{name}: header must give the math, bindings, dispatch and CPU twin"
        );
        // WebGPU's default limit on workgroup memory: 16 KiB.
        let shared: u32 = module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
            .sum();
        assert!(
            shared <= 16384,
            "{name}: {shared} bytes of workgroup memory"
        );
    }
}

/// The value of `const name: u32` in `module`.
fn const_u32(module: &naga::Module, name: &str) -> usize {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no const {name}"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v as usize,
        ref e => panic!("{name} is {e:?}"),
    }
}

#[test]
fn every_attention_build_validates_and_has_the_rows_and_width_the_host_plans_for() {
    use e2llm_kernels::attention::Tuning;
    use e2llm_kernels::launch::Spec;
    // The host sizes the tiled kernels' grids by the tuning's rows; the shader's QB must agree
    // or rows would be skipped (or computed twice). Every build must validate.
    // The half-precision K/V build must declare k and v as f16 arrays (and needs naga's f16
    // capability, as the adapter needs shader-f16).
    for kv_f16 in [false, true] {
        for rows in [1u32, 2, 4, 8] {
            for head_dim in [2u32, 32, 64, 96, 128] {
                let spec = Spec {
                    rows,
                    head_dim,
                    kv_f16,
                };
                let src = shaders::specialize(shaders::ATTENTION, spec);
                // Every line meant for this build is uncommented, indented ones included.
                assert!(!src.contains(&format!("//QB{rows} ")), "{spec:?}");
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{spec:?}: {}", e.emit_to_string(&src)));
                let caps = if kv_f16 {
                    naga::valid::Capabilities::SHADER_FLOAT16
                } else {
                    naga::valid::Capabilities::empty()
                };
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{spec:?}: {e:?}"));
                assert_eq!(const_u32(&module, "QB"), rows as usize, "{spec:?}");
                assert_eq!(const_u32(&module, "HD"), head_dim as usize, "{spec:?}");
                for name in ["k", "v"] {
                    let (_, var) = module
                        .global_variables
                        .iter()
                        .find(|(_, g)| g.name.as_deref() == Some(name))
                        .unwrap_or_else(|| panic!("no binding {name}"));
                    let width = match module.types[var.ty].inner {
                        naga::TypeInner::Array { base, .. } => match module.types[base].inner {
                            naga::TypeInner::Scalar(s) => s.width,
                            ref t => panic!("{name}: array of {t:?}"),
                        },
                        ref t => panic!("{name} is {t:?}"),
                    };
                    assert_eq!(width, if kv_f16 { 2 } else { 4 }, "{name} {spec:?}");
                }
            }
        }
    }
    // As written: four rows, width 128 (what CPU rasterisers build at that width).
    let module = naga::front::wgsl::parse_str(shaders::ATTENTION).expect("parses");
    assert_eq!(
        const_u32(&module, "QB"),
        Tuning::CPU_RASTER.forward_rows(128)
    );
    assert_eq!(const_u32(&module, "HD"), 128);
    // GPUs: rows by head width (what the H100 measured fastest at D 32 and 64).
    let gpu = Tuning::GPU;
    let by_width: Vec<(usize, usize)> = [16, 32, 64, 96, 128]
        .iter()
        .map(|&d| (gpu.forward_rows(d), gpu.backward_rows(d)))
        .collect();
    assert_eq!(by_width, [(4, 4), (4, 2), (2, 1), (1, 1), (1, 1)]);
    // CPU rasterisers: 8 rows up to width 32, else 4 — also when 8 are asked for.
    let cpu = Tuning::CPU_RASTER;
    let by_width: Vec<(usize, usize)> = [16, 32, 64, 128]
        .iter()
        .map(|&d| (cpu.forward_rows(d), cpu.backward_rows(d)))
        .collect();
    assert_eq!(by_width, [(8, 8), (8, 8), (4, 4), (4, 4)]);
    let eight = Tuning { rows: 8, ..cpu };
    assert_eq!((eight.forward_rows(32), eight.forward_rows(64)), (8, 4));
    assert_eq!(
        shaders::specialize(shaders::ATTENTION, Spec::default()),
        shaders::ATTENTION
    );
}

#[test]
fn attention_tuning_is_chosen_by_adapter_and_parsed_with_clear_errors() {
    use e2llm_kernels::attention::Tuning;
    assert_eq!(
        Tuning::for_adapter("NVIDIA H100 80GB HBM3", true),
        Tuning::GPU
    );
    assert_eq!(
        Tuning::for_adapter("llvmpipe (LLVM 15.0.6, 256 bits)", false),
        Tuning::CPU_RASTER
    );
    assert_eq!(
        Tuning::for_adapter("SwiftShader Device (Subzero)", true),
        Tuning::CPU_RASTER
    );
    assert_eq!(Tuning::for_adapter("", false), Tuning::CPU_RASTER);
    assert_eq!(Tuning::parse("gpu"), Ok(Tuning::GPU));
    // The block forward: GPUs, head width 32, few rows-kernel workgroups.
    let shape =
        |sq: usize, hq: usize, head_dim: usize| AttentionShape::new(sq, sq, hq, 1, head_dim, 1.0);
    assert!(Tuning::GPU.block_forward(shape(4096, 4, 32), 1));
    assert!(!Tuning::GPU.block_forward(shape(4096, 4, 48), 1));
    assert!(!Tuning::GPU.block_forward(shape(65536, 4, 32), 1));
    assert!(!Tuning::GPU.block_forward(shape(4096, 4, 32), 8));
    assert!(!Tuning::GPU.block_forward(shape(4096, 32, 64), 1));
    assert!(!Tuning::GPU.block_forward(shape(1024, 4, 64), 1));
    assert!(!Tuning::CPU_RASTER.block_forward(shape(4096, 4, 32), 1));
    // The GPU backward takes fewer rows while dq would get few workgroups (not on rasterisers,
    // nor with rows fixed).
    assert_eq!(Tuning::GPU.backward_rows_for(shape(4096, 4, 32), 1), 1);
    assert_eq!(Tuning::GPU.backward_rows_for(shape(65536, 4, 32), 1), 2);
    assert_eq!(Tuning::GPU.backward_rows_for(shape(256, 4, 32), 8), 2);
    assert_eq!(
        Tuning::CPU_RASTER.backward_rows_for(shape(4096, 4, 32), 1),
        8
    );
    let fixed = Tuning {
        rows: 2,
        ..Tuning::GPU
    };
    assert_eq!(fixed.backward_rows_for(shape(4096, 4, 32), 1), 2);
    assert_eq!(
        Tuning::parse("gpu, block=0"),
        Ok(Tuning {
            block: false,
            ..Tuning::GPU
        })
    );
    assert_eq!(
        Tuning::parse("rows=1, tiles=16"),
        Ok(Tuning {
            rows: 1,
            tiles_per_dispatch: 16,
            ..Tuning::CPU_RASTER
        })
    );
    for (bad, says) in [
        ("rows=3", "1, 2, 4 or 8"),
        ("tiles=0", "at least 1"),
        ("rows", "key=value"),
        ("depth=3", "unknown key"),
        ("gpu,block=2", "0 or 1"),
        ("rows=x", "whole number"),
    ] {
        let e = Tuning::parse(bad).expect_err(bad);
        assert!(e.contains(says), "{bad}: {e}");
    }
}

/// The attention builds the GPU tests run on one adapter at head width `d`: the adapter's own
/// (`own`), the GPU build (rows by head width, the block forward at widths that are multiples
/// of 32) and each fixed rows-per-invocation, these with
/// short chunks (several dispatches per loop at these lengths) — each distinct build once (8
/// rows fall back to 4 past width 32).
fn tunings(
    own: e2llm_kernels::attention::Tuning,
    d: usize,
) -> Vec<e2llm_kernels::attention::Tuning> {
    use e2llm_kernels::attention::Tuning;
    let short = |t: Tuning| Tuning {
        tiles_per_dispatch: 2,
        ..t
    };
    let mut all = vec![own, short(Tuning::GPU)];
    for rows in [1, 2, 4, 8] {
        all.push(short(Tuning {
            rows,
            ..Tuning::CPU_RASTER
        }));
    }
    let build = |t: &Tuning| {
        (
            t.forward_rows(d),
            t.backward_rows(d),
            t.tiles_per_dispatch,
            t.block && d == e2llm_kernels::attention::BLOCK_WIDTH,
        )
    };
    let mut seen = Vec::new();
    all.retain(|t| {
        let b = build(t);
        let new = !seen.contains(&b);
        seen.push(b);
        new
    });
    all
}

#[test]
fn rope_twin_backward_is_the_inverse_and_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (t, h, d) = (5, 3, 16);
    let x = rand_vec(&mut rng, t * h * d, 1.0);
    let pos: Vec<f32> = (0..t).map(|i| i as f32 * 7.3 + 0.25).collect();
    let g = vec![3.0; t];
    let f = cpu::inv_freq(d, 10000.0);
    let y = cpu::rope(&x, &pos, &g, &f, h, 1.0, 1.0);
    let back = cpu::rope(&y, &pos, &g, &f, h, 1.0, -1.0);
    assert_close("inverse(rope(x))", &back, &x, 1e-5, 1e-5);
    // d/dx of Σ c·rope(x) is rope⁻¹(c) times the factor squared over… a linear map: check one
    // directional derivative by finite differences with factor 1.3.
    let c = rand_vec(&mut rng, x.len(), 1.0);
    let loss = |x: &[f32]| -> f64 {
        cpu::rope(x, &pos, &g, &f, h, 1.3, 1.0)
            .iter()
            .zip(&c)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum()
    };
    let grad = cpu::rope(&c, &pos, &g, &f, h, 1.3, -1.0);
    for i in [0, 7, 40, x.len() - 1] {
        let mut xp = x.clone();
        xp[i] += 1e-2;
        let mut xm = x.clone();
        xm[i] -= 1e-2;
        let fd = (loss(&xp) - loss(&xm)) / 2e-2;
        assert!(
            (fd - grad[i] as f64).abs() < 1e-3,
            "x[{i}]: fd {fd} vs {}",
            grad[i]
        );
    }
}

#[test]
fn rmsnorm_swiglu_cross_entropy_backward_twins_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let fd = |f: &dyn Fn(&[f32]) -> f64, x: &[f32], i: usize| -> f64 {
        let h = 1e-3f32;
        let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
        xp[i] += h;
        xm[i] -= h;
        (f(&xp) - f(&xm)) / (2.0 * h as f64)
    };
    let dot =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum() };
    // RMSNorm: L = Σ c·y.
    let (rows, d) = (3, 9);
    let x = rand_vec(&mut rng, rows * d, 2.0);
    let w = rand_vec(&mut rng, d, 1.5);
    let c = rand_vec(&mut rng, rows * d, 1.0);
    let (_, rstd) = cpu::rmsnorm(&x, &w, 1e-5);
    let (dx, dw) = cpu::rmsnorm_backward(&x, &w, &rstd, &c);
    for i in [0, 5, 13, 26] {
        let num = fd(&|x| dot(&cpu::rmsnorm(x, &w, 1e-5).0, &c), &x, i);
        assert!(
            (num - dx[i] as f64).abs() < 2e-3,
            "rmsnorm dx[{i}]: fd {num} vs {}",
            dx[i]
        );
    }
    for i in [0, 4, 8] {
        let num = fd(&|w| dot(&cpu::rmsnorm(&x, w, 1e-5).0, &c), &w, i);
        assert!(
            (num - dw[i] as f64).abs() < 2e-3,
            "rmsnorm dw[{i}]: fd {num} vs {}",
            dw[i]
        );
    }
    // SwiGLU.
    let a = rand_vec(&mut rng, 20, 4.0);
    let b = rand_vec(&mut rng, 20, 2.0);
    let c = rand_vec(&mut rng, 20, 1.0);
    let (da, db) = cpu::swiglu_backward(&a, &b, &c);
    for i in [0, 3, 11, 19] {
        let na = fd(&|a| dot(&cpu::swiglu(a, &b), &c), &a, i);
        let nb = fd(&|b| dot(&cpu::swiglu(&a, b), &c), &b, i);
        assert!(
            (na - da[i] as f64).abs() < 2e-3,
            "swiglu da[{i}]: {na} vs {}",
            da[i]
        );
        assert!(
            (nb - db[i] as f64).abs() < 2e-3,
            "swiglu db[{i}]: {nb} vs {}",
            db[i]
        );
    }
    // Cross-entropy: d(scale · Σ loss)/dz.
    let (n, vocab) = (4, 11);
    let z = rand_vec(&mut rng, n * vocab, 3.0);
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 5 + 2) % vocab as u32).collect();
    let weights = vec![1.0, 20.0, 0.0, 2.5];
    let scale = 1.0 / weights.iter().sum::<f32>();
    let (_, dz) = cpu::cross_entropy(&z, &targets, &weights, vocab, scale);
    for i in [0, 12, 13, 30, 43] {
        let num = fd(
            &|z| {
                let (l, _) = cpu::cross_entropy(z, &targets, &weights, vocab, scale);
                l.iter().map(|v| *v as f64).sum::<f64>() * scale as f64
            },
            &z,
            i,
        );
        assert!(
            (num - dz[i] as f64).abs() < 2e-3,
            "ce dz[{i}]: {num} vs {}",
            dz[i]
        );
    }
}

#[test]
fn elementwise_and_row_kernels_match_their_twins_on_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // RoPE: awkward token counts, several head widths, fractional positions, g up to 64, yarn factor.
    for (t, h, d, g, factor) in [
        (1, 1, 2, 1.0, 1.0),
        (37, 3, 32, 64.0, 1.0),
        (130, 4, 64, 5.5, 1.2),
        (9, 2, 128, 17.0, 1.0),
    ] {
        let x = rand_vec(&mut rng, t * h * d, 1.0);
        let pos: Vec<f32> = (0..t).map(|i| i as f32 * 1.37 + 3.0).collect();
        let gs = vec![g; t];
        let f = cpu::inv_freq(d, 10000.0);
        for dir in [1.0, -1.0] {
            let want = cpu::rope(&x, &pos, &gs, &f, h, factor, dir);
            let got = ops::rope(&gpu, &x, &pos, &gs, &f, h, factor, dir).expect("rope");
            assert_close(
                &format!("rope t{t} h{h} d{d} dir{dir}"),
                &got,
                &want,
                1e-5,
                1e-4,
            );
        }
    }
    // RMSNorm forward and backward: widths below, at and above the workgroup size.
    for (rows, d) in [(1, 3), (7, 256), (5, 300), (3, 1000)] {
        let x = rand_vec(&mut rng, rows * d, 2.0);
        let w = rand_vec(&mut rng, d, 1.5);
        let dy = rand_vec(&mut rng, rows * d, 1.0);
        let (y0, r0) = cpu::rmsnorm(&x, &w, 1e-6);
        let (y1, r1) = ops::rmsnorm(&gpu, &x, &w, 1e-6).expect("rmsnorm");
        assert_close(&format!("rmsnorm y {rows}x{d}"), &y1, &y0, 1e-5, 1e-4);
        assert_close(&format!("rmsnorm rstd {rows}x{d}"), &r1, &r0, 1e-5, 1e-4);
        let (dx0, dw0) = cpu::rmsnorm_backward(&x, &w, &r0, &dy);
        let (dx1, dw1) = ops::rmsnorm_backward(&gpu, &x, &w, &r0, &dy).expect("rmsnorm bwd");
        assert_close(&format!("rmsnorm dx {rows}x{d}"), &dx1, &dx0, 1e-5, 1e-4);
        assert_close(&format!("rmsnorm dw {rows}x{d}"), &dw1, &dw0, 1e-4, 1e-4);
    }
    // SwiGLU: a length that is not a multiple of the workgroup.
    for n in [1, 257, 5000] {
        let a = rand_vec(&mut rng, n, 6.0);
        let b = rand_vec(&mut rng, n, 2.0);
        let dh = rand_vec(&mut rng, n, 1.0);
        assert_close(
            "swiglu",
            &ops::swiglu(&gpu, &a, &b).expect("swiglu"),
            &cpu::swiglu(&a, &b),
            1e-5,
            1e-4,
        );
        let (da0, db0) = cpu::swiglu_backward(&a, &b, &dh);
        let (da1, db1) = ops::swiglu_backward(&gpu, &a, &b, &dh).expect("swiglu bwd");
        assert_close("swiglu da", &da1, &da0, 1e-5, 1e-4);
        assert_close("swiglu db", &db1, &db0, 1e-5, 1e-4);
    }
    // Cross-entropy: vocabularies below and above 256, large logits (max-subtraction matters).
    for (n, vocab, spread) in [(3, 5, 1.0), (17, 1024, 30.0), (4, 3001, 5.0)] {
        let z = rand_vec(&mut rng, n * vocab, spread);
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { 20.0 } else { 1.0 })
            .collect();
        let scale = 1.0 / weights.iter().sum::<f32>();
        let (l0, d0) = cpu::cross_entropy(&z, &targets, &weights, vocab, scale);
        let (l1, d1) = ops::cross_entropy(&gpu, &z, &targets, &weights, vocab, scale).expect("ce");
        assert_close(&format!("ce loss V{vocab}"), &l1, &l0, 1e-4, 1e-5);
        assert_close(&format!("ce grad V{vocab}"), &d1, &d0, 1e-6, 1e-4);
    }
    // AdamW: several steps in a row, with the bias corrections of each.
    let n = 1000;
    let (mut p0, g) = (rand_vec(&mut rng, n, 1.0), rand_vec(&mut rng, n, 0.1));
    let (mut m0, mut v0) = (vec![0.0; n], vec![0.0; n]);
    let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
    for step in 1..=3 {
        let hp = AdamWParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
        };
        cpu::adamw(&mut p0, &g, &mut m0, &mut v0, hp);
        ops::adamw(&gpu, &mut p1, &g, &mut m1, &mut v1, hp).expect("adamw");
    }
    assert_close("adamw param", &p1, &p0, 1e-6, 1e-5);
    assert_close("adamw m", &m1, &m0, 1e-7, 1e-5);
    assert_close("adamw v", &v1, &v0, 1e-9, 1e-5);
}

#[test]
fn flash_attention_matches_the_plain_path() {
    let Some(mut gpu) = gpu() else { return };
    let own = gpu.tuning;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // (sq, skv, hq, hkv, d, g): lengths off the tile and workgroup sizes, GQA 1/2/4,
    // head_dim 32/64/128, a KV-cache prefix (skv > sq), g up to 64; ≤ 8 queries take the
    // split-key decode (one split, several, D 128, GQA 4).
    let cases = [
        (1, 1, 1, 1, 32, 1.0),
        (1, 1000, 4, 1, 64, 20.0),
        (8, 520, 4, 2, 128, 3.0),
        (3, 257, 2, 2, 32, 1.0),
        (70, 70, 4, 4, 32, 1.0),
        (33, 100, 4, 2, 64, 5.0),
        (65, 65, 8, 2, 128, 64.0),
        (130, 130, 2, 1, 32, 17.0),
        (1100, 1100, 1, 1, 32, 1.0),
        (270, 600, 4, 2, 32, 5.0),
        (600, 600, 2, 2, 64, 3.0),
        (300, 300, 4, 2, 128, 1.0),
    ];
    for case in cases {
        let Case {
            q,
            k,
            v,
            qpos,
            kpos,
            s,
            f,
        } = attention_case(&mut rng, case, (0.75, 40.0));
        let (o0, l0) = cpu::attention(&q, &k, &v, &qpos, &kpos, &f, s);
        for t in tunings(own, s.head_dim) {
            gpu.tuning = t;
            let (o1, l1) =
                e2llm_kernels::attention::attention(&gpu, &q, &k, &v, &qpos, &kpos, &f, s)
                    .expect("attention");
            let tag = format!("attention {case:?} {t:?}");
            assert_close(&format!("{tag} o"), &o1, &o0, 2e-5, 1e-4);
            assert_close(&format!("{tag} lse"), &l1, &l0, 2e-5, 1e-4);
        }
    }
}

#[test]
fn attention_backward_twin_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (sq, skv, hq, hkv, d) = (3, 5, 2, 1, 4);
    let s = AttentionShape {
        sq,
        skv,
        hq,
        hkv,
        head_dim: d,
        scale: 0.7,
        g: 2.5,
        factor: 1.1,
    };
    let q = rand_vec(&mut rng, sq * hq * d, 1.0);
    let k = rand_vec(&mut rng, skv * hkv * d, 1.0);
    let v = rand_vec(&mut rng, skv * hkv * d, 1.0);
    let kpos = vec![0.0, 1.0, 2.0, 9.5, 11.0];
    let qpos = kpos[skv - sq..].to_vec();
    let f = cpu::inv_freq(d, 100.0);
    let c = rand_vec(&mut rng, q.len(), 1.0);
    let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
        let (o, _) = cpu::attention(q, k, v, &qpos, &kpos, &f, s);
        o.iter().zip(&c).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let (dq, dk, dv) = cpu::attention_backward(&q, &k, &v, &qpos, &kpos, &f, &c, s);
    let h = 1e-3f32;
    let bump = |x: &[f32], i: usize, by: f32| {
        let mut y = x.to_vec();
        y[i] += by;
        y
    };
    for (i, want) in dq.iter().enumerate() {
        let fd =
            (loss(&bump(&q, i, h), &k, &v) - loss(&bump(&q, i, -h), &k, &v)) / (2.0 * h as f64);
        assert!(
            (fd - *want as f64).abs() < 1e-3,
            "dq[{i}]: fd {fd} vs {want}"
        );
    }
    for i in 0..k.len() {
        let fdk =
            (loss(&q, &bump(&k, i, h), &v) - loss(&q, &bump(&k, i, -h), &v)) / (2.0 * h as f64);
        let fdv =
            (loss(&q, &k, &bump(&v, i, h)) - loss(&q, &k, &bump(&v, i, -h))) / (2.0 * h as f64);
        assert!(
            (fdk - dk[i] as f64).abs() < 1e-3,
            "dk[{i}]: fd {fdk} vs {}",
            dk[i]
        );
        assert!(
            (fdv - dv[i] as f64).abs() < 1e-3,
            "dv[{i}]: fd {fdv} vs {}",
            dv[i]
        );
    }
}

#[test]
fn flash_attention_backward_matches_its_twin() {
    let Some(mut gpu) = gpu() else { return };
    let own = gpu.tuning;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // Lengths whose loops span several dispatches (more than 8 tiles) are included.
    let cases = [
        (1, 1, 1, 1, 32, 1.0),
        (70, 70, 4, 4, 32, 1.0),
        (33, 100, 4, 2, 64, 5.0),
        (65, 65, 4, 2, 128, 1.0),
        (40, 40, 8, 2, 128, 17.0),
        (130, 130, 2, 1, 32, 64.0),
        (300, 300, 4, 1, 32, 1.0),
        (65, 65, 4, 1, 128, 1.0),
        (700, 700, 2, 1, 64, 9.0),
        (270, 530, 2, 1, 32, 3.0),
    ];
    for case in cases {
        let Case {
            q,
            k,
            v,
            qpos,
            kpos,
            s,
            f,
        } = attention_case(&mut rng, case, (1.5, 7.0));
        let d_o = rand_vec(&mut rng, q.len(), 1.0);
        let (dq0, dk0, dv0) = cpu::attention_backward(&q, &k, &v, &qpos, &kpos, &f, &d_o, s);
        for t in tunings(own, s.head_dim) {
            gpu.tuning = t;
            let (dq1, dk1, dv1) = e2llm_kernels::attention::attention_backward(
                &gpu, &q, &k, &v, &qpos, &kpos, &f, &d_o, s,
            )
            .expect("backward");
            let tag = format!("attention bwd {case:?} {t:?}");
            assert_close(&format!("{tag} dq"), &dq1, &dq0, 5e-5, 1e-3);
            assert_close(&format!("{tag} dk"), &dk1, &dk0, 5e-5, 1e-3);
            assert_close(&format!("{tag} dv"), &dv1, &dv0, 5e-5, 1e-3);
        }
    }
}

/// The CPU attention the flex backend runs (`flash_cpu`: f32, padded widths, blocked backward)
/// against the f64 twins, forward and backward: decode and prefill after a cache, GQA 1/2/4,
/// widths that need padding (2, 6, 24, 100) or none (16…256) and one past the padded builds
/// (264, the twins themselves), fractional positions, g up to 64, an attention factor.
#[test]
fn cpu_attention_matches_its_twins_forward_and_backward() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let cases = [
        (1, 1, 1, 1, 2, 1.0),
        (1, 40, 4, 2, 32, 1.0),
        (17, 17, 4, 4, 6, 1.0),
        (33, 33, 4, 1, 16, 64.0),
        (20, 57, 8, 2, 24, 5.0),
        (70, 70, 2, 1, 32, 17.0),
        (40, 40, 4, 2, 64, 3.0),
        (19, 35, 2, 2, 100, 1.0),
        (24, 24, 4, 4, 128, 9.0),
        (9, 12, 2, 1, 256, 1.0),
        (5, 7, 2, 2, 264, 1.0),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let Case {
            q,
            k,
            v,
            qpos,
            kpos,
            mut s,
            f,
        } = attention_case(&mut rng, case, (1.5, 7.0));
        if i % 2 == 1 {
            s.factor = 1.1;
        }
        let tag = format!("cpu attention {case:?}");
        let (o0, lse0) = cpu::attention(&q, &k, &v, &qpos, &kpos, &f, s);
        let (o1, lse1) = e2llm_kernels::flash_cpu::attention(&q, &k, &v, &qpos, &kpos, &f, s);
        assert_close(&format!("{tag} o"), &o1, &o0, 2e-6, 1e-5);
        assert_close(&format!("{tag} lse"), &lse1, &lse0, 2e-6, 1e-5);
        let d_o = rand_vec(&mut rng, q.len(), 1.0);
        let (dq0, dk0, dv0) = cpu::attention_backward(&q, &k, &v, &qpos, &kpos, &f, &d_o, s);
        let (dq1, dk1, dv1) = e2llm_kernels::flash_cpu::attention_backward(
            &q, &k, &v, &qpos, &kpos, &f, &o1, &lse1, &d_o, s,
        );
        assert_close(&format!("{tag} dq"), &dq1, &dq0, 5e-6, 1e-4);
        assert_close(&format!("{tag} dk"), &dk1, &dk0, 5e-6, 1e-4);
        assert_close(&format!("{tag} dv"), &dv1, &dv0, 5e-6, 1e-4);
    }
}

#[test]
fn attention_map_pools_the_weights_like_its_twin() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (sq, skv, hq, hkv, d, g, w) in [
        (
            40,
            40,
            2,
            1,
            32,
            1.0,
            MapWindow {
                head: 1,
                row0: 0,
                nrows: 40,
                out_rows: 8,
                out_cols: 10,
            },
        ),
        (
            300,
            300,
            4,
            2,
            64,
            3.0,
            MapWindow {
                head: 2,
                row0: 250,
                nrows: 50,
                out_rows: 5,
                out_cols: 16,
            },
        ),
        (
            20,
            90,
            2,
            2,
            32,
            8.0,
            MapWindow {
                head: 0,
                row0: 3,
                nrows: 17,
                out_rows: 17,
                out_cols: 7,
            },
        ),
    ] {
        let q = rand_vec(&mut rng, sq * hq * d, 1.5);
        let k = rand_vec(&mut rng, skv * hkv * d, 1.5);
        let v = rand_vec(&mut rng, skv * hkv * d, 1.0);
        let kpos: Vec<f32> = (0..skv).map(|i| i as f32).collect();
        let qpos = kpos[skv - sq..].to_vec();
        let s = AttentionShape::new(sq, skv, hq, hkv, d, g);
        let f = cpu::inv_freq(d, 10000.0);
        let want = cpu::attention_map(&q, &k, &qpos, &kpos, &f, s, w);
        let got = e2llm_kernels::attention::attention_map(&gpu, &q, &k, &v, &qpos, &kpos, &f, s, w)
            .expect("map");
        assert_close(
            &format!("attention map sq{sq} skv{skv}"),
            &got,
            &want,
            1e-5,
            1e-3,
        );
        // Every image row is a mean of softmax rows: it sums to 1.
        for r in want.chunks_exact(w.out_cols) {
            let total: f32 = r.iter().sum();
            assert!((total - 1.0).abs() < 1e-4, "row sums to {total}");
        }
    }
}

/// 16k tokens through the fused forward: completes, holds only linear memory (the score matrix
/// alone would be 2 GiB), and sampled rows match a direct computation.
#[test]
fn long_context_prefill_runs_in_linear_memory() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (s, h, d) = (16_384usize, 2usize, 32usize);
    let q = rand_vec(&mut rng, s * h * d, 1.0);
    let k = rand_vec(&mut rng, s * h * d, 1.0);
    let v = rand_vec(&mut rng, s * h * d, 1.0);
    let pos: Vec<f32> = (0..s).map(|i| i as f32).collect();
    let g = 64.0;
    let shape = AttentionShape::new(s, s, h, h, d, g);
    let f = cpu::inv_freq(d, 10000.0);
    let bufs = e2llm_kernels::attention::AttentionBuffers::new(
        &gpu,
        &q,
        &k,
        &v,
        &pos,
        &pos,
        &f,
        &[],
        shape,
    )
    .expect("buffers");
    let bytes = bufs.bytes();
    let matrix = (h * s * s * 4) as u64;
    eprintln!(
        "16k prefill: {:.1} MiB of buffers, vs {:.0} MiB for one score matrix",
        bytes as f64 / 1048576.0,
        matrix as f64 / 1048576.0
    );
    assert!(bytes * 100 < matrix, "memory is not linear: {bytes} bytes");
    let mut enc = gpu.encoder();
    bufs.record_forward(&gpu, &mut enc);
    let (o, lse) = bufs.read_forward(&gpu, enc).expect("forward");
    let qr = cpu::rope(&q, &pos, &vec![g; s], &f, h, 1.0, 1.0);
    let kr = cpu::rope(&k, &pos, &vec![g; s], &f, h, 1.0, 1.0);
    for &i in &[0usize, 1, 4_095, 9_999, 16_383] {
        for hh in 0..h {
            let qi = &qr[(i * h + hh) * d..][..d];
            let sc: Vec<f64> = (0..=i)
                .map(|j| {
                    shape.scale as f64
                        * qi.iter()
                            .zip(&kr[(j * h + hh) * d..][..d])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
                .collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            let want_lse = (mx + z.ln()) as f32;
            let got_lse = lse[hh * s + i];
            assert!(
                (got_lse - want_lse).abs() < 1e-3,
                "lse row {i} head {hh}: {got_lse} vs {want_lse}"
            );
            for c in [0, d / 2, d - 1] {
                let want: f64 = (0..=i)
                    .map(|j| (sc[j] - mx).exp() / z * v[(j * h + hh) * d + c] as f64)
                    .sum();
                let got = o[(i * h + hh) * d + c];
                assert!(
                    (got as f64 - want).abs() < 1e-4,
                    "o row {i} head {hh} col {c}: {got} vs {want}"
                );
            }
        }
    }
}
