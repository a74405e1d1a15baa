//! # e2llm-train
//!
//! The E²-LLM trainer: the embedded corpus and an in-process BPE tokenizer, training rows
//! (text windows and passkey examples with varied filler), the position/scale methods
//! (`none`, `pi`, `pose`, `yarn`, `e2llm` and its ablations), AdamW with warm-up + cosine,
//! clipping and accumulation, and atomic checkpoints that resume exactly.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod evalcache;
pub mod experiment;
pub mod loss;
pub mod method;
pub mod optim;
pub mod pool;
pub mod ppl;
pub mod trainer;

pub use config::{Method, ModelShape, TrainConfig};
pub use error::{Result, TrainError};
pub use trainer::{StepReport, Trainer};
