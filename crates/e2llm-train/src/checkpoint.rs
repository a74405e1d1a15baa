//! Run checkpoints: an HF model directory (config.json, model.safetensors, tokenizer.json)
//! plus the trainer state (optimizer moments by HF name, step, losses, run config).
//!
//! Written atomically: everything goes to `checkpoint.tmp/`, each file fsynced, and
//! `trainer_state.json` last; then `checkpoint/` is renamed to `checkpoint.old/`,
//! `checkpoint.tmp/` to `checkpoint/`, and the old one removed. A crash at any point leaves
//! a complete `checkpoint/` or `checkpoint.old/`, and `latest` finds it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use e2llm_model::weights::write_atomic;
use e2llm_model::{checkpoint as hf, weights, Llama, Tokenizer};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::optim::AdamW;

/// Name of the trainer-state file; its presence marks a complete checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// Name of the optimizer-moments file.
pub const OPTIM_FILE: &str = "optimizer.safetensors";

/// What the trainer needs besides weights and moments to continue exactly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Loss of every completed step.
    pub losses: Vec<f32>,
    /// The run's config.
    pub config: TrainConfig,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The newest complete checkpoint in `run_dir`, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    ["checkpoint", "checkpoint.old"]
        .iter()
        .map(|d| run_dir.join(d))
        .find(|d| d.join(STATE_FILE).exists())
}

/// Writes a checkpoint of the run into `run_dir/checkpoint/`, atomically.
pub fn save(
    run_dir: &Path,
    model: &Llama,
    tokenizer: &Tokenizer,
    opt: &AdamW,
    state: &TrainState,
) -> Result<PathBuf> {
    let tmp = run_dir.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    hf::save_dir(model, &tmp)?;
    write_atomic(
        &tmp.join(hf::TOKENIZER_FILE),
        tokenizer.to_json()?.as_bytes(),
    )?;
    write_atomic(&tmp.join(OPTIM_FILE), &moments_bytes(opt)?)?;
    let json = serde_json::to_string_pretty(state)
        .map_err(|e| TrainError::Data(format!("serialising trainer state: {e}")))?;
    write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;

    let dir = run_dir.join("checkpoint");
    let old = run_dir.join("checkpoint.old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    if dir.exists() {
        std::fs::rename(&dir, &old).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&tmp))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(dir)
}

/// The directory `keep` writes the model of `step` to: `run_dir/step-{step}/`.
pub fn kept_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join(format!("step-{step}"))
}

/// Writes the directory `dst` atomically: `fill` writes its files into `dst.tmp/` (created
/// empty, after any earlier `dst` and leftover temp directory are removed), which is then renamed
/// into place.
fn replace_dir(dst: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dst.with_file_name(name);
    for d in [&tmp, dst] {
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(io(d))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    fill(&tmp)?;
    std::fs::rename(&tmp, dst).map_err(io(&tmp))
}

/// Copies `src/file` to `dst/file` (atomically).
fn copy_file(src: &Path, dst: &Path, file: &str) -> Result<()> {
    let from = src.join(file);
    let bytes = std::fs::read(&from).map_err(io(&from))?;
    write_atomic(&dst.join(file), &bytes)?;
    Ok(())
}

/// Copies the model of `run_dir/checkpoint/` (config.json, model.safetensors, tokenizer.json:
/// an HF directory, without optimizer or trainer state) to [`kept_dir`], atomically (a temp
/// directory renamed into place).
pub fn keep(run_dir: &Path, step: usize) -> Result<PathBuf> {
    let src = run_dir.join("checkpoint");
    let dst = kept_dir(run_dir, step);
    replace_dir(&dst, |tmp| {
        for f in [hf::CONFIG_FILE, hf::WEIGHTS_FILE, hf::TOKENIZER_FILE] {
            copy_file(&src, tmp, f)?;
        }
        Ok(())
    })?;
    Ok(dst)
}

/// The directory of a run's averaged model ([`average`]).
pub fn average_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("average")
}

/// The file in `average/` that lists the steps it is the mean of (a JSON array).
pub const AVERAGED_STEPS_FILE: &str = "averaged_steps.json";

