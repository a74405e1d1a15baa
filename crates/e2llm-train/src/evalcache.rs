//! Saved evaluations of an experiment's models (`<out>/evals/<row>.json`): a model read again
//! the same way — the same weights (by content), method, log-n setting, backend, plan and
//! [`EVAL_FORMAT`] — is not evaluated again, so a stopped or repeated experiment evaluates only
//! what it has not yet.

use std::path::{Path, PathBuf};

use e2llm_model::checkpoint as hf;
use e2llm_model::weights::write_atomic;
use serde::{Deserialize, Serialize};

use crate::config::Method;
use crate::error::{Result, TrainError};
use crate::eval::Cell;
use crate::experiment::EvalPlan;
use crate::ppl::PplPoint;

/// Bumped whenever evaluation itself changes (prompts, generation, scoring, the scale chosen),
/// so readings kept by an earlier e2llm are not reused.
pub const EVAL_FORMAT: u32 = 2;

/// What one evaluation read, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalKey {
    /// [`EVAL_FORMAT`] of the e2llm that made the reading.
    pub format: u32,
    /// The weights file's length in bytes.
    pub weights_len: u64,
    /// Its XXH3-128 content hash, as hex: the same weights anywhere (a run directory copied
    /// back from another machine, an average written again) are the same model.
    pub weights_xxh3: String,
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
    /// readable `model.safetensors` (such a model is always evaluated).
    pub fn new(
        model_dir: &Path,
        method: Method,
        logn: bool,
        backend: &str,
        plan: &EvalPlan,
    ) -> Option<Self> {
        let (weights_len, weights_xxh3) = content_hash(&model_dir.join(hf::WEIGHTS_FILE)).ok()?;
        Some(Self {
            format: EVAL_FORMAT,
            weights_len,
            weights_xxh3,
            method,
            logn,
            backend: backend.to_string(),
            plan: plan.clone(),
        })
    }
}

/// Length and XXH3-128 hash (hex) of the file at `path`, read in 1 MiB pieces.
fn content_hash(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, format!("{:032x}", h.digest128())))
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
