//! # e2llm-web
//!
//! The browser demo's wasm module (work in progress, issue #5).
