//! `e2llm average`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use e2llm_model::{backend, checkpoint};

/// Arguments of `e2llm average`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directories to average, comma-separated (e.g. one run's kept checkpoints
    /// `run/step-4500,run/checkpoint`); each needs the same tensors. The first one's config.json
    /// and tokenizer.json (when it has one) are written beside the mean weights.
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<PathBuf>,
    /// Output HF model directory (created; its files are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

/// Averages the weights and writes the directory.
pub fn run(a: Args) -> Result<()> {
    if a.models.len() < 2 {
        bail!("--models: give at least two model directories to average");
    }
    // Compared as the filesystem sees them (`./run/a` and `run/a` are one directory).
    let same = |m: &PathBuf| match (m.canonicalize(), a.out.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => m == &a.out,
    };
    if a.models.iter().any(same) {
        bail!(
            "--out {} is one of the --models; write the average to a new directory",
            a.out.display()
        );
    }
    let device = backend::device("cpu")?;
    let dirs: Vec<&std::path::Path> = a.models.iter().map(PathBuf::as_path).collect();
    let model = checkpoint::average_dirs(&dirs, &device)?;
    let first = checkpoint::load_config(&a.models[0])?;
    for m in &a.models[1..] {
        let diff = checkpoint::config_differences(&first, &checkpoint::load_config(m)?);
        if !diff.is_empty() {
            eprintln!(
                "note: {} differs from {} in {}; the average takes {}'s",
                m.display(),
                a.models[0].display(),
                diff.join(", "),
                a.models[0].display()
            );
        }
    }
    checkpoint::save_dir(&model, &a.out)?;
    let tok_src = a.models[0].join(checkpoint::TOKENIZER_FILE);
    if tok_src.exists() {
        let tok =
            std::fs::read(&tok_src).with_context(|| format!("reading {}", tok_src.display()))?;
        e2llm_model::weights::write_atomic(&a.out.join(checkpoint::TOKENIZER_FILE), &tok)?;
    } else {
        eprintln!(
            "note: {} has no {}; copy one into {} to run text through the average",
            a.models[0].display(),
            checkpoint::TOKENIZER_FILE,
            a.out.display()
        );
    }
    println!(
        "wrote the mean of {} checkpoints ({} parameters) to {}",
        a.models.len(),
        model.config.num_parameters(),
        a.out.display()
    );
    Ok(())
}
