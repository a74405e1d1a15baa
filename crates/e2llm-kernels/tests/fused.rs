//! The burn op (`e2llm_kernels::fused::rope_attention`) against attention built from plain burn
//! ops (host RoPE tables, matmul, causal mask, softmax, matmul): output and the gradients of
//! q, k and v through autodiff, on flex (`flash_cpu`) and on wgpu (attention.wgsl launched on
//! burn's own buffers; lavapipe in CI). Batch rows carry different positions and scales
//! (E²-LLM), GQA groups of 1/2/4, lengths past one launch chunk, and a cached prefix (Sq < Skv).
//! Also: every entry point the burn ops launch, as cubecl compiles it (`shaders::for_entry`),
//! binds exactly 0..=n in group 0 — its storage buffers read-write, then the uniform Params —
//! checked with naga (no GPU).

use burn::tensor::{activation, Bool, Device, DeviceKind, Tensor, TensorData};
use e2llm_kernels::cpu;
use e2llm_kernels::fused::{rope_attention, rope_attention_backward, rope_attention_forward};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 data")
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = 0.0f32;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        let err = (a - b).abs();
        assert!(
            a.is_finite() && err <= tol * (1.0 + b.abs()),
            "{what}[{i}]: got {a}, want {b}"
        );
        worst = worst.max(err);
    }
    eprintln!("{what}: max |Δ| {worst:.2e}");
}

/// One case: `b` rows, `sq` queries after `skv − sq` cached keys, heads, head width.
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    sq: usize,
    skv: usize,
    hq: usize,
    hkv: usize,
    d: usize,
}

/// `Case` in one line: batch, query tokens, key tokens, query heads, KV heads, head width.
const fn case(b: usize, sq: usize, skv: usize, hq: usize, hkv: usize, d: usize) -> Case {
    Case {
        b,
        sq,
        skv,
        hq,
        hkv,
        d,
    }
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    w: Vec<f32>,
    /// Per row: key positions already divided by that row's g (queries are the last sq).
    kpos: Vec<Vec<f32>>,
    inv_freq: Vec<f32>,
}

fn inputs(c: Case, seed: u64) -> Inputs {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // E²-LLM rows: 4 sink tokens, then an offset t; each row its own scale g.
    let kpos = (0..c.b)
        .map(|r| {
            let g = [1.0f32, 3.0, 16.0, 64.0][r % 4];
            let t = rng.random_range(0..200) as f32;
            (0..c.skv)
                .map(|i| if i < 4 { i as f32 } else { i as f32 + t } / g)
                .collect()
        })
        .collect();
    Inputs {
        q: rand_vec(&mut rng, c.b * c.sq * c.hq * c.d),
        k: rand_vec(&mut rng, c.b * c.skv * c.hkv * c.d),
        v: rand_vec(&mut rng, c.b * c.skv * c.hkv * c.d),
        w: rand_vec(&mut rng, c.b * c.sq * c.hq * c.d),
        kpos,
        inv_freq: cpu::inv_freq(c.d, 10000.0),
    }
}

/// `[B, S, H, D]` data as a tracked tensor.
fn param(data: &[f32], shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device).require_grad()
}

