//! RoPE on burn: cos/sin tables built on the host from the core's frequency math, applied in
//! HF's `rotate_half` layout (pairs `(x_j, x_{j+d/2})`).
//!
//! Positions are data. Token `i` of row `b` is rotated by angle `(pos[b,i] / g[b]) · θ_j`,
//! times the variant's attention factor on cos and sin (yarn), exactly as
//! `LlamaRotaryEmbedding` does with `position_ids` when `g = 1`.

use burn::tensor::{Device, Tensor, TensorData};
use e2llm_core::{RopeConfig, RopeFreqs};

/// Positions and RoPE scale for one forward call: the model's only notion of "where" a token is.
#[derive(Debug, Clone, PartialEq)]
pub struct Positions {
    /// `[batch * seq]`, row-major; integers or fractions.
    pub pos: Vec<f32>,
    /// `[batch]`: the scale `g` each row's positions are divided by (1 = none).
    pub scale: Vec<f32>,
    /// Rows in the batch.
    pub batch: usize,
}

impl Positions {
    /// `0..seq` for every row, scale `g`.
    pub fn contiguous(batch: usize, seq: usize, start: usize, g: f32) -> Self {
        let row: Vec<f32> = (start..start + seq).map(|p| p as f32).collect();
        Self {
            pos: row.iter().copied().cycle().take(batch * seq).collect(),
            scale: vec![g; batch],
            batch,
        }
    }

    /// One row with explicit positions and scale `g`.
    pub fn row(pos: Vec<f32>, g: f32) -> Self {
        Self {
            pos,
            scale: vec![g],
            batch: 1,
        }
    }

    /// Tokens per row.
    pub fn seq(&self) -> usize {
        self.pos.len().checked_div(self.batch).unwrap_or(0)
    }

    /// The length HF's dynamic NTK sees: `max(position) + 1` (before dividing by g).
    pub fn span(&self) -> usize {
        let max = self.pos.iter().copied().fold(0.0f32, f32::max);
        max.floor() as usize + 1
    }
}

/// `cos` and `sin` tables, `[batch, 1, seq, head_dim]`, halves duplicated as HF's `cat(freqs, freqs)`
/// — and, for the fused attention kernel (which rotates inside), the same RoPE as data.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `[batch, 1, seq, head_dim]`.
    pub cos: Tensor<4>,
    /// `[batch, 1, seq, head_dim]`.
    pub sin: Tensor<4>,
    /// Each token's position divided by its row's g, `[batch * seq]` row-major.
    pub scaled_pos: Vec<f32>,
    /// The inverse frequencies at this span, `[head_dim / 2]`.
    pub inv_freq: Vec<f32>,
    /// The variant's attention factor on cos and sin (1 except for yarn).
    pub factor: f32,
    /// Log-n scaling: each query's factor `[batch, seq]` (see [`e2llm_core::logn_scale`]), or
    /// `None` when it is off or 1 for every query of this call.
    pub q_scale: Option<Tensor<2>>,
}

/// Host-side cos/sin for `positions` (the slow, obviously-correct path; also the kernels' reference).
///
/// Returns `(cos, sin)`, each `[batch * seq * head_dim]` row-major.
pub fn rope_cos_sin(freqs: &RopeFreqs, positions: &Positions) -> (Vec<f32>, Vec<f32>) {
    let half = freqs.inv_freq.len();
    let d = 2 * half;
    let seq = positions.seq();
    let mut cos = vec![0.0f32; positions.pos.len() * d];
    let mut sin = vec![0.0f32; positions.pos.len() * d];
    for (t, &p) in positions.pos.iter().enumerate() {
        let g = positions.scale[t / seq.max(1)];
        let (c, s) = freqs.cos_sin(p, g);
        let base = t * d;
        for half_start in [base, base + half] {
            cos[half_start..half_start + half].copy_from_slice(&c);
            sin[half_start..half_start + half].copy_from_slice(&s);
        }
    }
    (cos, sin)
}

impl RopeTables {
    /// Builds the tables for `positions` with the frequencies `rope` gives at this span.
    pub fn new(
        rope: &RopeConfig,
        head_dim: usize,
        max_position_embeddings: usize,
        positions: &Positions,
        device: &Device,
    ) -> Self {
        let freqs = rope.frequencies(head_dim, max_position_embeddings, positions.span());
        let (cos, sin) = rope_cos_sin(&freqs, positions);
        let shape = [positions.batch, 1, positions.seq(), head_dim];
        let seq = positions.seq().max(1);
        let scaled_pos = (positions.pos.iter().enumerate())
            .map(|(t, p)| p / positions.scale[t / seq])
            .collect();
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            scaled_pos,
            factor: freqs.attention_scaling,
            inv_freq: freqs.inv_freq,
            q_scale: None,
        }
    }

    /// Rotates `x` (queries or keys).
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]` → same shape.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let d = x.dims()[3];
        let x1 = x.clone().narrow(3, 0, d / 2);
        let x2 = x.clone().narrow(3, d / 2, d / 2);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}
