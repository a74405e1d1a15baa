//! Saved evaluations of an experiment's models (`<out>/evals/<row>.json`): a model read again
//! the same way — the same weights file, method, log-n setting, backend and plan — is not
//! evaluated again, so a stopped or repeated experiment evaluates only what it has not yet.

use std::path::{Path, PathBuf};

use e2llm_model::checkpoint as hf;
use e2llm_model::weights::write_atomic;
use serde::{Deserialize, Serialize};

use crate::config::Method;
use crate::error::{Result, TrainError};
use crate::eval::Cell;
use crate::experiment::EvalPlan;
use crate::ppl::PplPoint;

/// What one evaluation read, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalKey {
    /// The weights file.
    pub weights: PathBuf,
    /// Its length in bytes.
    pub weights_len: u64,
    /// Its modification time (ns since the Unix epoch): a retrained or re-averaged model is new.
    pub weights_modified_ns: u128,
    /// The method it was trained with (it sets the inference scale).
    pub method: Method,
    /// Read with log-n attention scaling.
    pub logn: bool,
    /// Compute backend.
    pub backend: String,
    /// Lengths, depths, trials, perplexity spans.
    pub plan: EvalPlan,
}

impl EvalKey {
    /// The key of reading the model in `model_dir`; `None` when its weights are not one
    /// `model.safetensors` whose metadata can be read (such a model is always evaluated).
    pub fn new(
        model_dir: &Path,
        method: Method,
        logn: bool,
        backend: &str,
        plan: &EvalPlan,
    ) -> Option<Self> {
        let weights = model_dir.join(hf::WEIGHTS_FILE);
        let meta = std::fs::metadata(&weights).ok()?;
        let modified = meta.modified().ok()?;
        let ns = modified
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(Self {
            weights: std::path::absolute(&weights).unwrap_or(weights),
            weights_len: meta.len(),
            weights_modified_ns: ns,
            method,
            logn,
            backend: backend.to_string(),
            plan: plan.clone(),
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    key: EvalKey,
    passkey: Vec<Cell>,
    ppl: Vec<PplPoint>,
}

/// Where the evaluation of row `label` of an experiment in `out` is kept.
pub fn path(out: &Path, label: &str) -> PathBuf {
    let name: String = label
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '.' => c,
            _ => '_',
        })
        .collect();
    out.join("evals").join(format!("{name}.json"))
}

/// The evaluation kept at `path` when it read exactly `key`; `None` otherwise (no file, another
/// key, or a file that does not parse: the model is then evaluated again and the file replaced).
pub fn load(path: &Path, key: &EvalKey) -> Option<(Vec<Cell>, Vec<PplPoint>)> {
    let bytes = std::fs::read(path).ok()?;
    let saved: Saved = serde_json::from_slice(&bytes).ok()?;
    (saved.key == *key).then_some((saved.passkey, saved.ppl))
}

/// Keeps an evaluation of `key` at `path` (written atomically).
pub fn save(path: &Path, key: &EvalKey, passkey: &[Cell], ppl: &[PplPoint]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TrainError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let saved = Saved {
        key: key.clone(),
        passkey: passkey.to_vec(),
        ppl: ppl.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&saved)
        .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
    write_atomic(path, &json)?;
    Ok(())
}