/// Plain-ops reference: rotate (HF rotate_half), scale, repeat kv heads, masked softmax.
fn reference(c: Case, x: &Inputs, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let device = q.device();
    let half = c.d / 2;
    let table = |pos: &[f32]| {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for &p in pos {
            for _ in 0..2 {
                for f in &x.inv_freq {
                    cos.push((p * f).cos());
                    sin.push((p * f).sin());
                }
            }
        }
        (cos, sin)
    };
    let rotate = |t: Tensor<4>, rows: Vec<&[f32]>| {
        // t: [B, H, S, D]; tables [B, 1, S, D].
        let s = rows[0].len();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for r in rows {
            let (c0, s0) = table(r);
            cos.extend(c0);
            sin.extend(s0);
        }
        let shape = [c.b, 1, s, c.d];
        let cos = Tensor::<4>::from_data(TensorData::new(cos, shape), &device);
        let sin = Tensor::<4>::from_data(TensorData::new(sin, shape), &device);
        let x1 = t.clone().narrow(3, 0, half);
        let x2 = t.clone().narrow(3, half, half);
        t * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin
    };
    let past = c.skv - c.sq;
    let qrows: Vec<&[f32]> = x.kpos.iter().map(|r| &r[past..]).collect();
    let krows: Vec<&[f32]> = x.kpos.iter().map(|r| &r[..]).collect();
    let q = rotate(q.swap_dims(1, 2), qrows);
    let k = rotate(k.swap_dims(1, 2), krows);
    let v = v.swap_dims(1, 2);
    let rep = c.hq / c.hkv;
    let expand = |t: Tensor<4>| {
        t.unsqueeze_dim::<5>(2)
            .expand([c.b, c.hkv, rep, c.skv, c.d])
            .reshape([c.b, c.hq, c.skv, c.d])
    };
    let scores = q.matmul(expand(k).swap_dims(2, 3)) * (1.0 / (c.d as f64).sqrt());
    let mask = Tensor::<2, Bool>::tril_mask([c.sq, c.skv], past as i64, &device)
        .unsqueeze_dims::<4>(&[0, 1])
        .expand([c.b, c.hq, c.sq, c.skv]);
    let p = activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    p.matmul(expand(v)).swap_dims(1, 2)
}

fn aux(c: Case, x: &Inputs, device: &Device) -> Tensor<1> {
    let past = c.skv - c.sq;
    let mut a: Vec<f32> = x.kpos.iter().flat_map(|r| r[past..].to_vec()).collect();
    a.extend(x.kpos.iter().flatten());
    a.extend(&x.inv_freq);
    let n = a.len();
    Tensor::from_data(TensorData::new(a, [n]), device)
}

/// Output and q/k/v gradients of `Σ o·w`, fused vs reference, on `device` (autodiff).
fn check(device: &Device, c: Case, seed: u64, tol: f32) {
    eprintln!("{c:?}");
    let x = inputs(c, seed);
    let ad = device.clone().autodiff();
    let qs = [c.b, c.sq, c.hq, c.d];
    let ks = [c.b, c.skv, c.hkv, c.d];
    let w = Tensor::<4>::from_data(TensorData::new(x.w.clone(), qs), &ad);
    let run = |fused: bool| {
        let (q, k, v) = (
            param(&x.q, qs, &ad),
            param(&x.k, ks, &ad),
            param(&x.v, ks, &ad),
        );
        let o = if fused {
            let scale = 1.0 / (c.d as f32).sqrt();
            rope_attention(q.clone(), k.clone(), v.clone(), aux(c, &x, &ad), scale, 1.0)
        } else {
            reference(c, &x, q.clone(), k.clone(), v.clone())
        };
        let grads = (o.clone() * w.clone()).sum().backward();
        let g = |t: &Tensor<4>| host(t.grad(&grads).expect("a gradient"));
        (host(o), g(&q), g(&k), g(&v))
    };
    let (fused, reference) = (run(true), run(false));
    assert_close("o", &fused.0, &reference.0, tol);
    assert_close("dq", &fused.1, &reference.1, tol);
    assert_close("dk", &fused.2, &reference.2, tol);
    assert_close("dv", &fused.3, &reference.3, tol);
}

const CASES: &[Case] = &[
    // Training shape: two rows with their own g and t, GQA 2.
    case(2, 37, 37, 4, 2, 32),
    // Past one launch chunk (8 tiles of 32 rows at D = 64), GQA 4.
    case(2, 300, 300, 4, 1, 64),
    // A cached prefix: 5 new queries after 70 keys, D 128 (tiles of 16 rows), no GQA.
    case(1, 5, 75, 2, 2, 128),
];

