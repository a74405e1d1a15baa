//! `e2llm attend`: where the last token of a prompt looks, head by head.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use e2llm_core::passkey::{build_passkey, trained_answer, Filler, PasskeyPrompt};
use e2llm_model::generate::{log_prob, read_prompt, top_k, GenerateOptions};
use e2llm_model::Tokenizer;
use e2llm_train::eval::{trial_spec, ScaleMode};

use crate::util::{parse_list, Compute};

/// Arguments of `e2llm attend`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directory with a tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long, conflicts_with_all = ["prompt_file", "passkey"])]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long, conflicts_with = "passkey")]
    prompt_file: Option<PathBuf>,
    /// The passkey prompt of this many tokens that `e2llm passkey` builds for one trial (the
    /// same `--depth`, `--trial` and `--seed` give the same prompt and key as its grid).
    #[arg(long)]
    passkey: Option<usize>,
    /// With --passkey: the key's depth in [0, 1] (default 0.5).
    #[arg(long)]
    depth: Option<f64>,
    /// With --passkey: the trial's index in its (length, depth) cell (default 0).
    #[arg(long)]
    trial: Option<usize>,
    /// With --passkey: the grid's seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// With --passkey: append the answer's first N digits, to see where the model looks for
    /// the next one (default 0: the query is the question's last token).
    #[arg(long)]
    answer_digits: Option<usize>,
    /// Text appended after the prompt (after any --answer-digits).
    #[arg(long, default_value = "")]
    append: String,
    /// RoPE scale: `auto` (g = ceil(length / L)), `safe` ((prompt + 8 new tokens) / g ≤ L, as
    /// `e2llm passkey --rope-scale safe`), or a number. Chosen from the prompt before anything
    /// is appended, as the passkey grid does.
    #[arg(long, default_value = "auto")]
    rope_scale: ScaleMode,
    /// Layers to show, comma-separated (default: all).
    #[arg(long)]
    layers: Option<String>,
    /// Keys shown per head, most attended first.
    #[arg(long, default_value_t = 3)]
    top: usize,
    #[command(flatten)]
    compute: Compute,
    /// Write every head's top keys (and the key line's share) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Tokens generated after a passkey prompt when `safe` picks g (as `e2llm passkey`).
const NEW_TOKENS: usize = 8;

