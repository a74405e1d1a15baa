//! Passkey retrieval (METHOD.md): the prompt builder, the scorer, and the choice of PI scale.
//!
//! The prompt is five pieces joined by `"\n"`: the intro, the filler before the key, the key
//! line, the filler after it, the question. Filler units inside a piece are joined by one space
//! (as in Landmark Attention / LongLoRA, which repeat the filler sentence with `" ".join`). An
//! empty filler piece (depth 0 or 1, or no filler at all) is left out rather than kept as a
//! blank line, so depth 0 puts the key line right after the intro.
//!
//! Lengths are in tokens, but this crate has no tokenizer: [`build_passkey`] takes a counting
//! closure and searches the number of filler units for the longest prompt that is not over the
//! target.

use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// The task description (piece 1).
pub const PASSKEY_INTRO: &str =
    "There is an important info hidden inside a lot of irrelevant text. \
Find it and memorize them. I will quiz you about the important information there.";
/// The standard filler unit (piece 2 and 4, repeated).
pub const PASSKEY_FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
/// The final question (piece 5); the model's continuation should be the key.
pub const PASSKEY_QUESTION: &str = "What is the pass key? The pass key is";
/// Random keys are drawn from `1..=PASSKEY_MAX_KEY`.
pub const PASSKEY_MAX_KEY: u32 = 50_000;

/// The key line (piece 3) for key `k`.
pub fn key_line(k: u32) -> String {
    format!("The pass key is {k}. Remember it. {k} is the pass key.")
}

/// The answer after [`PASSKEY_QUESTION`] as training writes it, `" {k}."`: the tokens a
/// passkey training row weights, and the ones the key NLL of an evaluation scores.
pub fn trained_answer(k: u32) -> String {
    format!(" {k}.")
}

/// Errors of the prompt builder: what is wrong and what to do.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PasskeyError {
    /// Depth outside `[0, 1]` or not a number.
    #[error("passkey depth {depth} is outside [0, 1]; 0 = right after the intro, 1 = right before the question")]
    DepthOutOfRange {
        /// The depth given.
        depth: f64,
    },
    /// A custom filler list is empty or has an empty unit.
    #[error("custom filler {problem}; give at least one non-empty filler sentence")]
    BadFiller {
        /// What is wrong with it.
        problem: String,
    },
    /// Even the prompt without filler is longer than the target.
    #[error(
        "passkey target of {target} tokens is too short: the prompt without any filler is already \
         {minimum} tokens; ask for at least {minimum}"
    )]
    TargetTooShort {
        /// Target length in tokens.
        target: usize,
        /// Length of the filler-free prompt.
        minimum: usize,
    },
}

/// Which filler text to repeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Filler {
    /// [`PASSKEY_FILLER`], repeated (the standard evaluation).
    #[default]
    Standard,
    /// These units in order, cycled.
    Cycle(Vec<String>),
    /// Each unit drawn uniformly from these with the spec's seed (varied filler for training).
    Sample(Vec<String>),
}

/// What to build: target length, key depth, key, filler, seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeySpec {
    /// Upper bound on the prompt's length in tokens (as counted by the closure).
    pub target_tokens: usize,
    /// Where the key line goes, as a fraction of the filler units placed before it: in `[0, 1]`.
    pub depth: f64,
    /// The key; `None` draws one in `1..=50000` from the seed.
    pub key: Option<u32>,
    /// The filler.
    pub filler: Filler,
    /// Seed of the key draw and of [`Filler::Sample`] (ChaCha8).
    pub seed: u64,
}

impl PasskeySpec {
    /// Standard filler, random key.
    pub fn new(target_tokens: usize, depth: f64, seed: u64) -> Self {
        PasskeySpec {
            target_tokens,
            depth,
            key: None,
            filler: Filler::Standard,
            seed,
        }
    }
}

/// A built prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyPrompt {
    /// The full prompt text (ends with [`PASSKEY_QUESTION`], no trailing space).
    pub text: String,
    /// The key hidden in it.
    pub key: u32,
    /// Filler units before the key line.
    pub filler_before: usize,
    /// Filler units after the key line.
    pub filler_after: usize,
    /// Byte range of the key line in `text` (without its newline), for visualisers.
    pub key_line: Range<usize>,
    /// The prompt's length as counted by the closure.
    pub num_tokens: usize,
}

impl PasskeyPrompt {
    /// The expected continuation, `" {key}"` (the question ends without a space).
    pub fn answer(&self) -> String {
        format!(" {}", self.key)
    }
}

/// Filler units by index, drawn lazily so the sequence is the same prefix for every count.
struct Units<'a> {
    filler: &'a Filler,
    rng: ChaCha8Rng,
    drawn: Vec<usize>,
}

impl Units<'_> {
    fn unit(&mut self, i: usize) -> &str {
        match self.filler {
            Filler::Standard => PASSKEY_FILLER,
            Filler::Cycle(units) => &units[i % units.len()],
            Filler::Sample(units) => {
                while self.drawn.len() <= i {
                    self.drawn.push(self.rng.random_range(0..units.len()));
                }
                &units[self.drawn[i]]
            }
        }
    }

    /// The prompt with `n` filler units, the key line after `round(depth·n)` of them.
    fn assemble(&mut self, n: usize, depth: f64, key: u32) -> (String, usize, Range<usize>) {
        let before = ((depth * n as f64).round() as usize).min(n);
        let mut text = String::from(PASSKEY_INTRO);
        text.push('\n');
        self.push_units(&mut text, 0..before);
        let start = text.len();
        text.push_str(&key_line(key));
        let range = start..text.len();
        text.push('\n');
        self.push_units(&mut text, before..n);
        text.push_str(PASSKEY_QUESTION);
        (text, before, range)
    }

    fn push_units(&mut self, text: &mut String, idx: Range<usize>) {
        if idx.is_empty() {
            return;
        }
        for i in idx.clone() {
            if i > idx.start {
                text.push(' ');
            }
            text.push_str(self.unit(i));
        }
        text.push('\n');
    }
}

