//! `LlamaConfig`: a Llama-architecture HF `config.json`, both RoPE layouts, strict about anything
//! that would change the computation.
//!
//! Read: keys that change nothing here are ignored (`torch_dtype`, `dtype`, `architectures`,
//! `initializer_range`, `use_cache`, `transformers_version`, `pad_token_id`, `pretraining_tp`
//! of 1, ...). Keys that would change the computation in a way e2llm does not implement are
//! errors, never silently dropped: another `hidden_act` than `silu`, `pretraining_tp > 1`,
//! `partial_rotary_factor != 1`, a non-null `sliding_window`, `attention_dropout > 0`,
//! `quantization_config`, unknown RoPE types or RoPE keys.
//!
//! `model_type`: `"llama"` (or absent) is accepted, and so is `"mistral"` when it has no sliding
//! window (`sliding_window` null or absent) and no biases: transformers' Mistral is then the same
//! network as its Llama (same RMSNorm, SiLU MLP, RoPE, GQA, weight names). Everything else is an
//! error. A Mistral config is written back as `"llama"`.
//!
//! Defaults follow transformers where a key is optional there: `num_key_value_heads` =
//! `num_attention_heads`, `head_dim` = `hidden_size / num_attention_heads` (an explicit
//! `head_dim` wins), `rope_theta` = 10000, `hidden_act` = silu, `tie_word_embeddings`,
//! `attention_bias`, `mlp_bias` = false. The sizes and `rms_norm_eps` are required: transformers
//! writes them all, and a silent default there would build a different model.

mod json;
mod rope_section;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thiserror::Error;

use crate::rope::{RopeConfig, RopeError};
use json::Section;

/// Errors reading or checking a `config.json`; each names the key and says what to do.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The text is not JSON.
    #[error("config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The JSON is not an object.
    #[error("config.json must be a JSON object, found {found}")]
    NotAnObject {
        /// The start of what was found.
        found: String,
    },
    /// A required key is absent (or null).
    #[error("missing required key `{key}` in {section} ({hint})")]
    Missing {
        /// Where it was looked for (`config.json`, `rope_scaling`, `rope_parameters`).
        section: &'static str,
        /// The key.
        key: &'static str,
        /// What the key means / a typical value.
        hint: &'static str,
    },
    /// A key has the wrong JSON type.
    #[error("`{key}` in {section} must be {expected}, found {found}")]
    Type {
        /// Where.
        section: &'static str,
        /// The key.
        key: String,
        /// The JSON type expected.
        expected: &'static str,
        /// What was found, printed.
        found: String,
    },
    /// A key has a value e2llm does not implement.
    #[error("`{key}` = {value} in {section} is not supported: {reason}")]
    Unsupported {
        /// Where.
        section: &'static str,
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// Why, and what is supported.
        reason: &'static str,
    },
    /// The RoPE type is not one e2llm implements.
    #[error("unknown RoPE type `{found}` in {section}; supported: {supported}")]
    UnknownRopeType {
        /// Where.
        section: &'static str,
        /// The type found.
        found: String,
        /// The supported types.
        supported: &'static str,
    },
    /// A key in the RoPE object is not a parameter of its type.
    #[error(
        "key `{key}` in {section} is not a parameter of RoPE type `{rope_type}` (its keys: \
         [{allowed}] plus rope_type/type/rope_theta); remove it or fix its spelling"
    )]
    UnknownRopeKey {
        /// Where.
        section: &'static str,
        /// The RoPE type.
        rope_type: String,
        /// The unexpected key.
        key: String,
        /// The keys the type takes.
        allowed: String,
    },
    /// Two keys disagree.
    #[error("conflicting config: {what}; {fix}")]
    Conflict {
        /// What disagrees.
        what: String,
        /// What to do.
        fix: &'static str,
    },
    /// The values are each well-typed but do not make a valid model.
    #[error("invalid Llama config: {what}; {fix}")]
    Invalid {
        /// What is wrong.
        what: String,
        /// What to do.
        fix: &'static str,
    },
    /// A RoPE parameter is out of range.
    #[error("invalid RoPE settings in config.json: {0}")]
    Rope(#[from] RopeError),
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but its content is wrong.
    #[error("in {path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<ConfigError>,
    },
}

