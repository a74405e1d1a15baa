//! Sliding-window perplexity against context length on held-out text.
//!
//! For a context length `ℓ` and stride `S ≤ ℓ`, windows of `ℓ` tokens start at `0, S, 2S, …`;
//! the first window scores all of its tokens, every later one only its last `S` (so each scored
//! token sees at least `ℓ − S` tokens of context, and no token is scored twice). Positions are
//! `0..ℓ` divided by the scale `g` the [`ScaleMode`] picks for `ℓ`.
//!
//! Sliding windows at different `ℓ` score different tokens when the text is capped to a few
//! windows, so a perplexity-vs-length curve then mixes context with text difficulty.
//! [`Scoring::LastTokens`] scores the same tokens at every length instead: the text is cut into
//! spans of the longest length, every length's window ends where the span ends, and only the
//! last `n` tokens are scored — a longer `ℓ` only adds context before the same text.

use burn::tensor::activation;
use e2llm_model::rope::Positions;
use e2llm_model::Llama;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::eval::ScaleMode;

/// Perplexity at one context length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Which tokens each context length scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// Windows of `ℓ` tokens every `stride` tokens (default `ℓ`) from the start of the text
    /// ([`windows`]).
    Sliding {
        /// The stride; `None` = `ℓ`, non-overlapping windows.
        stride: Option<usize>,
    },
    /// The same last `n` tokens of each span of the longest length, at every length
    /// ([`aligned_windows`]).
    LastTokens(usize),
}

impl Scoring {
    /// The windows for context length `length` (`longest` = the longest length asked for).
    pub fn windows(self, n_tokens: usize, length: usize, longest: usize) -> Vec<(usize, usize)> {
        match self {
            Scoring::Sliding { stride } => windows(n_tokens, length, stride.unwrap_or(length)),
            Scoring::LastTokens(n) => aligned_windows(n_tokens, length, longest, n),
        }
    }
}

/// Windows of `length` tokens that end where the spans `[k·longest, (k+1)·longest)` end, each
/// scoring its last `score` tokens: the same targets at every `length ≥ score`. Empty when
/// `score > length`, `length > longest` or the text holds no whole span and its next token.
pub fn aligned_windows(
    n_tokens: usize,
    length: usize,
    longest: usize,
    score: usize,
) -> Vec<(usize, usize)> {
    if length == 0 || score > length || length > longest {
        return Vec::new();
    }
    (1..)
        .map(|k| k * longest)
        .take_while(|&end| end < n_tokens)
        .map(|end| (end - length, length - score))
        .collect()
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

/// Perplexity of `model` on `tokens` at each context length, scoring the tokens `scoring`
/// picks. `max_windows` caps the windows per length (0 = all); `on_window(done, total)`
/// reports progress.
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    lengths: &[usize],
    scoring: Scoring,
    scale: ScaleMode,
    max_windows: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<Vec<PplPoint>> {
    let orig_len = model.config.max_position_embeddings;
    let longest = lengths.iter().copied().max().unwrap_or(0);
    if let Scoring::LastTokens(n) = scoring {
        if n == 0 {
            return Err(TrainError::Data(
                "perplexity scoring the last 0 tokens of each window scores nothing; score at \
                 least 1"
                    .into(),
            ));
        }
        if let Some(&short) = lengths.iter().find(|&&l| l < n) {
            return Err(TrainError::Data(format!(
                "perplexity scoring the last {n} tokens of each window needs every length to be \
                 at least {n}; {short} is not: score fewer tokens or drop that length"
            )));
        }
    }
    let plans: Vec<(usize, Vec<(usize, usize)>)> = lengths
        .iter()
        .map(|&l| {
            let mut w = scoring.windows(tokens.len(), l, longest);
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
            let need = match scoring {
                Scoring::Sliding { .. } => length,
                Scoring::LastTokens(_) => longest,
            };
            return Err(TrainError::Data(format!(
                "perplexity at {length} tokens needs more than {need} held-out tokens, have {}",
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
        let sliding = |stride| Scoring::Sliding {
            stride: Some(stride),
        };
        let cases: [(&[usize], Scoring); 4] = [
            (&[16], sliding(16)),
            (&[16], sliding(5)),
            (&[24], sliding(24)),
            // The same 6 targets per span at both lengths: 16 is read with 18 tokens less context.
            (&[16, 34], Scoring::LastTokens(6)),
        ];
        for (lengths, scoring) in cases {
            let got = perplexity(
                &model,
                &tokens,
                lengths,
                scoring,
                ScaleMode::Auto,
                0,
                |_, _| {},
            )
            .expect("ppl");
            let longest = *lengths.iter().max().expect("a length");
            for (p, &len) in got.iter().zip(lengths) {
                let g = len.div_ceil(8) as f32;
                let (mut num, mut den) = (0.0, 0.0);
                for (start, first) in scoring.windows(tokens.len(), len, longest) {
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
                    num +=
                        n * cross_entropy_host(&logits, 50, &tokens[start + 1..=start + len], &w);
                    den += n;
                }
                assert!(den > 0.0, "{len}/{scoring:?}: no window");
                assert_eq!(p.g, g);
                assert_eq!(p.tokens as f64, den);
                assert!(
                    (p.nll - num / den).abs() < 1e-4,
                    "{len}/{scoring:?}: {} vs {}",
                    p.nll,
                    num / den
                );
                assert!(p.nll > 0.5 && p.nll < 10.0, "implausible nll {}", p.nll);
            }
        }
        let err = perplexity(
            &model,
            &tokens,
            &[4, 16],
            Scoring::LastTokens(6),
            ScaleMode::Auto,
            0,
            |_, _| {},
        )
        .expect_err("a length shorter than the scored tokens");
        assert!(err.to_string().contains("4 is not"), "{err}");
        assert!(
            !err.to_string().contains("  "),
            "one line, single-spaced: {err}"
        );
        let err = perplexity(
            &model,
            &tokens,
            &[16],
            Scoring::LastTokens(0),
            ScaleMode::Auto,
            0,
            |_, _| {},
        )
        .expect_err("nothing to score");
        assert!(err.to_string().contains("scores nothing"), "{err}");
        assert!(perplexity(
            &model,
            &tokens[..10],
            &[16],
            Scoring::Sliding { stride: None },
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

    /// Every length scores the same targets: the last `score` tokens before each span's end.
    #[test]
    fn aligned_windows_score_the_same_tokens_at_every_length() {
        let (n, longest, score) = (100, 32, 8);
        let targets = |len: usize| -> Vec<usize> {
            aligned_windows(n, len, longest, score)
                .into_iter()
                .flat_map(|(start, first)| (first..len).map(move |i| start + i + 1))
                .collect()
        };
        // Spans end at 32, 64 and 96 (96 < 100 leaves its next token as a target).
        let want: Vec<usize> = [32, 64, 96]
            .iter()
            .flat_map(|&end| end - score + 1..=end)
            .collect();
        for len in [8, 12, 32] {
            assert_eq!(targets(len), want, "length {len}");
        }
        assert!(
            aligned_windows(n, 7, longest, score).is_empty(),
            "score > length"
        );
        assert!(
            aligned_windows(n, 33, longest, score).is_empty(),
            "length > longest"
        );
        assert!(
            aligned_windows(32, 8, longest, score).is_empty(),
            "no token after the span"
        );
    }
}
