//! `LlamaForCausalLM` on burn: one code path for every backend.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};
use e2llm_core::{LlamaConfig, RopeScaling};

use crate::attention::{Attention, Kernels, LayerCache, Precision};
use crate::error::{ModelError, Result};
use crate::layers::{f32_of, Linear, Mlp, RmsNorm};
use crate::rope::{Positions, RopeTables};

/// `model.layers.{i}`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm,
    /// `self_attn`.
    pub self_attn: Attention,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm,
    /// `mlp`.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` → same shape.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RopeTables,
        cache: Option<&mut Option<LayerCache>>,
        paths: Paths,
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward_with(x.clone(), paths.layers);
        let h = x + self.self_attn.forward(normed, rope, cache, paths);
        let normed = self
            .post_attention_layernorm
            .forward_with(h.clone(), paths.layers);
        h + self.mlp.forward_with(normed, paths.layers)
    }
}

/// Which parts of a forward (and a training step) run the fused kernels (see [`Kernels`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paths {
    /// Attention (`attention.wgsl`; on the CPU `e2llm_kernels::flash_cpu`).
    pub attention: bool,
    /// RMSNorm and the SwiGLU gate (`rmsnorm.wgsl`, `swiglu.wgsl`) and, in training, the loss
    /// and the AdamW update (`cross_entropy.wgsl`, `adamw.wgsl`).
    pub layers: bool,
    /// How a KV cache stores keys and values (the model's [`Llama::with_kv_cache`]).
    pub kv: Precision,
    /// Bytes one page of a fused KV cache may take (`None`: one tensor per layer): the
    /// device's largest binding, or [`Llama::with_kv_page_bytes`].
    pub kv_page_bytes: Option<u64>,
}

impl Paths {
    /// Everything fused or nothing (an f32 cache).
    pub fn all(fused: bool) -> Self {
        Self {
            attention: fused,
            layers: fused,
            kv: Precision::F32,
            kv_page_bytes: None,
        }
    }
}

/// A Llama causal language model. Field names are HF's, so `model.layers.3.mlp.up_proj.weight`
/// is `self.layers[3].mlp.up_proj.weight`.
#[derive(Module, Debug)]
pub struct Llama {
    /// `model.embed_tokens.weight`, `[vocab, hidden]`.
    pub embed_tokens: Param<Tensor<2>>,
    /// `model.layers.{i}`.
    pub layers: Vec<DecoderLayer>,
    /// `model.norm`.
    pub norm: RmsNorm,
    /// `lm_head`; `None` when the embeddings are tied.
    pub lm_head: Option<Linear>,
    /// The HF config this model was built from.
    #[module(skip)]
    pub config: LlamaConfig,
    /// The attention implementation ([`Kernels::Auto`]: fused on a GPU).
    #[module(skip)]
    pub kernels: Kernels,
    /// How a KV cache stores keys and values (f32 unless [`Llama::with_kv_cache`] says f16).
    #[module(skip)]
    pub kv_cache: Precision,
    /// Bytes per page of the fused KV cache ([`Llama::with_kv_page_bytes`]); `None`: the
    /// device's largest binding.
    #[module(skip)]
    pub kv_page_bytes: Option<u64>,
}

