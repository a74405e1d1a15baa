//! # e2llm-model
//!
//! Llama (`LlamaForCausalLM`) on burn — the one model for flex (CPU), wgpu
//! (Vulkan/Metal/DX12) and WebGPU. Positions and the RoPE scale `g` are inputs, so E²-LLM's
//! augmented training positions, PoSE's skips and plain position interpolation are all just
//! data. Weights load and save as HF safetensors under HF tensor names.
//!
//! ```no_run
//! use e2llm_model::{checkpoint, rope::Positions, backend};
//! let device = backend::device("cpu").unwrap();
//! let model = checkpoint::load_dir("my-model".as_ref(), &device).unwrap();
//! let logits = model.forward(&[1, 2, 3], &Positions::contiguous(1, 3, 0, 1.0), None).unwrap();
//! ```

pub mod attention;
pub mod attnmap;
pub mod backend;
pub mod checkpoint;
pub mod error;
pub mod generate;
pub mod layers;
pub mod llama;
pub mod rope;
pub mod tokenizer;
pub mod weights;

pub use attention::{Kernels, Precision};
pub use attnmap::{AttentionImage, MapBackend, MapSpec};
/// The burn device type (re-exported so callers need no direct burn dependency).
pub use burn::tensor::Device;
/// The WGSL kernels (re-exported so callers can open a [`kernels::Gpu`] for [`MapBackend::Gpu`]).
pub use e2llm_kernels as kernels;
pub use error::{ModelError, Result};
pub use llama::{KvCache, Llama, Paths};
pub use rope::Positions;
pub use tokenizer::Tokenizer;