#[test]
fn fused_attention_on_flex_matches_plain_ops_forward_and_backward() {
    for (i, &c) in CASES.iter().enumerate() {
        check(&Device::flex(), c, i as u64, 2e-5);
    }
}

/// burn's wgpu device if it starts (an adapter exists), else `None` with the reason.
fn wgpu() -> Option<Device> {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let d = device.clone();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(move || {
        Tensor::<1>::from_floats([1.0f32, 2.0], &d)
            .sum()
            .into_scalar::<f32>()
    });
    std::panic::set_hook(prev);
    match ok {
        Ok(3.0) => Some(device),
        other => {
            eprintln!("skipped: burn's wgpu device did not start ({other:?})");
            None
        }
    }
}

#[test]
fn fused_attention_on_wgpu_matches_plain_ops_forward_and_backward() {
    let Some(device) = wgpu() else { return };
    for (i, &c) in CASES.iter().enumerate() {
        check(&device, c, 10 + i as u64, 1e-4);
    }
}

#[test]
fn fused_attention_on_wgpu_equals_the_flex_twins() {
    let Some(gpu) = wgpu() else { return };
    let c = case(3, 130, 130, 2, 1, 32);
    let x = inputs(c, 99);
    let (qs, ks) = ([c.b, c.sq, c.hq, c.d], [c.b, c.skv, c.hkv, c.d]);
    let scale = 1.0 / (c.d as f32).sqrt();
    let on = |device: &Device| {
        let t = |d: &[f32], s: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(d.to_vec(), s), device)
        };
        let (o, stats) = rope_attention_forward(
            t(&x.q, qs),
            t(&x.k, ks),
            t(&x.v, ks),
            aux(c, &x, device),
            scale,
            1.0,
        );
        let (dq, dk, dv) = rope_attention_backward(
            t(&x.q, qs),
            t(&x.k, ks),
            t(&x.v, ks),
            aux(c, &x, device),
            o.clone(),
            stats.clone(),
            t(&x.w, qs),
            scale,
            1.0,
        );
        // lse: the first Hq·Sq of each row's statistics.
        let lse: Vec<f32> = host(stats)
            .chunks(3 * c.hq * c.sq)
            .flat_map(|r| r[..c.hq * c.sq].to_vec())
            .collect();
        [host(o), lse, host(dq), host(dk), host(dv)]
    };
    // The adapter's own tuning, then the GPU tuning (the block forward, at one tile per
    // dispatch: three chunks). The tuning is process-wide: a test running beside this one may
    // run either build, both of which are tested.
    use e2llm_kernels::attention::{set_tuning, tuning, Tuning};
    let own = tuning();
    let f = on(&Device::flex());
    for t in [
        own,
        Tuning {
            tiles_per_dispatch: 1,
            ..Tuning::GPU
        },
    ] {
        set_tuning(t);
        let g = on(&gpu);
        for (name, (a, b)) in ["o", "lse", "dq", "dk", "dv"].iter().zip(g.iter().zip(&f)) {
            assert_close(&format!("{name} {t:?}"), a, b, 1e-4);
        }
    }
    set_tuning(own);
}

