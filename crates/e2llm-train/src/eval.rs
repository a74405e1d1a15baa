//! Passkey retrieval over a length × depth grid (METHOD.md's protocol: greedy decoding, first
//! integer, exact match), with the RoPE scale chosen per length.

use e2llm_core::passkey::{build_passkey, score, Filler, PasskeySpec};
use e2llm_model::generate::{generate, GenerateOptions};
use e2llm_model::{Llama, Tokenizer};
use serde::Serialize;

use crate::error::{Result, TrainError};

/// How the scale `g` is picked (the core's one rule, re-exported for the CLI and desktop).
pub use e2llm_core::passkey::ScaleMode;

/// The grid to run.
#[derive(Debug, Clone)]
pub struct PasskeyEval {
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Key depths in `[0, 1]`.
    pub depths: Vec<f64>,
    /// Trials per cell.
    pub trials: usize,
    /// Tokens generated per answer.
    pub max_new_tokens: usize,
    /// RoPE scale choice.
    pub scale: ScaleMode,
    /// Filler text.
    pub filler: Filler,
    /// Seed of keys and filler.
    pub seed: u64,
}

/// One cell's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Target prompt length (tokens).
    pub length: usize,
    /// Key depth.
    pub depth: f64,
    /// Scale used.
    pub g: f32,
    /// Correct answers.
    pub correct: usize,
    /// Trials run.
    pub trials: usize,
}

impl Cell {
    /// Share of correct answers.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.trials.max(1) as f64
    }
}

/// Runs the grid; `on_trial(done, total)` reports progress.
pub fn passkey_grid(
    model: &Llama,
    tok: &Tokenizer,
    eval: &PasskeyEval,
    mut on_trial: impl FnMut(usize, usize),
) -> Result<Vec<Cell>> {
    let orig_len = model.config.max_position_embeddings;
    let total = eval.lengths.len() * eval.depths.len() * eval.trials;
    let mut done = 0;
    let mut cells = Vec::new();
    for &length in &eval.lengths {
        for &depth in &eval.depths {
            let mut cell = Cell {
                length,
                depth,
                g: 1.0,
                correct: 0,
                trials: eval.trials,
            };
            for trial in 0..eval.trials {
                let spec = PasskeySpec {
                    target_tokens: length,
                    depth,
                    key: None,
                    filler: eval.filler.clone(),
                    seed: eval
                        .seed
                        .wrapping_mul(1_000_003)
                        .wrapping_add((length as u64) << 20)
                        .wrapping_add(((depth * 1000.0) as u64) << 8)
                        .wrapping_add(trial as u64),
                };
                let count = |s: &str| tok.count(s);
                let prompt = build_passkey(&spec, &count).map_err(|e| {
                    TrainError::Data(format!("passkey prompt at {length} tokens: {e}"))
                })?;
                let ids = tok.encode(&prompt.text, false)?;
                let g = eval.scale.g(ids.len(), eval.max_new_tokens, orig_len);
                cell.g = g;
                let opts = GenerateOptions {
                    max_new_tokens: eval.max_new_tokens,
                    rope_scale: g,
                    ..GenerateOptions::default()
                };
                let out = generate(model, &ids, &opts, |_| true)?;
                if score(&tok.decode(&out)?, prompt.key) {
                    cell.correct += 1;
                }
                done += 1;
                on_trial(done, total);
            }
            cells.push(cell);
        }
    }
    Ok(cells)
}

/// The grid as a markdown table: one row per length, one column per depth, accuracy in %.
pub fn markdown_table(cells: &[Cell]) -> String {
    let mut depths: Vec<f64> = cells.iter().map(|c| c.depth).collect();
    depths.dedup();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut s = String::from("| length | g |");
    for d in &depths {
        s += &format!(" depth {d} |");
    }
    s += " mean |\n|---:|---:|";
    s += &"---:|".repeat(depths.len() + 1);
    s.push('\n');
    for l in lengths {
        let row: Vec<&Cell> = cells.iter().filter(|c| c.length == l).collect();
        let g = row.first().map_or(1.0, |c| c.g);
        s += &format!("| {l} | {g} |");
        for d in &depths {
            match row.iter().find(|c| c.depth == *d) {
                Some(c) => s += &format!(" {:.0}% |", 100.0 * c.accuracy()),
                None => s += " – |",
            }
        }
        let mean = row.iter().map(|c| c.accuracy()).sum::<f64>() / row.len().max(1) as f64;
        s += &format!(" {:.0}% |\n", 100.0 * mean);
    }
    s
}
