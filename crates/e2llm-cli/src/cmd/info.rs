//! `e2llm info`.

use std::path::PathBuf;

use anyhow::Result;
use e2llm_model::{checkpoint, Precision};

/// Arguments of `e2llm info`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// HF model directory (config.json, model.safetensors or a sharded index, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
}

/// Prints the summary.
pub fn run(a: Args) -> Result<()> {
    let cfg = checkpoint::load_config(&a.model)?;
    println!("model            {}", a.model.display());
    println!("architecture     Llama (LlamaForCausalLM)");
    println!(
        "parameters       {} ({:.2} M)",
        cfg.num_parameters(),
        cfg.num_parameters() as f64 / 1e6
    );
    // Bytes per value of each storage (`--weights`, `--kv-cache`).
    let (f32_b, f16_b) = (Precision::F32.bytes(), Precision::F16.bytes());
    let mib = |values: f64, bytes: usize| values * bytes as f64 / (1 << 20) as f64;
    let params = cfg.num_parameters() as f64;
    println!(
        "weights          {:.1} MiB f32, {:.1} MiB f16 (--weights f16)",
        mib(params, f32_b),
        mib(params, f16_b)
    );
    println!("vocab_size       {}", cfg.vocab_size);
    println!(
        "layers           {} (hidden {}, intermediate {})",
        cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    );
    println!(
        "heads            {} query, {} key/value (head_dim {})",
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim()
    );
    println!("context (L)      {}", cfg.max_position_embeddings);
    // Keys and values of every layer for one token (--kv-cache f32 | f16).
    let per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim();
    println!(
        "KV cache         {} B per token f32, {} B f16 ({:.0} / {:.0} MiB at 64k tokens; --kv-cache f16)",
        f32_b * per_token,
        f16_b * per_token,
        mib((65536 * per_token) as f64, f32_b),
        mib((65536 * per_token) as f64, f16_b)
    );
    println!("rope_theta       {}", cfg.rope.theta);
    match cfg.rope.scaling.factor() {
        Some(f) => println!(
            "rope scaling     {} (factor {f})",
            cfg.rope.scaling.rope_type()
        ),
        None => println!("rope scaling     {}", cfg.rope.scaling.rope_type()),
    }
    if cfg.logn_attn {
        println!("log-n attention  trained with it (use_logn_attn): e2llm reads it with log-n");
    }
    println!("tied embeddings  {}", cfg.tie_word_embeddings);
    let files: Vec<String> = [
        checkpoint::WEIGHTS_FILE,
        checkpoint::INDEX_FILE,
        checkpoint::TOKENIZER_FILE,
    ]
    .iter()
    .filter(|f| a.model.join(f).exists())
    .map(|f| f.to_string())
    .collect();
    println!("files            {}", files.join(", "));
    Ok(())
}
