//! Causal GQA attention with RoPE inside, written for a CPU core: what burn's flex backend runs
//! for [`crate::fused::FusedAttention`] (the model's attention on the CPU with `--kernels auto`
//! or `fused`).
//!
//! The algorithm is the WGSL kernel's: O(length) memory, and a backward that recomputes the
//! scores from q, k and the forward's log-sum-exp (FlashAttention-2). The layout is a CPU's:
//! - every head's rows are copied once into arrays of a fixed width `D` (the head width rounded
//!   up to 16, 32, 64, 128 or 256, zero-padded: zeros add nothing to a dot product), so each
//!   row operation is a loop of constant length whose accumulators stay in registers;
//! - keys and values are also kept transposed (`[d, stride]`, zero past the last key), so the
//!   scores of one query against [`LANES`] keys at a time are independent sums the compiler
//!   vectorises without reassociating anything;
//! - the backward takes query rows in blocks of [`BLOCK`], so each key's gradient row is
//!   written once per block rather than once per query;
//! - `exp` is a polynomial the compiler vectorises (within 3e-7 of `f32::exp`);
//! - each pass is compiled once per instruction set and picked at run time ([`widest`]:
//!   AVX-512 or AVX2 + FMA on x86-64 where the CPU has them), with bit-identical results.
//!
//! f32 throughout; tested against the f64 twins in [`crate::cpu`]. Head widths over 256 run the
//! twins themselves.

use crate::cpu::{self, rotate, AttentionShape};

/// Keys per step of [`row_times`]: its accumulators fill four 128-bit or two 256-bit registers.
const LANES: usize = 16;
/// Query rows per block of the backward.
const BLOCK: usize = 16;

/// One pass of the attention ([`Forward`] or [`Backward`]) as a value, so [`widest`] can build it
/// once per instruction set.
trait Pass {
    type Output;
    fn run(self) -> Self::Output;
}

/// The forward, at the head width rounded up to a padded build (past 256: the twin).
struct Forward<'a>(&'a Args<'a>);

impl Pass for Forward<'_> {
    type Output = (Vec<f32>, Vec<f32>);
    #[inline(always)]
    fn run(self) -> Self::Output {
        let a = self.0;
        match a.s.head_dim {
            0..=16 => a.forward::<16>(),
            17..=32 => a.forward::<32>(),
            33..=64 => a.forward::<64>(),
            65..=128 => a.forward::<128>(),
            129..=256 => a.forward::<256>(),
            _ => cpu::attention(a.q, a.k, a.v, a.qpos, a.kpos, a.inv_freq, a.s),
        }
    }
}

/// The backward, at the same width as [`Forward`].
struct Backward<'a>(&'a Args<'a>, Grads<'a>);

impl Pass for Backward<'_> {
    type Output = (Vec<f32>, Vec<f32>, Vec<f32>);
    #[inline(always)]
    fn run(self) -> Self::Output {
        let (a, g) = (self.0, self.1);
        match a.s.head_dim {
            0..=16 => a.backward::<16>(g),
            17..=32 => a.backward::<32>(g),
            33..=64 => a.backward::<64>(g),
            65..=128 => a.backward::<128>(g),
            129..=256 => a.backward::<256>(g),
            _ => cpu::attention_backward(a.q, a.k, a.v, a.qpos, a.kpos, a.inv_freq, g.d_o, a.s),
        }
    }
}

/// Runs `pass` built for the widest vector instructions this CPU has: on x86-64, AVX-512 or
/// AVX2 + FMA when the CPU reports them at run time (pulp's dispatch; the pass and everything
/// it calls in its loops are `#[inline(always)]`, so they are compiled inside each instruction
/// set's function), else the x86-64 baseline (SSE2); elsewhere as compiled. The arithmetic is
/// the same in every build (no sum reordered, no multiply-add fused): the results are
/// bit-identical.
#[cfg(target_arch = "x86_64")]
fn widest<P: Pass>(pass: P) -> P::Output {
    struct Dispatch<P>(P);
    impl<P: Pass> pulp::WithSimd for Dispatch<P> {
        type Output = P::Output;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> P::Output {
            self.0.run()
        }
    }
    pulp::Arch::new().dispatch(Dispatch(pass))
}

#[cfg(not(target_arch = "x86_64"))]
fn widest<P: Pass>(pass: P) -> P::Output {
    pass.run()
}

/// `e^x` for `x ≤ 88`, as a polynomial a loop over a slice vectorises (libm's `expf` is one
/// call per element): `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by its degree-6 Taylor
/// polynomial (relative error below 3e-7 against libm), `2^n` built in the exponent bits. Inputs below −87
/// give `e^−87` (1.6e-38, zero for every sum here); NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer in the low bits
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t's low mantissa bits hold n (two's complement): 2^n = (n + 127) << 23.
    let two_n = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(two_n)
}

