//! Position ids as data (`Vec<f32>`) and the training-time samplers that make them: E²-LLM's
//! scale/offset augmentation and PoSE's skip-wise chunks.
//!
//! Every sampler draws from the `rng` it is given; the project seeds
//! `rand_chacha::ChaCha8Rng::seed_from_u64(seed)` for that, so runs repeat exactly. The draws are
//! `rand` 0.9's `random_range` (uniform, unbiased).
//!
//! Positions are f32 because the model consumes them as f32 (`angle = (pos / g) · θ_j`); every
//! integer below 2^24 is exact in f32, far above any length here.

use rand::Rng;
use thiserror::Error;

/// E²-LLM's attention-sink count: the first 4 tokens keep positions 0..4.
pub const DEFAULT_SINKS: usize = 4;

/// Errors of sampler construction: which setting is wrong and how to fix it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PositionError {
    /// A length or scale is zero.
    #[error("{what} must be at least 1, got 0")]
    Zero {
        /// The setting.
        what: &'static str,
    },
    /// The training window does not fit the position range.
    #[error(
        "train_len R = {train_len} exceeds g·L = {g} × {orig_len} = {limit} for g = {g}; \
         {fix}"
    )]
    WindowTooLong {
        /// R.
        train_len: usize,
        /// L.
        orig_len: usize,
        /// The smallest scale that can be drawn.
        g: u32,
        /// g·L.
        limit: usize,
        /// What to change.
        fix: &'static str,
    },
    /// More sink tokens than the window holds.
    #[error("sinks = {sinks} exceeds train_len = {train_len}; use at most train_len sinks (E²-LLM uses 4)")]
    TooManySinks {
        /// Sink count.
        sinks: usize,
        /// R.
        train_len: usize,
    },
    /// A kept-token range whose top is below its bottom.
    #[error(
        "sinks_max = {sinks_max} is below sinks = {sinks}; each row draws its kept tokens from \
         U{{sinks..=sinks_max}}: set sinks_max >= sinks, or 0 for always `sinks`"
    )]
    SinksRange {
        /// The smallest kept count.
        sinks: usize,
        /// The largest kept count.
        sinks_max: usize,
    },
    /// PoSE needs two non-empty chunks.
    #[error("PoSE needs train_len >= 2 to split the window into two chunks, got {train_len}")]
    PoseTooShort {
        /// R.
        train_len: usize,
    },
}

/// One E²-LLM draw: the scale `g`, the offset `t` of the non-sink tokens, and how many leading
/// tokens keep their own positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct E2Sample {
    /// Position-interpolation scale; the model computes angles from `position / g`.
    pub g: u32,
    /// Offset added to the position of every non-sink token.
    pub t: usize,
    /// Leading tokens that keep positions `0..sinks` (the sampler's `sinks`, or a draw from
    /// its range).
    pub sinks: usize,
}

/// How often a batch draws a new E²-LLM sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One draw per row (the paper: "per training example").
    PerExample,
    /// One draw shared by every row of the batch ("or per iteration").
    PerBatch,
}

/// E²-LLM's training-time augmentation (METHOD.md): `g ~ U{1..=g_max}`,
/// `t ~ U{0..=g·L − R}`; sink tokens `0..sinks` keep positions `0..sinks`, token `i ≥ sinks`
/// gets `i + t`. The largest position is then `R − 1 + t ≤ g·L − 1`, so the largest rotated
/// position `(g·L − 1)/g` stays below `L`.
///
/// Ablations: `vary_t = false` is "without t" (`t = 0` always); `vary_g = false` is "without g"
/// with `g` fixed to `g_max` (the paper's run used g = 2, R = 8k, L = 4k).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2LlmSampler {
    /// Largest scale drawn (paper default 20); the fixed scale when `vary_g` is false.
    pub g_max: u32,
    /// `L`, the base model's context length.
    pub orig_len: usize,
    /// `R`, the training sequence length.
    pub train_len: usize,
    /// Tokens that keep their own positions (4); the smallest count when `sinks_max` is above
    /// it.
    pub sinks: usize,
    /// When above `sinks`, each draw keeps `U{sinks..=sinks_max}` leading tokens (drawn after
    /// `g` and `t`), so the gap `t` falls at a different token from row to row; 0 (or `sinks`
    /// itself): always `sinks`, and no extra draw.
    pub sinks_max: usize,
    /// Draw `g` (true) or fix it to `g_max` (false).
    pub vary_g: bool,
    /// Draw `t` (true) or use `t = 0` (false).
    pub vary_t: bool,
}

impl E2LlmSampler {
    /// The full method: both augmentations, 4 sinks. Errors if `R > L` (then `g = 1` has no
    /// valid offset) or a size is 0.
    pub fn new(g_max: u32, orig_len: usize, train_len: usize) -> Result<Self, PositionError> {
        Self::with_sinks(g_max, orig_len, train_len, DEFAULT_SINKS)
    }

