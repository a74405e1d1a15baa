//! `e2llm train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use e2llm_train::config::apply_overrides;
use e2llm_train::data::Corpus;
use e2llm_train::{TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `e2llm train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run config (TOML). Without it the embedded defaults run.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override any config field, e.g. `--set steps=500 --set method.name=e2llm --set method.g_max=20`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Directory for checkpoints and logs.
    #[arg(long, default_value = "runs/train")]
    run_dir: PathBuf,
    /// Continue from the newest checkpoint in --run-dir (its config is used).
    #[arg(long)]
    resume: bool,
    /// Print the effective config as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Trains with a progress bar.
pub fn run(a: Args) -> Result<()> {
    let corpus = Corpus::embedded()?;
    let mut trainer = if a.resume {
        Trainer::resume(&a.run_dir, &corpus)?
    } else {
        let base = match &a.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        let cfg = apply_overrides(&base, &a.set)?;
        if a.print_config {
            print!("{}", cfg.to_toml());
            return Ok(());
        }
        Trainer::new(cfg, &a.run_dir, &corpus)?
    };
    let cfg = trainer.cfg.clone();
    std::fs::write(a.run_dir.join("config.toml"), cfg.to_toml())
        .with_context(|| format!("writing {}", a.run_dir.join("config.toml").display()))?;
    eprintln!(
        "train: {}, L = {}, R = {}, {} × {} tokens per step, from {}, to step {} → {}",
        cfg.method_label(),
        cfg.orig_len,
        cfg.train_len,
        cfg.batch_size * cfg.grad_accum,
        cfg.train_len,
        cfg.init.as_deref().unwrap_or("random weights"),
        cfg.steps,
        a.run_dir.display()
    );
    let bar = ProgressBar::new(cfg.steps as u64).with_position(trainer.step as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}<{eta_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let log_path = a.run_dir.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // indicatif draws nothing without a terminal (logs, CI): print a line every 5 % instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let every = (cfg.steps / 20).max(1);
    let ckpt = trainer.run(|r| {
        use std::io::Write;
        if plain && (r.step.is_multiple_of(every) || r.step == r.steps) {
            eprintln!(
                "step {}/{}  loss {:.3}  lr {:.2e}  {:.0} tok/s",
                r.step, r.steps, r.loss, r.lr, r.tokens_per_s
            );
        }
        bar.set_position(r.step as u64);
        bar.set_message(format!(
            "loss {:.3}  lr {:.2e}  |g| {:.2}  {:.0} tok/s",
            r.loss, r.lr, r.grad_norm, r.tokens_per_s
        ));
        let _ = writeln!(log, "{}", r.log_line());
    });
    bar.finish();
    let ckpt = ckpt?;
    println!(
        "trained {} steps ({}); checkpoint: {}",
        trainer.step,
        cfg.method,
        ckpt.display()
    );
    Ok(())
}
