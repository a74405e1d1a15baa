//! `e2llm bench train`: training throughput of the quickstart model per backend.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use e2llm_model::Kernels;
use e2llm_train::config::apply_overrides;
use e2llm_train::data::Corpus;
use e2llm_train::experiment::{Plan, Preset};
use e2llm_train::Trainer;

use crate::util::parse_list;

/// Arguments of `e2llm bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// Training tokens/s of the quickstart base model (forward, backward, AdamW) per backend
    /// and attention path.
    Train(TrainArgs),
    /// The fused attention kernel against the plain path and burn's attention, per length.
    Kernels(crate::cmd::bench_kernels::KernelArgs),
}

/// Arguments of `e2llm bench train`.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Backends to measure, comma-separated; one that cannot start is reported and skipped.
    #[arg(long, default_value = "cpu,wgpu")]
    backends: String,
    /// Kernel choices to measure on each backend, comma-separated: `reference` (plain burn
    /// ops), `fused` (the WGSL kernels on wgpu; on cpu the CPU attention and the other
    /// kernels' twins), `auto` (on cpu: the CPU attention, plain ops for the rest).
    #[arg(long, default_value = "reference,fused")]
    kernels: String,
    /// Training threads per step to measure on the cpu backend, comma-separated (the trainer's
    /// `threads`: rows split over threads; other backends run 1).
    #[arg(long, default_value = "1,2")]
    threads: String,
    /// Timed optimizer steps per backend.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed warm-up steps before them (kernel compilation, allocator growth).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Override a field of the training config, e.g. `--set batch_size=32`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the benchmark.
pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Train(t) => train(t),
        What::Kernels(k) => crate::cmd::bench_kernels::run(k),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    anyhow::ensure!(a.steps > 0, "--steps must be at least 1");
    let backends: Vec<String> = parse_list(&a.backends, "--backends")?;
    let kernels: Vec<Kernels> = a
        .kernels
        .split(',')
        .map(|k| k.trim().parse::<Kernels>().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("--kernels")?;
    let thread_counts: Vec<usize> = parse_list(&a.threads, "--threads")?;
    anyhow::ensure!(
        thread_counts.iter().all(|&t| t > 0),
        "--threads: every count must be at least 1"
    );
    let corpus = Corpus::embedded()?;
    let tmp = std::env::temp_dir().join(format!("e2llm-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    let runs = backends.iter().flat_map(|b| {
        let ts: Vec<usize> = match b.as_str() {
            "cpu" => thread_counts.clone(),
            _ => vec![1],
        };
        kernels
            .iter()
            .flat_map(move |k| ts.clone().into_iter().map(move |t| (b, *k, t)))
    });
    for (name, kern, threads) in runs {
        let mut cfg = Plan::preset(Preset::Quickstart).base;
        cfg.backend = name.clone();
        cfg.kernels = kern;
        cfg.checkpoint_every = 0;
        cfg.steps = a.warmup + a.steps;
        cfg.threads = threads;
        let cfg = apply_overrides(&cfg, &a.set)?;
        let mut trainer = match Trainer::new(
            cfg.clone(),
            &tmp.join(format!("{name}-{kern}-{threads}")),
            &corpus,
        ) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: skipped ({e})");
                rows.push(serde_json::json!({"backend": name, "kernels": kern.to_string(), "threads": threads, "skipped": e.to_string()}));
                continue;
            }
        };
        let path = |fused: bool| if fused { "fused" } else { "reference" };
        let runs = format!(
            "attention {}, layers {}",
            path(trainer.model.fused_attention()),
            path(trainer.model.fused_layers())
        );
        eprintln!(
            "{name}, --kernels {kern} ({runs}), {} thread(s): {} warm-up + {} timed steps …",
            cfg.threads, a.warmup, a.steps
        );
        for _ in 0..a.warmup {
            trainer.step()?;
        }
        let t0 = Instant::now();
        let mut loss = 0.0;
        for _ in 0..a.steps {
            loss = trainer.step()?.loss;
        }
        let secs = t0.elapsed().as_secs_f64();
        let tokens = (a.steps * cfg.batch_size * cfg.grad_accum * cfg.train_len) as f64;
        rows.push(serde_json::json!({
            "backend": name,
            "kernels": kern.to_string(),
            "runs": runs,
            "threads": cfg.threads,
            "adapter": if name == "cpu" { "burn flex (CPU)" } else { "burn wgpu, default adapter" },
            "steps": a.steps,
            "tokens_per_step": cfg.batch_size * cfg.grad_accum * cfg.train_len,
            "seconds": secs,
            "tokens_per_s": tokens / secs,
            "ms_per_step": 1e3 * secs / a.steps as f64,
            "final_loss": loss,
            "params": trainer.model.config.num_parameters(),
        }));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = e2llm_train::eval::cores();
    println!("training throughput, quickstart model; host: {host}, {threads} threads\n");
    println!(
        "| backend | kernels | what runs | threads | device | ms/step | tokens/s | ÷ reference, 1 thread |\n\
         |---|---|---|---:|---|---:|---:|---:|"
    );
    for r in &rows {
        if let Some(why) = r.get("skipped") {
            println!(
                "| {} | {} | – | {} | skipped: {} | – | – | – |",
                r["backend"], r["kernels"], r["threads"], why
            );
        } else {
            let tps = r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let base = rows
                .iter()
                .find(|o| {
                    o["backend"] == r["backend"] && o["kernels"] == "reference" && o["threads"] == 1
                })
                .and_then(|o| o["tokens_per_s"].as_f64());
            println!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {} |",
                r["backend"].as_str().unwrap_or("?"),
                r["kernels"].as_str().unwrap_or("?"),
                r["runs"].as_str().unwrap_or("?"),
                r["threads"],
                r["adapter"].as_str().unwrap_or("?"),
                r["ms_per_step"].as_f64().unwrap_or(f64::NAN),
                tps,
                base.map_or("–".to_string(), |b| format!("{:.2}×", tps / b))
            );
        }
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({"host": host, "threads": threads, "results": rows});
        e2llm_model::weights::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}