/// Keys and values stored in f16 (a half-precision KV cache), queries f32: the forward on
/// `device` against the plain-ops reference on the same keys and values rounded to f16 and
/// widened back (burn's own casts, on flex) — the kernel must read f16 and sum in f32. Cases:
/// a prefill past one launch chunk with GQA 2 (width 64), a block-forward shape (width 32, the
/// GPU tuning's kernel: three rows of E²-LLM positions), a decode step (split-key path, 3
/// queries after 700 keys), and a cached prefix at width 128.
fn check_kv_f16(device: &Device, tol: f32) {
    use burn::tensor::DType;
    let cases = [
        case(2, 300, 300, 4, 2, 64),
        case(3, 130, 130, 2, 1, 32),
        case(2, 3, 700, 4, 1, 32),
        case(1, 9, 75, 2, 2, 128),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let x = inputs(c, 300 + i as u64);
        let (qs, ks) = ([c.b, c.sq, c.hq, c.d], [c.b, c.skv, c.hkv, c.d]);
        let t = |d: &[f32], s: [usize; 4], device: &Device| {
            Tensor::<4>::from_data(TensorData::new(d.to_vec(), s), device)
        };
        let flex = Device::flex();
        let rounded = |d: &[f32]| t(d, ks, &flex).cast(DType::F16).cast(DType::F32);
        let want = host(reference(
            c,
            &x,
            t(&x.q, qs, &flex),
            rounded(&x.k),
            rounded(&x.v),
        ));
        let (k, v) = (
            t(&x.k, ks, device).cast(DType::F16),
            t(&x.v, ks, device).cast(DType::F16),
        );
        assert_eq!(k.dtype(), DType::F16);
        let scale = 1.0 / (c.d as f32).sqrt();
        let o = rope_attention(t(&x.q, qs, device), k, v, aux(c, &x, device), scale, 1.0);
        assert_close(&format!("o (k, v in f16) {c:?}"), &host(o), &want, tol);
    }
}

#[test]
fn fused_attention_reads_f16_keys_and_values_on_flex() {
    check_kv_f16(&Device::flex(), 2e-5);
}

#[test]
fn fused_attention_reads_f16_keys_and_values_on_wgpu() {
    let Some(gpu) = wgpu() else { return };
    if !gpu.supports_dtype(burn::tensor::DType::F16) {
        eprintln!("skipped: this wgpu adapter has no shader-f16 (f16 keys and values need it)");
        return;
    }
    // The adapter's own tuning, then the GPU tuning (block forward, one tile per dispatch);
    // process-wide, as in the test above.
    use e2llm_kernels::attention::{set_tuning, tuning, Tuning};
    let own = tuning();
    for t in [
        own,
        Tuning {
            tiles_per_dispatch: 1,
            ..Tuning::GPU
        },
    ] {
        eprintln!("{t:?}");
        set_tuning(t);
        check_kv_f16(&gpu, 1e-4);
    }
    set_tuning(own);
}

/// Keys and values in pages (a paged KV cache): `rope_attention_paged` on `device` against the
/// plain-ops reference over all keys at once. Pages of 256 keys (`page_multiple` at these
/// widths) with a shorter last page: the tiled forward (width 64, GQA 2, a cached prefix), the
/// block-forward shape (width 32) and a decode step (split-key path), in f32 and with f16 pages.
fn check_paged(device: &Device, f16: bool, tol: f32) {
    use burn::tensor::DType;
    use e2llm_kernels::attention::page_multiple;
    use e2llm_kernels::fused::rope_attention_paged;
    let cases = [
        case(2, 300, 700, 4, 2, 64),
        case(3, 130, 600, 2, 1, 32),
        case(2, 3, 700, 4, 1, 32),
    ];
    for (i, c) in cases.into_iter().enumerate() {
        let page = page_multiple(c.d);
        assert_eq!(page, 256, "{c:?}");
        let x = inputs(c, 400 + i as u64);
        let (qs, ks) = ([c.b, c.sq, c.hq, c.d], [c.b, c.skv, c.hkv, c.d]);
        let t = |d: &[f32], s: [usize; 4], device: &Device| {
            Tensor::<4>::from_data(TensorData::new(d.to_vec(), s), device)
        };
        let flex = Device::flex();
        let stored = |d: &[f32]| {
            let t = t(d, ks, &flex);
            if f16 {
                t.cast(DType::F16).cast(DType::F32)
            } else {
                t
            }
        };
        let want = host(reference(
            c,
            &x,
            t(&x.q, qs, &flex),
            stored(&x.k),
            stored(&x.v),
        ));
        let pages: Vec<(Tensor<4>, Tensor<4>)> = (0..c.skv)
            .step_by(page)
            .map(|p0| {
                let n = page.min(c.skv - p0);
                let cut = |d: &[f32]| {
                    let all = t(d, ks, device).narrow(1, p0, n);
                    if f16 {
                        all.cast(DType::F16)
                    } else {
                        all
                    }
                };
                (cut(&x.k), cut(&x.v))
            })
            .collect();
        assert_eq!(pages.len(), 3);
        let scale = 1.0 / (c.d as f32).sqrt();
        let o = rope_attention_paged(t(&x.q, qs, device), pages, aux(c, &x, device), scale, 1.0);
        assert_close(&format!("o (paged, f16 {f16}) {c:?}"), &host(o), &want, tol);
    }
}

