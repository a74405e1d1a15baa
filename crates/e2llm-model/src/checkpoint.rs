//! HF model directories: `config.json` + `model.safetensors` (or a sharded index) +
//! `tokenizer.json`. Loading also works from bytes, for the browser.

use std::path::Path;

use burn::tensor::Device;
use e2llm_core::LlamaConfig;

use crate::attention::Precision;
use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::weights::{self, HostWeights};

/// File name of the single-file checkpoint.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the sharded checkpoint's index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// File name of the config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses `config.json` text; `name` is used in error messages.
pub fn parse_config(name: &str, json: &str) -> Result<LlamaConfig> {
    LlamaConfig::from_json_str(json).map_err(|source| ModelError::Config {
        path: name.into(),
        source,
    })
}

/// Reads and parses `dir/config.json`.
pub fn load_config(dir: &Path) -> Result<LlamaConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = String::from_utf8_lossy(&read(&path)?).into_owned();
    parse_config(&path.display().to_string(), &text)
}

/// Reads `dir/tokenizer.json` for a model of `vocab_size` tokens.
pub fn load_tokenizer(dir: &Path, vocab_size: usize) -> Result<crate::Tokenizer> {
    crate::Tokenizer::from_file(&dir.join(TOKENIZER_FILE), vocab_size)
}

/// Loads the model in `dir` and its `tokenizer.json` (checked against the model's vocabulary),
/// reading `config.json` once.
pub fn load_with_tokenizer(dir: &Path, device: &Device) -> Result<(Llama, crate::Tokenizer)> {
    load_with_tokenizer_as(dir, device, Precision::F32)
}

/// [`load_with_tokenizer`] with the weights stored as `precision` ([`load_dir_as`]).
pub fn load_with_tokenizer_as(
    dir: &Path,
    device: &Device,
    precision: Precision,
) -> Result<(Llama, crate::Tokenizer)> {
    let model = load_dir_as(dir, device, precision)?;
    let tok = load_tokenizer(dir, model.config.vocab_size)?;
    Ok((model, tok))
}

/// Loads a model from in-memory files: the config text and one or more safetensors shards
/// given as `(file name, bytes)`.
pub fn load_from_bytes(
    config_json: &str,
    shards: &[(&str, &[u8])],
    device: &Device,
) -> Result<Llama> {
    let config = parse_config(CONFIG_FILE, config_json)?;
    let mut host = HostWeights::new();
    for (name, bytes) in shards {
        weights::decode_safetensors(name, bytes, &mut host)?;
    }
    let source = shards
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    weights::from_host(config, host, &source, device)
}

/// Loads `dir` (an HF model directory) onto `device`: `model.safetensors`, or the shards
/// listed in `model.safetensors.index.json`.
pub fn load_dir(dir: &Path, device: &Device) -> Result<Llama> {
    load_dir_as(dir, device, Precision::F32)
}

/// [`load_dir`] with the weights stored on the device as `precision`: f16 halves their memory
/// (rounded once at load; checkpoints in f16 or bf16 lose nothing or little), the forward widens
/// each weight where it is used and computes in f32.
pub fn load_dir_as(dir: &Path, device: &Device, precision: Precision) -> Result<Llama> {
    let (config, host, source) = load_host(dir)?;
    weights::from_host_as(config, host, &source, device, precision)
}

/// Reads `dir`'s config and weights into host memory (f32), without building a model: the
/// config, the weights by HF name, and the file names read (for messages).
pub fn load_host(dir: &Path) -> Result<(LlamaConfig, HostWeights, String)> {
    let config = load_config(dir)?;
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(INDEX_FILE);
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = String::from_utf8_lossy(&read(&index)?).into_owned();
        weights::shard_files(&index.display().to_string(), &text)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        return Err(ModelError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no {WEIGHTS_FILE} or {INDEX_FILE} in this directory"),
            ),
        });
    };
    let mut host = HostWeights::new();
    for f in &files {
        weights::decode_safetensors(&f.display().to_string(), &read(f)?, &mut host)?;
    }
    let source = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Ok((config, host, source))
}

/// The element-wise mean of the weights in `dirs` (checkpoint averaging, a "model soup" of one
/// run's checkpoints), built on `device` with the first directory's config. Every directory
/// must describe the same tensors (names and shapes); otherwise an error names the directory
/// and what differs.
pub fn average_dirs(dirs: &[&Path], device: &Device) -> Result<Llama> {
    let (first, rest) = dirs
        .split_first()
        .ok_or_else(|| ModelError::Input("no model directories given to average".into()))?;
    let (config, mut sum, source) = load_host(first)?;
    for dir in rest {
        let bad = |reason: String| ModelError::Average {
            path: dir.to_path_buf(),
            reason,
        };
        let (cfg, host, _) = load_host(dir)?;
        if weights::tensor_specs(&cfg) != weights::tensor_specs(&config) {
            return Err(bad(format!(
                "its config.json describes other tensors than {}'s (a different size or shape \
                 of model); only checkpoints of one architecture can be averaged",
                first.display()
            )));
        }
        if let Some(name) = sum.keys().find(|n| !host.contains_key(*n)) {
            return Err(bad(format!(
                "tensor `{name}` of {} is missing here",
                first.display()
            )));
        }
        for (name, (shape, values)) in host {
            let (s, acc) = sum
                .get_mut(&name)
                .ok_or_else(|| bad(format!("tensor `{name}` is not in {}", first.display())))?;
            if *s != shape {
                return Err(bad(format!(
                    "tensor `{name}` has shape {shape:?}, {} has {s:?}",
                    first.display()
                )));
            }
            for (a, v) in acc.iter_mut().zip(values) {
                *a += v;
            }
        }
    }
    let n = dirs.len() as f32;
    for (_, values) in sum.values_mut() {
        for v in values.iter_mut() {
            *v /= n;
        }
    }
    weights::from_host(config, sum, &source, device)
}

/// The top-level `config.json` keys whose values differ between `a` and `b` (e.g. RoPE scaling or
/// `use_logn_attn` between checkpoints that [`average_dirs`] can still average).
pub fn config_differences(a: &LlamaConfig, b: &LlamaConfig) -> Vec<String> {
    e2llm_core::config::json_differences(&a.to_json_value(), &b.to_json_value())
        .into_iter()
        .map(|(key, _, _)| key)
        .collect()
}

/// Writes `model` as an HF directory (`config.json`, `model.safetensors`), each file
/// atomically, creating `dir` if needed.
pub fn save_dir(model: &Llama, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = weights::to_safetensors_bytes(model)?;
    weights::write_atomic(&dir.join(WEIGHTS_FILE), &bytes)?;
    let config = serde_json::to_string_pretty(&model.config.to_json_value())
        .map_err(|e| ModelError::Backend(format!("serialising config: {e}")))?;
    weights::write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())
}
