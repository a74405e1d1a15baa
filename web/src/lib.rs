//! # e2llm-web
//!
//! The browser demo's wasm module: the passkey demo over `e2llm-model`, with no model or
//! prompt code of its own.
//!
//! - [`demo`] is everything the page does (load from bytes, build the passkey prompt with the
//!   core's builder, prefill in steps, greedy answer, attention strip), written against the
//!   model crate with asynchronous read-back. It builds natively too, so `cargo test` checks it
//!   on the flex CPU backend.
//! - `wasm` (wasm32 only) exports it to JavaScript with wasm-bindgen: `open_gpu()` brings up
//!   burn's wgpu runtime on the browser's WebGPU (asynchronously, as the browser requires),
//!   `open_cpu()` gives burn's flex backend compiled to WASM, and `Session` holds a loaded
//!   model and the trial in progress. The page (`web/static/`) runs it in a Web Worker.
//! - [`selfcheck`] runs the attention kernel against its CPU twin on the page's device (the
//!   browser test's in-browser kernel check).

pub mod demo;
pub mod logged;
pub mod selfcheck;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use demo::{Answer, Demo, ModelInfo, PromptInfo, PromptRequest, Run, ScaleChoice, WebError};
