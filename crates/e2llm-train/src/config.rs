//! A training run described as TOML: every field has a default that just runs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use e2llm_model::Kernels;

use crate::error::{Result, TrainError};

/// How positions and the RoPE scale are chosen for each training row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Method {
    /// Train at `L` with positions `0..R`, no scaling.
    None,
    /// Position interpolation with a fixed scale `g`.
    Pi {
        /// The scale.
        g: u32,
    },
    /// PoSE: two chunks, the second shifted by a skip up to `s·L − R`.
    Pose {
        /// The target extension factor `s`.
        s: u32,
    },
    /// YaRN with a fixed factor (written into the checkpoint's config).
    Yarn {
        /// The factor.
        factor: f64,
    },
    /// E²-LLM: g ~ U{1..g_max}, t ~ U{0..g·L−R}, 4 sink tokens.
    E2llm {
        /// Largest scale drawn.
        g_max: u32,
        /// Draw (g, t) once per batch instead of once per row.
        #[serde(default)]
        per_batch: bool,
        /// Leading tokens of a row that keep positions `0..sinks` while the rest move by `t`
        /// (the paper: 4 attention sinks). More of them make the gap `t` separate two long
        /// chunks, as PoSE's skip does, so a row trains token distances up to `g·L` at
        /// density `1/g`, not only sink-to-token ones.
        #[serde(default = "default_sinks")]
        sinks: usize,
        /// When above `sinks`, each row keeps `U{sinks..=sinks_max}` leading tokens instead
        /// (drawn after its g and t), so the gap falls at a different token from row to row
        /// (RESULTS.md, session 27). 0 = always `sinks`.
        #[serde(default, skip_serializing_if = "is_zero")]
        sinks_max: usize,
    },
    /// Ablation: E²-LLM without the offset t (t = 0).
    E2llmNoT {
        /// Largest scale drawn.
        g_max: u32,
    },
    /// Ablation: E²-LLM without scale augmentation (g fixed).
    E2llmNoG {
        /// The fixed scale.
        g: u32,
        /// Leading tokens kept at `0..sinks`, as for [`Method::E2llm`] (the paper: 4).
        #[serde(default = "default_sinks")]
        sinks: usize,
        /// A drawn kept count `U{sinks..=sinks_max}`, as for [`Method::E2llm`]. 0 = always
        /// `sinks`.
        #[serde(default, skip_serializing_if = "is_zero")]
        sinks_max: usize,
    },
}

fn default_sinks() -> usize {
    e2llm_core::positions::DEFAULT_SINKS
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Method {
    /// E²-LLM as published: `g ~ U{1..g_max}` per row, 4 sinks.
    pub fn e2llm(g_max: u32) -> Self {
        Method::E2llm {
            g_max,
            per_batch: false,
            sinks: default_sinks(),
            sinks_max: 0,
        }
    }
}

/// `, N sinks` when an E²-LLM method keeps other than the paper's 4 leading tokens, `, sinks ~
/// U{N..M}` for a drawn count; nothing for the paper's.
struct SinksNote(usize, usize);

impl std::fmt::Display for SinksNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0, self.1) {
            (lo, hi) if hi > lo => write!(f, ", sinks ~ U{{{lo}..{hi}}}"),
            (n, _) if n == default_sinks() => Ok(()),
            (n, _) => write!(f, ", {n} sinks"),
        }
    }
}

impl std::fmt::Display for Method {
    /// The method in words, as run headers print it (`E²-LLM (g ~ U{1..5}, per row)`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Method::None => write!(f, "none (train at L, no scaling)"),
            Method::Pi { g } => write!(f, "PI (g = {g})"),
            Method::Pose { s } => write!(f, "PoSE (s = {s})"),
            Method::Yarn { factor } => write!(f, "YaRN (factor {factor})"),
            Method::E2llm {
                g_max,
                per_batch,
                sinks,
                sinks_max,
            } => write!(
                f,
                "E²-LLM (g ~ U{{1..{g_max}}}, per {}{})",
                if per_batch { "batch" } else { "row" },
                SinksNote(sinks, sinks_max)
            ),
            Method::E2llmNoT { g_max } => write!(f, "E²-LLM without t (g ~ U{{1..{g_max}}})"),
            Method::E2llmNoG {
                g,
                sinks,
                sinks_max,
            } => {
                write!(
                    f,
                    "E²-LLM without g (g = {g}{})",
                    SinksNote(sinks, sinks_max)
                )
            }
        }
    }
}

/// Model shape of a run started from scratch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelShape {
    /// Width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Vocabulary (the trained tokenizer's size).
    pub vocab_size: usize,
    /// RoPE base.
    pub rope_theta: f64,
}

