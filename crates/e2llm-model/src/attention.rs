//! Grouped-query self-attention with explicit RoPE positions and an optional KV cache, on
//! either attention path: the plain burn ops ([`attention_reference`]) or the fused WGSL kernel
//! with RoPE inside ([`e2llm_kernels::fused::rope_attention`]).

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::{activation, Bool, DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::layers::{f32_of, Linear};
use crate::llama::Paths;
use crate::rope::RopeTables;

/// `NAMES`, [`FromStr`] and [`Display`](fmt::Display) of a fieldless enum, each variant
/// spelled once (`what` names the setting in the parse error).
macro_rules! spelled {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every spelling [`FromStr`] accepts.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}`; choose one of {}",
                        $what,
                        $ty::NAMES.join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self {
                    $($ty::$variant => $name,)+
                })
            }
        }
    };
}

/// Which implementation of attention and the element-wise ops the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The faster of the two per device: on a GPU (burn's cubecl backend: wgpu, WebGPU) every
    /// fused kernel; on the CPU the fused attention ([`e2llm_kernels::flash_cpu`]) and burn's
    /// own element-wise ops (the kernels' CPU twins are reference loops, not fast ones).
    #[default]
    Auto,
    /// Every fused kernel: `shaders/attention.wgsl` (RoPE inside, online softmax, O(length)
    /// memory, FlashAttention-2 backward), RMSNorm, SwiGLU, loss and AdamW on a GPU; on the
    /// CPU the CPU attention and the other kernels' CPU twins.
    Fused,
    /// Plain burn ops: rotate, matmul, mask, softmax, matmul.
    Reference,
}

spelled!(Kernels, "kernels", { Auto => "auto", Fused => "fused", Reference => "reference" });

impl Kernels {
    /// Which parts run fused on `device` with heads of `head_dim`.
    pub fn paths(self, device: &Device, head_dim: usize) -> Paths {
        match self {
            Kernels::Fused => Paths::all(true),
            Kernels::Reference => Paths::all(false),
            Kernels::Auto if e2llm_kernels::fused::is_gpu(device) => {
                Paths::all(head_dim <= 128 && head_dim.is_multiple_of(2))
            }
            Kernels::Auto => Paths {
                attention: head_dim.is_multiple_of(2),
                ..Paths::all(false)
            },
        }
    }
}

/// How tensors the model keeps are stored — its KV cache ([`crate::Llama::with_kv_cache`]),
/// its weights (`checkpoint::load_dir_as`). Computation is f32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full precision.
    #[default]
    F32,
    /// Half precision: half the memory. A KV cache rounds keys and values to f16 once, as they
    /// enter it, and the fused attention kernel reads them as f16 (half the bytes per key) and
    /// sums in f32; weights are rounded once at load and widened where they are used. Needs a
    /// device with f16 (wgpu: `shader-f16`).
    F16,
}

spelled!(Precision, "precision", { F32 => "f32", F16 => "f16" });

impl Precision {
    /// Bytes per value.
    pub fn bytes(self) -> usize {
        self.dtype().size()
    }

    /// burn's dtype for it.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }

    /// Ok when `device` can keep `what` (e.g. "a KV cache", "weights") in this precision; else
    /// the error saying so (f16 on a wgpu adapter without `shader-f16`).
    pub fn check_on(self, device: &Device, what: &str) -> crate::error::Result<()> {
        if self == Precision::F32 || device.supports_dtype(self.dtype()) {
            return Ok(());
        }
        Err(crate::error::ModelError::Input(format!(
            "this device cannot keep {what} in {self} (a wgpu adapter needs the shader-f16 \
             feature); use f32"
        )))
    }
}

/// `t` stored as `kv` (a no-op for f32).
fn store(t: Tensor<4>, kv: Precision) -> Tensor<4> {
    match kv {
        Precision::F32 => t,
        Precision::F16 => t.cast(DType::F16),
    }
}

/// Keys and values of one layer for the tokens seen so far.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Reference path: rotated, `[batch, kv_heads, past, head_dim]`. Fused path: unrotated,
    /// `[batch, past, kv_heads, head_dim]` (the kernel rotates from `kpos`). In the model's
    /// [`Precision`] (f32 or f16).
    pub k: Tensor<4>,
    /// Laid out as `k`.
    pub v: Tensor<4>,
    /// Fused path, once the cache outgrows one page (one device binding: 128 MiB on lavapipe
    /// and in WebGPU; [`Paths::kv_page_bytes`]): the full pages of keys and values before `k`
    /// and `v`, which then hold the open, last page. Empty otherwise.
    pub pages: Vec<(Tensor<4>, Tensor<4>)>,
    /// Fused path: the cached keys' positions ÷ g, `[batch * past]` row-major.
    pub kpos: Option<Vec<f32>>,
}

impl LayerCache {
    /// Tokens cached (the sequence axis differs between the two layouts).
    pub fn len(&self) -> usize {
        match self.kpos {
            Some(_) => {
                self.pages.iter().map(|(k, _)| k.dims()[1]).sum::<usize>() + self.k.dims()[1]
            }
            None => self.k.dims()[2],
        }
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        paths: Paths,
    ) -> Tensor<3> {
        if paths.attention {
            return self.forward_fused(x, rope, cache, paths);
        }
        let kv = paths.kv;
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
        let q = match &rope.q_scale {
            Some(f) => q * f.clone().reshape([b, 1, s, 1]),
            None => q,
        };
        let q = rope.apply(q);
        let k = rope.apply(k);

        let (k, v, past) = match cache {
            Some(slot) => {
                let (k, v) = (store(k, kv), store(v, kv));
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
                    kpos: None,
                    pages: Vec::new(),
                });
                // Plain ops compute in f32: an f16 cache is widened here (memory saved, not
                // bandwidth; the fused kernel reads f16 itself).
                (f32_of(k), f32_of(v), past)
            }
            None => (k, v, 0),
        };
        let out = attention_reference(q, k, v, past);
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, h * d]))
    }

    /// [`Self::forward`] through the fused kernel: q, k, v stay `[batch, seq, heads, head_dim]`
    /// and unrotated; RoPE, the causal mask and the softmax happen inside the kernel.
    fn forward_fused(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut Option<LayerCache>>,
        paths: Paths,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = self.q_proj.forward(x.clone()).reshape([b, s, h, d]);
        let q = match &rope.q_scale {
            Some(f) => q * f.clone().reshape([b, s, 1, 1]),
            None => q,
        };
        let k = self.k_proj.forward(x.clone()).reshape([b, s, kvh, d]);
        let v = self.v_proj.forward(x).reshape([b, s, kvh, d]);
        let (pages, kpos) = match cache {
            Some(slot) => {
                let (k, v) = (store(k, paths.kv), store(v, paths.kv));
                let page = page_keys(
                    paths.kv_page_bytes,
                    b * kvh * d * paths.kv.bytes(),
                    b * kvh * d,
                    d,
                );
                let (pages, open, kpos) = match slot.take() {
                    Some(LayerCache {
                        k: ck,
                        v: cv,
                        kpos: Some(cpos),
                        pages,
                    }) => {
                        let past = cpos.len() / b;
                        let kpos: Vec<f32> = (0..b)
                            .flat_map(|r| {
                                let old = &cpos[r * past..(r + 1) * past];
                                let new = &rope.scaled_pos[r * s..(r + 1) * s];
                                old.iter().chain(new).copied().collect::<Vec<_>>()
                            })
                            .collect();
                        (pages, Some((ck, cv)), kpos)
                    }
                    _ => (Vec::new(), None, rope.scaled_pos.clone()),
                };
                let (pages, (k, v)) = append_paged(pages, open, (k, v), page);
                *slot = Some(LayerCache {
                    k: k.clone(),
                    v: v.clone(),
                    kpos: Some(kpos.clone()),
                    pages: pages.clone(),
                });
                let mut all = pages;
                all.push((k, v));
                (all, kpos)
            }
            None => (vec![(k, v)], rope.scaled_pos.clone()),
        };
        let mut aux = rope.scaled_pos.clone();
        aux.extend(kpos);
        aux.extend(&rope.inv_freq);
        let n = aux.len();
        let aux = Tensor::from_data(TensorData::new(aux, [n]), &q.device());
        let scale = 1.0 / (d as f32).sqrt();
        let out = e2llm_kernels::fused::rope_attention_paged(q, pages, aux, scale, rope.factor);
        self.o_proj.forward(out.reshape([b, s, h * d]))
    }
}

/// Keys per page of a fused KV cache whose pages may take `page_bytes` (`None`: one page,
/// unbounded) at `key_bytes` (`key_values` values) per key — all rows, heads and widths of one
/// token — and head width `d`: the most that fit, in whole [`e2llm_kernels::attention::page_multiple`]s (unbounded
/// when not even one fits: the allocation then fails with the device's own error).
pub fn page_keys(page_bytes: Option<u64>, key_bytes: usize, key_values: usize, d: usize) -> usize {
    let m = e2llm_kernels::attention::page_multiple(d);
    match page_bytes {
        // At most 2^32 values per page too: the kernels index a binding with u32.
        Some(cap) => {
            let keys =
                (cap / key_bytes.max(1) as u64).min(u64::from(u32::MAX) / key_values.max(1) as u64);
            match keys as usize / m * m {
                0 => usize::MAX,
                keys => keys,
            }
        }
        None => usize::MAX,
    }
}

/// `pages` (full, `page` keys each) and the `open` last page with `new` keys appended
/// (`[batch, tokens, kv_heads, head_dim]`, along tokens): the pages it fills, and the open page
/// after it (never empty, at most `page` keys).
fn append_paged(
    mut pages: Vec<(Tensor<4>, Tensor<4>)>,
    mut open: Option<(Tensor<4>, Tensor<4>)>,
    new: (Tensor<4>, Tensor<4>),
    page: usize,
) -> (Vec<(Tensor<4>, Tensor<4>)>, (Tensor<4>, Tensor<4>)) {
    let cat = |open: Option<(Tensor<4>, Tensor<4>)>, (k, v): (Tensor<4>, Tensor<4>)| match open {
        Some((ok, ov)) => (Tensor::cat(vec![ok, k], 1), Tensor::cat(vec![ov, v], 1)),
        None => (k, v),
    };
    let mut rest = new;
    loop {
        let held = open.as_ref().map_or(0, |(k, _)| k.dims()[1]);
        let n = rest.0.dims()[1];
        if held + n <= page {
            return (pages, cat(open, rest));
        }
        if held == page {
            // The open page is full: it becomes a page (burn refuses an empty narrow).
            pages.extend(open.take());
            continue;
        }
        let room = page - held;
        let (k, v) = rest;
        let head = (k.clone().narrow(1, 0, room), v.clone().narrow(1, 0, room));
        rest = (k.narrow(1, room, n - room), v.narrow(1, room, n - room));
        pages.push(cat(open.take(), head));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each spelling parses to a variant that prints it back and that serde (configs, the
    /// trainer's saved state) writes the same way; anything else is refused with the choices.
    #[test]
    fn spellings_round_trip_and_match_serde() {
        fn check<T>(all: &[T], names: &[&str])
        where
            T: FromStr<Err = String> + fmt::Display + Serialize + PartialEq + fmt::Debug,
        {
            assert_eq!(all.len(), names.len());
            for (v, name) in all.iter().zip(names) {
                assert_eq!(&name.parse::<T>().expect("parses"), v);
                assert_eq!(v.to_string(), *name);
                assert_eq!(
                    serde_json::to_string(v).expect("json"),
                    format!("\"{name}\"")
                );
            }
            let err = "nope".parse::<T>().expect_err("unknown spelling");
            assert!(
                err.contains("`nope`") && err.contains(&names.join(", ")),
                "{err}"
            );
        }
        check(
            &[Kernels::Auto, Kernels::Fused, Kernels::Reference],
            Kernels::NAMES,
        );
        check(&[Precision::F32, Precision::F16], Precision::NAMES);
    }
}
