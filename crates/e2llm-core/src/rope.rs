//! RoPE frequency math for every variant e2llm supports, as HF transformers computes it.
//!
//! [`RopeConfig::frequencies`] is the twin of the `_compute_*_parameters` functions in
//! transformers' `modeling_rope_utils.py` (default, linear, dynamic, yarn, llama3). It returns the
//! `head_dim / 2` inverse frequencies and the `attention_scaling` that multiplies cos and sin.
//!
//! # Precision: the f32 op sequence of HF, with `pow` done in f64
//! HF builds `inv_freq` in float32: `torch.arange(0, dim, 2, dtype=int64).float() / dim` (an f32
//! division), `base ** that` (the Python float `base` is cast to f32, then an f32 `pow`), and
//! `1.0 / ...` (an f32 reciprocal); every later tensor op (`/ factor`, the yarn blend, the llama3
//! bands) is one f32 op with its Python-float scalar cast to f32. This module replays that
//! sequence op for op in f32, except `pow`, which it evaluates in f64 and rounds once to f32 (a
//! correctly rounded `powf`). Why not plain f64 throughout: for a head width that is not a power
//! of two the f32 rounding of the exponent `2j/d` alone moves `θ^(2j/d)` by several f32 ULPs
//! (`ln θ · δe`), so an f64 computation would *not* give HF's numbers. Why not `f32::powf`: its
//! accuracy is whatever the target's libm gives for floats; an f64 `pow` (< 1 f64 ULP on glibc
//! and on wasm's libm port) rounded to f32 gives the correctly rounded f32 on every target, bar a
//! value within ~2⁻²⁹ relative of an f32 rounding boundary. Result: equal to HF on CPU up to
//! HF's own `pow` error (SLEEF `powf`, ≤ 1 ULP); HF on CUDA differs from HF on CPU by about as
//! much (CUDA's `powf`, and its `a * (1/b)` for division by a scalar).
//!
//! Dynamic NTK's new base is computed as in HF's forward pass, where `seq_len` is a tensor
//! (`max(position_ids) + 1`), so in f32 too.
//!
//! Scalar Python-float arithmetic in HF (yarn's correction range, `get_mscale`, llama3's band
//! edges) is done here in f64, in HF's order of operations.
//!
//! # transformers versions
//! The formulas agree between the transformers versions read (a v4.4x release with
//! `rope_kwargs`, later v4 releases, and v5's `rope_parameters` code) except for yarn:
//! - early (`rope_kwargs`-era) v4: the correction range uses `max_position_embeddings`; no
//!   `mscale`/`mscale_all_dim`, no `truncate`.
//! - later v4 (after the DeepSeek-V3 change): if `rope_scaling` holds
//!   `original_max_position_embeddings`, `factor` is *replaced* by
//!   `max_position_embeddings / original_max_position_embeddings`.
//! - v5 (implemented here): the explicit `factor` is used (a mismatch with that ratio only
//!   warns); `original_max_position_embeddings` defaults to `max_position_embeddings`;
//!   `truncate` (default true) controls the floor/ceil of the correction range.
//!
//! So a yarn config whose `factor` differs from `max_position_embeddings /
//! original_max_position_embeddings` gives different frequencies in those later v4 releases.
//!
//! Dynamic NTK is stateful in HF (it caches the largest sequence seen); this function is not: the
//! caller passes the sequence length to use (see [`RopeScaling::Dynamic`]).

use thiserror::Error;

mod hf;

use hf::{default_inv_freq, dynamic_base, llama3, yarn, YarnArgs};
pub use hf::{
    yarn_find_correction_dim, yarn_find_correction_range, yarn_get_mscale, yarn_linear_ramp,
};

/// `rope_theta` when a config names none (HF's `default_theta`).
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;
/// Yarn's `beta_fast` when a config names none (or names 0, which HF's `or 32` also replaces).
pub const YARN_DEFAULT_BETA_FAST: f64 = 32.0;
/// Yarn's `beta_slow` when a config names none (or names 0, which HF's `or 1` also replaces).
pub const YARN_DEFAULT_BETA_SLOW: f64 = 1.0;

