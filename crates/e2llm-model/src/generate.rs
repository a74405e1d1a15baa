//! Token generation with a KV cache: greedy or temperature + top-p sampling, seeded.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backend::read_f32;
use crate::error::{ModelError, Result};
use crate::llama::{KvCache, Llama};
use crate::rope::Positions;

/// How the next token is picked from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingConfig {
    /// 0 = greedy (argmax); otherwise logits are divided by it before softmax.
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Seed of the sampler's RNG.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A seeded next-token sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplingConfig,
    rng: ChaCha8Rng,
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The `k` largest values with their indices, largest first (ties: lower index first) — a
/// token's top guesses from its logits, or a head's most attended keys.
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, values[i])).collect()
}

impl Sampler {
    /// A sampler seeded from `cfg.seed`.
    pub fn new(cfg: SamplingConfig) -> Self {
        Self {
            cfg,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
        }
    }

    /// Picks a token id from one row of logits `[vocab]`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        let t = self.cfg.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(usize, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l - max) / t).exp()))
            .collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0.0;
        let mut n = 0;
        for p in &probs {
            kept += p.1 / total;
            n += 1;
            if kept >= self.cfg.top_p {
                break;
            }
        }
        let probs = &probs[..n.max(1)];
        let mass: f32 = probs.iter().map(|p| p.1).sum();
        let mut r = self.rng.random::<f32>() * mass;
        for &(i, p) in probs {
            r -= p;
            if r <= 0.0 {
                return i as u32;
            }
        }
        probs[probs.len() - 1].0 as u32
    }
}

/// Options of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to add.
    pub max_new_tokens: usize,
    /// RoPE scale `g` (positions are divided by it); 1 = as the config says.
    pub rope_scale: f32,
    /// Stop at any of these ids (not included in the output).
    pub eos: Vec<u32>,
    /// Sampling settings.
    pub sampling: SamplingConfig,
    /// Prefill chunk (tokens per forward), bounding attention memory.
    pub prefill_chunk: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 32,
            rope_scale: 1.0,
            eos: Vec::new(),
            sampling: SamplingConfig::default(),
            prefill_chunk: 512,
        }
    }
}

/// One decode step's forward: `token` at position `pos` (÷ `g`) through `cache`, which it
/// extends. Returns the logits `[vocab]` on the device — read them back with
/// [`crate::backend::read_f32`], or [`crate::backend::read_f32_async`] in a browser. [`generate`]
/// and the web demo's answer loop both step through it.
pub fn decode_step(
    model: &Llama,
    token: u32,
    pos: usize,
    g: f32,
    cache: &mut KvCache,
) -> Result<burn::tensor::Tensor<1>> {
    let l = model.forward(&[token], &Positions::row(vec![pos as f32], g), Some(cache))?;
    Ok(l.reshape([model.config.vocab_size]))
}

/// Generates after `prompt` with a KV cache, positions `0, 1, 2, …` divided by `rope_scale`.
/// `on_token` sees each new id as it is produced and may return `false` to stop.
/// Returns the new ids.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let read = read_prompt(model, prompt, opts)?;
    generate_after(model, read, opts, on_token)
}

/// A prompt run through a fresh KV cache: what [`generate_after`] and
/// [`continuation_logprobs`] continue from (one prompt read serves both).
#[derive(Debug, Clone)]
pub struct ReadPrompt {
    /// Keys and values of every prompt token.
    pub cache: KvCache,
    /// Logits `[vocab]` after the last prompt token.
    pub logits: Vec<f32>,
    /// Prompt tokens (the next token's position).
    pub len: usize,
}