    /// Both augmentations with `sinks` leading tokens kept at `0..sinks` (more than 4 make `t`
    /// a gap between two long chunks). Errors as [`Self::new`], or if `sinks > R`.
    pub fn with_sinks(
        g_max: u32,
        orig_len: usize,
        train_len: usize,
        sinks: usize,
    ) -> Result<Self, PositionError> {
        let s = E2LlmSampler {
            sinks,
            ..Self::unchecked(g_max, orig_len, train_len)
        };
        s.validate()?;
        Ok(s)
    }

    /// The "without t-augmentation" ablation: `g` drawn, `t = 0`.
    pub fn without_t(g_max: u32, orig_len: usize, train_len: usize) -> Result<Self, PositionError> {
        let s = E2LlmSampler {
            vary_t: false,
            ..Self::unchecked(g_max, orig_len, train_len)
        };
        s.validate()?;
        Ok(s)
    }

    /// The "without g-augmentation" ablation: `g` fixed (stored as `g_max`), `t` drawn, 4
    /// sinks. Allows `R` up to `g·L`.
    pub fn without_g(g: u32, orig_len: usize, train_len: usize) -> Result<Self, PositionError> {
        Self::without_g_with_sinks(g, orig_len, train_len, DEFAULT_SINKS)
    }

    /// [`Self::without_g`] with `sinks` leading tokens kept at `0..sinks` (the ablation of
    /// [`Self::with_sinks`]). Errors as [`Self::without_g`], or if `sinks > R`.
    pub fn without_g_with_sinks(
        g: u32,
        orig_len: usize,
        train_len: usize,
        sinks: usize,
    ) -> Result<Self, PositionError> {
        let s = E2LlmSampler {
            vary_g: false,
            sinks,
            ..Self::unchecked(g, orig_len, train_len)
        };
        s.validate()?;
        Ok(s)
    }

    /// This sampler with its kept-token count drawn from `U{sinks..=sinks_max}` per draw
    /// (0 = fixed). Errors if `sinks_max` is below `sinks` or above `R`.
    pub fn with_sinks_max(self, sinks_max: usize) -> Result<Self, PositionError> {
        let s = E2LlmSampler { sinks_max, ..self };
        s.validate()?;
        Ok(s)
    }

    fn unchecked(g_max: u32, orig_len: usize, train_len: usize) -> Self {
        E2LlmSampler {
            g_max,
            orig_len,
            train_len,
            sinks: DEFAULT_SINKS,
            sinks_max: 0,
            vary_g: true,
            vary_t: true,
        }
    }

    /// Checks the settings: positive sizes, `sinks ≤ R` (and `sinks ≤ sinks_max ≤ R` when a
    /// range is set), and `R ≤ g·L` for the smallest `g`
    /// that can be drawn (1 when `vary_g`, else `g_max`).
    pub fn validate(&self) -> Result<(), PositionError> {
        for (what, v) in [
            ("g_max", self.g_max as usize),
            ("orig_len L", self.orig_len),
            ("train_len R", self.train_len),
        ] {
            if v == 0 {
                return Err(PositionError::Zero { what });
            }
        }
        if self.sinks_max != 0 && self.sinks_max < self.sinks {
            return Err(PositionError::SinksRange {
                sinks: self.sinks,
                sinks_max: self.sinks_max,
            });
        }
        let most = self.sinks.max(self.sinks_max);
        if most > self.train_len {
            return Err(PositionError::TooManySinks {
                sinks: most,
                train_len: self.train_len,
            });
        }
        let g = if self.vary_g { 1 } else { self.g_max };
        let limit = g as usize * self.orig_len;
        if self.train_len > limit {
            return Err(PositionError::WindowTooLong {
                train_len: self.train_len,
                orig_len: self.orig_len,
                g,
                limit,
                fix: if self.vary_g {
                    "E²-LLM trains at R <= L; shorten train_len"
                } else {
                    "raise the fixed g or shorten train_len"
                },
            });
        }
        Ok(())
    }

    /// The largest offset for scale `g`: `g·L − R` (0 if negative).
    pub fn max_offset(&self, g: u32) -> usize {
        (g as usize * self.orig_len).saturating_sub(self.train_len)
    }

