//! Each kernel as a host function over slices with the same arguments as its CPU twin in
//! [`crate::cpu`]: upload, dispatch ([`crate::launch`] describes each dispatch, shared with the
//! burn ops of [`crate::fused`]), read back. Attention lives in [`crate::attention`].

use crate::cpu::AdamWParams;
use crate::error::{KernelError, Result};
use crate::gpu::{grid, Gpu};
use crate::launch;
use crate::shaders;

pub(crate) fn check(op: &'static str, ok: bool, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            reason: reason(),
        })
    }
}

pub(crate) fn f(v: f32) -> u32 {
    v.to_bits()
}

/// GPU twin of [`crate::cpu::rope`].
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &[f32],
    pos: &[f32],
    g: &[f32],
    inv_freq: &[f32],
    heads: usize,
    factor: f32,
    dir: f32,
) -> Result<Vec<f32>> {
    let d = 2 * inv_freq.len();
    let tokens = pos.len();
    check(
        "rope",
        x.len() == tokens * heads * d && g.len() == tokens,
        || {
            format!(
                "x has {} values, expected tokens {tokens} × heads {heads} × head_dim {d}",
                x.len()
            )
        },
    )?;
    let n = (tokens * heads * d / 2) as u32;
    let bx = gpu.upload("x", x);
    let bp = gpu.upload("pos", pos);
    let bg = gpu.upload("g", g);
    let bf = gpu.upload("inv_freq", inv_freq);
    let by = gpu.zeros("y", x.len());
    let params = gpu.params(&[
        tokens as u32,
        heads as u32,
        d as u32,
        f(dir),
        f(factor),
        0,
        0,
        0,
    ]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid(n.div_ceil(256));
    gpu.dispatch(
        &mut enc,
        ("rope", shaders::ROPE, "rope"),
        Default::default(),
        &[
            (0, &bx),
            (1, &bp),
            (2, &bg),
            (3, &bf),
            (4, &by),
            (5, &params),
        ],
        (gx, gy, 1),
    );
    let mut out = gpu.finish_and_read(enc, &[&by])?;
    Ok(out.swap_remove(0)[..x.len()].to_vec())
}

/// GPU twin of [`crate::cpu::rmsnorm`]; returns `(y, rstd)`.
pub fn rmsnorm(gpu: &Gpu, x: &[f32], w: &[f32], eps: f32) -> Result<(Vec<f32>, Vec<f32>)> {
    let d = w.len();
    check("rmsnorm", d > 0 && x.len().is_multiple_of(d), || {
        format!("x has {} values, not a multiple of width {d}", x.len())
    })?;
    let rows = x.len() / d;
    let (bx, bw) = (gpu.upload("x", x), gpu.upload("w", w));
    let (by, br) = (gpu.zeros("y", x.len()), gpu.zeros("rstd", rows));
    let mut enc = gpu.encoder();
    gpu.run(
        &mut enc,
        &launch::rmsnorm_fwd(rows, d, eps),
        &[&bx, &bw, &by, &br],
    );
    let out = gpu.finish_and_read(enc, &[&by, &br])?;
    Ok((out[0][..x.len()].to_vec(), out[1][..rows].to_vec()))
}

/// GPU twin of [`crate::cpu::rmsnorm_backward`]; returns `(dx, dw)`.
pub fn rmsnorm_backward(
    gpu: &Gpu,
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let d = w.len();
    let rows = rstd.len();
    check(
        "rmsnorm_backward",
        x.len() == rows * d && dy.len() == x.len(),
        || {
            format!(
                "x {} / dy {} values for {rows} rows of {d}",
                x.len(),
                dy.len()
            )
        },
    )?;
    let (bx, bw, br, bdy) = (
        gpu.upload("x", x),
        gpu.upload("w", w),
        gpu.upload("rstd", rstd),
        gpu.upload("dy", dy),
    );
    let (bdx, bdw) = (gpu.zeros("dx", x.len()), gpu.zeros("dw", d));
    let mut enc = gpu.encoder();
    let [dx, dw] = launch::rmsnorm_bwd(rows, d);
    gpu.run(&mut enc, &dx, &[&bx, &bw, &br, &bdy, &bdx]);
    gpu.run(&mut enc, &dw, &[&bx, &br, &bdy, &bdw]);
    let out = gpu.finish_and_read(enc, &[&bdx, &bdw])?;
    Ok((out[0][..x.len()].to_vec(), out[1][..d].to_vec()))
}

/// GPU twin of [`crate::cpu::swiglu`].
pub fn swiglu(gpu: &Gpu, a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    check("swiglu", a.len() == b.len(), || {
        format!("a has {} values, b {}", a.len(), b.len())
    })?;
    let n = a.len();
    let (ba, bb, bh) = (gpu.upload("a", a), gpu.upload("b", b), gpu.zeros("h", n));
    let mut enc = gpu.encoder();
    gpu.run(&mut enc, &launch::swiglu_fwd(n), &[&ba, &bb, &bh]);
    let mut out = gpu.finish_and_read(enc, &[&bh])?;
    Ok(out.swap_remove(0)[..n].to_vec())
}

/// GPU twin of [`crate::cpu::swiglu_backward`]; returns `(da, db)`.
pub fn swiglu_backward(
    gpu: &Gpu,
    a: &[f32],
    b: &[f32],
    dh: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    check(
        "swiglu_backward",
        a.len() == b.len() && a.len() == dh.len(),
        || format!("a {}, b {}, dh {} values", a.len(), b.len(), dh.len()),
    )?;
    let n = a.len();
    let (ba, bb, bdh) = (gpu.upload("a", a), gpu.upload("b", b), gpu.upload("dh", dh));
    let (bda, bdb) = (gpu.zeros("da", n), gpu.zeros("db", n));
    let mut enc = gpu.encoder();
    gpu.run(
        &mut enc,
        &launch::swiglu_bwd(n),
        &[&ba, &bb, &bdh, &bda, &bdb],
    );
    let out = gpu.finish_and_read(enc, &[&bda, &bdb])?;
    Ok((out[0][..n].to_vec(), out[1][..n].to_vec()))
}

/// GPU twin of [`crate::cpu::cross_entropy`]; returns `(loss, dlogits)`.
pub fn cross_entropy(
    gpu: &Gpu,
    logits: &[f32],
    targets: &[u32],
    weights: &[f32],
    vocab: usize,
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = targets.len();
    check(
        "cross_entropy",
        logits.len() == rows * vocab
            && weights.len() == rows
            && targets.iter().all(|&t| (t as usize) < vocab),
        || {
            format!(
                "{} logits, {rows} targets (all < vocab {vocab}?), {} weights",
                logits.len(),
                weights.len()
            )
        },
    )?;
    let (bz, bt, bw) = (
        gpu.upload("logits", logits),
        gpu.upload("targets", targets),
        gpu.upload("weights", weights),
    );
    let (bl, bd) = (gpu.zeros("loss", rows), gpu.zeros("dlogits", logits.len()));
    let mut enc = gpu.encoder();
    gpu.run(
        &mut enc,
        &launch::cross_entropy(rows, vocab, scale),
        &[&bz, &bt, &bw, &bl, &bd],
    );
    let out = gpu.finish_and_read(enc, &[&bl, &bd])?;
    Ok((out[0][..rows].to_vec(), out[1][..logits.len()].to_vec()))
}

/// GPU twin of [`crate::cpu::adamw`] (updates `param`, `m`, `v` in place).
pub fn adamw(
    gpu: &Gpu,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    p: AdamWParams,
) -> Result<()> {
    let n = param.len();
    check(
        "adamw",
        grad.len() == n && m.len() == n && v.len() == n,
        || {
            format!(
                "param {n}, grad {}, m {}, v {} values",
                grad.len(),
                m.len(),
                v.len()
            )
        },
    )?;
    let (bp, bg, bm, bv) = (
        gpu.upload("param", param),
        gpu.upload("grad", grad),
        gpu.upload("m", m),
        gpu.upload("v", v),
    );
    let mut enc = gpu.encoder();
    gpu.run(&mut enc, &launch::adamw(n, p), &[&bp, &bg, &bm, &bv]);
    let out = gpu.finish_and_read(enc, &[&bp, &bm, &bv])?;
    param.copy_from_slice(&out[0][..n]);
    m.copy_from_slice(&out[1][..n]);
    v.copy_from_slice(&out[2][..n]);
    Ok(())
}
