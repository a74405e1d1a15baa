//! What the page does, without the browser: load the three HF files, build a passkey prompt
//! with the core's builder, prefill it in steps through the model's cache, answer greedily and
//! score with the core's scorer, and pool the last token's attention. Every step is a call
//! into `e2llm-core` / `e2llm-model`; read-backs are `async` because WebGPU cannot block.
//!
//! Natively (tests, clippy) this runs on burn's flex CPU backend, where the futures are ready
//! at once.

use burn::tensor::Tensor;
use e2llm_core::passkey::{
    build_passkey, score, trained_answer, PasskeyPrompt, PasskeySpec, ScaleMode,
};
use e2llm_core::LlamaConfig;
use e2llm_model::generate::{argmax, decode_step, target_logprobs, teacher_forced_logits};
use e2llm_model::{
    checkpoint, AttentionImage, Device, KvCache, Llama, MapSpec, ModelError, Tokenizer,
};
use serde::{Deserialize, Serialize};

/// Errors shown on the page: each names the file or the setting and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Loading or running the model failed (the model crate's message names the file).
    #[error("{0}")]
    Model(#[from] ModelError),
    /// A file that must be UTF-8 JSON is not.
    #[error("{file}: not UTF-8 text ({reason}); expected the JSON file of an HF model directory")]
    NotText {
        /// The file.
        file: String,
        /// The decoder's message.
        reason: String,
    },
    /// A setting from the page that cannot be honoured.
    #[error("{0}")]
    Input(String),
    /// The passkey builder refused the request.
    #[error("passkey prompt: {0}")]
    Prompt(#[from] e2llm_core::passkey::PasskeyError),
    /// A request arrived in the wrong order (e.g. answer before prefill).
    #[error("{0}")]
    State(String),
}

/// Result alias for this crate.
pub type Result<T, E = WebError> = std::result::Result<T, E>;

/// How the RoPE scale `g` is chosen (the same choices as `e2llm passkey --rope-scale`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleChoice {
    /// The paper's `g = ceil(prompt / L)`.
    Auto,
    /// The smallest `g` with `(prompt + answer tokens) / g ≤ L`.
    Safe,
    /// A fixed `g`.
    Manual(f32),
}

/// One passkey trial as the page asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRequest {
    /// Target prompt length in tokens.
    pub length: usize,
    /// Key depth in `[0, 1]`.
    pub depth: f64,
    /// The key; `None` draws one from `seed` (1..=50000).
    pub key: Option<u32>,
    /// Seed of the key draw.
    pub seed: u64,
    /// RoPE scale choice.
    pub scale: ScaleChoice,
    /// Tokens generated for the answer (the CLI's default is 8).
    pub max_new_tokens: usize,
    /// Prefill chunk in tokens (bounds the `[chunk, n]` score matrix); 0 = choose.
    #[serde(default)]
    pub chunk: usize,
    /// Largest buffer the device can bind, in bytes (WebGPU's `maxStorageBufferBindingSize`);
    /// 0 = no limit known (CPU).
    #[serde(default)]
    pub max_binding_bytes: u64,
    /// Memory the run may use, in bytes; 0 = the default for the backend.
    #[serde(default)]
    pub budget_bytes: u64,
    /// Log-n attention scaling past `L` (`e2llm passkey --logn`); off = plain PI, unless the
    /// model was trained with it (`use_logn_attn` in its config.json), which always reads so.
    #[serde(default)]
    pub logn: bool,
}

/// The model's shape, for the page's header and its memory estimate.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// The training window `L` (`max_position_embeddings`).
    pub orig_len: usize,
    /// Parameters.
    pub params: usize,
    /// Bytes of f32 weights.
    pub weight_bytes: u64,
    /// The attention path: `fused` (attention.wgsl on WebGPU) or `reference` (plain burn ops).
    pub attention: String,
    /// The model was trained with log-n attention scaling (`use_logn_attn` in its config.json)
    /// and is always read with it: the page shows its log-n box checked and fixed.
    pub logn_trained: bool,
}

/// A prepared trial, as reported to the page.
#[derive(Debug, Clone, Serialize)]
pub struct PromptInfo {
    /// The prompt text.
    pub text: String,
    /// Its token ids.
    pub ids: Vec<u32>,
    /// The hidden key.
    pub key: u32,
    /// The RoPE scale used.
    pub g: f32,
    /// Whether log-n attention scaling is on.
    pub logn: bool,
    /// Token range `[start, end)` of the key line (for the attention strip's marker).
    pub key_tokens: [usize; 2],
    /// Prefill chunk used.
    pub chunk: usize,
    /// Estimated peak memory of the run in bytes.
    pub estimate_bytes: u64,
}