/// `p[j] = exp(p[j] − shift)` for every element; returns their sum (summed in 8 lanes).
#[inline(always)]
fn exp_sum(p: &mut [f32], shift: f32) -> f32 {
    for v in p.iter_mut() {
        *v = exp(*v - shift);
    }
    let mut acc = [0.0f32; 8];
    let mut chunks = p.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().chain(chunks.remainder()).sum()
}

/// The largest element (taken in 8 lanes); NaN if there is one.
#[inline(always)]
fn max(p: &[f32]) -> f32 {
    // `f32::max` would drop a NaN; this keeps it.
    let larger = |m: f32, v: f32| if v > m || v.is_nan() { v } else { m };
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = p.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = larger(*a, v);
        }
    }
    acc.iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |m, &v| larger(m, v))
}

/// Head-major rows of a `[tokens, heads, d]` array: row `h · tokens + t`, zero-padded to `D`.
fn split<const D: usize>(x: &[f32], heads: usize, d: usize) -> Vec<[f32; D]> {
    let tokens = x.len() / (heads * d);
    let mut rows = vec![[0.0f32; D]; heads * tokens];
    for (t, tok) in x.chunks_exact(heads * d).enumerate() {
        for (h, src) in tok.chunks_exact(d).enumerate() {
            rows[h * tokens + t][..d].copy_from_slice(src);
        }
    }
    rows
}

/// The inverse of [`split`]: `[tokens, heads, d]` from head-major rows.
fn merge<const D: usize>(rows: &[[f32; D]], heads: usize, d: usize) -> Vec<f32> {
    let tokens = rows.len() / heads;
    let mut x = vec![0.0f32; rows.len() * d];
    for (t, tok) in x.chunks_exact_mut(heads * d).enumerate() {
        for (h, dst) in tok.chunks_exact_mut(d).enumerate() {
            dst.copy_from_slice(&rows[h * tokens + t][..d]);
        }
    }
    x
}

/// Per head, the `[d, stride]` transpose of its `tokens` head-major rows (zero past `tokens`).
fn transpose<const D: usize>(
    rows: &[[f32; D]],
    tokens: usize,
    d: usize,
    stride: usize,
) -> Vec<Vec<f32>> {
    rows.chunks_exact(tokens.max(1))
        .map(|head| {
            let mut t = vec![0.0; d * stride];
            for (j, row) in head.iter().enumerate() {
                for (c, &val) in row[..d].iter().enumerate() {
                    t[c * stride + j] = val;
                }
            }
            t
        })
        .collect()
}

/// `out[j] = a · Σ_c x[c] · t[c·stride + j]` for `j < n` rounded up to [`LANES`]: one row
/// times a transposed matrix.
#[inline(always)]
fn row_times(a: f32, x: &[f32], t: &[f32], stride: usize, n: usize, out: &mut [f32]) {
    let n = n.div_ceil(LANES) * LANES;
    for (jb, chunk) in out[..n].chunks_exact_mut(LANES).enumerate() {
        let at = jb * LANES;
        let mut acc = [0.0f32; LANES];
        for (&xc, trow) in x.iter().zip(t.chunks_exact(stride)) {
            for (s, tv) in acc.iter_mut().zip(&trow[at..at + LANES]) {
                *s += xc * tv;
            }
        }
        for (o, s) in chunk.iter_mut().zip(acc) {
            *o = a * s;
        }
    }
}

/// `acc += a · x`.
#[inline(always)]
fn axpy<const D: usize>(a: f32, x: &[f32; D], acc: &mut [f32; D]) {
    for (y, v) in acc.iter_mut().zip(x) {
        *y += a * v;
    }
}

#[inline(always)]
fn dot<const D: usize>(a: &[f32; D], b: &[f32; D]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Causal GQA attention with RoPE applied to q and k; the contract of [`cpu::attention`]:
/// returns `(o, lse)`.
///
/// # Shapes
/// - `q`: `[sq, hq, d]`, `k`, `v`: `[skv, hkv, d]`, `qpos`: `[sq]`, `kpos`: `[skv]`,
///   `inv_freq`: `[d / 2]`
/// - `o`: `[sq, hq, d]`, `lse`: `[hq, sq]`
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    s: AttentionShape,
) -> (Vec<f32>, Vec<f32>) {
    let args = Args {
        q,
        k,
        v,
        qpos,
        kpos,
        inv_freq,
        s,
    };
    widest(Forward(&args))
}

