//! Attention maps for the visualisers (desktop app, web demo): the softmax weights of one
//! head of one layer, for a window of query rows, pooled into a fixed-size image — at any
//! length, without the `[n × n]` matrix.
//!
//! The model runs the prompt chunk by chunk through the layers below `layer` (so memory stays
//! linear in length, as in [`Llama::prefill`]), takes that layer's queries and keys before
//! RoPE, and pools with `e2llm_kernels::cpu::attention_map`, the CPU twin of
//! `shaders/attention_map.wgsl` (which takes the same un-rotated q/k and positions).

use burn::tensor::Tensor;
use e2llm_kernels::cpu::{self, AttentionShape, MapWindow};
use e2llm_kernels::Gpu;

use crate::backend::{read_f32, read_f32_async};
use crate::error::{ModelError, Result};
use crate::llama::{KvCache, Llama};
use crate::rope::Positions;

/// Where the pooling runs.
#[derive(Clone, Copy, Default)]
pub enum MapBackend<'a> {
    /// The plain-Rust twin (`e2llm_kernels::cpu::attention_map`).
    #[default]
    Cpu,
    /// `shaders/attention_map.wgsl` (after the fused forward for the softmax statistics).
    Gpu(&'a Gpu),
}

/// Which weights to pool, and into what size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    /// Decoder layer (0-based).
    pub layer: usize,
    /// Query head.
    pub head: usize,
    /// First query row of the window.
    pub row0: usize,
    /// Query rows in the window.
    pub nrows: usize,
    /// Image rows: the window's rows split into this many equal bins (≤ `nrows`).
    pub out_rows: usize,
    /// Image columns: all keys `0..n` split into this many equal bins (≤ n).
    pub out_cols: usize,
}

impl MapSpec {
    /// The whole `n × n` matrix pooled to at most `size × size`.
    pub fn whole(layer: usize, head: usize, n: usize, size: usize) -> Self {
        let side = size.clamp(1, n.max(1));
        Self {
            layer,
            head,
            row0: 0,
            nrows: n,
            out_rows: side,
            out_cols: side,
        }
    }

    /// One strip: where the last token looks, over `width` key bins.
    pub fn last_row(layer: usize, head: usize, n: usize, width: usize) -> Self {
        Self {
            layer,
            head,
            row0: n.saturating_sub(1),
            nrows: 1,
            out_rows: 1,
            out_cols: width.clamp(1, n.max(1)),
        }
    }
}

/// A pooled attention image, row-major `[rows, cols]`. Row `r` covers query rows
/// `row0 + r·nrows/rows ..`, column `c` keys `c·n/cols ..`; each row sums to ~1.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionImage {
    /// Query bins.
    pub rows: usize,
    /// Key bins.
    pub cols: usize,
    /// `rows · cols` mean summed weights.
    pub data: Vec<f32>,
}

impl AttentionImage {
    /// Weight of cell `(r, c)`.
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.cols + c]
    }
}

impl Llama {
    /// Queries and keys of `layer`, before RoPE, for one row of tokens, computed `chunk` tokens
    /// at a time through a cache of the layers below.
    ///
    /// # Shapes
    /// - returns `(q [1, n, heads · head_dim], k [1, n, kv_heads · head_dim])`
    pub fn layer_qk(
        &self,
        ids: &[u32],
        positions: &[f32],
        g: f32,
        layer: usize,
        chunk: usize,
    ) -> Result<(Tensor<3>, Tensor<3>)> {
        if layer >= self.layers.len() {
            return Err(ModelError::Input(format!(
                "layer {layer} does not exist (the model has {} layers, 0..{})",
                self.layers.len(),
                self.layers.len()
            )));
        }
        if ids.is_empty() || ids.len() != positions.len() {
            return Err(ModelError::Input(format!(
                "an attention map needs one position per token ({} ids, {} positions)",
                ids.len(),
                positions.len()
            )));
        }
        let mut cache = KvCache::new(layer);
        let (mut q, mut k) = (Vec::new(), Vec::new());
        let chunk = chunk.max(1);
        for start in (0..ids.len()).step_by(chunk) {
            let end = (start + chunk).min(ids.len());
            let pos = Positions::row(positions[start..end].to_vec(), g);
            let x = self.layer_input(&ids[start..end], &pos, &mut cache, layer)?;
            let l = &self.layers[layer];
            let x = l.input_layernorm.forward(x);
            let qs = l.self_attn.q_proj.forward(x.clone());
            q.push(match self.logn_q_scale(&pos) {
                Some(f) => qs * f.reshape([1, end - start, 1]),
                None => qs,
            });
            k.push(l.self_attn.k_proj.forward(x));
        }
        Ok((Tensor::cat(q, 1), Tensor::cat(k, 1)))
    }

    /// The pooled softmax weights of `spec.head` in `spec.layer` for the prompt `ids` read at
    /// `positions / g` (see [`MapSpec`] and [`AttentionImage`]). Reads q/k back synchronously
    /// (CPU, native wgpu); in a browser on WebGPU use [`Llama::attention_map_async`].
    pub fn attention_map(
        &self,
        ids: &[u32],
        positions: &[f32],
        g: f32,
        spec: &MapSpec,
        chunk: usize,
    ) -> Result<AttentionImage> {
        self.attention_map_on(ids, positions, g, spec, chunk, MapBackend::Cpu)
    }

