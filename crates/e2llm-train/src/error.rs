//! Errors of the trainer: each names the file and says what to do.

use std::path::PathBuf;

/// Everything that can stop a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A run config that cannot be used.
    #[error("{file}: invalid run config: {reason}")]
    Config {
        /// The TOML file (or `<defaults>`).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint that is incomplete or does not belong to this run.
    #[error("{path}: bad checkpoint: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The corpus or tokenizer failed.
    #[error("data: {0}")]
    Data(String),
    /// The loss became NaN or infinite.
    #[error("loss is {loss} at step {step}; stopped. The last good checkpoint is kept — lower `lr` or raise `warmup_steps` and resume")]
    NonFinite {
        /// The step.
        step: usize,
        /// The loss value.
        loss: f32,
    },
    /// The model crate failed.
    #[error(transparent)]
    Model(#[from] e2llm_model::ModelError),
}

/// Result alias.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