/// Backward of [`attention`] with respect to the unrotated q, k and v, from the forward's `o`
/// and `lse`; returns `(dq, dk, dv)` (the contract of [`cpu::attention_backward`]).
///
/// # Shapes
/// - as [`attention`]; `o`, `d_o`: `[sq, hq, d]`, `lse`: `[hq, sq]` → `dq`: `[sq, hq, d]`,
///   `dk`, `dv`: `[skv, hkv, d]`
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    qpos: &[f32],
    kpos: &[f32],
    inv_freq: &[f32],
    o: &[f32],
    lse: &[f32],
    d_o: &[f32],
    s: AttentionShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let args = Args {
        q,
        k,
        v,
        qpos,
        kpos,
        inv_freq,
        s,
    };
    widest(Backward(&args, Grads { o, lse, d_o }))
}

/// The forward's inputs.
struct Args<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    qpos: &'a [f32],
    kpos: &'a [f32],
    inv_freq: &'a [f32],
    s: AttentionShape,
}

/// What the backward reads besides the forward's inputs.
struct Grads<'a> {
    o: &'a [f32],
    lse: &'a [f32],
    d_o: &'a [f32],
}

/// Rotated q and k, and v, as head-major rows of width `D`, with k also transposed (the
/// backward transposes v itself: the forward does not read it so).
struct Prepared<const D: usize> {
    q: Vec<[f32; D]>,
    k: Vec<[f32; D]>,
    v: Vec<[f32; D]>,
    /// Per kv head `[d, stride]`.
    kt: Vec<Vec<f32>>,
    stride: usize,
}