impl Default for ModelShape {
    fn default() -> Self {
        Self {
            hidden_size: 128,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            intermediate_size: 344,
            vocab_size: 1024,
            rope_theta: 10_000.0,
        }
    }
}

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Shape of a model trained from scratch (ignored when `init` names a checkpoint).
    pub model: ModelShape,
    /// Start from this HF checkpoint directory instead of random weights.
    pub init: Option<String>,
    /// The base model's context `L` (max_position_embeddings).
    pub orig_len: usize,
    /// Training window `R` in tokens.
    pub train_len: usize,
    /// Position / scale method.
    pub method: Method,
    /// Log-n attention scaling in training, a variant beside the method (off in the paper):
    /// each query's logits are multiplied by `max(1, ln(p + 1) / ln L)` for its position `p`
    /// before dividing by `g` — in an E²-LLM row, the length the row stands for. The model
    /// is saved with `use_logn_attn` in its config.json, so e2llm reads it with log-n at
    /// every length (transformers' Llama ignores the key).
    pub logn: bool,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// Cosine decay floor as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// AdamW decoupled weight decay (matrices only; not norms or biases).
    pub weight_decay: f64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Share of rows that are passkey-retrieval examples.
    pub passkey_share: f64,
    /// Loss weight of the passkey answer tokens (the rest weigh 1).
    pub answer_weight: f32,
    /// Shortest passkey prompt in tokens: each passkey row's prompt length is drawn from
    /// `passkey_min_len..=train_len` (the row is then filled with text), a curriculum of
    /// haystack sizes. 0 = every prompt fills the row (the earlier behaviour).
    pub passkey_min_len: usize,
    /// Seed of everything (init, data, positions).
    pub seed: u64,
    /// Write a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Also keep the model every this many steps as `step-N/` in the run directory (an HF
    /// directory: config.json, model.safetensors, tokenizer.json; no optimizer state), so it
    /// can be evaluated along the run. 0 = off (only the rolling `checkpoint/`).
    pub keep_every: usize,
    /// At the end, also write `average/`: the mean of the last this many kept models
    /// (`step-N/`, `keep_every` apart, the final step's among them) — checkpoint averaging, an
    /// HF directory evaluated in place of `checkpoint/` by `quickstart`/`experiment`. 0 = off;
    /// otherwise at least 2, with `keep_every` set and dividing `steps`.
    pub average_last: usize,
    /// `cpu` or `wgpu`.
    pub backend: String,
    /// Attention: `auto` (fused WGSL kernel on wgpu, plain burn ops on cpu), `fused` or
    /// `reference`.
    pub kernels: Kernels,
    /// Threads per micro-batch (data parallel, for the CPU backend, whose ops run on one
    /// core): the rows are split into this many contiguous parts, each part's forward and
    /// backward runs on its own thread, and the gradients are summed in part order. 1 = one
    /// pass over the whole micro-batch. Results are deterministic for a given value (a resumed
    /// run keeps it) but differ in the last bits between values.
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelShape::default(),
            init: None,
            orig_len: 128,
            train_len: 128,
            method: Method::None,
            logn: false,
            batch_size: 16,
            grad_accum: 1,
            steps: 1000,
            lr: 2e-3,
            warmup_steps: 50,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            passkey_share: 0.5,
            answer_weight: 20.0,
            passkey_min_len: 0,
            seed: 0,
            checkpoint_every: 200,
            keep_every: 0,
            average_last: 0,
            backend: "cpu".into(),
            kernels: Kernels::Auto,
            threads: 1,
        }
    }
}

