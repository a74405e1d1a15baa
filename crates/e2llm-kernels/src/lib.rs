//! # e2llm-kernels
//!
//! The project's WGSL compute kernels (`shaders/`, one file per op family): RoPE with
//! positions as data, causal GQA flash attention with RoPE inside, RMSNorm, SwiGLU,
//! cross-entropy and AdamW — each with a plain-Rust CPU twin ([`cpu`]) and a GPU entry point
//! ([`ops`]) over a cached-pipeline wgpu context ([`gpu::Gpu`]); every dispatch is described
//! once ([`launch`], [`attention`]'s plans). [`fused`] runs the same WGSL as burn ops on burn's
//! own wgpu buffers, with their backward under autodiff — what the model and trainer use; on
//! the CPU the attention op runs [`flash_cpu`] (the same algorithm laid out for a CPU core)
//! and the others their twins. Every shader stays inside WebGPU's default limits so the same
//! source runs in a browser.

pub mod attention;
pub mod cpu;
pub mod error;
pub mod flash_cpu;
pub mod fused;
pub mod gpu;
pub mod launch;
pub mod ops;
pub mod shaders;

pub use error::{KernelError, Result};
pub use gpu::Gpu;