/// A Llama-architecture model configuration, as in HF's `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Width of one head (even).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// The context length the model was trained at (`L`).
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares `embed_tokens`' weight.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections.
    pub attention_bias: bool,
    /// Bias on gate/up/down projections.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (HF allows one id or a list; empty = none).
    pub eos_token_id: Vec<u32>,
    /// RoPE base and scaling.
    pub rope: RopeConfig,
    /// Log-n attention scaling (`use_logn_attn`, Qwen's key): the model was trained with each
    /// query's logits multiplied by [`crate::logn_scale`] of its position, and is read that
    /// way. e2llm writes it only when true; transformers' Llama ignores it.
    pub logn_attn: bool,
}

const TOP: &str = "config.json";

/// The top-level keys of two JSON objects whose values differ (a key one of them lacks reads as
/// `null` there), sorted, each with its value in `a` and in `b`; empty when either is not an
/// object. Used to say how two configs differ.
pub fn json_differences(a: &Value, b: &Value) -> Vec<(String, Value, Value)> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let at = |m: &serde_json::Map<String, Value>, k: &str| m.get(k).cloned().unwrap_or(Value::Null);
    keys.into_iter()
        .map(|k| (k.clone(), at(a, k), at(b, k)))
        .filter(|(_, x, y)| x != y)
        .collect()
}

impl LlamaConfig {
    /// Parses a `config.json` text (hub layout or transformers v5 layout) and validates it.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let value: Value = serde_json::from_str(text)?;
        let Value::Object(map) = &value else {
            return Err(ConfigError::NotAnObject {
                found: json::show(&value),
            });
        };
        let top = Section { map, name: TOP };

        check_architecture(&top)?;
        let num_attention_heads = top.req_usize("num_attention_heads", "number of query heads")?;
        let hidden_size = top.req_usize("hidden_size", "model width")?;
        let head_dim = match top.opt_usize("head_dim")? {
            Some(h) => h,
            None => {
                if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
                    return Err(ConfigError::Invalid {
                        what: format!(
                            "hidden_size {hidden_size} is not divisible by num_attention_heads \
                             {num_attention_heads} and no head_dim is given"
                        ),
                        fix: "set `head_dim` explicitly",
                    });
                }
                hidden_size / num_attention_heads
            }
        };
        let max_position_embeddings = top.req_usize(
            "max_position_embeddings",
            "the context length the model was trained at",
        )?;
        let cfg = LlamaConfig {
            vocab_size: top.req_usize("vocab_size", "number of token ids")?,
            hidden_size,
            intermediate_size: top.req_usize("intermediate_size", "MLP inner width")?,
            num_hidden_layers: top.req_usize("num_hidden_layers", "number of decoder layers")?,
            num_attention_heads,
            num_key_value_heads: top
                .opt_usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: top.req_f64("rms_norm_eps", "RMSNorm epsilon, e.g. 1e-5")?,
            max_position_embeddings,
            tie_word_embeddings: top.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: top.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: top.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id: first_id(&top, "bos_token_id")?,
            eos_token_id: top.opt_token_ids("eos_token_id")?,
            rope: rope_section::parse_rope(&top, max_position_embeddings)?,
            logn_attn: top.opt_bool("use_logn_attn")?.unwrap_or(false),
        };
        if top.opt_str("model_type")? == Some("mistral") && (cfg.attention_bias || cfg.mlp_bias) {
            return Err(ConfigError::Unsupported {
                section: TOP,
                key: "attention_bias/mlp_bias".into(),
                value: "true".into(),
                reason: "transformers' Mistral has no biases, so this file means something \
                         different to it; use model_type \"llama\" if the biases are real",
            });
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses `path`; every error names the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text).map_err(|e| ConfigError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Checks the values make a valid model: positive sizes, `num_key_value_heads` dividing
    /// `num_attention_heads`, an even `head_dim`, a positive `rms_norm_eps`, valid RoPE.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in sizes {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    what: format!("{name} is 0"),
                    fix: "every size must be at least 1",
                });
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ConfigError::Invalid {
                what: format!(
                    "num_attention_heads {} is not divisible by num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
                fix: "grouped-query attention needs each KV head shared by a whole number of query heads",
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::Invalid {
                what: format!("head_dim {} is odd", self.head_dim),
                fix: "RoPE rotates pairs of dimensions; use an even head_dim",
            });
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(ConfigError::Invalid {
                what: format!("rms_norm_eps is {}", self.rms_norm_eps),
                fix: "use a small positive number such as 1e-5",
            });
        }
        self.rope.validate()?;
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Number of parameters: embeddings, per layer q/k/v/o (+ biases), gate/up/down
    /// (+ biases), two RMSNorms, the final norm, and `lm_head` unless tied.
    pub fn num_parameters(&self) -> u64 {
        let (h, v, i) = (
            self.hidden_size as u64,
            self.vocab_size as u64,
            self.intermediate_size as u64,
        );
        let q = (self.num_attention_heads * self.head_dim) as u64;
        let kv = (self.num_key_value_heads * self.head_dim) as u64;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv + h;
        }
        let mut mlp = 3 * h * i;
        if self.mlp_bias {
            mlp += 2 * i + h;
        }
        let layer = attn + mlp + 2 * h;
        let lm_head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers as u64 * layer + h + lm_head
    }

    /// The config in transformers' hub layout (top-level `rope_theta`, `rope_scaling` with both
    /// `rope_type` and `type`), readable by transformers v4 and v5 and by [`Self::from_json_str`].
    /// `use_logn_attn` is written only when it is true.
    pub fn to_json_value(&self) -> Value {
        let (theta, scaling) = rope_section::to_legacy(&self.rope);
        let eos = match self.eos_token_id.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "torch_dtype": "float32",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "attention_dropout": 0.0,
            "pretraining_tp": 1,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "rope_theta": theta,
            "rope_scaling": scaling,
            "use_cache": true,
        });
        if self.logn_attn {
            v["use_logn_attn"] = json!(true);
        }
        v
    }

    /// A ~1.1M-parameter byte-level model (the METHOD.md calibration size): vocab 256, width 128,
    /// 4 layers, 4 heads of 32, MLP 512, trained length 128, RoPE base 10000, untied, no biases.
    pub fn tiny() -> Self {
        LlamaConfig {
            vocab_size: 256,
            hidden_size: 128,
            intermediate_size: 512,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            head_dim: 32,
            rms_norm_eps: 1e-5,
            max_position_embeddings: 128,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_id: Vec::new(),
            rope: RopeConfig::default(),
            logn_attn: false,
        }
    }
}