/// Runs `prompt` (positions `0..len` ÷ `opts.rope_scale`, in chunks of `opts.prefill_chunk`)
/// through a fresh cache.
pub fn read_prompt(model: &Llama, prompt: &[u32], opts: &GenerateOptions) -> Result<ReadPrompt> {
    if prompt.is_empty() {
        return Err(ModelError::Input(
            "the prompt is empty; give at least one token".into(),
        ));
    }
    let mut cache = KvCache::new(model.layers.len());
    let positions: Vec<f32> = (0..prompt.len()).map(|p| p as f32).collect();
    let logits = read_f32(model.prefill(
        prompt,
        &positions,
        opts.rope_scale,
        &mut cache,
        opts.prefill_chunk,
        |_, _| {},
    )?)?;
    Ok(ReadPrompt {
        cache,
        logits,
        len: prompt.len(),
    })
}

/// [`generate`] after a prompt already read.
pub fn generate_after(
    model: &Llama,
    read: ReadPrompt,
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>> {
    let ReadPrompt {
        mut cache,
        mut logits,
        len,
    } = read;
    let mut sampler = Sampler::new(opts.sampling);
    let mut out = Vec::new();
    for step in 0..opts.max_new_tokens {
        let next = sampler.sample(&logits);
        if opts.eos.contains(&next) {
            break;
        }
        out.push(next);
        if !on_token(next) || step + 1 == opts.max_new_tokens {
            break;
        }
        let l = decode_step(model, next, len + step, opts.rope_scale, &mut cache)?;
        logits = read_f32(l)?;
    }
    Ok(out)
}

/// Natural log of `softmax(logits)[id]`, summed in f64.
pub fn log_prob(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

/// Teacher-forced log-probabilities of `target` after a read prompt, one per token: the first
/// from the prompt's last logits, the rest from one forward of `target[..n-1]` through a copy
/// of the cache (`read` is left as it was, ready for [`generate_after`]).
pub fn continuation_logprobs(
    model: &Llama,
    read: &ReadPrompt,
    target: &[u32],
    rope_scale: f32,
) -> Result<Vec<f64>> {
    let rest = match teacher_forced_logits(model, &read.cache, read.len, target, rope_scale)? {
        Some(l) => read_f32(l)?,
        None => Vec::new(),
    };
    Ok(target_logprobs(&read.logits, &rest, target))
}

/// The forward of [`continuation_logprobs`], for callers that read back asynchronously (the
/// browser): logits `[1, n − 1, vocab]` of `target[..n−1]` at positions `start..` (÷
/// `rope_scale`) through a copy of `cache`, left unchanged; `None` for a target of one token or
/// none. Errors if a target id is outside the vocabulary.
pub fn teacher_forced_logits(
    model: &Llama,
    cache: &KvCache,
    start: usize,
    target: &[u32],
    rope_scale: f32,
) -> Result<Option<burn::tensor::Tensor<3>>> {
    let vocab = model.config.vocab_size;
    if let Some(&bad) = target.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::Input(format!(
            "token id {bad} is outside the vocabulary ({vocab} ids)"
        )));
    }
    if target.len() < 2 {
        return Ok(None);
    }
    let fed = &target[..target.len() - 1];
    let pos = (start..start + fed.len()).map(|p| p as f32).collect();
    let mut cache = cache.clone();
    Ok(Some(model.forward(
        fed,
        &Positions::row(pos, rope_scale),
        Some(&mut cache),
    )?))
}

/// Log-probabilities of `target`'s tokens: the first from `first` (the logits `[vocab]` before
/// it), each later one from its row of `rest` (`[n − 1, vocab]` row-major, as
/// [`teacher_forced_logits`] gives them).
pub fn target_logprobs(first: &[f32], rest: &[f32], target: &[u32]) -> Vec<f64> {
    let Some((&head, tail)) = target.split_first() else {
        return Vec::new();
    };
    let vocab = first.len();
    std::iter::once(log_prob(first, head))
        .chain(
            tail.iter()
                .zip(rest.chunks(vocab))
                .map(|(&t, row)| log_prob(row, t)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(
            top_k(&[0.1, 0.4, 0.1, 0.4], 3),
            vec![(1, 0.4), (3, 0.4), (0, 0.1)]
        );
        assert_eq!(top_k(&[0.5], 3), vec![(0, 0.5)]);
    }
}
