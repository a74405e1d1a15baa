//! `e2llm generate`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use e2llm_model::generate::{generate, GenerateOptions, SamplingConfig};

use crate::util::{check_scale, Compute};

/// Arguments of `e2llm generate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directory with a tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// RoPE scale g for position interpolation (positions divided by g, on top of the config's
    /// RoPE scaling); E²-LLM reads a prompt of length L' with g = L'/L.
    #[arg(long, default_value_t = 1.0)]
    rope_scale: f32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    compute: Compute,
}

/// Generates and streams the text.
pub fn run(a: Args) -> Result<()> {
    let g = check_scale(a.rope_scale)?;
    let (model, tok) = a.compute.load_with_tokenizer(&a.model)?;
    let prompt = tok.encode(&a.prompt, true)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        rope_scale: g,
        eos: model.config.eos_token_id.clone(),
        sampling: SamplingConfig {
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
        },
        ..GenerateOptions::default()
    };
    let mut stdout = std::io::stdout();
    print!("{}", a.prompt);
    let mut new = Vec::new();
    let mut shown = 0;
    let mut err = None;
    generate(&model, &prompt, &opts, |id| {
        new.push(id);
        // Decode the whole continuation so multi-token characters come out whole.
        match tok.decode(&new) {
            Ok(text) => {
                if text.len() > shown && text.is_char_boundary(shown) {
                    print!("{}", &text[shown..]);
                    shown = text.len();
                    let _ = stdout.flush();
                }
                true
            }
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })?;
    println!();
    if let Some(e) = err {
        return Err(e.into());
    }
    eprintln!(
        "[{} prompt tokens, {} new, rope scale {g}, {}]",
        prompt.len(),
        new.len(),
        a.compute
    );
    Ok(())
}
