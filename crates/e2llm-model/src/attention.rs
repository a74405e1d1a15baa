//! Grouped-query self-attention with explicit RoPE positions and an optional KV cache.

use burn::module::Module;
use burn::tensor::{activation, Bool, Tensor};

use crate::layers::Linear;
use crate::rope::RopeTables;

/// Keys (already rotated) and values of one layer for the tokens seen so far.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// `[batch, kv_heads, past, head_dim]`.
    pub k: Tensor<4>,
    /// `[batch, kv_heads, past, head_dim]`.
    pub v: Tensor<4>,
}

/// `model.layers.{i}.self_attn`.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[heads * head_dim, hidden]`.
    pub q_proj: Linear,
    /// `[kv_heads * head_dim, hidden]`.
    pub k_proj: Linear,
    /// `[kv_heads * head_dim, hidden]`.
    pub v_proj: Linear,
    /// `[hidden, heads * head_dim]`.
    pub o_proj: Linear,
    /// Query heads.
    #[module(skip)]
    pub n_heads: usize,
    /// Key/value heads (GQA when fewer than `n_heads`).
    #[module(skip)]
    pub n_kv_heads: usize,
    /// Width of one head.
    #[module(skip)]
    pub head_dim: usize,
}

impl Attention {
    /// Causal self-attention over the cached tokens plus `x`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `rope` tables `[batch, 1, seq, head_dim]`
    /// - `cache`: `[batch, kv_heads, past, head_dim]`, extended in place to `past + seq`
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x.clone())
            .reshape([b, s, h, d])
            .swap_dims(1, 2);
        let k = self
            .k_proj
            .forward(x.clone())
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .reshape([b, s, kvh, d])
            .swap_dims(1, 2);
        let q = rope.apply(q);
        let k = rope.apply(k);

        let (k, v, past) = match cache {
            Some(slot) => {
                let (k, v, past) = match slot.take() {
                    Some(c) => {
                        let past = c.k.dims()[2];
                        (
                            Tensor::cat(vec![c.k, k], 2),
                            Tensor::cat(vec![c.v, v], 2),
                            past,
                        )
                    }
                    None => (k, v, 0),
                };
                *slot = Some(LayerCache {
                    k: k.clone(),
                    v: v.clone(),
                });
                (k, v, past)
            }
            None => (k, v, 0),
        };
        let out = attention_reference(q, k, v, past);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

/// Repeats each key/value head `n_rep` times (HF `repeat_kv`).
///
/// # Shapes
/// - `x`: `[batch, kv_heads, len, head_dim]` → `[batch, kv_heads * n_rep, len, head_dim]`
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kvh, len, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, n_rep, len, d])
        .reshape([b, kvh * n_rep, len, d])
}

/// Plain causal attention: matmul, mask, softmax, matmul. Materialises `[seq, past + seq]`
/// scores per head, so callers bound `seq` (chunked prefill) to keep memory linear in length.
///
/// Query `i` (absolute index `past + i`) sees keys `0..=past + i`.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, head_dim]`
/// - `k`, `v`: `[batch, kv_heads, past + seq, head_dim]`
/// - output: `[batch, heads, seq, head_dim]`
pub fn attention_reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, past: usize) -> Tensor<4> {
    let [b, h, s, d] = q.dims();
    let kvh = k.dims()[1];
    let total = k.dims()[2];
    let k = repeat_kv(k, h / kvh);
    let v = repeat_kv(v, h / kvh);
    let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (d as f64).sqrt());
    let scores = if s > 1 {
        let device = scores.device();
        let mask = Tensor::<2, Bool>::tril_mask([s, total], past as i64, &device)
            .unsqueeze_dims::<4>(&[0, 1])
            .expand([b, h, s, total]);
        scores.mask_fill(mask, f32::NEG_INFINITY)
    } else {
        scores
    };
    activation::softmax(scores, 3).matmul(v)
}