impl Args<'_> {
    fn prepare<const D: usize>(&self) -> Prepared<D> {
        let s = &self.s;
        let d = s.head_dim;
        let qr = rotate(self.q, self.qpos, self.inv_freq, s.hq, *s, 1.0);
        let kr = rotate(self.k, self.kpos, self.inv_freq, s.hkv, *s, 1.0);
        let (k, v) = (split::<D>(&kr, s.hkv, d), split::<D>(self.v, s.hkv, d));
        let stride = s.skv.div_ceil(LANES) * LANES;
        Prepared {
            q: split::<D>(&qr, s.hq, d),
            kt: transpose(&k, s.skv, d, stride),
            k,
            v,
            stride,
        }
    }

    #[inline(always)]
    fn forward<const D: usize>(&self) -> (Vec<f32>, Vec<f32>) {
        let s = &self.s;
        let (d, past, group) = (s.head_dim, s.skv - s.sq, s.hq / s.hkv);
        let x = self.prepare::<D>();
        let mut o = vec![[0.0f32; D]; s.hq * s.sq];
        let mut lse = vec![0.0f32; s.hq * s.sq];
        let mut p = vec![0.0f32; x.stride];
        for h in 0..s.hq {
            let kh = h / group;
            let (kt, vrows) = (&x.kt[kh], &x.v[kh * s.skv..(kh + 1) * s.skv]);
            for i in 0..s.sq {
                let n = past + i + 1;
                let row = h * s.sq + i;
                row_times(s.scale, &x.q[row][..d], kt, x.stride, n, &mut p);
                let mx = max(&p[..n]);
                let z = exp_sum(&mut p[..n], mx);
                let mut acc = [0.0f32; D];
                for (&pj, vj) in p[..n].iter().zip(vrows) {
                    axpy(pj, vj, &mut acc);
                }
                let rz = 1.0 / z;
                o[row] = acc.map(|a| a * rz);
                lse[row] = mx + z.ln();
            }
        }
        (merge(&o, s.hq, d), lse)
    }

    #[inline(always)]
    fn backward<const D: usize>(&self, g: Grads) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let s = &self.s;
        let (d, past, group) = (s.head_dim, s.skv - s.sq, s.hq / s.hkv);
        let x = self.prepare::<D>();
        let (d_o, o) = (split::<D>(g.d_o, s.hq, d), split::<D>(g.o, s.hq, d));
        let stride = x.stride;
        let vt = transpose(&x.v, s.skv, d, stride);
        let mut dq = vec![[0.0f32; D]; s.hq * s.sq];
        let mut dk = vec![[0.0f32; D]; s.hkv * s.skv];
        let mut dv = vec![[0.0f32; D]; s.hkv * s.skv];
        // One block's probabilities and score gradients, `[BLOCK, stride]`.
        let mut pb = vec![0.0f32; BLOCK * stride];
        let mut dsb = vec![0.0f32; BLOCK * stride];
        for h in 0..s.hq {
            let kh = h / group;
            let kv = kh * s.skv..(kh + 1) * s.skv;
            let (krows, kt, vt) = (&x.k[kv.clone()], &x.kt[kh], &vt[kh]);
            for i0 in (0..s.sq).step_by(BLOCK) {
                let rows = h * s.sq + i0..h * s.sq + (i0 + BLOCK).min(s.sq);
                let nmax = past + (i0 + BLOCK).min(s.sq);
                for (r, row) in rows.clone().enumerate() {
                    let n = past + i0 + r + 1;
                    let p = &mut pb[r * stride..(r + 1) * stride];
                    let ds = &mut dsb[r * stride..(r + 1) * stride];
                    row_times(s.scale, &x.q[row][..d], kt, stride, n, p);
                    row_times(1.0, &d_o[row][..d], vt, stride, n, ds);
                    let (l, delta) = (g.lse[row], dot(&d_o[row], &o[row]));
                    exp_sum(&mut p[..n], l);
                    for (dsj, pj) in ds[..n].iter_mut().zip(&p[..n]) {
                        *dsj = pj * (*dsj - delta) * s.scale;
                    }
                    p[n..nmax].fill(0.0);
                    ds[n..nmax].fill(0.0);
                    let mut acc = [0.0f32; D];
                    for (&dsj, kj) in ds[..n].iter().zip(krows) {
                        axpy(dsj, kj, &mut acc);
                    }
                    dq[row] = acc;
                }
                let block = &rows.clone().map(|r| (x.q[r], d_o[r])).collect::<Vec<_>>();
                for j in 0..nmax {
                    let mut acc = [0.0f32; D];
                    for (r, (qr, _)) in block.iter().enumerate() {
                        axpy(dsb[r * stride + j], qr, &mut acc);
                    }
                    axpy(1.0, &acc, &mut dk[kv.start + j]);
                    let mut acc = [0.0f32; D];
                    for (r, (_, dor)) in block.iter().enumerate() {
                        axpy(pb[r * stride + j], dor, &mut acc);
                    }
                    axpy(1.0, &acc, &mut dv[kv.start + j]);
                }
            }
        }
        // The gradient with respect to the unrotated q and k: the inverse rotation.
        let dq = rotate(
            &merge(&dq, s.hq, d),
            self.qpos,
            self.inv_freq,
            s.hq,
            *s,
            -1.0,
        );
        let dk = rotate(
            &merge(&dk, s.hkv, d),
            self.kpos,
            self.inv_freq,
            s.hkv,
            *s,
            -1.0,
        );
        (dq, dk, merge(&dv, s.hkv, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_3e_7_of_libm_and_keeps_nan() {
        let mut worst = 0.0f32;
        let mut x = -80.0f32;
        while x <= 88.0 {
            let (got, want) = (exp(x), x.exp());
            let rel = ((got - want) / want).abs();
            assert!(rel < 3e-7, "exp({x}) = {got}, libm {want} (rel {rel:.2e})");
            worst = worst.max(rel);
            x += 0.001_37;
        }
        eprintln!("exp: worst relative error {worst:.2e}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e4) < 1e-37 && exp(-1e4) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn lane_sums_and_maxima_see_every_element() {
        for n in [0usize, 1, 7, 8, 9, 33] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let want = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&v), want, "n {n}");
            let mut p = v.clone();
            let z = exp_sum(&mut p, 1.0);
            let zw: f32 = v.iter().map(|x| (x - 1.0).exp()).sum();
            assert!((z - zw).abs() <= 1e-5 * zw.max(1.0), "n {n}: {z} vs {zw}");
        }
        assert!(max(&[1.0, f32::NAN, 2.0]).is_nan());
    }

    /// The build [`widest`] picks (AVX-512 or AVX2 where the CPU has them) against the same pass
    /// built for the baseline target, forward and backward, bit for bit.
    #[test]
    fn the_widest_build_equals_the_baseline_bit_for_bit() {
        let (sq, skv, hq, hkv, d) = (37, 45, 4, 2, 24);
        let val = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * 0.9)
                .collect()
        };
        let (q, k, v) = (
            val(sq * hq * d, 1),
            val(skv * hkv * d, 2),
            val(skv * hkv * d, 3),
        );
        let kpos: Vec<f32> = (0..skv).map(|i| i as f32 * 1.5).collect();
        let qpos = kpos[skv - sq..].to_vec();
        let inv_freq = cpu::inv_freq(d, 10000.0);
        let s = AttentionShape::new(sq, skv, hq, hkv, d, 3.0);
        let args = Args {
            q: &q,
            k: &k,
            v: &v,
            qpos: &qpos,
            kpos: &kpos,
            inv_freq: &inv_freq,
            s,
        };
        let (o, lse) = widest(Forward(&args));
        assert_eq!((o.clone(), lse.clone()), Forward(&args).run());
        let d_o = val(sq * hq * d, 4);
        let grads = || Grads {
            o: &o,
            lse: &lse,
            d_o: &d_o,
        };
        let wide = widest(Backward(&args, grads()));
        assert_eq!(wide, Backward(&args, grads()).run());
        assert!(wide
            .0
            .iter()
            .chain(&wide.1)
            .chain(&wide.2)
            .all(|x| x.is_finite()));
        assert!(wide.1.iter().any(|&x| x != 0.0));
    }
}
