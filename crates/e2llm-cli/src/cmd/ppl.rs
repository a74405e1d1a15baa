//! `e2llm ppl`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use e2llm_train::data::Corpus;
use e2llm_train::eval::ScaleMode;
use e2llm_train::ppl::{perplexity, text_for_windows, Scoring};
use indicatif::{ProgressBar, ProgressStyle};

use crate::util::{parse_list, Compute};

/// Arguments of `e2llm ppl`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directory with a tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// Context lengths in tokens, comma-separated.
    #[arg(long, default_value = "128,512,2048")]
    lengths: String,
    /// Window stride in tokens (default: the length, i.e. non-overlapping windows). Later
    /// windows score only their last `stride` tokens.
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the last N tokens of each window, every length's windows ending at the same
    /// tokens (spans of the longest length): each length then scores the same text, with more
    /// context before it as the length grows. Every length must be at least N.
    #[arg(long, value_name = "N", conflicts_with = "stride")]
    score_last: Option<usize>,
    /// Text file to score (default: the held-out novel of the embedded corpus, never trained on).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Windows per length (0 = as many as the text holds).
    #[arg(long, default_value_t = 8)]
    max_windows: usize,
    /// RoPE scale: `auto` (g = ceil(length / L)) or a number (1 = plain positions).
    #[arg(long, default_value = "auto")]
    rope_scale: ScaleMode,
    #[command(flatten)]
    compute: Compute,
    /// Write the points as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Prints perplexity per length.
pub fn run(a: Args) -> Result<()> {
    let lengths: Vec<usize> = parse_list(&a.lengths, "--lengths")?;
    anyhow::ensure!(
        lengths.iter().all(|&l| l > 0),
        "--lengths: lengths must be positive"
    );
    if let Some(s) = a.stride {
        anyhow::ensure!(s > 0, "--stride must be at least 1");
    }
    let scoring = match a.score_last {
        Some(n) => {
            anyhow::ensure!(
                n > 0 && lengths.iter().all(|&l| l >= n),
                "--score-last {n}: must be at least 1 and at most the shortest length in --lengths"
            );
            Scoring::LastTokens(n)
        }
        None => Scoring::Sliding { stride: a.stride },
    };
    let (model, tok) = a.compute.load_with_tokenizer(&a.model)?;
    let cfg = &model.config;
    let text = match &a.text {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => Corpus::embedded()?.heldout,
    };
    let tokens = tok.encode(text_for_windows(&text, &lengths, a.max_windows), false)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}<{eta_precise}] {bar:30} {pos}/{len} windows",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let points = perplexity(
        &model,
        &tokens,
        &lengths,
        scoring,
        a.rope_scale,
        a.max_windows,
        |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        },
    )?;
    bar.finish_and_clear();
    println!(
        "perplexity, {} (L = {}), rope scale {:?}{}\n\n| length | g | tokens scored | nll | ppl |\n|---:|---:|---:|---:|---:|",
        a.model.display(),
        cfg.max_position_embeddings,
        a.rope_scale,
        a.compute.notes(&model)
    );
    for p in &points {
        println!(
            "| {} | {} | {} | {:.4} | {:.2} |",
            p.length, p.g, p.tokens, p.nll, p.ppl
        );
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "model": a.model.display().to_string(),
            "orig_len": cfg.max_position_embeddings,
            "rope_scale": format!("{:?}", a.rope_scale),
            "stride": a.stride,
            "score_last": a.score_last,
            "logn": model.logn(),
            "weights": a.compute.weights.to_string(),
            "points": points,
        });
        e2llm_model::weights::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
