//! Each kernel as a host function over slices with the same arguments as its CPU twin in
//! [`crate::cpu`]: upload, dispatch, read back. (Wiring them into burn as custom backend ops,
//! so the model runs on them without copies, is the next step; see ARCHITECTURE.md.)

use crate::cpu::{AdamWParams, AttentionShape, MapWindow};
use crate::error::{KernelError, Result};
use crate::gpu::{grid, Gpu};
use crate::shaders;

fn check(op: &'static str, ok: bool, reason: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            reason: reason(),
        })
    }
}

fn f(v: f32) -> u32 {
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
    let params = gpu.uniform(&[
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
    let params = gpu.uniform(&[rows as u32, d as u32, f(eps), 0]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid(rows as u32);
    gpu.dispatch(
        &mut enc,
        ("rmsnorm", shaders::RMSNORM, "rmsnorm_fwd"),
        &[(0, &bx), (1, &bw), (2, &by), (3, &br), (4, &params)],
        (gx, gy, 1),
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
    let params = gpu.uniform(&[rows as u32, d as u32, 0, 0]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid(rows as u32);
    gpu.dispatch(
        &mut enc,
        ("rmsnorm", shaders::RMSNORM, "rmsnorm_bwd_x"),
        &[
            (0, &bx),
            (1, &bw),
            (3, &br),
            (4, &params),
            (5, &bdy),
            (6, &bdx),
        ],
        (gx, gy, 1),
    );
    gpu.dispatch(
        &mut enc,
        ("rmsnorm", shaders::RMSNORM, "rmsnorm_bwd_w"),
        &[(0, &bx), (3, &br), (4, &params), (5, &bdy), (7, &bdw)],
        ((d as u32).div_ceil(256), 1, 1),
    );
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
    let params = gpu.uniform(&[n as u32, 0, 0, 0]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid((n as u32).div_ceil(256));
    gpu.dispatch(
        &mut enc,
        ("swiglu", shaders::SWIGLU, "swiglu_fwd"),
        &[(0, &ba), (1, &bb), (2, &bh), (3, &params)],
        (gx, gy, 1),
    );
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
    let params = gpu.uniform(&[n as u32, 0, 0, 0]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid((n as u32).div_ceil(256));
    gpu.dispatch(
        &mut enc,
        ("swiglu", shaders::SWIGLU, "swiglu_bwd"),
        &[
            (0, &ba),
            (1, &bb),
            (3, &params),
            (4, &bdh),
            (5, &bda),
            (6, &bdb),
        ],
        (gx, gy, 1),
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
    let params = gpu.uniform(&[rows as u32, vocab as u32, f(scale), 0]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid(rows as u32);
    gpu.dispatch(
        &mut enc,
        ("cross_entropy", shaders::CROSS_ENTROPY, "cross_entropy"),
        &[
            (0, &bz),
            (1, &bt),
            (2, &bw),
            (3, &bl),
            (4, &bd),
            (5, &params),
        ],
        (gx, gy, 1),
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
    let c1 = 1.0 - p.beta1.powi(p.step);
    let c2 = 1.0 - p.beta2.powi(p.step);
    let params = gpu.uniform(&[
        n as u32,
        f(p.lr),
        f(p.beta1),
        f(p.beta2),
        f(p.eps),
        f(p.weight_decay),
        f(c1),
        f(c2),
    ]);
    let mut enc = gpu.encoder();
    let (gx, gy) = grid((n as u32).div_ceil(256));
    gpu.dispatch(
        &mut enc,
        ("adamw", shaders::ADAMW, "adamw"),
        &[(0, &bp), (1, &bg), (2, &bm), (3, &bv), (4, &params)],
        (gx, gy, 1),
    );
    let out = gpu.finish_and_read(enc, &[&bp, &bm, &bv])?;
    param.copy_from_slice(&out[0][..n]);
    m.copy_from_slice(&out[1][..n]);
    v.copy_from_slice(&out[2][..n]);
    Ok(())
}

fn attention_check(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
) -> Result<()> {
    let d = s.head_dim;
    check(
        "attention",
        d > 0
            && d.is_multiple_of(2)
            && d <= 128
            && inv_freq.len() == d / 2
            && s.hkv > 0
            && s.hq.is_multiple_of(s.hkv)
            && s.sq <= s.skv
            && q.len() == s.sq * s.hq * d
            && k.len() == s.skv * s.hkv * d
            && v.len() == k.len()
            && qpos.len() == s.sq
            && kpos.len() == s.skv,
        || {
            format!(
                "shapes do not fit {s:?} (head_dim even and ≤ 128, hq a multiple of hkv, sq ≤ skv)"
            )
        },
    )
}

/// Loop steps (tiles) one dispatch of an attention kernel runs at most: longer loops are split
/// into chunks (see the shader header for why).
pub const TILES_PER_DISPATCH: usize = 8;

/// Key (or query) rows per tile for head width `d`: two tiles fill 16 KiB of workgroup memory.
pub fn attention_tile(d: usize) -> usize {
    2048 / d
}

fn attention_params(
    gpu: &Gpu,
    s: AttentionShape,
    begin: usize,
    end: usize,
    last: bool,
) -> wgpu::Buffer {
    gpu.uniform(&[
        s.sq as u32,
        s.skv as u32,
        s.hq as u32,
        s.hkv as u32,
        s.head_dim as u32,
        f(s.scale),
        f(1.0 / s.g),
        f(s.factor),
        begin as u32,
        end as u32,
        u32::from(last),
        0,
    ])
}

/// `(begin, end, last)` of each chunk of a loop over `total` steps of `step` each.
fn chunks(total: usize, step: usize) -> Vec<(usize, usize, bool)> {
    let span = step * TILES_PER_DISPATCH;
    let n = total.div_ceil(span).max(1);
    (0..n)
        .map(|c| (c * span, (c + 1) * span, c + 1 == n))
        .collect()
}

const ATTN: (&str, &str) = ("attention", shaders::ATTENTION);

/// Records the chunked forward: o and lse (stats[..Hq·Sq]) of q, k, v, aux.
fn forward_into(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    [bq, bk, bv, ba, bo, bs]: [&wgpu::Buffer; 6],
    s: AttentionShape,
) {
    for (begin, end, last) in chunks(s.skv, attention_tile(s.head_dim)) {
        let params = attention_params(gpu, s, begin, end, last);
        gpu.dispatch(
            enc,
            (ATTN.0, ATTN.1, "attention_fwd"),
            &[
                (0, bq),
                (1, bk),
                (2, bv),
                (3, ba),
                (4, bo),
                (5, bs),
                (6, &params),
            ],
            ((s.sq as u32).div_ceil(64), s.hq as u32, 1),
        );
    }
}

/// GPU twin of [`crate::cpu::attention`] (the fused flash kernel); returns `(o, lse)`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
) -> Result<(Vec<f32>, Vec<f32>)> {
    attention_check(q, k, v, qpos, kpos, inv_freq, s)?;
    let aux: Vec<f32> = [qpos, kpos, inv_freq].concat();
    let (bq, bk, bv, ba) = (
        gpu.upload("q", q),
        gpu.upload("k", k),
        gpu.upload("v", v),
        gpu.upload("aux", &aux),
    );
    let (bo, bs) = (gpu.zeros("o", q.len()), gpu.zeros("stats", 3 * s.hq * s.sq));
    let mut enc = gpu.encoder();
    forward_into(gpu, &mut enc, [&bq, &bk, &bv, &ba, &bo, &bs], s);
    let out = gpu.finish_and_read(enc, &[&bo, &bs])?;
    Ok((out[0][..q.len()].to_vec(), out[1][..s.hq * s.sq].to_vec()))
}

/// GPU twin of [`crate::cpu::attention_backward`]: the forward (for o and lse), then δ, dq and
/// dk/dv, each recomputing scores tile by tile. Returns `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    d_o: &[f32],
    s: AttentionShape,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    attention_check(q, k, v, qpos, kpos, inv_freq, s)?;
    check("attention_backward", d_o.len() == q.len(), || {
        format!("dO has {} values, q {}", d_o.len(), q.len())
    })?;
    let aux: Vec<f32> = [qpos, kpos, inv_freq].concat();
    let (bq, bk, bv, ba) = (
        gpu.upload("q", q),
        gpu.upload("k", k),
        gpu.upload("v", v),
        gpu.upload("aux", &aux),
    );
    let bdo = gpu.upload("dO", d_o);
    let (bo, bs) = (gpu.zeros("o", q.len()), gpu.zeros("stats", 3 * s.hq * s.sq));
    let (bdq, bdk, bdv) = (
        gpu.zeros("dq", q.len()),
        gpu.zeros("dk", k.len()),
        gpu.zeros("dv", v.len()),
    );
    let mut enc = gpu.encoder();
    forward_into(gpu, &mut enc, [&bq, &bk, &bv, &ba, &bo, &bs], s);
    let prep = attention_params(gpu, s, 0, 0, true);
    gpu.dispatch(
        &mut enc,
        (ATTN.0, ATTN.1, "attention_bwd_prep"),
        &[(4, &bo), (5, &bs), (6, &prep), (7, &bdo)],
        (((s.sq * s.hq) as u32).div_ceil(64), 1, 1),
    );
    let tile = attention_tile(s.head_dim);
    for (begin, end, last) in chunks(s.skv, tile) {
        let params = attention_params(gpu, s, begin, end, last);
        gpu.dispatch(
            &mut enc,
            (ATTN.0, ATTN.1, "attention_bwd_dq"),
            &[
                (0, &bq),
                (1, &bk),
                (2, &bv),
                (3, &ba),
                (5, &bs),
                (6, &params),
                (7, &bdo),
                (8, &bdq),
            ],
            ((s.sq as u32).div_ceil(64), s.hq as u32, 1),
        );
    }
    // dkv loops over (query head of the group, query tile): at most group · ⌈Sq / tile⌉ steps.
    let steps = (s.hq / s.hkv) * s.sq.div_ceil(tile);
    for (begin, end, last) in chunks(steps, 1) {
        let params = attention_params(gpu, s, begin, end, last);
        gpu.dispatch(
            &mut enc,
            (ATTN.0, ATTN.1, "attention_bwd_dkv"),
            &[
                (0, &bq),
                (1, &bk),
                (2, &bv),
                (3, &ba),
                (5, &bs),
                (6, &params),
                (7, &bdo),
                (9, &bdk),
                (10, &bdv),
            ],
            ((s.skv as u32).div_ceil(64), s.hkv as u32, 1),
        );
    }
    let out = gpu.finish_and_read(enc, &[&bdq, &bdk, &bdv])?;
    Ok((
        out[0][..q.len()].to_vec(),
        out[1][..k.len()].to_vec(),
        out[2][..v.len()].to_vec(),
    ))
}

/// GPU twin of [`crate::cpu::attention_map`]: runs the (chunked) forward for lse, then pools one
/// head's weights into `[out_rows, out_cols]` without the full matrix.
#[allow(clippy::too_many_arguments)]
pub fn attention_map(
    gpu: &Gpu,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
    w: MapWindow,
) -> Result<Vec<f32>> {
    attention_check(q, k, v, qpos, kpos, inv_freq, s)?;
    check(
        "attention_map",
        w.head < s.hq && w.row0 + w.nrows <= s.sq && w.out_rows > 0 && w.out_cols > 0,
        || {
            format!(
                "window {w:?} does not fit {} heads × {} query rows",
                s.hq, s.sq
            )
        },
    )?;
    let aux: Vec<f32> = [qpos, kpos, inv_freq].concat();
    let (bq, bk, bv, ba) = (
        gpu.upload("q", q),
        gpu.upload("k", k),
        gpu.upload("v", v),
        gpu.upload("aux", &aux),
    );
    let (bo, bs) = (gpu.zeros("o", q.len()), gpu.zeros("stats", 3 * s.hq * s.sq));
    let cells = w.out_rows * w.out_cols;
    let bimg = gpu.zeros("image", cells);
    let mut enc = gpu.encoder();
    forward_into(gpu, &mut enc, [&bq, &bk, &bv, &ba, &bo, &bs], s);
    let params = gpu.uniform(&[
        s.sq as u32,
        s.skv as u32,
        s.hq as u32,
        s.hkv as u32,
        s.head_dim as u32,
        f(s.scale),
        f(1.0 / s.g),
        f(s.factor),
        w.head as u32,
        w.row0 as u32,
        w.nrows as u32,
        w.out_rows as u32,
        w.out_cols as u32,
        0,
        0,
        0,
    ]);
    gpu.dispatch(
        &mut enc,
        ("attention_map", shaders::ATTENTION_MAP, "attention_map"),
        &[
            (0, &bq),
            (1, &bk),
            (3, &ba),
            (5, &bs),
            (6, &params),
            (7, &bimg),
        ],
        ((cells as u32).div_ceil(64), 1, 1),
    );
    let mut out = gpu.finish_and_read(enc, &[&bimg])?;
    Ok(out.swap_remove(0)[..cells].to_vec())
}
