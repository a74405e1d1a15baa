//! `e2llm` — E²-LLM context extension for Llama models: inspect, run and (soon) train.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod util;

/// E²-LLM: train once on short sequences, read long ones with position interpolation.
#[derive(Parser, Debug)]
#[command(name = "e2llm", version, about, long_about = None)]
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
    /// Train or extend a model (methods: none, pi, pose, yarn, e2llm and its ablations).
    Train(cmd::train::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Logits(a) => cmd::logits::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Passkey(a) => cmd::passkey::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
