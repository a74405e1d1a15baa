//! The twins of transformers' `_compute_*_rope_parameters`, op for op (see the parent module
//! doc for the precision rules).

use super::{RopeFreqs, YARN_DEFAULT_BETA_FAST, YARN_DEFAULT_BETA_SLOW};

/// f32 `pow` as a correctly rounded f64 `pow` (see the module doc for why).
pub(super) fn pow_f32(base: f32, exponent: f32) -> f32 {
    (base as f64).powf(exponent as f64) as f32
}

/// HF `_compute_default_rope_parameters`: `1 / base^(fl32(2j) / fl32(dim))`, all in f32.
pub(super) fn default_inv_freq(base: f32, head_dim: usize, half: usize) -> Vec<f32> {
    (0..half)
        .map(|j| {
            let e = (2 * j) as f32 / head_dim as f32;
            1.0f32 / pow_f32(base, e)
        })
        .collect()
}

/// HF `_compute_dynamic_ntk_parameters`' base for a sequence of `seq_len` (the position-id
/// tensor path of the forward pass, so f32 tensor arithmetic). Returns `fl32(theta)` unchanged
/// for `seq_len <= max_position_embeddings`.
pub(super) fn dynamic_base(
    theta: f64,
    factor: f64,
    head_dim: usize,
    max_pos: usize,
    seq_len: usize,
) -> f32 {
    if seq_len <= max_pos {
        return theta as f32;
    }
    let ratio = (factor as f32 * seq_len as f32) / max_pos as f32;
    let inner = ratio - (factor - 1.0) as f32;
    let exponent = (head_dim as f64 / (head_dim as f64 - 2.0)) as f32;
    theta as f32 * pow_f32(inner, exponent)
}

/// Yarn's `find_correction_dim` (Python floats): the pair index whose wavelength makes
/// `num_rotations` turns over `max_position_embeddings` positions.
pub fn yarn_find_correction_dim(
    num_rotations: f64,
    dim: usize,
    base: f64,
    max_position_embeddings: usize,
) -> f64 {
    let d = dim as f64;
    (d * (max_position_embeddings as f64 / (num_rotations * 2.0 * std::f64::consts::PI)).ln())
        / (2.0 * base.ln())
}

/// Yarn's `find_correction_range`: `(low, high)`, floored/ceiled when `truncate`, clamped to
/// `[0, dim − 1]` (HF clamps to `dim − 1`, not `dim/2 − 1`; kept as is).
pub fn yarn_find_correction_range(
    low_rot: f64,
    high_rot: f64,
    dim: usize,
    base: f64,
    max_position_embeddings: usize,
    truncate: bool,
) -> (f64, f64) {
    let mut low = yarn_find_correction_dim(low_rot, dim, base, max_position_embeddings);
    let mut high = yarn_find_correction_dim(high_rot, dim, base, max_position_embeddings);
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(dim as f64 - 1.0))
}

/// Yarn's `linear_ramp_factor`: `clamp((j − min) / (max − min), 0, 1)` for `j` in `0..n`, in f32
/// (with HF's `max += 0.001` when `min == max`).
pub fn yarn_linear_ramp(min: f64, max: f64, n: usize) -> Vec<f32> {
    let max = if min == max { max + 0.001 } else { max };
    let span = (max - min) as f32;
    let min32 = min as f32;
    (0..n)
        .map(|j| ((j as f32 - min32) / span).clamp(0.0, 1.0))
        .collect()
}

/// Yarn's `get_mscale`: `0.1 · mscale · ln(scale) + 1`, or 1 for `scale <= 1`.
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// Yarn's parameters with `original_max_position_embeddings` resolved.
pub(super) struct YarnArgs {
    pub(super) factor: f64,
    pub(super) orig: usize,
    pub(super) beta_fast: f64,
    pub(super) beta_slow: f64,
    pub(super) attention_factor: Option<f64>,
    pub(super) mscale: Option<f64>,
    pub(super) mscale_all_dim: Option<f64>,
    pub(super) truncate: bool,
}

/// HF `_compute_yarn_parameters` (v5 semantics; see the module doc).
pub(super) fn yarn(theta: f64, head_dim: usize, args: YarnArgs) -> RopeFreqs {
    let YarnArgs {
        factor,
        orig,
        beta_fast,
        beta_slow,
        attention_factor,
        mscale,
        mscale_all_dim,
        truncate,
    } = args;
    // HF: `if mscale and mscale_all_dim` — both present and non-zero.
    let attention = attention_factor.unwrap_or(match (mscale, mscale_all_dim) {
        (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
            yarn_get_mscale(factor, m) / yarn_get_mscale(factor, ma)
        }
        _ => yarn_get_mscale(factor, 1.0),
    });
    // HF: `beta_fast or 32`, `beta_slow or 1`.
    let beta_fast = if beta_fast == 0.0 {
        YARN_DEFAULT_BETA_FAST
    } else {
        beta_fast
    };
    let beta_slow = if beta_slow == 0.0 {
        YARN_DEFAULT_BETA_SLOW
    } else {
        beta_slow
    };

    let half = head_dim / 2;
    let base32 = theta as f32;
    let factor32 = factor as f32;
    let (low, high) =
        yarn_find_correction_range(beta_fast, beta_slow, head_dim, theta, orig, truncate);
    let ramp = yarn_linear_ramp(low, high, half);
    let inv_freq = (0..half)
        .map(|j| {
            let pos_freq = pow_f32(base32, (2 * j) as f32 / head_dim as f32);
            let extrapolation = 1.0f32 / pos_freq;
            let interpolation = 1.0f32 / (factor32 * pos_freq);
            let extrapolation_factor = 1.0f32 - ramp[j];
            interpolation * (1.0f32 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    RopeFreqs {
        inv_freq,
        attention_scaling: attention as f32,
    }
}

/// HF `_compute_llama3_parameters` applied to the default `inv`, in HF's f32 op order.
pub(super) fn llama3(
    inv: &[f32],
    factor: f64,
    low: f64,
    high: f64,
    old_context_len: usize,
) -> Vec<f32> {
    let old = old_context_len as f64;
    let low_wavelen = (old / low) as f32;
    let high_wavelen = (old / high) as f32;
    let factor32 = factor as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    let low32 = low as f32;
    let span32 = (high - low) as f32;
    let old32 = old as f32;
    inv.iter()
        .map(|&f| {
            // `2 * math.pi / inv_freq` is `inv_freq.reciprocal() * (2π)` in torch.
            let wavelen = (1.0f32 / f) * two_pi;
            let scaled = if wavelen > low_wavelen {
                f / factor32
            } else {
                f
            };
            let smooth = ((1.0f32 / wavelen) * old32 - low32) / span32;
            let smoothed = (1.0f32 - smooth) * scaled / factor32 + smooth * scaled;
            // HF: `~(wavelen < high) * ~(wavelen > low)`; the same for the finite wavelengths here.
            let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
            if medium {
                smoothed
            } else {
                scaled
            }
        })
        .collect()
}