/// Errors of the RoPE helpers: what is wrong, with which value, and what to do.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RopeError {
    /// A RoPE parameter is out of its domain.
    #[error("RoPE parameter `{name}` = {value} is invalid for rope_type `{rope_type}`: {reason}")]
    InvalidParameter {
        /// The rope_type being checked (`default`, `linear`, ...).
        rope_type: &'static str,
        /// The parameter name as HF spells it (`factor`, `rope_theta`, ...).
        name: &'static str,
        /// The offending value, printed.
        value: String,
        /// Why it is invalid and what would be valid.
        reason: &'static str,
    },
    /// A vector's length does not fit the frequencies it is rotated with.
    #[error(
        "rope_rotate_half: x has {got} values but the frequencies are for head_dim {head_dim} \
         (2 × {half} inverse frequencies); pass one head's vector of head_dim values"
    )]
    LengthMismatch {
        /// Length of the vector passed.
        got: usize,
        /// The head width the frequencies were built for.
        head_dim: usize,
        /// Number of inverse frequencies.
        half: usize,
    },
}

/// The RoPE scaling variant and its parameters, named as in HF's `rope_scaling` /
/// `rope_parameters` dictionaries.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: "default"`, or `rope_scaling: null`).
    Default,
    /// Position interpolation (`"linear"`): `inv_freq / factor`. E²-LLM's inference scaling.
    Linear {
        /// The scale `g`.
        factor: f64,
    },
    /// Dynamic NTK (`"dynamic"`): for a sequence of length ℓ > `max_position_embeddings`, the
    /// base becomes `θ · (factor·ℓ/L − (factor − 1))^(d/(d−2))`; for ℓ ≤ L it is plain RoPE.
    /// HF uses ℓ = the largest position id + 1 seen since the cache was last reset; pass that as
    /// `seq_len` to [`RopeConfig::frequencies`].
    Dynamic {
        /// The scaling factor `s`.
        factor: f64,
    },
    /// YaRN (`"yarn"`), as transformers v5 computes it.
    Yarn {
        /// The context extension factor.
        factor: f64,
        /// Pretraining length used for the correction range; `None` means
        /// `max_position_embeddings`.
        original_max_position_embeddings: Option<usize>,
        /// Rotations bounding the extrapolated (unchanged) band; default 32.
        beta_fast: f64,
        /// Rotations bounding the interpolated band; default 1.
        beta_slow: f64,
        /// Explicit cos/sin multiplier; `None` means `0.1·ln(factor) + 1` (or the mscale ratio).
        attention_factor: Option<f64>,
        /// DeepSeek-style `mscale` (used only together with `mscale_all_dim`, as in HF).
        mscale: Option<f64>,
        /// DeepSeek-style `mscale_all_dim` (used only together with `mscale`, as in HF).
        mscale_all_dim: Option<f64>,
        /// Floor/ceil the correction range to integers (HF default true).
        truncate: bool,
    },
    /// Llama 3.1 (`"llama3"`): three wavelength bands.
    Llama3 {
        /// Divisor of the low-frequency band.
        factor: f64,
        /// `L_o / low_freq_factor` is the wavelength above which frequencies are divided.
        low_freq_factor: f64,
        /// `L_o / high_freq_factor` is the wavelength below which frequencies are kept.
        high_freq_factor: f64,
        /// `L_o`, the pretraining length.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    /// HF's `rope_type` string for this variant.
    pub fn rope_type(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
        }
    }

    /// The `factor` of the variant, `None` for [`RopeScaling::Default`].
    pub fn factor(&self) -> Option<f64> {
        match *self {
            RopeScaling::Default => None,
            RopeScaling::Linear { factor }
            | RopeScaling::Dynamic { factor }
            | RopeScaling::Yarn { factor, .. }
            | RopeScaling::Llama3 { factor, .. } => Some(factor),
        }
    }

    /// YaRN with `factor` and every other parameter at HF's default.
    pub fn yarn(factor: f64) -> Self {
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: None,
            beta_fast: YARN_DEFAULT_BETA_FAST,
            beta_slow: YARN_DEFAULT_BETA_SLOW,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        }
    }
}

/// `rope_theta` plus the scaling variant: everything RoPE needs besides the head width and the
/// model's `max_position_embeddings`.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// The base `b` (HF `rope_theta`).
    pub theta: f64,
    /// The scaling variant.
    pub scaling: RopeScaling,
}

