//! `e2llm logits`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use e2llm_model::Positions;

use crate::util::{check_scale, parse_list, Compute};

/// Arguments of `e2llm logits`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directory.
    #[arg(long)]
    model: PathBuf,
    /// Token ids, comma-separated (e.g. 5,17,3).
    #[arg(long)]
    ids: String,
    /// Position of each token, comma-separated; integers or fractions. Default 0..n-1.
    #[arg(long)]
    positions: Option<String>,
    /// Extra RoPE scale g: positions are divided by it (on top of the config's RoPE scaling).
    #[arg(long, default_value_t = 1.0)]
    rope_scale: f32,
    #[command(flatten)]
    compute: Compute,
    /// Output file: an f32 tensor `logits` of shape [seq, vocab].
    #[arg(long)]
    out: PathBuf,
}

/// Runs the forward pass and writes the file.
pub fn run(a: Args) -> Result<()> {
    let ids: Vec<u32> = parse_list(&a.ids, "--ids")?;
    if ids.is_empty() {
        bail!("--ids: give at least one token id");
    }
    let positions: Vec<f32> = match &a.positions {
        Some(p) => parse_list(p, "--positions")?,
        None => (0..ids.len()).map(|i| i as f32).collect(),
    };
    if positions.len() != ids.len() {
        bail!(
            "--positions has {} values but --ids has {}; give one position per token",
            positions.len(),
            ids.len()
        );
    }
    let g = check_scale(a.rope_scale)?;
    let model = a.compute.load(&a.model)?;
    let vocab = model.config.vocab_size;
    let logits = model.forward(&ids, &Positions::row(positions, g), None)?;
    let values = e2llm_model::backend::read_f32(logits)
        .map_err(|e| anyhow::anyhow!("{} tokens on {}: {e}", ids.len(), a.compute))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![ids.len(), vocab],
        &bytes,
    )?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let file = safetensors::serialize([("logits", view)], Some(meta))?;
    e2llm_model::weights::write_atomic(&a.out, &file)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote logits [{}, {}] to {} ({})",
        ids.len(),
        vocab,
        a.out.display(),
        a.compute
    );
    Ok(())
}