#[test]
fn paged_attention_on_flex_matches_plain_ops() {
    check_paged(&Device::flex(), false, 2e-5);
}

#[test]
fn paged_attention_on_wgpu_matches_plain_ops() {
    let Some(gpu) = wgpu() else { return };
    let f16 = gpu.supports_dtype(burn::tensor::DType::F16);
    if !f16 {
        eprintln!("f16 pages skipped: this wgpu adapter has no shader-f16");
    }
    use e2llm_kernels::attention::{set_tuning, tuning, Tuning};
    let own = tuning();
    for t in [
        own,
        Tuning {
            tiles_per_dispatch: 1,
            ..Tuning::GPU
        },
    ] {
        eprintln!("{t:?}");
        set_tuning(t);
        check_paged(&gpu, false, 1e-4);
        if f16 {
            check_paged(&gpu, true, 1e-4);
        }
    }
    set_tuning(own);
}

/// A KV cache larger than the device's largest binding (lavapipe, WebGPU: 128 MiB): a decode
/// step over 300,000 keys of width 128 — k and v 146 MiB each, f32 — in pages of 64 MiB,
/// against the plain-ops reference on the CPU. On an adapter with a larger binding limit the
/// same pages run (the check that the cache exceeds it is then skipped).
#[test]
fn paged_attention_reads_a_cache_larger_than_one_binding() {
    use e2llm_kernels::fused::{max_binding_bytes, rope_attention_paged};
    let Some(gpu) = wgpu() else { return };
    let c = case(1, 1, 300_000, 2, 1, 128);
    let bytes = (c.skv * c.hkv * c.d * 4) as u64;
    match max_binding_bytes(&gpu) {
        Some(cap) if cap < bytes => {
            eprintln!(
                "k and v: {} MiB each; the adapter binds at most {} MiB",
                bytes >> 20,
                cap >> 20
            )
        }
        cap => eprintln!("this adapter binds {cap:?} bytes: the cache fits one binding here"),
    }
    let x = inputs(c, 500);
    let (qs, ks) = ([c.b, c.sq, c.hq, c.d], [c.b, c.skv, c.hkv, c.d]);
    let flex = Device::flex();
    let t = |d: &[f32], s: [usize; 4], device: &Device| {
        Tensor::<4>::from_data(TensorData::new(d.to_vec(), s), device)
    };
    let want = host(reference(
        c,
        &x,
        t(&x.q, qs, &flex),
        t(&x.k, ks, &flex),
        t(&x.v, ks, &flex),
    ));
    let page = 131_072; // 64 MiB of k per page.
    let row = c.hkv * c.d;
    let pages: Vec<(Tensor<4>, Tensor<4>)> = (0..c.skv)
        .step_by(page)
        .map(|p0| {
            let n = page.min(c.skv - p0);
            let cut = |d: &[f32]| t(&d[p0 * row..(p0 + n) * row], [1, n, c.hkv, c.d], &gpu);
            (cut(&x.k), cut(&x.v))
        })
        .collect();
    let scale = 1.0 / (c.d as f32).sqrt();
    let o = rope_attention_paged(t(&x.q, qs, &gpu), pages, aux(c, &x, &gpu), scale, 1.0);
    assert_close("o (300,000 keys in 3 pages)", &host(o), &want, 1e-4);
}

