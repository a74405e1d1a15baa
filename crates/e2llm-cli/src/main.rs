//! `e2llm` — E²-LLM context extension for Llama models: inspect, run, train, evaluate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod plot;
mod util;

/// E²-LLM: train once on short sequences, read long ones with position interpolation. New
/// here? Start with `e2llm quickstart`.
#[derive(Parser, Debug)]
#[command(name = "e2llm", version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model directory's config, parameter count and RoPE settings.
    Info(cmd::info::Args),
    /// Run one forward pass and write the logits [seq, vocab] to a safetensors file.
    Logits(cmd::logits::Args),
    /// Generate text after a prompt, streaming it to stdout.
    Generate(cmd::generate::Args),
    /// Passkey retrieval accuracy over a length × depth grid (table + JSON).
    Passkey(cmd::passkey::Args),
    /// Where the last token of a prompt looks: each layer's and head's most attended keys.
    Attend(cmd::attend::Args),
    /// Sliding-window perplexity vs context length on held-out text.
    Ppl(cmd::ppl::Args),
    /// Train or extend a model (methods: none, pi, pose, yarn, e2llm and its ablations).
    Train(cmd::train::Args),
    /// The main job: pretrain a tiny Llama, extend it with E²-LLM, find passkeys at 1×..32× L.
    Quickstart(cmd::experiment::QuickstartArgs),
    /// Average the weights of checkpoints of one architecture (e.g. one run's kept steps).
    Average(cmd::average::Args),
    /// Benchmarks (training throughput per backend), as a table and JSON.
    Bench(cmd::bench::Args),
    /// The paper's ablation at small scale: one base, every method, one results table.
    Experiment(cmd::experiment::ExperimentArgs),
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Passkey(a) => cmd::passkey::run(a),
        Command::Attend(a) => cmd::attend::run(a),
        Command::Ppl(a) => cmd::ppl::run(a),
        Command::Average(a) => cmd::average::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Quickstart(a) => cmd::experiment::quickstart(a),
        Command::Experiment(a) => cmd::experiment::experiment(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Exit code of a program stopped by SIGPIPE (128 + 13), as `e2llm info | head` expects.
const BROKEN_PIPE_EXIT: i32 = 141;

/// Stdout closed by its reader (`e2llm info | head`): stop quietly as a C tool killed by SIGPIPE
/// would, instead of `println!`'s panic message. Rust ignores SIGPIPE, so the write fails with
/// EPIPE and `println!` panics; this hook turns exactly that panic into the exit, and leaves
/// every other panic to the default hook.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

/// The error and its causes on one line, skipping a cause whose text the line already holds
/// (library errors print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