impl TrainConfig {
    /// The steps whose kept models `average/` is the mean of (`average_last` of them, the
    /// last at `steps`); empty when averaging is off. Call on a validated config.
    pub fn averaged_steps(&self) -> Vec<usize> {
        self.averaged_steps_checked()
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn averaged_steps_checked(&self) -> std::result::Result<Option<Vec<usize>>, String> {
        let (k, every) = (self.average_last, self.keep_every);
        if k == 0 {
            return Ok(None);
        }
        if k == 1 {
            return Err(
                "`average_last` is 0 (off) or the number of kept models to average, at least 2"
                    .into(),
            );
        }
        if every == 0 || !self.steps.is_multiple_of(every) || k > self.steps / every {
            return Err(format!(
                "`average_last = {k}` averages the models kept every `keep_every` steps up to \
                 `steps`: set `keep_every` to a divisor of `steps` ({}) with {k} × keep_every \
                 ≤ steps (now keep_every = {every}), or `average_last = 0` to read the last model \
                 (`e2llm quickstart --steps N` moves keep_every itself)",
                self.steps
            ));
        }
        Ok(Some((0..k).rev().map(|i| self.steps - i * every).collect()))
    }

    /// The method in words with what this run adds to it, as run headers print it
    /// (`E²-LLM (g ~ U{1..20}, per row, 128 sinks), log-n attention`).
    pub fn method_label(&self) -> String {
        let logn = if self.logn { ", log-n attention" } else { "" };
        let avg = match self.average_last {
            k if k >= 2 => format!(
                ", mean of the last {k} models kept every {} steps",
                self.keep_every
            ),
            _ => String::new(),
        };
        format!("{}{logn}{avg}", self.method)
    }

    /// Parses TOML text; `file` names the source in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| TrainError::Config {
            file: file.into(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|reason| TrainError::Config {
            file: file.into(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks ranges; returns what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let m = &self.model;
        let pos = |v: usize, name: &str| {
            if v == 0 {
                Err(format!("`{name}` must be at least 1"))
            } else {
                Ok(())
            }
        };
        pos(self.train_len, "train_len")?;
        pos(self.orig_len, "orig_len")?;
        pos(self.batch_size, "batch_size")?;
        pos(self.grad_accum, "grad_accum")?;
        pos(self.threads, "threads")?;
        self.averaged_steps_checked()?;
        if self.threads > self.batch_size {
            return Err(format!(
                "`threads` ({}) must not exceed `batch_size` ({}): each thread takes whole rows",
                self.threads, self.batch_size
            ));
        }
        pos(m.hidden_size, "model.hidden_size")?;
        pos(m.num_attention_heads, "model.num_attention_heads")?;
        pos(m.num_key_value_heads, "model.num_key_value_heads")?;
        if !m.hidden_size.is_multiple_of(m.num_attention_heads) {
            return Err(
                "`model.hidden_size` must be a multiple of `model.num_attention_heads`".into(),
            );
        }
        if !(m.hidden_size / m.num_attention_heads).is_multiple_of(2) {
            return Err("the head width (hidden_size / num_attention_heads) must be even".into());
        }
        if self.kernels == Kernels::Fused && m.hidden_size / m.num_attention_heads > 128 {
            return Err(
                "`kernels = \"fused\"` needs a head width (hidden_size / num_attention_heads) of at most 128"
                    .into(),
            );
        }
        if !m.num_attention_heads.is_multiple_of(m.num_key_value_heads) {
            return Err(
                "`model.num_attention_heads` must be a multiple of `model.num_key_value_heads`"
                    .into(),
            );
        }
        if m.vocab_size < 300 {
            return Err(
                "`model.vocab_size` must be at least 300 (256 bytes + specials + merges)".into(),
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("`lr` must be a positive number, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.passkey_share) {
            return Err(format!(
                "`passkey_share` must be in [0, 1], got {}",
                self.passkey_share
            ));
        }
        if self.passkey_min_len > self.train_len {
            return Err(format!(
                "`passkey_min_len` ({}) must be at most `train_len` ({}); 0 = full-length prompts",
                self.passkey_min_len, self.train_len
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return Err("`beta1` and `beta2` must be in [0, 1)".into());
        }
        match self.method {
            Method::Pi { g } | Method::E2llmNoG { g, .. } if g == 0 => {
                Err("method scale `g` must be at least 1".into())
            }
            Method::E2llm { g_max, .. } | Method::E2llmNoT { g_max } if g_max == 0 => {
                Err("method `g_max` must be at least 1".into())
            }
            Method::Pose { s: 0 } => Err("PoSE `s` must be at least 1".into()),
            Method::Yarn { factor } if factor.is_nan() || factor < 1.0 => {
                Err("yarn `factor` must be at least 1".into())
            }
            // The samplers' own checks (window vs g·L, kept tokens vs R), before any training.
            m => match crate::method::Placer::new(m, self.orig_len, self.train_len) {
                Ok(_) => Ok(()),
                Err(TrainError::Config { reason, .. }) => Err(reason),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Applies `key.path=value` overrides (value as a TOML literal, or a bare string) to a config.
pub fn apply_overrides(cfg: &TrainConfig, overrides: &[String]) -> Result<TrainConfig> {
    let bad = |reason: String| TrainError::Config {
        file: "--set".into(),
        reason,
    };
    let mut root = toml::Value::try_from(cfg).map_err(|e| bad(e.to_string()))?;
    for o in overrides {
        let (path, raw) = o
            .split_once('=')
            .ok_or_else(|| bad(format!("`{o}` is not KEY=VALUE (e.g. steps=500)")))?;
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let mut node = &mut root;
        let keys: Vec<&str> = path.trim().split('.').collect();
        for (i, k) in keys.iter().enumerate() {
            let table = node
                .as_table_mut()
                .ok_or_else(|| bad(format!("`{path}`: `{k}` is inside a non-table value")))?;
            if i + 1 == keys.len() {
                table.insert(k.to_string(), value.clone());
                break;
            }
            node = table
                .entry(k.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
        }
    }
    let text = toml::to_string(&root).map_err(|e| bad(e.to_string()))?;
    TrainConfig::from_toml("--set", &text)
}