impl Default for RopeConfig {
    /// `rope_theta` 10000, no scaling.
    fn default() -> Self {
        RopeConfig {
            theta: DEFAULT_ROPE_THETA,
            scaling: RopeScaling::Default,
        }
    }
}

/// The output of [`RopeConfig::frequencies`]: what HF's `rope_init_fn` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    /// `head_dim / 2` inverse frequencies `θ_j`, f32 as in HF's `inv_freq` buffer.
    pub inv_freq: Vec<f32>,
    /// Multiplier of cos and sin (HF `attention_scaling`; 1 except for yarn).
    pub attention_scaling: f32,
}

impl RopeConfig {
    /// A RoPE config from its parts.
    pub fn new(theta: f64, scaling: RopeScaling) -> Self {
        RopeConfig { theta, scaling }
    }

    /// Checks every parameter's domain (theta > 0, factors > 0 and finite, llama3's
    /// `high_freq_factor > low_freq_factor`, positive lengths).
    pub fn validate(&self) -> Result<(), RopeError> {
        let ty = self.scaling.rope_type();
        let bad = |name, value: f64, reason| RopeError::InvalidParameter {
            rope_type: ty,
            name,
            value: value.to_string(),
            reason,
        };
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(bad("rope_theta", self.theta, "must be a finite number > 1"));
        }
        if let Some(f) = self.scaling.factor() {
            if !(f.is_finite() && f > 0.0) {
                return Err(bad(
                    "factor",
                    f,
                    "must be a finite number > 0 (1 = no scaling)",
                ));
            }
        }
        match self.scaling {
            RopeScaling::Yarn {
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                if original_max_position_embeddings == Some(0) {
                    return Err(bad("original_max_position_embeddings", 0.0, "must be > 0"));
                }
                for (name, v) in [("beta_fast", beta_fast), ("beta_slow", beta_slow)] {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(bad(name, v, "must be a finite number > 0"));
                    }
                }
                if let Some(a) = attention_factor {
                    if !(a.is_finite() && a > 0.0) {
                        return Err(bad("attention_factor", a, "must be a finite number > 0"));
                    }
                }
            }
            RopeScaling::Llama3 {
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
                ..
            } => {
                if original_max_position_embeddings == 0 {
                    return Err(bad("original_max_position_embeddings", 0.0, "must be > 0"));
                }
                if !(low_freq_factor.is_finite() && low_freq_factor > 0.0) {
                    return Err(bad("low_freq_factor", low_freq_factor, "must be > 0"));
                }
                if !(high_freq_factor.is_finite() && high_freq_factor > low_freq_factor) {
                    return Err(bad(
                        "high_freq_factor",
                        high_freq_factor,
                        "must be finite and greater than low_freq_factor",
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The inverse frequencies and attention scaling for one head of width `head_dim`, exactly
    /// as HF's `ROPE_INIT_FUNCTIONS[rope_type](config, device, seq_len)` (see the module doc for
    /// precision). `max_position_embeddings` is the model config's value (dynamic's `L`, yarn's
    /// fallback for `original_max_position_embeddings`); `seq_len` matters only for dynamic.
    /// Returns `head_dim / 2` frequencies; never panics (call [`RopeConfig::validate`] first for
    /// meaningful numbers).
    pub fn frequencies(
        &self,
        head_dim: usize,
        max_position_embeddings: usize,
        seq_len: usize,
    ) -> RopeFreqs {
        let half = head_dim / 2;
        match self.scaling {
            RopeScaling::Default => RopeFreqs {
                inv_freq: default_inv_freq(self.theta as f32, head_dim, half),
                attention_scaling: 1.0,
            },
            RopeScaling::Linear { factor } => {
                let f = factor as f32;
                let inv_freq = default_inv_freq(self.theta as f32, head_dim, half)
                    .into_iter()
                    .map(|x| x / f);
                RopeFreqs {
                    inv_freq: inv_freq.collect(),
                    attention_scaling: 1.0,
                }
            }
            RopeScaling::Dynamic { factor } => {
                let base = dynamic_base(
                    self.theta,
                    factor,
                    head_dim,
                    max_position_embeddings,
                    seq_len,
                );
                RopeFreqs {
                    inv_freq: default_inv_freq(base, head_dim, half),
                    attention_scaling: 1.0,
                }
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale,
                mscale_all_dim,
                truncate,
            } => yarn(
                self.theta,
                head_dim,
                YarnArgs {
                    factor,
                    orig: original_max_position_embeddings.unwrap_or(max_position_embeddings),
                    beta_fast,
                    beta_slow,
                    attention_factor,
                    mscale,
                    mscale_all_dim,
                    truncate,
                },
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let inv = default_inv_freq(self.theta as f32, head_dim, half);
                RopeFreqs {
                    inv_freq: llama3(
                        &inv,
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings,
                    ),
                    attention_scaling: 1.0,
                }
            }
        }
    }
}

impl RopeFreqs {
    /// The head width these frequencies are for (`2 × inv_freq.len()`).
    pub fn head_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// The rotation angle of pair `j` at position `pos` under scale `g`:
    /// `(pos / g) · inv_freq[j]` in f32 (E²-LLM divides positions by `g`; with `g = 1` this is
    /// HF's `inv_freq @ position_ids` bit for bit).
    ///
    /// # Panics
    /// If `j >= inv_freq.len()`.
    pub fn angle(&self, pos: f32, g: f32, j: usize) -> f32 {
        (pos / g) * self.inv_freq[j]
    }

    /// `(cos, sin)` of every pair's angle at `(pos, g)`, each multiplied by
    /// `attention_scaling` as HF does; each of length `head_dim / 2` (HF repeats the halves).
    pub fn cos_sin(&self, pos: f32, g: f32) -> (Vec<f32>, Vec<f32>) {
        (0..self.inv_freq.len())
            .map(|j| {
                let a = self.angle(pos, g, j);
                (
                    a.cos() * self.attention_scaling,
                    a.sin() * self.attention_scaling,
                )
            })
            .unzip()
    }
}

/// Slow reference RoPE for one head vector `x` (`[head_dim]`) at position `pos`, scale `g`, in
/// HF's rotate_half layout: pair `j` is `(x[j], x[j + d/2])`, and
/// `out = x·cos + rotate_half(x)·sin` with `rotate_half(x) = [−x[d/2..], x[..d/2]]` and
/// cos/sin multiplied by `attention_scaling`. Returns `[head_dim]`.
pub fn rope_rotate_half(
    x: &[f32],
    pos: f32,
    g: f32,
    freqs: &RopeFreqs,
) -> Result<Vec<f32>, RopeError> {
    let half = freqs.inv_freq.len();
    if x.len() != 2 * half {
        return Err(RopeError::LengthMismatch {
            got: x.len(),
            head_dim: 2 * half,
            half,
        });
    }
    let (cos, sin) = freqs.cos_sin(pos, g);
    let mut out = vec![0.0f32; x.len()];
    for j in 0..half {
        let (a, b) = (x[j], x[j + half]);
        out[j] = a * cos[j] + (-b) * sin[j];
        out[j + half] = b * cos[j] + a * sin[j];
    }
    Ok(out)
}

/// Log-n attention scaling (Chiang & Cholak 2022; Qwen's `use_logn_attn`): the factor on the
/// attention logits of a query that sees `keys` keys (itself included) in a model trained at
/// `base_len` tokens — `max(1, ln(keys) / ln(base_len))`. It is 1 at every length the model was
/// trained at and grows slowly beyond, keeping the softmax as peaked over `keys` keys as it was
/// over `base_len`. Not part of E²-LLM (whose inference is plain PI): an inference option that
/// every attention path applies to q before RoPE.
pub fn logn_scale(keys: usize, base_len: usize) -> f32 {
    if base_len < 2 || keys <= base_len {
        return 1.0;
    }
    ((keys as f64).ln() / (base_len as f64).ln()) as f32
}

#[cfg(test)]
mod logn_tests {
    use super::logn_scale;

    #[test]
    fn one_inside_the_trained_length_then_log_ratio() {
        assert_eq!(logn_scale(1, 256), 1.0);
        assert_eq!(logn_scale(256, 256), 1.0);
        // 2048 = 256^(11/8) exactly.
        assert!((logn_scale(2048, 256) - 11.0 / 8.0).abs() < 1e-6);
        assert!((logn_scale(65536, 256) - 2.0).abs() < 1e-6);
        assert!(logn_scale(257, 256) > 1.0);
        assert_eq!(logn_scale(10, 1), 1.0);
    }
}
