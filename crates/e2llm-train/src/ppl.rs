//! Sliding-window perplexity against context length on held-out text.
//!
//! For a context length `ℓ` and stride `S ≤ ℓ`, windows of `ℓ` tokens start at `0, S, 2S, …`;
//! the first window scores all of its tokens, every later one only its last `S` (so each scored
//! token sees at least `ℓ − S` tokens of context, and no token is scored twice). Positions are
//! `0..ℓ` divided by the scale `g` the [`ScaleMode`] picks for `ℓ`.

use burn::tensor::activation;
use e2llm_model::rope::Positions;
use e2llm_model::Llama;
use serde::Serialize;

use crate::error::{Result, TrainError};
use crate::eval::ScaleMode;

/// Perplexity at one context length.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PplPoint {
    /// Context length `ℓ` in tokens.
    pub length: usize,
    /// Scale used.
    pub g: f32,
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    /// `exp(nll)`.
    pub ppl: f64,
}

/// The prefix of `text` worth tokenizing for `max_windows` windows of the longest of `lengths`
/// (about 3 characters a token, with margin); all of it when `max_windows` is 0.
pub fn text_for_windows<'a>(text: &'a str, lengths: &[usize], max_windows: usize) -> &'a str {
    if max_windows == 0 {
        return text;
    }
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let chars = 8 * (longest + 1) * max_windows;
    match text.char_indices().nth(chars) {
        Some((cut, _)) => &text[..cut],
        None => text,
    }
}

/// Window start offsets and the first scored index inside each window.
pub fn windows(n_tokens: usize, length: usize, stride: usize) -> Vec<(usize, usize)> {
    let stride = stride.clamp(1, length.max(1));
    let mut out = Vec::new();
    if n_tokens < length + 1 || length == 0 {
        return out;
    }
    let mut start = 0;
    while start + length < n_tokens {
        let first = if start == 0 { 0 } else { length - stride };
        out.push((start, first));
        start += stride;
    }
    out
}

/// Perplexity of `model` on `tokens` at each context length. `max_windows` caps the windows per
/// length (0 = all); `on_window(done, total)` reports progress.
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    lengths: &[usize],
    stride: Option<usize>,
    scale: ScaleMode,
    max_windows: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<Vec<PplPoint>> {
    let orig_len = model.config.max_position_embeddings;
    let plans: Vec<(usize, Vec<(usize, usize)>)> = lengths
        .iter()
        .map(|&l| {
            let mut w = windows(tokens.len(), l, stride.unwrap_or(l));
            if max_windows > 0 {
                w.truncate(max_windows);
            }
            (l, w)
        })
        .collect();
    let total: usize = plans.iter().map(|(_, w)| w.len()).sum();
    let mut done = 0;
    let mut points = Vec::new();
    for (length, wins) in plans {
        if wins.is_empty() {
            return Err(TrainError::Data(format!(
                "perplexity at {length} tokens needs more than {length} held-out tokens, have {}",
                tokens.len()
            )));
        }
        // No tokens are generated, so `safe` is `auto` here.
        let g = scale.g(length, 0, orig_len);
        let (mut nll, mut count) = (0.0f64, 0usize);
        for (start, first) in wins {
            let ids = &tokens[start..start + length];
            let targets = &tokens[start + 1..start + length + 1];
            let logits = model.forward(ids, &Positions::contiguous(1, length, 0, g), None)?;
            let [_, s, v] = logits.dims();
            let logp =
                e2llm_model::backend::read_f32(activation::log_softmax(logits.reshape([s, v]), 1))
                    .map_err(|e| TrainError::Data(format!("perplexity at {length} tokens: {e}")))?;
            for (i, &t) in targets.iter().enumerate().skip(first) {
                nll -= logp[i * v + t as usize] as f64;
                count += 1;
            }
            done += 1;
            on_window(done, total);
        }
        let mean = nll / count.max(1) as f64;
        points.push(PplPoint {
            length,
            g,
            tokens: count,
            nll: mean,
            ppl: mean.exp(),
        });
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::cross_entropy_host;
    use e2llm_core::LlamaConfig;
    use e2llm_model::weights::init_random;

    /// The perplexity equals the host cross-entropy of the windows' scored tokens, each
    /// window's logits taken from a separate forward at scale `ceil(ℓ / L)`.
    #[test]
    fn perplexity_matches_host_cross_entropy() {
        let mut cfg = LlamaConfig::tiny();
        cfg.hidden_size = 32;
        cfg.num_hidden_layers = 1;
        cfg.num_attention_heads = 2;
        cfg.num_key_value_heads = 1;
        cfg.head_dim = 16;
        cfg.intermediate_size = 48;
        cfg.vocab_size = 50;
        cfg.max_position_embeddings = 8;
        let device = e2llm_model::backend::device("cpu").expect("cpu");
        let model = init_random(cfg, 0.3, 7, &device);
        let tokens: Vec<u32> = (0..70u32).map(|i| (i * 37 + i * i) % 50).collect();
        for (len, stride) in [(16, 16), (16, 5), (24, 24)] {
            let got = perplexity(
                &model,
                &tokens,
                &[len],
                Some(stride),
                ScaleMode::Auto,
                0,
                |_, _| {},
            )
            .expect("ppl");
            let g = len.div_ceil(8) as f32;
            let (mut num, mut den) = (0.0, 0.0);
            for (start, first) in windows(tokens.len(), len, stride) {
                let logits = model
                    .forward(
                        &tokens[start..start + len],
                        &Positions::contiguous(1, len, 0, g),
                        None,
                    )
                    .expect("forward")
                    .to_data()
                    .try_to_vec::<f32>()
                    .expect("logits");
                let w: Vec<f32> = (0..len)
                    .map(|i| if i >= first { 1.0 } else { 0.0 })
                    .collect();
                let n = (len - first) as f64;
                num += n * cross_entropy_host(&logits, 50, &tokens[start + 1..=start + len], &w);
                den += n;
            }
            let p = &got[0];
            assert_eq!(p.g, g);
            assert_eq!(p.tokens as f64, den);
            assert!(
                (p.nll - num / den).abs() < 1e-4,
                "{len}/{stride}: {} vs {}",
                p.nll,
                num / den
            );
            assert!(p.nll > 0.5 && p.nll < 10.0, "implausible nll {}", p.nll);
        }
        assert!(perplexity(
            &model,
            &tokens[..10],
            &[16],
            None,
            ScaleMode::Auto,
            0,
            |_, _| {}
        )
        .is_err());
    }

    #[test]
    fn windows_score_every_token_once() {
        for (n, l, s) in [
            (100, 10, 10),
            (100, 10, 3),
            (57, 16, 5),
            (17, 16, 16),
            (33, 8, 1),
        ] {
            let w = windows(n, l, s);
            let mut scored = vec![0u32; n];
            for (start, first) in &w {
                assert!(
                    start + l < n,
                    "window {start}+{l} needs a target inside {n}"
                );
                for i in *first..l {
                    scored[start + i + 1] += 1;
                }
            }
            assert!(
                scored.iter().all(|&c| c <= 1),
                "{n} {l} {s}: a token scored twice"
            );
            let last_scored = scored.iter().rposition(|&c| c == 1).expect("some scored");
            assert!(n - 1 - last_scored < s, "{n} {l} {s}: tail left unscored");
            assert_eq!(scored[1..=l].iter().sum::<u32>(), l as u32);
        }
        assert!(windows(10, 10, 5).is_empty());
    }
}
