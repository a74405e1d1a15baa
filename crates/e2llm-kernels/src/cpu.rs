//! Plain-Rust CPU twins of every kernel: slices in, slices out, loops written for clarity.
//! The GPU kernels are tested against these, and the backward twins against finite
//! differences of the forward twins.

/// Default RoPE's `head_dim / 2` inverse frequencies `θ^(−2j/d)` in plain f32, the table the
/// kernels' tests, benches and self-check feed them (the model builds HF's exact table in
/// `e2llm-core::rope`; a kernel takes any table).
pub fn inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|j| 1.0 / theta.powf(2.0 * j as f32 / head_dim as f32))
        .collect()
}

/// RoPE in HF's rotate_half layout with positions as data; `dir = -1.0` is the inverse
/// rotation (the backward pass).
///
/// # Shapes
/// - `x`: `[tokens, heads, head_dim]`
/// - `pos`, `g`: `[tokens]` (angle uses `pos / g`)
/// - `inv_freq`: `[head_dim / 2]`
/// - returns `[tokens, heads, head_dim]`
pub fn rope(
    x: &[f32],
    pos: &[f32],
    g: &[f32],
    inv_freq: &[f32],
    heads: usize,
    factor: f32,
    dir: f32,
) -> Vec<f32> {
    let half = inv_freq.len();
    let d = 2 * half;
    let mut y = vec![0.0; x.len()];
    let mut cs = vec![(0.0, 0.0); half];
    for (t, (xt, yt)) in x
        .chunks_exact(heads * d)
        .zip(y.chunks_exact_mut(heads * d))
        .enumerate()
    {
        for (j, cs) in cs.iter_mut().enumerate() {
            let (s, c) = (dir * (pos[t] / g[t]) * inv_freq[j]).sin_cos();
            *cs = (c * factor, s * factor);
        }
        for (xr, yr) in xt.chunks_exact(d).zip(yt.chunks_exact_mut(d)) {
            for (j, &(c, s)) in cs.iter().enumerate() {
                yr[j] = xr[j] * c - xr[j + half] * s;
                yr[j + half] = xr[j + half] * c + xr[j] * s;
            }
        }
    }
    y
}

/// RMSNorm; returns `(y, rstd)`.
///
/// # Shapes
/// - `x`: `[rows, width]`, `w`: `[width]` → `y`: `[rows, width]`, `rstd`: `[rows]`
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut y = vec![0.0; x.len()];
    let mut rstd = Vec::with_capacity(x.len() / d);
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / d as f64;
        let r = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for i in 0..d {
            yr[i] = xr[i] * r * w[i];
        }
        rstd.push(r);
    }
    (y, rstd)
}

/// Backward of [`rmsnorm`]; returns `(dx, dw)`.
///
/// # Shapes
/// - `x`, `dy`: `[rows, width]`, `w`: `[width]`, `rstd`: `[rows]`
pub fn rmsnorm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0f64; d];
    for (row, ((xr, dyr), dxr)) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
        .enumerate()
    {
        let r = rstd[row] as f64;
        let dot: f64 = (0..d)
            .map(|i| dyr[i] as f64 * w[i] as f64 * xr[i] as f64)
            .sum();
        let k = dot * r * r * r / d as f64;
        for i in 0..d {
            dxr[i] = (dyr[i] as f64 * w[i] as f64 * r - xr[i] as f64 * k) as f32;
            dw[i] += dyr[i] as f64 * xr[i] as f64 * r;
        }
    }
    (dx, dw.into_iter().map(|v| v as f32).collect())
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `silu(a) · b`, elementwise.
pub fn swiglu(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(&a, &b)| a * sigmoid(a) * b).collect()
}

/// Backward of [`swiglu`]; returns `(da, db)`.
pub fn swiglu_backward(a: &[f32], b: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut da = Vec::with_capacity(a.len());
    let mut db = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        let s = sigmoid(a[i]);
        da.push(dh[i] * b[i] * s * (1.0 + a[i] * (1.0 - s)));
        db.push(dh[i] * a[i] * s);
    }
    (da, db)
}

/// Weighted cross-entropy per row and the gradient of `scale · Σ loss`; returns
/// `(loss, dlogits)`.
///
/// # Shapes
/// - `logits`: `[rows, vocab]`, `targets`, `weights`: `[rows]` → `loss`: `[rows]`,
///   `dlogits`: `[rows, vocab]`
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    weights: &[f32],
    vocab: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let mut loss = Vec::with_capacity(targets.len());
    let mut grad = vec![0.0; logits.len()];
    for (n, (z, dz)) in logits
        .chunks_exact(vocab)
        .zip(grad.chunks_exact_mut(vocab))
        .enumerate()
    {
        let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = mx + z.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln();
        let c = targets[n] as usize;
        loss.push((weights[n] as f64 * (lse - z[c] as f64)) as f32);
        let k = scale as f64 * weights[n] as f64;
        for v in 0..vocab {
            let p = (z[v] as f64 - lse).exp() - if v == c { 1.0 } else { 0.0 };
            dz[v] = (k * p) as f32;
        }
    }
    (loss, grad)
}

