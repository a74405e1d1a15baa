//! `tokenizer.json` through the `tokenizers` crate, checked against the model's vocabulary.

use std::path::Path;

use crate::error::{ModelError, Result};

/// A Hugging Face tokenizer that fits a model's vocabulary.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    file: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({}, vocab {})", self.file, self.vocab_size())
    }
}

impl Tokenizer {
    /// Parses `tokenizer.json` bytes; `file` names the source in errors. Fails when the
    /// tokenizer can produce ids outside `0..vocab_size`.
    pub fn from_bytes(file: &str, bytes: &[u8], vocab_size: usize) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer {
                file: file.to_string(),
                reason: format!("not a valid tokenizer.json ({e})"),
            })?;
        let t = Self {
            inner,
            file: file.to_string(),
        };
        if t.vocab_size() > vocab_size {
            return Err(ModelError::Tokenizer {
                file: file.to_string(),
                reason: format!(
                    "tokenizer has {} tokens but the model's vocab_size is {vocab_size}; \
                     use the tokenizer this model was trained with",
                    t.vocab_size()
                ),
            });
        }
        Ok(t)
    }

    /// Reads `path` (a `tokenizer.json`).
    pub fn from_file(path: &Path, vocab_size: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&path.display().to_string(), &bytes, vocab_size)
    }

    /// Wraps an in-memory tokenizer (e.g. one just trained).
    pub fn from_inner(inner: tokenizers::Tokenizer, file: &str) -> Self {
        Self {
            inner,
            file: file.to_string(),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Number of ids the tokenizer can emit, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; `special` adds the tokenizer's own special tokens (e.g. BOS).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, special)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer {
                file: self.file.clone(),
                reason: format!("encoding failed: {e}"),
            })
    }

    /// Number of tokens `text` encodes to (without special tokens).
    pub fn count(&self, text: &str) -> usize {
        self.encode(text, false).map_or(0, |ids| ids.len())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer {
                file: self.file.clone(),
                reason: format!("decoding failed: {e}"),
            })
    }

    /// Writes the tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer {
                file: self.file.clone(),
                reason: format!("serialising failed: {e}"),
            })
    }
}