#[test]
fn every_entry_point_binds_0_to_n_in_group_0_after_renumbering() {
    use e2llm_kernels::attention::{backward_plan, forward_plan};
    use e2llm_kernels::cpu::AttentionShape;
    use e2llm_kernels::fused::WgslKernel;
    use e2llm_kernels::launch;
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let s = AttentionShape {
        sq: 10,
        skv: 10,
        hq: 2,
        hkv: 1,
        head_dim: 32,
        scale: 0.2,
        g: 1.0,
        factor: 1.0,
    };
    let mut launches = forward_plan(s, 2);
    launches.extend(backward_plan(s, 2));
    // One query: the split-key decode.
    launches.extend(forward_plan(AttentionShape { sq: 1, ..s }, 2));
    launches.push(launch::rmsnorm_fwd(3, 8, 1e-5));
    launches.extend(launch::rmsnorm_bwd(3, 8));
    launches.push(launch::swiglu_fwd(24));
    launches.push(launch::swiglu_bwd(24));
    launches.push(launch::cross_entropy(3, 40, 1.0));
    let mut seen = std::collections::BTreeSet::new();
    for l in &launches {
        if !seen.insert((l.shader.name, l.entry)) {
            continue;
        }
        let src = WgslKernel::new(l).wgsl();
        let module = naga::front::wgsl::parse_str(&src).expect("renumbered module parses");
        let info = Validator::new(ValidationFlags::all(), Capabilities::empty())
            .validate(&module)
            .expect("renumbered module validates");
        let (index, _) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, e)| e.name == l.entry)
            .expect("entry point present");
        let used = info.get_entry_point(index);
        let mut bound: Vec<(u32, u32, naga::AddressSpace)> = module
            .global_variables
            .iter()
            .filter(|(h, _)| !used[*h].is_empty())
            .filter_map(|(_, g)| g.binding.as_ref().map(|b| (b.group, b.binding, g.space)))
            .collect();
        bound.sort_by_key(|b| (b.0, b.1));
        let n = l.storage.len() as u32;
        let want: Vec<(u32, u32)> = (0..=n).map(|i| (0, i)).collect();
        let got: Vec<(u32, u32)> = bound.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(got, want, "{}: bindings used after renumbering", l.entry);
        for (_, i, space) in &bound {
            let ok = if *i == n {
                *space == naga::AddressSpace::Uniform
            } else {
                matches!(space, naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE))
            };
            assert!(ok, "{}: binding {i} is {space:?}", l.entry);
        }
    }
    assert_eq!(seen.len(), 12, "every entry point covered: {seen:?}");
}