/// Builds the passkey prompt of `spec` with as many filler units as fit in
/// `spec.target_tokens` tokens by `count_tokens` (exponential then binary search; the result is
/// never over the target, and with a counter that grows with the text it is the longest such
/// prompt). Deterministic in `spec` (the seed drives the key and sampled filler).
pub fn build_passkey(
    spec: &PasskeySpec,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Result<PasskeyPrompt, PasskeyError> {
    if !(0.0..=1.0).contains(&spec.depth) {
        return Err(PasskeyError::DepthOutOfRange { depth: spec.depth });
    }
    if let Filler::Cycle(units) | Filler::Sample(units) = &spec.filler {
        if units.is_empty() {
            return Err(PasskeyError::BadFiller {
                problem: "is an empty list".into(),
            });
        }
        if let Some(i) = units.iter().position(|u| u.trim().is_empty()) {
            return Err(PasskeyError::BadFiller {
                problem: format!("unit {i} is empty"),
            });
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let key = spec
        .key
        .unwrap_or_else(|| rng.random_range(1..=PASSKEY_MAX_KEY));
    let mut units = Units {
        filler: &spec.filler,
        rng,
        drawn: Vec::new(),
    };
    let target = spec.target_tokens;
    let mut count = |n: usize| count_tokens(&units.assemble(n, spec.depth, key).0);

    let minimum = count(0);
    if minimum > target {
        return Err(PasskeyError::TargetTooShort { target, minimum });
    }
    // Largest n with count(n) <= target. Every filler unit is at least one token for any real
    // tokenizer, so n never needs to pass `target` (this also bounds the search for a counter
    // that ignores filler).
    let (mut lo, mut hi) = (0usize, 1usize);
    while hi <= target && count(hi) <= target {
        lo = hi;
        hi *= 2;
    }
    let mut hi = hi.min(target + 1); // count(hi) > target, or hi past the bound
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if count(mid) <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (text, before, key_range) = units.assemble(lo, spec.depth, key);
    let num_tokens = count_tokens(&text);
    Ok(PasskeyPrompt {
        text,
        key,
        filler_before: before,
        filler_after: lo - before,
        key_line: key_range,
        num_tokens,
    })
}

/// The first run of ASCII digits in `text` (like Python's `re.search(r"\d+")` on ASCII text),
/// as written: leading zeros kept. Non-ASCII digits are not digits here.
pub fn first_digits(text: &str) -> Option<&str> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let run = &text[start..];
    let end = run.find(|c: char| !c.is_ascii_digit()).unwrap_or(run.len());
    Some(&run[..end])
}

/// [`first_digits`] as a number. Leading zeros are dropped (`"00123"` → 123, as
/// `int("00123")` does). A run too long for u64 gives `None` (it cannot equal any key).
pub fn first_integer(text: &str) -> Option<u64> {
    first_digits(text)?.parse().ok()
}

/// Exact-match score: the first integer of the generated text equals `key`.
pub fn score(generated: &str, key: u32) -> bool {
    first_integer(generated) == Some(u64::from(key))
}

/// The PI scale for evaluating a prompt of `prompt_tokens` plus up to `max_new_tokens`
/// generated tokens with a model trained at `orig_len` = L: the smallest integer `g ≥ 1` with
/// `(prompt + max_new) / g ≤ L`, so every position the answer uses stays within `g·L`
/// (METHOD.md's trap: `ceil(prompt/L)` lets the answer run past it). `orig_len` 0 gives
/// infinity (no scale fits).
pub fn eval_scale(prompt_tokens: usize, max_new_tokens: usize, orig_len: usize) -> f32 {
    paper_auto_scale(prompt_tokens.saturating_add(max_new_tokens), orig_len)
}

/// How the position-interpolation scale `g` is picked for a prompt (the CLI's, the trainer's
/// evaluation's, the desktop's and the web demo's one rule).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum ScaleMode {
    /// `g = ceil(length / L)`, as the paper does at inference.
    Auto,
    /// The smallest integer `g` with `(prompt + new tokens) / g ≤ L`, so the answer's positions
    /// stay inside what training saw (METHOD.md's trap note).
    Safe,
    /// A fixed `g`.
    Fixed(f32),
}

impl ScaleMode {
    /// The scale for a prompt of `prompt_tokens` followed by `new_tokens` generated ones, with
    /// a model trained at `orig_len`; at least 1.
    pub fn g(self, prompt_tokens: usize, new_tokens: usize, orig_len: usize) -> f32 {
        match self {
            ScaleMode::Auto => paper_auto_scale(prompt_tokens, orig_len),
            ScaleMode::Safe => eval_scale(prompt_tokens, new_tokens, orig_len),
            ScaleMode::Fixed(g) => g,
        }
        .max(1.0)
    }
}

impl std::str::FromStr for ScaleMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "safe" => Ok(Self::Safe),
            _ => match s.parse::<f32>() {
                Ok(g) if g.is_finite() && g > 0.0 => Ok(Self::Fixed(g)),
                _ => Err(format!("`{s}` is not auto, safe or a positive number")),
            },
        }
    }
}

/// The paper's automatic scale `ceil(len / L)`, at least 1; `orig_len` 0 gives infinity.
pub fn paper_auto_scale(len: usize, orig_len: usize) -> f32 {
    if orig_len == 0 {
        return f32::INFINITY;
    }
    len.div_ceil(orig_len).max(1) as f32
}