/// AdamW hyper-parameters of one update (`step` is 1-based, for the bias corrections).
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f32,
    /// β1.
    pub beta1: f32,
    /// β2.
    pub beta2: f32,
    /// ε.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// The step being taken, 1-based.
    pub step: i32,
}

/// One AdamW update in place (the semantics of e2llm-train's `optim::AdamW`).
///
/// # Shapes
/// `param`, `grad`, `m`, `v`: `[n]`
pub fn adamw(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], p: AdamWParams) {
    let c1 = 1.0 - p.beta1.powi(p.step);
    let c2 = 1.0 - p.beta2.powi(p.step);
    for i in 0..param.len() {
        m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * grad[i];
        v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * grad[i] * grad[i];
        let update = (m[i] / c1) / ((v[i] / c2).sqrt() + p.eps);
        param[i] = param[i] * (1.0 - p.lr * p.weight_decay) - p.lr * update;
    }
}

/// Shape and RoPE settings of an attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query tokens.
    pub sq: usize,
    /// Key/value tokens (`sq` new ones last: query `i` sees keys `..= skv − sq + i`).
    pub skv: usize,
    /// Query heads.
    pub hq: usize,
    /// Key/value heads (divides `hq`).
    pub hkv: usize,
    /// Head width (even, ≤ 128 on the GPU).
    pub head_dim: usize,
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Positions are divided by this.
    pub g: f32,
    /// RoPE attention factor.
    pub factor: f32,
}

impl AttentionShape {
    /// `sq` queries over `skv` keys with `hq` query and `hkv` key/value heads of `head_dim`,
    /// positions divided by `g`: the usual score scale `1 / sqrt(head_dim)` and no attention
    /// factor (1). Set `scale` or `factor` after it where a call differs.
    pub fn new(sq: usize, skv: usize, hq: usize, hkv: usize, head_dim: usize, g: f32) -> Self {
        Self {
            sq,
            skv,
            hq,
            hkv,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            g,
            factor: 1.0,
        }
    }
}

/// RoPE at every token's position / g, rotating q (`dir` 1) or undoing it (`dir` -1) on a
/// `[tokens, heads, d]` array, as the attention kernels do to q and k.
pub fn rotate(
    x: &[f32],
    pos: &[f32],
    inv_freq: &[f32],
    heads: usize,
    s: AttentionShape,
    dir: f32,
) -> Vec<f32> {
    rope(
        x,
        pos,
        &vec![s.g; pos.len()],
        inv_freq,
        heads,
        s.factor,
        dir,
    )
}

/// Causal GQA attention with RoPE applied to q and k first: the plain
/// matmul–mask–softmax–matmul path. Returns `(o, lse)`.
///
/// # Shapes
/// - `q`: `[sq, hq, d]`, `k`, `v`: `[skv, hkv, d]`, `qpos`: `[sq]`, `kpos`: `[skv]`,
///   `inv_freq`: `[d / 2]`
/// - `o`: `[sq, hq, d]`, `lse`: `[hq, sq]`
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
) -> (Vec<f32>, Vec<f32>) {
    let d = s.head_dim;
    let qr = rotate(q, qpos, inv_freq, s.hq, s, 1.0);
    let kr = rotate(k, kpos, inv_freq, s.hkv, s, 1.0);
    let past = s.skv - s.sq;
    let group = s.hq / s.hkv;
    let mut o = vec![0.0; q.len()];
    let mut lse = vec![0.0; s.hq * s.sq];
    let mut scores = vec![0.0f64; s.skv];
    for h in 0..s.hq {
        let kh = h / group;
        for i in 0..s.sq {
            let qi = &qr[(i * s.hq + h) * d..][..d];
            let n = past + i + 1;
            for (j, sc) in scores.iter_mut().enumerate().take(n) {
                let kj = &kr[(j * s.hkv + kh) * d..][..d];
                *sc = s.scale as f64
                    * qi.iter()
                        .zip(kj)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>();
            }
            let mx = scores[..n]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores[..n].iter().map(|x| (x - mx).exp()).sum();
            lse[h * s.sq + i] = (mx + z.ln()) as f32;
            let out = &mut o[(i * s.hq + h) * d..][..d];
            for (j, sc) in scores.iter().enumerate().take(n) {
                let p = (sc - mx).exp() / z;
                let vj = &v[(j * s.hkv + kh) * d..][..d];
                for c in 0..d {
                    out[c] += (p * vj[c] as f64) as f32;
                }
            }
        }
    }
    (o, lse)
}

