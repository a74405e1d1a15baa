//! `e2llm passkey`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use e2llm_core::passkey::Filler;
use e2llm_train::eval::{failure_summary, markdown_table, passkey_grid, PasskeyEval, ScaleMode};
use indicatif::{ProgressBar, ProgressStyle};

use crate::util::{parse_list, Compute};

/// Arguments of `e2llm passkey`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directory with a tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, default_value = "256,1024,4096")]
    lengths: String,
    /// Key depths in [0, 1], comma-separated.
    #[arg(long, default_value = "0,0.25,0.5,0.75,1")]
    depths: String,
    /// Trials per (length, depth) cell.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Filler sentences, one per line (default: the standard passkey filler).
    #[arg(long)]
    filler_file: Option<PathBuf>,
    /// RoPE scale: `auto` (g = ceil(length / L), the paper's choice), `safe` ((prompt + answer)
    /// / g ≤ L), or a number.
    #[arg(long, default_value = "auto")]
    rope_scale: ScaleMode,
    /// Tokens generated per answer.
    #[arg(long, default_value_t = 8)]
    max_new_tokens: usize,
    /// Seed of keys and filler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompts run at once, one thread each (default: one per core on cpu, 1 on wgpu). The
    /// results do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    compute: Compute,
    /// Write the grid as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the grid as a PNG heatmap here (default: beside --json, with a .png extension).
    #[arg(long)]
    png: Option<PathBuf>,
}

/// Runs the grid and prints the table.
pub fn run(a: Args) -> Result<()> {
    let lengths: Vec<usize> = parse_list(&a.lengths, "--lengths")?;
    let depths: Vec<f64> = parse_list(&a.depths, "--depths")?;
    if let Some(d) = depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        anyhow::bail!("--depths: {d} is outside [0, 1]");
    }
    let filler = match &a.filler_file {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let units: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            anyhow::ensure!(
                !units.is_empty(),
                "{}: no filler sentences in it",
                p.display()
            );
            Filler::Cycle(units)
        }
        None => Filler::Standard,
    };
    let (model, tok) = a.compute.load_with_tokenizer(&a.model)?;
    let cfg = &model.config;
    let eval = PasskeyEval {
        lengths,
        depths,
        trials: a.trials,
        max_new_tokens: a.max_new_tokens,
        scale: a.rope_scale,
        filler,
        seed: a.seed,
        threads: a
            .threads
            .unwrap_or_else(|| e2llm_train::eval::default_threads(&a.compute.backend))
            .max(1),
    };
    let total = eval.lengths.len() * eval.depths.len() * eval.trials;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}<{eta_precise}] {bar:30} {pos}/{len} trials",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cells = passkey_grid(&model, &tok, &eval, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    println!(
        "passkey accuracy, {} (L = {}), {} trials per cell, rope scale {:?}{}\n",
        a.model.display(),
        cfg.max_position_embeddings,
        eval.trials,
        eval.scale,
        a.compute.notes(&model)
    );
    print!("{}", markdown_table(&cells));
    if let Some(line) = failure_summary(&cells) {
        println!("\n{line}");
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "model": a.model.display().to_string(),
            "orig_len": cfg.max_position_embeddings,
            "trials": eval.trials,
            "rope_scale": format!("{:?}", eval.scale),
            "logn": model.logn(),
            "kv_cache": a.compute.kv_cache.to_string(),
            "weights": a.compute.weights.to_string(),
            "cells": cells.iter().map(|c| serde_json::json!({
                "length": c.length, "depth": c.depth, "g": c.g,
                "correct": c.correct, "trials": c.trials, "accuracy": c.accuracy(),
                "answers": c.answers,
            })).collect::<Vec<_>>(),
        });
        e2llm_model::weights::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    if let Some(png) = a
        .png
        .or_else(|| a.json.as_ref().map(|j| j.with_extension("png")))
    {
        crate::plot::passkey_heatmap(
            &cells,
            &format!(
                "passkey accuracy: {} (L = {}){}",
                a.model.display(),
                cfg.max_position_embeddings,
                if model.logn() { ", log-n" } else { "" }
            ),
            &png,
        )?;
        println!("wrote {}", png.display());
    }
    Ok(())
}