/// The greedy answer and what the model saw at each step.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// Generated ids.
    pub ids: Vec<u32>,
    /// Their text.
    pub text: String,
    /// The key.
    pub key: u32,
    /// The core's score: the first integer equals the key.
    pub correct: bool,
    /// Top logits `(id, logit)` before each generated token (step 0 = the prompt's last token).
    pub top: Vec<Vec<(u32, f32)>>,
    /// `−ln p(" KEY." | prompt)` in nats, teacher-forced (as `e2llm passkey` reports it): how
    /// sure the model is of the right answer, right or wrong.
    pub key_nll: f64,
}

/// Loaded model + tokenizer.
pub struct Demo {
    /// The model.
    pub model: Llama,
    /// Its tokenizer.
    pub tok: Tokenizer,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Demo({:?})", self.tok)
    }
}

fn text<'a>(file: &str, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| WebError::NotText {
        file: file.into(),
        reason: e.to_string(),
    })
}

/// Default memory budget: wasm32 has at most 4 GiB of linear memory and browsers often grant
/// less; on a GPU there is no portable way to ask, so stay modest.
pub const DEFAULT_BUDGET_BYTES: u64 = 1 << 31;

impl Demo {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from bytes onto `device`.
    pub fn load(config: &[u8], weights: &[u8], tokenizer: &[u8], device: &Device) -> Result<Self> {
        let config = text(checkpoint::CONFIG_FILE, config)?;
        let model =
            checkpoint::load_from_bytes(config, &[(checkpoint::WEIGHTS_FILE, weights)], device)?;
        let tok = Tokenizer::from_bytes(
            checkpoint::TOKENIZER_FILE,
            tokenizer,
            model.config.vocab_size,
        )?;
        Ok(Self { model, tok })
    }

    /// The model's shape.
    pub fn info(&self) -> ModelInfo {
        let c = &self.model.config;
        let params = param_count(c);
        ModelInfo {
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            hidden: c.hidden_size,
            vocab: c.vocab_size,
            orig_len: c.max_position_embeddings,
            params,
            weight_bytes: 4 * params as u64,
            attention: if self.model.fused_attention() {
                "fused"
            } else {
                "reference"
            }
            .into(),
            logn_trained: self.model.logn(),
        }
    }

    /// Builds the trial's prompt exactly as `e2llm passkey` does (core builder, standard
    /// filler, ids without special tokens, `g` by the same rule) and checks it fits the device.
    pub fn prepare(&self, req: &PromptRequest) -> Result<Run> {
        if req.max_new_tokens == 0 {
            return Err(WebError::Input(
                "answer tokens must be at least 1".to_string(),
            ));
        }
        let spec = PasskeySpec {
            key: req.key,
            ..PasskeySpec::new(req.length, req.depth, req.seed)
        };
        let count = |s: &str| self.tok.count(s);
        let prompt = build_passkey(&spec, &count)?;
        let ids = self.tok.encode(&prompt.text, false)?;
        let n = ids.len();
        let cfg = &self.model.config;
        let orig_len = cfg.max_position_embeddings;
        let g = match req.scale {
            ScaleChoice::Auto => ScaleMode::Auto,
            ScaleChoice::Safe => ScaleMode::Safe,
            ScaleChoice::Manual(g) if g.is_finite() && g > 0.0 => ScaleMode::Fixed(g),
            ScaleChoice::Manual(g) => {
                return Err(WebError::Input(format!(
                    "RoPE scale {g} must be a positive number"
                )))
            }
        }
        .g(n, req.max_new_tokens, orig_len);
        let total = n + req.max_new_tokens;
        // What the prefill runs: the cached path (dynamic NTK keeps reference attention there).
        let fused = self.model.fused_cached_attention();
        let chunk = if req.chunk > 0 {
            req.chunk
        } else {
            plan_chunk(cfg, total, req.max_binding_bytes, fused)
        };
        let budget = if req.budget_bytes > 0 {
            req.budget_bytes
        } else {
            DEFAULT_BUDGET_BYTES
        };
        let estimate = memory_estimate(cfg, total, chunk, fused);
        if estimate > budget || binding_bytes(cfg, total, chunk, fused) > binding_limit(req) {
            let fit = max_length(cfg, req.max_binding_bytes, budget, fused);
            return Err(WebError::Input(format!(
                "{total} tokens need about {} MiB on this device (budget {} MiB); \
                 this model fits at most about {fit} tokens here — choose a shorter context",
                estimate >> 20,
                budget >> 20
            )));
        }
        // A model trained with log-n reads with it whatever the page's checkbox says.
        let logn = req.logn || self.model.logn();
        let key_tokens = [
            self.tok.count(&prompt.text[..prompt.key_line.start]),
            self.tok.count(&prompt.text[..prompt.key_line.end]),
        ];
        Ok(Run {
            positions: (0..n).map(|p| p as f32).collect(),
            cache: KvCache::new(self.model.layers.len()),
            done: 0,
            last: None,
            info: PromptInfo {
                text: prompt.text.clone(),
                ids: ids.clone(),
                key: prompt.key,
                g,
                logn,
                key_tokens,
                chunk,
                estimate_bytes: estimate,
            },
            ids,
            prompt,
            g,
            logn,
            chunk,
            max_new_tokens: req.max_new_tokens,
        })
    }
}

