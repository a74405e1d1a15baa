//! The embedded corpus, the in-process BPE tokenizer, and training rows: plain text windows
//! and passkey-retrieval examples with varied filler.

use e2llm_core::passkey::{build_passkey, trained_answer, Filler, PasskeyError, PasskeySpec};
use e2llm_model::Tokenizer;
use rand::Rng;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, TokenizerBuilder};

use crate::error::{Result, TrainError};

/// Jane Austen's six novels (public domain), one paragraph per line; see `data/PROVENANCE.md`.
pub const CORPUS_GZ: &[u8] = include_bytes!("../../../data/austen.txt.gz");

/// Training text and the held-out text (the last novel in the file), never mixed.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Every novel but the last.
    pub train: String,
    /// The last novel: perplexity and evaluation filler only.
    pub heldout: String,
}

impl Corpus {
    /// The corpus committed in `data/`.
    pub fn embedded() -> Result<Self> {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(CORPUS_GZ)
            .read_to_string(&mut text)
            .map_err(|e| TrainError::Data(format!("embedded corpus: {e}")))?;
        Self::from_text(&text)
    }

    /// Splits a corpus whose sections start with `# Title` lines; the last section is held out.
    pub fn from_text(text: &str) -> Result<Self> {
        let cut = text
            .rfind("\n# ")
            .ok_or_else(|| TrainError::Data("corpus has no `# Title` sections".into()))?;
        Ok(Self {
            train: strip_titles(&text[..cut]),
            heldout: strip_titles(&text[cut + 1..]),
        })
    }

    /// Sentences of the training text (for varied passkey filler), at most `max`.
    pub fn sentences(&self, max: usize) -> Vec<String> {
        self.train
            .split_inclusive(['.', '!', '?'])
            .map(|s| s.trim().to_string())
            .filter(|s| s.len() > 20 && s.len() < 200 && !s.chars().any(|c| c.is_ascii_digit()))
            .take(max)
            .collect()
    }
}

fn strip_titles(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with("# "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Trains a byte-level BPE tokenizer on `text` with `vocab_size` tokens. Digits are split
/// into single tokens so keys of any length are copied digit by digit.
pub fn train_tokenizer(text: &str, vocab_size: usize) -> Result<Tokenizer> {
    let err = |e: tokenizers::Error| TrainError::Data(format!("tokenizer training: {e}"));
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let pre = Sequence::new(vec![
        PreTokenizerWrapper::Digits(Digits::new(true)),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
    ]);
    let mut tok = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(
            ByteLevel::default(),
        )))
        .build()
        .map_err(err)?;
    let lines: Vec<&str> = text.lines().collect();
    tok.train(&mut trainer, lines.into_iter()).map_err(err)?;
    let tok: tokenizers::Tokenizer = tok.into();
    Ok(Tokenizer::from_inner(tok, "<trained tokenizer>"))
}

/// One training row: `len + 1` tokens, predicting tokens `1..=len` from `0..len`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `[len + 1]`.
    pub ids: Vec<u32>,
    /// `[len]`: loss weight of each target.
    pub weights: Vec<f32>,
}

/// Where rows come from.
pub struct DataSource {
    /// The tokenized training text.
    pub tokens: Vec<u32>,
    /// Sentences for varied passkey filler.
    pub sentences: Vec<String>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Share of passkey rows.
    pub passkey_share: f64,
    /// Loss weight of answer tokens.
    pub answer_weight: f32,
    /// Shortest passkey prompt (0 = full rows); see `TrainConfig::passkey_min_len`.
    pub passkey_min_len: usize,
}

impl DataSource {
    /// Tokenizes the training text once; the passkey settings come from `cfg`.
    pub fn new(corpus: &Corpus, tokenizer: Tokenizer, cfg: &crate::TrainConfig) -> Result<Self> {
        let tokens = tokenizer.encode(&corpus.train, false)?;
        Ok(Self {
            tokens,
            sentences: corpus.sentences(20_000),
            tokenizer,
            passkey_share: cfg.passkey_share,
            answer_weight: cfg.answer_weight,
            passkey_min_len: cfg.passkey_min_len,
        })
    }

    /// A random window of the training text.
    pub fn text_row<R: Rng + ?Sized>(&self, len: usize, rng: &mut R) -> Row {
        let start = rng.random_range(0..self.tokens.len().saturating_sub(len + 1).max(1));
        let mut ids: Vec<u32> = self.tokens[start..].iter().take(len + 1).copied().collect();
        ids.resize(len + 1, 0);
        Row {
            ids,
            weights: vec![1.0; len],
        }
    }

    /// A passkey example of exactly `len + 1` tokens: prompt, answer (weighted), then text.
    /// With `passkey_min_len` set, the prompt is drawn between that and `len` tokens long.
    pub fn passkey_row<R: Rng + ?Sized>(&self, len: usize, rng: &mut R) -> Result<Row> {
        let key: u32 = rng.random_range(1..=50_000);
        let answer = self.tokenizer.encode(&trained_answer(key), false)?;
        let filler = if rng.random_bool(0.5) || self.sentences.is_empty() {
            Filler::Standard
        } else {
            Filler::Sample(self.sentences.clone())
        };
        // Drawn only when asked for, so the default keeps the earlier random stream.
        let target = match self.passkey_min_len {
            m if m > 0 && m < len => rng.random_range(m..=len),
            _ => len,
        };
        let mut budget = target + 1 - answer.len().min(target);
        let mut raised = false;
        loop {
            let spec = PasskeySpec {
                target_tokens: budget,
                depth: rng.random::<f64>(),
                key: Some(key),
                filler: filler.clone(),
                seed: rng.random(),
            };
            let count = |s: &str| self.tokenizer.count(s);
            let prompt = match build_passkey(&spec, &count) {
                Ok(p) => p,
                // A curriculum target below the filler-free prompt: use that prompt (once).
                Err(PasskeyError::TargetTooShort { minimum, .. }) if target < len && !raised => {
                    raised = true;
                    budget = minimum;
                    continue;
                }
                Err(e) => {
                    return Err(TrainError::Data(format!(
                        "passkey example at {len} tokens: {e}"
                    )))
                }
            };
            let mut ids = self.tokenizer.encode(&prompt.text, false)?;
            if ids.len() + answer.len() > len + 1 {
                budget = budget.saturating_sub(4);
                if budget == 0 {
                    return Err(TrainError::Data(format!(
                        "a passkey example does not fit in {len} tokens; raise train_len"
                    )));
                }
                continue;
            }
            let answer_start = ids.len();
            ids.extend(&answer);
            let answer_end = ids.len();
            let tail = self.text_row(len + 1 - ids.len(), rng);
            ids.extend(tail.ids.iter().take(len + 1 - ids.len()));
            let mut weights = vec![1.0; len];
            // Target j predicts ids[j + 1].
            for w in &mut weights[answer_start - 1..answer_end - 1] {
                *w = self.answer_weight;
            }
            return Ok(Row { ids, weights });
        }
    }

    /// A row of either kind, by `passkey_share`.
    pub fn row<R: Rng + ?Sized>(&self, len: usize, rng: &mut R) -> Result<Row> {
        if rng.random_bool(self.passkey_share.clamp(0.0, 1.0)) {
            self.passkey_row(len, rng)
        } else {
            Ok(self.text_row(len, rng))
        }
    }
}