/// Backward of [`attention`] with respect to the unrotated q, k and v; returns `(dq, dk, dv)`.
/// Scores are recomputed from q and k (what the flash kernel does), `o` is not needed.
///
/// # Shapes
/// - as [`attention`]; `d_o`: `[sq, hq, d]` → `dq`: `[sq, hq, d]`, `dk`, `dv`: `[skv, hkv, d]`
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    d_o: &[f32],
    s: AttentionShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = s.head_dim;
    let qr = rotate(q, qpos, inv_freq, s.hq, s, 1.0);
    let kr = rotate(k, kpos, inv_freq, s.hkv, s, 1.0);
    let past = s.skv - s.sq;
    let group = s.hq / s.hkv;
    let mut dqr = vec![0.0f64; q.len()];
    let mut dkr = vec![0.0f64; k.len()];
    let mut dv = vec![0.0f64; v.len()];
    let dotf =
        |a: &[f32], b: &[f32]| -> f64 { a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum() };
    for h in 0..s.hq {
        let kh = h / group;
        for i in 0..s.sq {
            let n = past + i + 1;
            let qi = &qr[(i * s.hq + h) * d..][..d];
            let doi = &d_o[(i * s.hq + h) * d..][..d];
            let sc: Vec<f64> = (0..n)
                .map(|j| s.scale as f64 * dotf(qi, &kr[(j * s.hkv + kh) * d..][..d]))
                .collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            let pr: Vec<f64> = sc.iter().map(|x| (x - mx).exp() / z).collect();
            let dp: Vec<f64> = (0..n)
                .map(|j| dotf(doi, &v[(j * s.hkv + kh) * d..][..d]))
                .collect();
            let delta: f64 = pr.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..n {
                let ds = pr[j] * (dp[j] - delta) * s.scale as f64;
                for c in 0..d {
                    dqr[(i * s.hq + h) * d + c] += ds * kr[(j * s.hkv + kh) * d + c] as f64;
                    dkr[(j * s.hkv + kh) * d + c] += ds * qi[c] as f64;
                    dv[(j * s.hkv + kh) * d + c] += pr[j] * doi[c] as f64;
                }
            }
        }
    }
    let f32s = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
    let dq = rotate(&f32s(dqr), qpos, inv_freq, s.hq, s, -1.0);
    let dk = rotate(&f32s(dkr), kpos, inv_freq, s.hkv, s, -1.0);
    (dq, dk, f32s(dv))
}

/// Which part of the attention matrix [`attention_map`] pools, and into what size.
#[derive(Debug, Clone, Copy)]
pub struct MapWindow {
    /// Query head.
    pub head: usize,
    /// First query row of the window.
    pub row0: usize,
    /// Query rows in the window.
    pub nrows: usize,
    /// Image rows (query bins).
    pub out_rows: usize,
    /// Image columns (key bins over all `skv` keys).
    pub out_cols: usize,
}

/// The softmax weights of one head for a window of query rows, pooled: cell (r, c) is the mean
/// over the rows of bin r of the summed weight of the keys in bin c (bins split evenly, as
/// `start = b · n / bins`).
///
/// # Shapes
/// - as [`attention`]; returns `[out_rows, out_cols]`
#[allow(clippy::too_many_arguments)]
pub fn attention_map(
    q: &[f32],
    k: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
    w: MapWindow,
) -> Vec<f32> {
    let d = s.head_dim;
    let qr = rotate(q, qpos, inv_freq, s.hq, s, 1.0);
    let kr = rotate(k, kpos, inv_freq, s.hkv, s, 1.0);
    let past = s.skv - s.sq;
    let kh = w.head / (s.hq / s.hkv);
    let mut img = vec![0.0f32; w.out_rows * w.out_cols];
    for br in 0..w.out_rows {
        let (lo, hi) = (
            w.row0 + br * w.nrows / w.out_rows,
            w.row0 + (br + 1) * w.nrows / w.out_rows,
        );
        for i in lo..hi {
            let qi = &qr[(i * s.hq + w.head) * d..][..d];
            let n = past + i + 1;
            let sc: Vec<f64> = (0..n)
                .map(|j| {
                    s.scale as f64
                        * qi.iter()
                            .zip(&kr[(j * s.hkv + kh) * d..][..d])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
                .collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            for bc in 0..w.out_cols {
                let (c_lo, c_hi) = (
                    bc * s.skv / w.out_cols,
                    ((bc + 1) * s.skv / w.out_cols).min(n),
                );
                let mass: f64 = (c_lo..c_hi.max(c_lo)).map(|j| (sc[j] - mx).exp() / z).sum();
                img[br * w.out_cols + bc] += (mass / (hi - lo).max(1) as f64) as f32;
            }
        }
    }
    img
}