fn binding_limit(req: &PromptRequest) -> u64 {
    if req.max_binding_bytes == 0 {
        u64::MAX
    } else {
        req.max_binding_bytes
    }
}

/// Parameters of a Llama with config `c` (weights only).
pub fn param_count(c: &LlamaConfig) -> usize {
    let (h, hd) = (c.hidden_size, c.head_dim());
    let attn = h * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads);
    let mlp = 3 * h * c.intermediate_size;
    let head = if c.tie_word_embeddings {
        0
    } else {
        c.vocab_size * h
    };
    c.vocab_size * h + c.num_hidden_layers * (attn + mlp + 2 * h) + h + head
}

/// One layer's cached keys (or values) for `n` tokens.
fn layer_kv_bytes(c: &LlamaConfig, n: usize) -> u64 {
    4 * (c.num_key_value_heads * c.head_dim()) as u64 * n as u64
}

/// The largest single buffer a prefill chunk binds. Reference attention: one layer's cached
/// keys or the `[heads, chunk, n]` score matrix, whichever is larger. Fused: no score matrix,
/// and the model keeps its KV cache in pages of at most one binding, so the chunk's widest
/// activation (the MLP's; prefill takes logits of its last token only) or the embedding
/// matrix, whichever is larger — neither grows with the context.
pub fn binding_bytes(c: &LlamaConfig, n: usize, chunk: usize, fused: bool) -> u64 {
    let rows = chunk.min(n).max(1) as u64;
    if fused {
        let widest = c.intermediate_size.max(c.hidden_size) as u64;
        (4 * rows * widest).max(4 * (c.vocab_size * c.hidden_size) as u64)
    } else {
        let scores = 4 * c.num_attention_heads as u64 * rows * n as u64;
        scores.max(layer_kv_bytes(c, n))
    }
}

/// A rough peak of a run of `n` tokens prefilled `chunk` at a time: weights, the KV cache
/// (keys and values of every layer), the attention temporaries (reference: three score-sized
/// ones — scores, softmax, mask; fused: at most the copy of one layer's keys and values the
/// cache append makes — of its open page, once the cache is paged) and the chunk's activations.
pub fn memory_estimate(c: &LlamaConfig, n: usize, chunk: usize, fused: bool) -> u64 {
    let weights = 4 * param_count(c) as u64;
    let kv = 2 * c.num_hidden_layers as u64 * layer_kv_bytes(c, n);
    let acts = 4
        * (chunk.min(n) as u64)
        * (4 * c.hidden_size + 3 * c.intermediate_size + c.vocab_size) as u64;
    let attention = if fused {
        2 * layer_kv_bytes(c, n)
    } else {
        3 * binding_bytes(c, n, chunk, false)
    };
    weights + kv + attention + acts
}

/// Prefill chunk for `n` tokens: 256, halved until the score matrix fits one binding (the
/// fused kernel has none, so 256).
pub fn plan_chunk(c: &LlamaConfig, n: usize, max_binding_bytes: u64, fused: bool) -> usize {
    let mut chunk = 256;
    while !fused
        && chunk > 1
        && max_binding_bytes > 0
        && binding_bytes(c, n, chunk, false) > max_binding_bytes
    {
        chunk /= 2;
    }
    chunk
}