    /// [`Llama::attention_map`], pooled on `backend` (the WGSL kernel on a GPU, or its CPU twin).
    pub fn attention_map_on(
        &self,
        ids: &[u32],
        positions: &[f32],
        g: f32,
        spec: &MapSpec,
        chunk: usize,
        backend: MapBackend<'_>,
    ) -> Result<AttentionImage> {
        self.check_map(ids.len(), g, spec)?;
        let (q, k) = self.layer_qk(ids, positions, g, spec.layer, chunk)?;
        let q = read_f32(q)?;
        let k = read_f32(k)?;
        self.pool(&q, &k, positions, g, spec, backend)
    }

    /// The last query's attention weights over every key, for each head of `layer`:
    /// `[heads][n]`, each row summing to 1. One [`Llama::layer_qk`] pass serves every head
    /// (`e2llm attend` prints the largest of them).
    pub fn last_row_attention(
        &self,
        ids: &[u32],
        positions: &[f32],
        g: f32,
        layer: usize,
        chunk: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let n = ids.len();
        let first = MapSpec::last_row(layer, 0, n, n);
        self.check_map(n, g, &first)?;
        let (q, k) = self.layer_qk(ids, positions, g, layer, chunk)?;
        let q = read_f32(q)?;
        let k = read_f32(k)?;
        (0..self.config.num_attention_heads)
            .map(|head| {
                let spec = MapSpec { head, ..first };
                Ok(self
                    .pool(&q, &k, positions, g, &spec, MapBackend::Cpu)?
                    .data)
            })
            .collect()
    }

    /// [`Llama::attention_map`] with asynchronous read-back (WebGPU in a browser).
    pub async fn attention_map_async(
        &self,
        ids: &[u32],
        positions: &[f32],
        g: f32,
        spec: &MapSpec,
        chunk: usize,
    ) -> Result<AttentionImage> {
        self.check_map(ids.len(), g, spec)?;
        let (q, k) = self.layer_qk(ids, positions, g, spec.layer, chunk)?;
        let q = read_f32_async(q).await?;
        let k = read_f32_async(k).await?;
        self.pool(&q, &k, positions, g, spec, MapBackend::Cpu)
    }

    fn check_map(&self, n: usize, g: f32, spec: &MapSpec) -> Result<()> {
        let cfg = &self.config;
        let bad = |what: String| Err(ModelError::Input(format!("attention map: {what}")));
        if spec.head >= cfg.num_attention_heads {
            return bad(format!(
                "head {} does not exist (the model has {} heads)",
                spec.head, cfg.num_attention_heads
            ));
        }
        if spec.nrows == 0 || spec.row0 + spec.nrows > n {
            return bad(format!(
                "rows {}..{} are outside the prompt's {n} tokens",
                spec.row0,
                spec.row0 + spec.nrows
            ));
        }
        if spec.out_rows == 0
            || spec.out_rows > spec.nrows
            || spec.out_cols == 0
            || spec.out_cols > n
        {
            return bad(format!(
                "a {}×{} image does not fit {} query rows × {n} keys (1 ≤ rows ≤ query rows, 1 ≤ cols ≤ keys)",
                spec.out_rows, spec.out_cols, spec.nrows
            ));
        }
        if !(g.is_finite() && g > 0.0) {
            return bad(format!("RoPE scale {g} must be a positive number"));
        }
        Ok(())
    }

    /// Pools host q/k (`[n, heads, head_dim]`, before RoPE) on `backend`.
    fn pool(
        &self,
        q: &[f32],
        k: &[f32],
        positions: &[f32],
        g: f32,
        spec: &MapSpec,
        backend: MapBackend<'_>,
    ) -> Result<AttentionImage> {
        let cfg = &self.config;
        let n = positions.len();
        let span = Positions::row(positions.to_vec(), g).span();
        let freqs = cfg
            .rope
            .frequencies(cfg.head_dim(), cfg.max_position_embeddings, span);
        let shape = AttentionShape {
            factor: freqs.attention_scaling,
            ..AttentionShape::new(
                n,
                n,
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim(),
                g,
            )
        };
        let window = MapWindow {
            head: spec.head,
            row0: spec.row0,
            nrows: spec.nrows,
            out_rows: spec.out_rows,
            out_cols: spec.out_cols,
        };
        let data = match backend {
            MapBackend::Cpu => {
                cpu::attention_map(q, k, positions, positions, &freqs.inv_freq, shape, window)
            }
            MapBackend::Gpu(gpu) => {
                // The forward pass only supplies the softmax statistics: v's values do not matter.
                let v = vec![0.0f32; k.len()];
                e2llm_kernels::attention::attention_map(
                    gpu,
                    q,
                    k,
                    &v,
                    positions,
                    positions,
                    &freqs.inv_freq,
                    shape,
                    window,
                )
                .map_err(|e| {
                    ModelError::Backend(format!("attention map on {}: {e}", gpu.adapter_name))
                })?
            }
        };
        Ok(AttentionImage {
            rows: spec.out_rows,
            cols: spec.out_cols,
            data,
        })
    }

    /// Runs `ids` through the layers below `layer` (appending to `cache`) and returns the
    /// hidden states entering `layer`, `[1, seq, hidden]`.
    fn layer_input(
        &self,
        ids: &[u32],
        positions: &Positions,
        cache: &mut KvCache,
        layer: usize,
    ) -> Result<Tensor<3>> {
        let (mut x, rope) = self.embed(ids, positions)?;
        let paths = self.paths(true);
        for (i, l) in self.layers.iter().take(layer).enumerate() {
            x = l.forward(x, &rope, Some(cache.slot(i)), paths);
        }
        Ok(x)
    }
}
