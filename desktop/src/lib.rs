//! # desktop-trainer
//!
//! The e2llm desktop app (eframe/egui): set up a run, train it with E²-LLM on a background
//! thread while loss, learning rate, throughput and the sampled g/t are plotted live, look at
//! one head's attention at several RoPE scales side by side, run the passkey grid and
//! perplexity, and export an HF directory. A thin face over e2llm-train and e2llm-model.

pub mod app;
pub mod autopilot;
pub mod compute;
pub mod heatmap;
mod panels;
pub mod state;
pub mod worker;

pub use app::DesktopApp;