/// The longest context (tokens, prompt + answer) that fits `budget` and the binding limit,
/// searched over powers of two and refined by bisection.
pub fn max_length(c: &LlamaConfig, max_binding_bytes: u64, budget: u64, fused: bool) -> usize {
    let fits = |n: usize| {
        let chunk = plan_chunk(c, n, max_binding_bytes, fused);
        memory_estimate(c, n, chunk, fused) <= budget
            && (max_binding_bytes == 0 || binding_bytes(c, n, chunk, fused) <= max_binding_bytes)
    };
    let (mut lo, mut hi) = (0usize, 1usize);
    while hi <= (1 << 24) && fits(hi) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The `k` largest logits with their token ids, largest first (ties: lower id first).
pub fn top_k(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    e2llm_model::generate::top_k(values, k)
        .into_iter()
        .map(|(i, v)| (i as u32, v))
        .collect()
}

async fn read(t: Tensor<1>) -> Result<Vec<f32>> {
    Ok(e2llm_model::backend::read_f32_async(t).await?)
}

/// One trial in progress: the prompt, the cache filled so far, the last logits.
pub struct Run {
    /// The core's prompt.
    pub prompt: PasskeyPrompt,
    /// What the page is told about it.
    pub info: PromptInfo,
    /// Prompt ids.
    pub ids: Vec<u32>,
    positions: Vec<f32>,
    /// RoPE scale.
    pub g: f32,
    /// Log-n attention scaling.
    pub logn: bool,
    /// Prefill chunk.
    pub chunk: usize,
    /// Answer tokens to generate.
    pub max_new_tokens: usize,
    cache: KvCache,
    /// Tokens prefilled so far.
    pub done: usize,
    /// Logits of the last prefilled token.
    pub last: Option<Vec<f32>>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Run({} tokens, {} done, g {})",
            self.ids.len(),
            self.done,
            self.g
        )
    }
}

impl Run {
    /// `model` as this run reads it (log-n on or off; the clone shares the weights).
    fn reading<'m>(&self, model: &'m Llama) -> std::borrow::Cow<'m, Llama> {
        if model.logn() == self.logn {
            std::borrow::Cow::Borrowed(model)
        } else {
            std::borrow::Cow::Owned(model.clone().with_logn(self.logn))
        }
    }

    /// Prompt length in tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for an empty prompt (never: the builder's prompt has an intro and a question).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Prefills up to `tokens` more prompt tokens through [`Llama::prefill`] (which appends to
    /// the cache `chunk` tokens at a time) and waits for the device by reading the logits of
    /// the last one back, so the page's progress and tokens/s are real. Returns tokens done.
    pub async fn prefill_step(&mut self, model: &Llama, tokens: usize) -> Result<usize> {
        let n = self.ids.len();
        if self.done >= n {
            return Ok(n);
        }
        let end = (self.done + tokens.max(1)).min(n);
        let model = &*self.reading(model);
        let logits = model.prefill(
            &self.ids[self.done..end],
            &self.positions[self.done..end],
            self.g,
            &mut self.cache,
            self.chunk,
            |_, _| {},
        )?;
        self.last = Some(read(logits).await?);
        self.done = end;
        Ok(end)
    }

    /// Greedy answer after a full prefill, scored with the core's scorer. The loop is
    /// `e2llm_model::generate::generate`'s (no stop token, as `e2llm passkey` runs it), with
    /// asynchronous read-back, which the browser's WebGPU needs.
    pub async fn answer(&mut self, model: &Llama, tok: &Tokenizer, top: usize) -> Result<Answer> {
        let n = self.ids.len();
        let mut logits = match (&self.last, self.done == n) {
            (Some(l), true) => l.clone(),
            _ => {
                return Err(WebError::State(format!(
                    "the prompt is not prefilled yet ({} of {n} tokens)",
                    self.done
                )))
            }
        };
        let model = &*self.reading(model);
        // The key's likelihood first, through a copy of the cache (the greedy loop extends it).
        let key_ids = tok.encode(&trained_answer(self.prompt.key), false)?;
        let rest = match teacher_forced_logits(model, &self.cache, n, &key_ids, self.g)? {
            Some(l) => {
                let len = l.shape().num_elements();
                read(l.reshape([len])).await?
            }
            None => Vec::new(),
        };
        let key_nll = -target_logprobs(&logits, &rest, &key_ids)
            .iter()
            .sum::<f64>();
        let mut out = Vec::new();
        let mut tops = Vec::new();
        for step in 0..self.max_new_tokens {
            tops.push(top_k(&logits, top));
            let next = argmax(&logits) as u32;
            out.push(next);
            if step + 1 == self.max_new_tokens {
                break;
            }
            let l = decode_step(model, next, n + step, self.g, &mut self.cache)?;
            logits = read(l).await?;
        }
        // The cache now holds answer tokens: a second answer would read them as prompt.
        self.last = None;
        let text = tok.decode(&out)?;
        Ok(Answer {
            correct: score(&text, self.prompt.key),
            key: self.prompt.key,
            ids: out,
            text,
            top: tops,
            key_nll,
        })
    }

    /// Where the last prompt token looks: one head's softmax weights over the whole prompt,
    /// pooled into `width` bins (the model's attention-map API).
    pub async fn attention_strip(
        &self,
        model: &Llama,
        layer: usize,
        head: usize,
        width: usize,
    ) -> Result<AttentionImage> {
        let n = self.ids.len();
        let spec = MapSpec::last_row(layer, head, n, width);
        Ok(self
            .reading(model)
            .attention_map_async(&self.ids, &self.positions, self.g, &spec, self.chunk)
            .await?)
    }
}