/// Prints the next-token guess and each head's most-attended keys.
pub fn run(a: Args) -> Result<()> {
    ensure!(a.top > 0, "--top must be at least 1");
    // Checked here: clap drops `requires` when --prompt (which conflicts with it) is given.
    let trial_flags = [
        a.depth.is_some(),
        a.trial.is_some(),
        a.seed.is_some(),
        a.answer_digits.is_some(),
    ];
    ensure!(
        a.passkey.is_some() || !trial_flags.contains(&true),
        "--depth, --trial, --seed and --answer-digits describe a --passkey prompt; add --passkey TOKENS or drop them"
    );
    let trial = Trial {
        depth: a.depth.unwrap_or(0.5),
        index: a.trial.unwrap_or(0),
        seed: a.seed.unwrap_or(0),
        answer_digits: a.answer_digits.unwrap_or(0),
    };
    ensure!(
        (0.0..=1.0).contains(&trial.depth),
        "--depth: {} is outside [0, 1]",
        trial.depth
    );
    let (model, tok) = a.compute.load_with_tokenizer(&a.model)?;
    let cfg = &model.config;
    let layers: Vec<usize> = match &a.layers {
        Some(s) => parse_list(s, "--layers")?,
        None => (0..cfg.num_hidden_layers).collect(),
    };
    if let Some(&l) = layers.iter().find(|&&l| l >= cfg.num_hidden_layers) {
        bail!(
            "--layers: layer {l} does not exist (the model has {} layers, 0..{})",
            cfg.num_hidden_layers,
            cfg.num_hidden_layers
        );
    }
    let (text, passkey) = prompt_text(&a, &trial, &tok)?;
    let prompt_ids = tok.encode(&text, false)?;
    ensure!(
        !prompt_ids.is_empty(),
        "the prompt is empty; give some text"
    );
    let g = a
        .rope_scale
        .g(prompt_ids.len(), NEW_TOKENS, cfg.max_position_embeddings);
    let mut full = text.clone();
    if let Some(p) = passkey.as_ref().filter(|_| trial.answer_digits > 0) {
        let answer = trained_answer(p.key);
        // " 48643." → " 486" for 3 digits.
        full.push_str(&answer[..(1 + trial.answer_digits).min(answer.len() - 1)]);
    }
    full.push_str(&a.append);
    let ids = tok.encode(&full, false)?;
    let n = ids.len();
    // The key line's tokens (prefixes end at a newline, so they tokenize as in the prompt).
    let key_span = passkey.as_ref().map(|p| {
        let start = tok.count(&text[..p.key_line.start]);
        start..tok.count(&text[..p.key_line.end]).max(start)
    });
    let piece = |i: usize| -> String {
        tok.decode(&ids[i..=i])
            .map(|s| format!("{s:?}"))
            .unwrap_or_else(|_| format!("#{}", ids[i]))
    };

    let positions: Vec<f32> = (0..n).map(|p| p as f32).collect();
    let opts = GenerateOptions {
        rope_scale: g,
        ..GenerateOptions::default()
    };
    // The three likeliest next tokens (softmax keeps the logits' order) and their probabilities.
    let logits = read_prompt(&model, &ids, &opts)?.logits;
    let next: Vec<(usize, f64)> = top_k(&logits, 3)
        .into_iter()
        .map(|(id, _)| (id, log_prob(&logits, id as u32).exp()))
        .collect();
    let mut heads = Vec::new();
    for &layer in &layers {
        let rows = model.last_row_attention(&ids, &positions, g, layer, opts.prefill_chunk)?;
        for (head, row) in rows.iter().enumerate() {
            heads.push(Head {
                layer,
                head,
                key_line: key_span.as_ref().map(|r| row[r.clone()].iter().sum()),
                top: top_k(row, a.top.min(n)),
            });
        }
    }

    println!(
        "{} (L = {}), {n} tokens, g = {g}{}",
        a.model.display(),
        cfg.max_position_embeddings,
        a.compute.notes(&model)
    );
    if let (Some(p), Some(span)) = (&passkey, &key_span) {
        println!(
            "passkey {} at depth {} (trial {}, seed {}): key line at tokens {}..{}",
            p.key, trial.depth, trial.index, trial.seed, span.start, span.end
        );
    }
    let guesses: Vec<String> = next
        .iter()
        .map(|&(id, p)| {
            let s = tok.decode(&[id as u32]).unwrap_or_default();
            format!("{s:?} {p:.2}")
        })
        .collect();
    println!(
        "last token {} at {}; next token: {}\n",
        piece(n - 1),
        n - 1,
        guesses.join(" · ")
    );
    print!("{}", table(&heads, key_span.is_some(), &piece));

    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "model": a.model.display().to_string(),
            "orig_len": cfg.max_position_embeddings,
            "tokens": n,
            "g": g,
            "logn": model.logn(),
            "passkey": passkey.as_ref().map(|p| serde_json::json!({
                "key": p.key, "length": a.passkey, "depth": trial.depth, "trial": trial.index,
                "seed": trial.seed, "answer_digits": trial.answer_digits,
                "key_line": key_span.as_ref().map(|r| [r.start, r.end]),
            })),
            "next": next.iter().map(|&(id, p)| serde_json::json!({
                "id": id, "text": tok.decode(&[id as u32]).unwrap_or_default(), "p": p,
            })).collect::<Vec<_>>(),
            "heads": heads.iter().map(|h| serde_json::json!({
                "layer": h.layer, "head": h.head, "key_line": h.key_line,
                "top": h.top.iter().map(|&(pos, w)| serde_json::json!({
                    "pos": pos, "id": ids[pos], "text": tok.decode(&ids[pos..=pos]).unwrap_or_default(),
                    "weight": w,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        e2llm_model::weights::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// Which trial of the passkey grid --passkey rebuilds, and how much of its answer to append.
struct Trial {
    depth: f64,
    index: usize,
    seed: u64,
    answer_digits: usize,
}

/// One head's view from the last token.
struct Head {
    layer: usize,
    head: usize,
    /// Weight on the passkey line's tokens, with --passkey.
    key_line: Option<f32>,
    /// `(key position, weight)`, largest first.
    top: Vec<(usize, f32)>,
}

/// The prompt, and the passkey it hides when built by --passkey.
fn prompt_text(
    a: &Args,
    trial: &Trial,
    tok: &Tokenizer,
) -> Result<(String, Option<PasskeyPrompt>)> {
    if let Some(length) = a.passkey {
        let spec = trial_spec(
            &Filler::Standard,
            trial.seed,
            length,
            trial.depth,
            trial.index,
        );
        let count = |s: &str| tok.count(s);
        let p = build_passkey(&spec, &count)
            .with_context(|| format!("--passkey {length}: building the prompt"))?;
        return Ok((p.text.clone(), Some(p)));
    }
    if let Some(path) = &a.prompt_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt from {}", path.display()))?;
        return Ok((text, None));
    }
    match &a.prompt {
        Some(t) => Ok((t.clone(), None)),
        None => bail!("give the prompt: --prompt TEXT, --prompt-file FILE or --passkey TOKENS"),
    }
}

/// The markdown table: one row per (layer, head).
fn table(heads: &[Head], key_line: bool, piece: &dyn Fn(usize) -> String) -> String {
    let mut s = String::from("| layer | head |");
    if key_line {
        s.push_str(" key line |");
    }
    s.push_str(" most attended keys (position token weight) |\n|---:|---:|");
    if key_line {
        s.push_str("---:|");
    }
    s.push_str("---|\n");
    for h in heads {
        s.push_str(&format!("| {} | {} |", h.layer, h.head));
        if let Some(w) = h.key_line {
            s.push_str(&format!(" {w:.2} |"));
        }
        let top: Vec<String> = h
            .top
            .iter()
            .map(|&(pos, w)| format!("{pos} {} {w:.2}", piece(pos)))
            .collect();
        s.push_str(&format!(" {} |\n", top.join(" · ")));
    }
    s
}