    /// One draw of `(g, t)` and the kept count. Never panics; on settings that fail
    /// [`Self::validate`] the draw is clamped (g ≥ 1, t ≥ 0) and meaningless.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> E2Sample {
        let (g, t) = self.draw_g_t(rng);
        E2Sample {
            g,
            t,
            sinks: self.draw_sinks(rng),
        }
    }

    fn draw_g_t<R: Rng + ?Sized>(&self, rng: &mut R) -> (u32, usize) {
        let g_max = self.g_max.max(1);
        let g = if self.vary_g {
            rng.random_range(1..=g_max)
        } else {
            g_max
        };
        let t = if self.vary_t {
            rng.random_range(0..=self.max_offset(g))
        } else {
            0
        };
        (g, t)
    }

    /// `sinks`, or a draw from `U{sinks..=sinks_max}` when that is a range (no draw otherwise,
    /// so a fixed count leaves the random stream as it was).
    fn draw_sinks<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if self.sinks_max > self.sinks {
            rng.random_range(self.sinks..=self.sinks_max)
        } else {
            self.sinks
        }
    }

    /// `batch` draws: independent per row, or one repeated for the whole batch. Per row, every
    /// row's `(g, t)` is drawn first and then every row's kept count, so a batch's `(g, t)` do
    /// not depend on whether the kept count is a range.
    pub fn sample_batch<R: Rng + ?Sized>(
        &self,
        batch: usize,
        granularity: Granularity,
        rng: &mut R,
    ) -> Vec<E2Sample> {
        match granularity {
            Granularity::PerExample => {
                let g_t: Vec<_> = (0..batch).map(|_| self.draw_g_t(rng)).collect();
                g_t.into_iter()
                    .map(|(g, t)| E2Sample {
                        g,
                        t,
                        sinks: self.draw_sinks(rng),
                    })
                    .collect()
            }
            Granularity::PerBatch => {
                if batch == 0 {
                    return Vec::new();
                }
                vec![self.sample(rng); batch]
            }
        }
    }

    /// Positions of a sequence of `len` tokens (normally `R`) under one draw (its offset `t`
    /// and kept count); see [`e2llm_positions`].
    pub fn positions(&self, len: usize, draw: E2Sample) -> Vec<f32> {
        e2llm_positions(len, draw.sinks, draw.t)
    }
}

/// `[len]` positions: `i` for the first `sinks` tokens, `i + t` after them.
pub fn e2llm_positions(len: usize, sinks: usize, t: usize) -> Vec<f32> {
    (0..len)
        .map(|i| if i < sinks { i as f32 } else { (i + t) as f32 })
        .collect()
}

/// Plain positions `0..len` (inference: `t = 0`, no sinks needed).
pub fn contiguous_positions(len: usize) -> Vec<f32> {
    (0..len).map(|i| i as f32).collect()
}

/// One PoSE draw: the split point and the skip of the second chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoseSample {
    /// First token of the second chunk, in `1..R`.
    pub split: usize,
    /// Offset added to every position of the second chunk.
    pub skip: usize,
}

/// PoSE-style positional skip-wise training (no scale at training time; combine with any RoPE
/// scaling at inference).
///
/// Choice made here: the window of `R` tokens is cut into two non-empty chunks at
/// `c ~ U{1..=R−1}`; the first keeps positions `0..c`, the second is shifted by one skip
/// `u ~ U{0..=s·L − R}`, giving `c+u .. R+u`. So the largest position is `R − 1 + u ≤ s·L − 1`
/// and every relative distance up to `s·L − 1` can occur. (PoSE's released script draws the cut
/// and skip with its own ranges and also skips text; this keeps only the position part, with the
/// uniform ranges METHOD.md states.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoseSampler {
    /// `L`, the base model's context length.
    pub orig_len: usize,
    /// `R`, the training length (≥ 2).
    pub train_len: usize,
    /// `s`, the target extension: positions cover `0..s·L`.
    pub scale: u32,
}

impl PoseSampler {
    /// A checked sampler: `R ≥ 2`, `s ≥ 1`, `R ≤ s·L`.
    pub fn new(orig_len: usize, train_len: usize, scale: u32) -> Result<Self, PositionError> {
        let s = PoseSampler {
            orig_len,
            train_len,
            scale,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the settings (see [`Self::new`]).
    pub fn validate(&self) -> Result<(), PositionError> {
        if self.scale == 0 {
            return Err(PositionError::Zero { what: "scale s" });
        }
        if self.orig_len == 0 {
            return Err(PositionError::Zero { what: "orig_len L" });
        }
        if self.train_len < 2 {
            return Err(PositionError::PoseTooShort {
                train_len: self.train_len,
            });
        }
        let limit = self.scale as usize * self.orig_len;
        if self.train_len > limit {
            return Err(PositionError::WindowTooLong {
                train_len: self.train_len,
                orig_len: self.orig_len,
                g: self.scale,
                limit,
                fix: "raise the scale or shorten train_len",
            });
        }
        Ok(())
    }

    /// The largest skip: `s·L − R` (0 if negative).
    pub fn max_skip(&self) -> usize {
        (self.scale as usize * self.orig_len).saturating_sub(self.train_len)
    }

    /// One draw. Never panics; meaningless on settings that fail [`Self::validate`].
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> PoseSample {
        let split = rng.random_range(1..=self.train_len.saturating_sub(1).max(1));
        let skip = rng.random_range(0..=self.max_skip());
        PoseSample { split, skip }
    }

    /// `[R]` positions for `sample`: `0..c`, then `c+u .. R+u`.
    pub fn positions(&self, sample: PoseSample) -> Vec<f32> {
        (0..self.train_len)
            .map(|i| {
                if i < sample.split {
                    i as f32
                } else {
                    (i + sample.skip) as f32
                }
            })
            .collect()
    }
}