/// RMSNorm, SwiGLU and cross-entropy ops against plain burn ops: outputs and the gradients of
/// every differentiable input through autodiff (widths past one workgroup of 256).
fn check_norm_and_loss(device: &Device, tol: f32) {
    use burn::tensor::Int;
    use e2llm_kernels::fused::{cross_entropy, rmsnorm, swiglu};
    let ad = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let t2 = |rng: &mut ChaCha8Rng, r: usize, c: usize| {
        Tensor::<2>::from_data(TensorData::new(rand_vec(rng, r * c), [r, c]), &ad).require_grad()
    };
    let both = |a: &Tensor<2>, b: &Tensor<2>, what: &str, g: &dyn Fn(&Tensor<2>) -> Vec<f32>| {
        assert_close(what, &g(a), &g(b), tol);
    };

    // RMSNorm, width 300.
    let (rows, d, eps) = (6, 300, 1e-5f32);
    let xd = rand_vec(&mut rng, rows * d);
    let wd = rand_vec(&mut rng, d);
    let r = Tensor::<2>::from_data(
        TensorData::new(rand_vec(&mut rng, rows * d), [rows, d]),
        &ad,
    );
    let run = |fused: bool| {
        let x = Tensor::<2>::from_data(TensorData::new(xd.clone(), [rows, d]), &ad).require_grad();
        let w = Tensor::<1>::from_data(TensorData::new(wd.clone(), [d]), &ad).require_grad();
        let y = if fused {
            rmsnorm(x.clone(), w.clone(), eps)
        } else {
            let inv = (x.clone().powi_scalar(2).mean_dim(1) + eps as f64)
                .sqrt()
                .recip();
            x.clone() * inv * w.clone().unsqueeze_dim::<2>(0)
        };
        let grads = (y.clone() * r.clone()).sum().backward();
        (
            host(y),
            host(x.grad(&grads).expect("dx")),
            host(w.grad(&grads).expect("dw")),
        )
    };
    let (f, p) = (run(true), run(false));
    assert_close("rmsnorm y", &f.0, &p.0, tol);
    assert_close("rmsnorm dx", &f.1, &p.1, tol);
    assert_close("rmsnorm dw", &f.2, &p.2, tol);

    // SwiGLU, 7 × 333 values.
    let (a, b) = (t2(&mut rng, 7, 333), t2(&mut rng, 7, 333));
    let r = Tensor::<2>::from_data(TensorData::new(rand_vec(&mut rng, 7 * 333), [7, 333]), &ad);
    let run = |fused: bool| {
        let (a, b) = (
            a.clone().detach().require_grad(),
            b.clone().detach().require_grad(),
        );
        let h = if fused {
            swiglu(a.clone(), b.clone())
        } else {
            activation::silu(a.clone()) * b.clone()
        };
        let grads = (h.clone() * r.clone()).sum().backward();
        (h, a.grad(&grads).expect("da"), b.grad(&grads).expect("db"))
    };
    let (f, p) = (run(true), run(false));
    assert_close("swiglu h", &host(f.0), &host(p.0), tol);
    both(&f.1.clone(), &p.1.clone(), "swiglu da", &|t| {
        host(t.clone())
    });
    both(&f.2.clone(), &p.2.clone(), "swiglu db", &|t| {
        host(t.clone())
    });

    // Cross-entropy, 9 rows of 1000 logits, weights with zeros and a heavy answer token.
    let (rows, vocab) = (9, 1000);
    let zd: Vec<f32> = rand_vec(&mut rng, rows * vocab)
        .iter()
        .map(|v| v * 4.0)
        .collect();
    let targets: Vec<i32> = (0..rows)
        .map(|_| rng.random_range(0..vocab as i32))
        .collect();
    let weights: Vec<f32> = (0..rows).map(|i| [1.0, 0.0, 20.0][i % 3]).collect();
    let run = |fused: bool| {
        let z =
            Tensor::<2>::from_data(TensorData::new(zd.clone(), [rows, vocab]), &ad).require_grad();
        let w = Tensor::<1>::from_data(TensorData::new(weights.clone(), [rows]), &ad);
        let t = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [rows]), &ad);
        let loss = if fused {
            cross_entropy(z.clone(), t, w)
        } else {
            let logp = activation::log_softmax(z.clone(), 1);
            logp.gather(1, t.reshape([rows, 1])).reshape([rows]).neg() * w
        };
        let grads = (loss.clone().sum() * 0.1).backward();
        (host(loss), host(z.grad(&grads).expect("dz")))
    };
    let (f, p) = (run(true), run(false));
    assert_close("cross_entropy loss", &f.0, &p.0, tol);
    assert_close("cross_entropy dz", &f.1, &p.1, tol);
}

#[test]
fn norm_swiglu_and_loss_on_flex_match_plain_ops() {
    check_norm_and_loss(&Device::flex(), 2e-5);
}

#[test]
fn norm_swiglu_and_loss_on_wgpu_match_plain_ops() {
    let Some(device) = wgpu() else { return };
    check_norm_and_loss(&device, 1e-4);
}