/// `bos_token_id` is one id in Llama files; a list is accepted when it has exactly one.
fn first_id(top: &Section, key: &'static str) -> Result<Option<u32>, ConfigError> {
    let ids = top.opt_token_ids(key)?;
    match ids.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(ConfigError::Unsupported {
            section: TOP,
            key: key.into(),
            value: format!("{ids:?}"),
            reason: "a Llama config has one bos token id",
        }),
    }
}

/// Rejects keys whose meaning e2llm does not implement (see the module doc).
fn check_architecture(top: &Section) -> Result<(), ConfigError> {
    let unsupported = |key: &str, value: String, reason| ConfigError::Unsupported {
        section: TOP,
        key: key.to_string(),
        value,
        reason,
    };
    match top.opt_str("model_type")? {
        None | Some("llama") => {}
        // Mistral's sliding window and biases are rejected below / after parsing.
        Some("mistral") => {}
        Some(other) => {
            return Err(unsupported(
                "model_type",
                format!("\"{other}\""),
                "only \"llama\" (and \"mistral\" without sliding window) are supported",
            ))
        }
    }
    if let Some(act) = top.opt_str("hidden_act")? {
        if act != "silu" {
            return Err(unsupported(
                "hidden_act",
                format!("\"{act}\""),
                "Llama's MLP uses \"silu\"",
            ));
        }
    }
    if let Some(tp) = top.opt_usize("pretraining_tp")? {
        if tp > 1 {
            return Err(unsupported(
                "pretraining_tp",
                tp.to_string(),
                "transformers splits the projections into slices for tp > 1; e2llm only \
                 implements pretraining_tp 1 (set it to 1: the weights are the same)",
            ));
        }
    }
    if let Some(p) = top.opt_f64("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(unsupported(
                "partial_rotary_factor",
                p.to_string(),
                "only full-head RoPE (1.0) is implemented",
            ));
        }
    }
    if let Some(w) = top.get("sliding_window") {
        return Err(unsupported(
            "sliding_window",
            json::show(w),
            "sliding-window attention (Mistral's) is not implemented; only null is supported",
        ));
    }
    if top.opt_bool("use_sliding_window")? == Some(true) {
        return Err(unsupported(
            "use_sliding_window",
            "true".into(),
            "sliding-window attention is not implemented",
        ));
    }
    if let Some(p) = top.opt_f64("attention_dropout")? {
        if p != 0.0 {
            return Err(unsupported(
                "attention_dropout",
                p.to_string(),
                "attention dropout is not implemented; use 0.0",
            ));
        }
    }
    if let Some(q) = top.get("quantization_config") {
        return Err(unsupported(
            "quantization_config",
            json::show(q),
            "quantized checkpoints are not supported; use float weights",
        ));
    }
    Ok(())
}