/// Keys and values of every layer for the tokens processed so far.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![None; n_layers],
        }
    }

    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, LayerCache::len)
    }

    /// Layer `i`'s slot (the cache was made with more than `i` layers).
    pub(crate) fn slot(&mut self, i: usize) -> &mut Option<LayerCache> {
        &mut self.layers[i]
    }

    /// Bytes the cached keys and values take on the device (every layer; positions aside).
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor<4>| t.shape().num_elements() * t.dtype().size();
        self.layers
            .iter()
            .flatten()
            .map(|c| {
                let pages: usize = c.pages.iter().map(|(k, v)| size(k) + size(v)).sum();
                pages + size(&c.k) + size(&c.v)
            })
            .sum()
    }

    /// Full pages the fused cache holds per layer (besides its open page): 0 until the cache
    /// outgrows one page ([`Llama::with_kv_page_bytes`]).
    pub fn pages(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |c| c.pages.len())
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Llama {
    /// Checks the inputs, embeds `ids` and builds the RoPE tables for `positions` (absolute:
    /// new tokens after a cache carry the positions that follow it).
    ///
    /// # Shapes
    /// - returns `[batch, seq, hidden]` embeddings
    pub(crate) fn embed(
        &self,
        ids: &[u32],
        positions: &Positions,
    ) -> Result<(Tensor<3>, RopeTables)> {
        let cfg = &self.config;
        let batch = positions.batch;
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "{} token ids do not split into {batch} rows",
                ids.len()
            )));
        }
        if positions.pos.len() != ids.len() || positions.scale.len() != batch {
            return Err(ModelError::Input(format!(
                "{} token ids but {} positions and {} scales for {batch} rows",
                ids.len(),
                positions.pos.len(),
                positions.scale.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (vocab_size {})",
                cfg.vocab_size
            )));
        }
        if let Some(g) = positions
            .scale
            .iter()
            .find(|g| !(g.is_finite() && **g > 0.0))
        {
            return Err(ModelError::Input(format!(
                "RoPE scale {g} must be a positive number"
            )));
        }
        let seq = ids.len() / batch;
        let device = self.embed_tokens.val().device();
        let ids_t = Tensor::<1, Int>::from_data(
            TensorData::new(
                ids.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                [ids.len()],
            ),
            &device,
        );
        // Only the selected rows are widened when the weights are stored in f16.
        let x =
            f32_of(self.embed_tokens.val().select(0, ids_t)).reshape([batch, seq, cfg.hidden_size]);
        let mut rope = RopeTables::new(
            &cfg.rope,
            cfg.head_dim(),
            cfg.max_position_embeddings,
            positions,
            &device,
        );
        rope.q_scale = self.logn_q_scale(positions);
        Ok((x, rope))
    }

    /// With log-n scaling on, each query's factor: [`e2llm_core::logn_scale`] of `p + 1` for a
    /// token at position `p` (before dividing by `g`). In a contiguous prompt that is the
    /// number of keys the query sees, cached ones included; in an E²-LLM training row it is the
    /// length the row stands for, so a model trained with log-n meets at inference the factors
    /// it was trained with. `None` when it is off or 1 for every query.
    ///
    /// # Shapes
    /// - output: `[batch, seq]`
    pub(crate) fn logn_q_scale(&self, positions: &Positions) -> Option<Tensor<2>> {
        let base = self.config.max_position_embeddings;
        let keys = |p: f32| p.max(0.0) as usize + 1;
        if !self.logn() || positions.pos.iter().all(|&p| keys(p) <= base) {
            return None;
        }
        let f: Vec<f32> = (positions.pos.iter())
            .map(|&p| e2llm_core::logn_scale(keys(p), base))
            .collect();
        Some(Tensor::from_data(
            TensorData::new(f, [positions.batch, positions.seq()]),
            &self.device(),
        ))
    }

    /// Hidden states after the final norm.
    ///
    /// `ids` holds `[batch * seq]` token ids row-major; `positions` gives each token's position
    /// and each row's RoPE scale. With a cache, the new tokens attend to everything cached and
    /// are appended to it.
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`
    pub fn forward_hidden(
        &self,
        ids: &[u32],
        positions: &Positions,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.layers.len() {
                *c = KvCache::new(self.layers.len());
            }
        }
        let (mut x, rope) = self.embed(ids, positions)?;
        // Dynamic NTK changes the frequencies with the span, and HF keeps cached keys rotated
        // at the frequencies of their own step: only the reference cache (rotated keys) does
        // that, the fused kernel rotates every key at the current frequencies.
        let paths = self.paths(cache.is_some());
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &rope, slot, paths);
        }
        Ok(self.norm.forward_with(x, paths.layers))
    }

    /// Projects hidden states to vocabulary logits (through `lm_head`, or the tied embeddings).
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` → `[batch, seq, vocab]`
    pub fn lm_head(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, s, hd] = hidden.dims();
                hidden
                    .reshape([b * s, hd])
                    .matmul(f32_of(self.embed_tokens.val()).transpose())
                    .reshape([b, s, self.config.vocab_size])
            }
        }
    }

    /// Logits for every token.
    ///
    /// # Shapes
    /// - output: `[batch, seq, vocab]`
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &Positions,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor<3>> {
        Ok(self.lm_head(self.forward_hidden(ids, positions, cache)?))
    }

    /// Runs one row through the cache in chunks of at most `chunk` tokens (bounding the
    /// attention scores to `[chunk, total]` per head) and returns the logits of the last token.
    ///
    /// # Shapes
    /// - output: `[vocab]`
    pub fn prefill(
        &self,
        ids: &[u32],
        positions: &[f32],
        g: f32,
        cache: &mut KvCache,
        chunk: usize,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Tensor<1>> {
        if ids.is_empty() || ids.len() != positions.len() {
            return Err(ModelError::Input(format!(
                "prefill needs one position per token ({} ids, {} positions)",
                ids.len(),
                positions.len()
            )));
        }
        let chunk = chunk.max(1);
        let mut last = None;
        for start in (0..ids.len()).step_by(chunk) {
            let end = (start + chunk).min(ids.len());
            let pos = Positions::row(positions[start..end].to_vec(), g);
            let hidden = self.forward_hidden(&ids[start..end], &pos, Some(cache))?;
            last = Some(hidden.narrow(1, end - start - 1, 1));
            progress(end, ids.len());
        }
        let last = last.ok_or_else(|| ModelError::Input("empty prompt".into()))?;
        Ok(self.lm_head(last).reshape([self.config.vocab_size]))
    }

    /// The device this model's weights live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.val().device()
    }

    /// This model with attention through `kernels`.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// This model with log-n attention scaling on or off: a query at position `p` (the
    /// `p + 1`-th key of a contiguous prompt) has its logits multiplied by
    /// `max(1, ln(p + 1) / ln L)`, `L` = `max_position_embeddings` (see
    /// [`e2llm_core::logn_scale`]). It is the config's `logn_attn` (`use_logn_attn` in
    /// config.json), so a saved model keeps it: off unless the model was trained with it.
    pub fn with_logn(mut self, logn: bool) -> Self {
        self.config.logn_attn = logn;
        self
    }

    /// This model with log-n attention scaling on when `asked` (`--logn`, a checkbox); a model
    /// trained with it (its config's `use_logn_attn`) keeps it either way.
    pub fn with_logn_requested(self, asked: bool) -> Self {
        let on = asked || self.logn();
        self.with_logn(on)
    }

    /// Whether log-n attention scaling is on (see [`Self::with_logn`]).
    pub fn logn(&self) -> bool {
        self.config.logn_attn
    }

    /// This model with its KV caches stored as `kv`: f16 halves their memory (and the bytes
    /// the fused attention reads per cached key); an error when the device has no f16 (a wgpu
    /// adapter without `shader-f16`).
    pub fn with_kv_cache(mut self, kv: Precision) -> Result<Self> {
        kv.check_on(&self.device(), "a KV cache")?;
        self.kv_cache = kv;
        Ok(self)
    }

    /// This model with the fused path's KV cache kept in pages of at most `bytes` (in whole
    /// multiples of `e2llm_kernels::attention::page_multiple` keys) instead of the device's
    /// largest binding (128 MiB on lavapipe and in WebGPU, which is what a cache longer than
    /// one binding needs anyway; smaller pages are for tests and tight memory).
    pub fn with_kv_page_bytes(mut self, bytes: Option<u64>) -> Self {
        self.kv_page_bytes = bytes;
        self
    }

    /// Whether this model's attention runs the fused kernel on its device.
    pub fn fused_attention(&self) -> bool {
        self.kernel_paths().attention
    }

    /// Whether attention through a KV cache runs the fused kernel (not with dynamic NTK, whose
    /// cached keys keep the rotation of their own step: [`Self::fused_attention`] otherwise).
    pub fn fused_cached_attention(&self) -> bool {
        self.paths(true).attention
    }

    /// Whether this model's RMSNorm, SwiGLU, loss and AdamW run the fused kernels.
    pub fn fused_layers(&self) -> bool {
        self.kernel_paths().layers
    }

    fn kernel_paths(&self) -> Paths {
        self.kernels.paths(&self.device(), self.config.head_dim())
    }

    /// The paths of a forward, with or without a KV cache: dynamic NTK changes the frequencies
    /// with the span, and HF keeps cached keys rotated at the frequencies of their own step —
    /// only the reference cache (rotated keys) does that, the fused kernel rotates every key at
    /// the current frequencies, so dynamic NTK with a cache keeps reference attention.
    pub(crate) fn paths(&self, cached: bool) -> Paths {
        let paths = self.kernel_paths();
        let dynamic = matches!(self.config.rope.scaling, RopeScaling::Dynamic { .. });
        Paths {
            attention: paths.attention && !(dynamic && cached),
            kv: self.kv_cache,
            kv_page_bytes: self
                .kv_page_bytes
                .or_else(|| e2llm_kernels::fused::max_binding_bytes(&self.device())),
            ..paths
        }
    }
}