/// Writes `run_dir/average/`, the mean of the kept models ([`kept_dir`]) of each of `steps`
/// (an HF directory: the first one's config.json, the last one's tokenizer.json — one run's, so
/// the same — and [`AVERAGED_STEPS_FILE`]), atomically (a temp directory renamed into place).
pub fn average(run_dir: &Path, steps: &[usize]) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = steps.iter().map(|&s| kept_dir(run_dir, s)).collect();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let model = hf::average_dirs(&refs, &Device::flex())?;
    let last = refs.last().expect("at least one step");
    let dst = average_dir(run_dir);
    let listed = serde_json::to_vec(steps).map_err(|e| TrainError::Data(e.to_string()))?;
    replace_dir(&dst, |tmp| {
        hf::save_dir(&model, tmp)?;
        copy_file(last, tmp, hf::TOKENIZER_FILE)?;
        write_atomic(&tmp.join(AVERAGED_STEPS_FILE), &listed)?;
        Ok(())
    })?;
    Ok(dst)
}

/// The steps `run_dir/average/` is the mean of, as it recorded them (`None`: no average, or one
/// that does not say — written before session 24).
pub fn averaged_steps(run_dir: &Path) -> Option<Vec<usize>> {
    let dir = average_dir(run_dir);
    if !dir.join(hf::WEIGHTS_FILE).is_file() {
        return None;
    }
    let bytes = std::fs::read(dir.join(AVERAGED_STEPS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn moments_bytes(opt: &AdamW) -> Result<Vec<u8>> {
    let mut names: Vec<&String> = opt.moments.keys().collect();
    names.sort();
    let mut host: Vec<(String, Vec<u8>, usize)> = Vec::new();
    for n in names {
        let (m, v) = &opt.moments[n];
        for (suffix, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
            let vals = e2llm_model::backend::read_f32(t.clone())?;
            let len = vals.len();
            host.push((
                format!("{n}.{suffix}"),
                vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                len,
            ));
        }
    }
    let views = host
        .iter()
        .map(|(n, b, len)| {
            safetensors::tensor::TensorView::new(Dtype::F32, vec![*len], b)
                .map(|v| (n.clone(), v))
                .map_err(|e| TrainError::Data(format!("optimizer tensor {n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("step".to_string(), opt.step.to_string())]);
    safetensors::serialize(views, Some(meta))
        .map_err(|e| TrainError::Data(format!("serialising optimizer state: {e}")))
}

/// A loaded checkpoint.
pub struct Loaded {
    /// The model, on the requested device.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Optimizer moments, on `moment_device`.
    pub opt: AdamW,
    /// Step, losses, config.
    pub state: TrainState,
}

/// Reads `dir/trainer_state.json` (step, losses, the run's config).
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: format!("{STATE_FILE} is not a trainer state: {e}"),
    })
}

/// Loads the rest of the checkpoint in `dir` whose `state` was read with [`read_state`]
/// (model on `device`, moments on `moment_device`).
pub fn load(
    dir: &Path,
    state: TrainState,
    device: &Device,
    moment_device: &Device,
) -> Result<Loaded> {
    let bad = |reason: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason,
    };
    let model = hf::load_dir(dir, device)?;
    let tokenizer = hf::load_tokenizer(dir, model.config.vocab_size)?;
    let opt_path = dir.join(OPTIM_FILE);
    let bytes = std::fs::read(&opt_path).map_err(io(&opt_path))?;
    let mut host = weights::HostWeights::new();
    weights::decode_safetensors(&opt_path.display().to_string(), &bytes, &mut host)?;
    let step = SafeTensors::read_metadata(&bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref()?.get("step")?.parse().ok())
        .unwrap_or(state.step);
    let mut moments = HashMap::new();
    let mut take = |name: &str| -> Option<Tensor<1>> {
        host.remove(name)
            .map(|(s, v)| Tensor::from_data(TensorData::new(v, s), moment_device))
    };
    for (name, _) in weights::tensor_specs(&model.config) {
        match (
            take(&format!("{name}.exp_avg")),
            take(&format!("{name}.exp_avg_sq")),
        ) {
            (Some(m), Some(v)) => {
                moments.insert(name, (m, v));
            }
            (None, None) if step == 0 => {}
            _ => return Err(bad(format!("{OPTIM_FILE} lacks the moments of `{name}`"))),
        }
    }
    Ok(Loaded {
        model,
        tokenizer,
        opt: AdamW { moments, step },
        state,
    })
}
