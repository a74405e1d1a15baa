//! # e2llm-core
//!
//! The pure-Rust core of e2llm, an implementation of E²-LLM context extension (Liu et al.,
//! arXiv 2401.06951) for Llama models. No tensor library and no OS services: it builds for
//! `wasm32-unknown-unknown` and is shared by the model, trainer, CLI, desktop and web crates.
//!
//! - [`config`]: [`LlamaConfig`] from HF `config.json` (hub layout and transformers v5 layout),
//!   written back in the hub layout.
//! - [`rope`]: [`RopeConfig::frequencies`], the twin of transformers' `modeling_rope_utils.py`
//!   for default, linear (PI), dynamic NTK, YaRN and Llama 3 RoPE, plus a slow reference rotation.
//! - [`positions`]: position ids as data and the seeded samplers of E²-LLM (scale `g`, offset
//!   `t`, attention sinks) and PoSE.
//! - [`passkey`]: the passkey-retrieval prompt builder (token-length search over a caller's
//!   token counter), the scorer, and the evaluation-scale rule.
//!
//! Randomness is always passed in or seeded (`rand_chacha::ChaCha8Rng::seed_from_u64`); nothing
//! here reads OS entropy.
//!
//! ```
//! use e2llm_core::{build_passkey, E2LlmSampler, LlamaConfig, PasskeySpec, RopeConfig, RopeScaling};
//! use rand::SeedableRng;
//!
//! let cfg = LlamaConfig::tiny();
//! // Plain PI at scale 4 (E²-LLM's inference), as HF's `rope_type: "linear"` computes it.
//! let pi = RopeConfig::new(cfg.rope.theta, RopeScaling::Linear { factor: 4.0 });
//! let freqs = pi.frequencies(cfg.head_dim(), cfg.max_position_embeddings, 512);
//! assert_eq!(freqs.inv_freq.len(), cfg.head_dim() / 2);
//!
//! // One E²-LLM training draw: scale g and offset t, and the positions for R = L tokens.
//! let sampler = E2LlmSampler::new(20, cfg.max_position_embeddings, 128).unwrap();
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let draw = sampler.sample(&mut rng);
//! let positions = sampler.positions(128, draw);
//! assert!(positions[127] / (draw.g as f32) < 128.0);
//!
//! // A passkey prompt of at most 512 "tokens" (here: whitespace words).
//! let words = |s: &str| s.split_whitespace().count();
//! let prompt = build_passkey(&PasskeySpec::new(512, 0.5, 7), &words).unwrap();
//! assert!(prompt.num_tokens <= 512 && prompt.text.contains(&prompt.key.to_string()));
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod passkey;
pub mod positions;
pub mod rope;

pub use config::{ConfigError, LlamaConfig};
pub use passkey::{
    build_passkey, eval_scale, first_digits, first_integer, key_line, paper_auto_scale, score,
    Filler, PasskeyError, PasskeyPrompt, PasskeySpec, ScaleMode, PASSKEY_FILLER, PASSKEY_INTRO,
    PASSKEY_MAX_KEY, PASSKEY_QUESTION,
};
pub use positions::{
    contiguous_positions, e2llm_positions, E2LlmSampler, E2Sample, Granularity, PoseSample,
    PoseSampler, PositionError, DEFAULT_SINKS,
};
pub use rope::{
    logn_scale, rope_rotate_half, RopeConfig, RopeError, RopeFreqs, RopeScaling, DEFAULT_ROPE_THETA,
};
