//! Errors of the model crate: each names the file or tensor and says what to do.

use std::path::PathBuf;

/// Everything that can go wrong loading, saving or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `config.json` could not be parsed or describes a model we cannot run.
    #[error("{path}: {source}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What was wrong with it.
        source: e2llm_core::ConfigError,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A safetensors file is truncated, corrupt or not safetensors at all.
    #[error("{file}: not a valid safetensors file ({reason}); re-download or re-export it")]
    Safetensors {
        /// The file (or "<bytes>" when loading from memory).
        file: String,
        /// The parser's message.
        reason: String,
    },
    /// A tensor the config requires is missing from every weight file.
    #[error("{file}: tensor `{name}` is missing (the config expects it; is this a Llama checkpoint for this config?)")]
    MissingTensor {
        /// The weight file(s) searched.
        file: String,
        /// The HF tensor name.
        name: String,
    },
    /// A tensor the Llama architecture does not have.
    #[error("{file}: unexpected tensor `{name}` (not part of a Llama model with this config)")]
    UnexpectedTensor {
        /// The weight file.
        file: String,
        /// The HF tensor name.
        name: String,
    },
    /// A tensor whose shape disagrees with the config.
    #[error("{file}: tensor `{name}` has shape {found:?}, but config.json implies {expected:?}")]
    Shape {
        /// The weight file.
        file: String,
        /// The HF tensor name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor stored in a dtype we cannot convert to f32.
    #[error("{file}: tensor `{name}` has dtype {dtype}; only F32, F16 and BF16 are supported")]
    Dtype {
        /// The weight file.
        file: String,
        /// The HF tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// Checkpoints that cannot be averaged together.
    #[error("{path}: cannot average this checkpoint with the others: {reason}")]
    Average {
        /// The directory that does not fit.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The sharded index is malformed.
    #[error("{file}: invalid safetensors index ({reason})")]
    Index {
        /// The index file.
        file: String,
        /// What was wrong.
        reason: String,
    },
    /// The tokenizer cannot be loaded or does not fit the model.
    #[error("{file}: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        file: String,
        /// What was wrong.
        reason: String,
    },
    /// Inputs that do not fit the model (bad token id, length mismatch, …).
    #[error("invalid input: {0}")]
    Input(String),
    /// The compute backend failed (e.g. reading a tensor back from the GPU).
    #[error("backend error: {0}")]
    Backend(String),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
