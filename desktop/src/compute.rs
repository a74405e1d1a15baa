//! The app's background work: thin calls into e2llm-model and e2llm-train (no model or
//! training logic of its own), each run inside a [`crate::worker::Job`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use e2llm_core::passkey::{build_passkey, Filler, PasskeySpec};
use e2llm_model::kernels::Gpu;
use e2llm_model::{backend, checkpoint, AttentionImage, Llama, MapBackend, MapSpec, Tokenizer};
use e2llm_train::data::Corpus;
use e2llm_train::eval::{passkey_grid, Cell, PasskeyEval, ScaleMode};
use e2llm_train::ppl::{perplexity, text_for_windows, PplPoint, Scoring};

use crate::state::{parse_list, AttentionSettings, EvalSettings, PromptSource};
use crate::worker::Progress;

/// Prefill chunk: bounds the layers' score matrices while the map is computed.
const CHUNK: usize = 256;

/// Opens a checkpoint directory's model and tokenizer on `backend` ("cpu" or "wgpu").
pub fn load(dir: &Path, backend_name: &str) -> Result<(Llama, Tokenizer), String> {
    let device = backend::open(backend_name)
        .map_err(|e| format!("backend `{backend_name}` is not usable here: {e}"))?;
    checkpoint::load_with_tokenizer(dir, &device).map_err(|e| e.to_string())
}

/// Attention maps of one prompt at several scales.
#[derive(Debug, Clone)]
pub struct AttentionResult {
    /// `(g, image)` per scale, in the order asked.
    pub maps: Vec<(f32, AttentionImage)>,
    /// Each token's text, for hover.
    pub tokens: Vec<String>,
    /// Tokens of the passkey line, when the prompt is a passkey prompt.
    pub key_span: Option<Range<usize>>,
    /// The key, when there is one.
    pub key: Option<u32>,
    /// Layer and head shown.
    pub layer: usize,
    /// Head shown.
    pub head: usize,
    /// The model's training length L.
    pub orig_len: usize,
    /// Where the maps were pooled (the WGSL kernel's adapter, or the CPU twin).
    pub pooled_on: String,
}

/// Builds the prompt and pools one head's attention at every scale in `s.scales`.
pub fn attention(
    s: &AttentionSettings,
    backend_name: &str,
    p: &Progress<AttentionResult>,
) -> Result<AttentionResult, String> {
    let scales: Vec<f32> = parse_list("scales", &s.scales)?;
    if let Some(g) = scales.iter().find(|g| !(g.is_finite() && **g > 0.0)) {
        return Err(format!("scales: {g} is not a positive number"));
    }
    if s.size == 0 {
        return Err("heatmap size must be at least 1".into());
    }
    let (model, tok) = load(Path::new(&s.checkpoint), backend_name)?;
    let (text, key_bytes, key) = match &s.prompt {
        PromptSource::Passkey { length, depth, key } => {
            let spec = PasskeySpec {
                target_tokens: *length,
                depth: *depth,
                key: Some(*key),
                filler: Filler::Standard,
                seed: 0,
            };
            let prompt = build_passkey(&spec, &|t: &str| tok.count(t))
                .map_err(|e| format!("passkey prompt: {e}"))?;
            (prompt.text, Some(prompt.key_line), Some(prompt.key))
        }
        PromptSource::Text(t) if t.trim().is_empty() => {
            return Err("the prompt text is empty".into())
        }
        PromptSource::Text(t) => (t.clone(), None, None),
    };
    let enc = tok
        .inner()
        .encode(text.as_str(), false)
        .map_err(|e| format!("tokenizing the prompt: {e}"))?;
    let ids = enc.get_ids().to_vec();
    let tokens: Vec<String> = enc
        .get_offsets()
        .iter()
        .map(|&(a, b)| text.get(a..b).unwrap_or("?").to_string())
        .collect();
    let key_span = key_bytes.map(|r| {
        let hit: Vec<usize> = enc
            .get_offsets()
            .iter()
            .enumerate()
            .filter(|(_, &(a, b))| a < r.end && b > r.start)
            .map(|(i, _)| i)
            .collect();
        hit.first().copied().unwrap_or(0)..hit.last().map_or(0, |l| l + 1)
    });
    let n = ids.len();
    let positions: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let cfg = &model.config;
    if s.layer >= cfg.num_hidden_layers || s.head >= cfg.num_attention_heads {
        return Err(format!(
            "layer {} / head {} do not exist: the model has {} layers and {} heads",
            s.layer, s.head, cfg.num_hidden_layers, cfg.num_attention_heads
        ));
    }
    // On the wgpu backend the pooling runs in shaders/attention_map.wgsl; on the CPU backend
    // (or when no adapter opens) in its CPU twin.
    let gpu = (backend_name == "wgpu").then(Gpu::new);
    let (map_backend, pooled_on) = match &gpu {
        Some(Ok(g)) => (
            MapBackend::Gpu(g),
            format!("attention_map.wgsl on {}", g.adapter_name),
        ),
        Some(Err(e)) => (MapBackend::Cpu, format!("CPU twin (no wgpu adapter: {e})")),
        None => (
            MapBackend::Cpu,
            "CPU twin of attention_map.wgsl".to_string(),
        ),
    };
    let mut maps = Vec::new();
    for (i, &g) in scales.iter().enumerate() {
        let spec = MapSpec::whole(s.layer, s.head, n, s.size);
        let img = model
            .attention_map_on(&ids, &positions, g, &spec, CHUNK, map_backend)
            .map_err(|e| e.to_string())?;
        maps.push((g, img));
        p.report(i + 1, scales.len());
    }
    Ok(AttentionResult {
        maps,
        tokens,
        key_span,
        key,
        layer: s.layer,
        head: s.head,
        orig_len: cfg.max_position_embeddings,
        pooled_on,
    })
}

/// Passkey grids and PPL curves of one or two checkpoints.
#[derive(Debug, Clone, Default)]
pub struct EvalResult {
    /// `(checkpoint, cells)` per checkpoint.
    pub grids: Vec<(String, Vec<Cell>)>,
    /// `(checkpoint, points)` per checkpoint.
    pub ppl: Vec<(String, Vec<PplPoint>)>,
}

fn checkpoints(s: &EvalSettings) -> Vec<String> {
    [&s.checkpoint_a, &s.checkpoint_b]
        .into_iter()
        .filter(|c| !c.trim().is_empty())
        .cloned()
        .collect()
}

/// Runs the passkey grid on each checkpoint.
pub fn passkey(
    s: &EvalSettings,
    backend_name: &str,
    p: &Progress<EvalResult>,
) -> Result<EvalResult, String> {
    let eval = PasskeyEval {
        lengths: parse_list("lengths", &s.lengths)?,
        depths: parse_list("depths", &s.depths)?,
        trials: s.trials.max(1),
        max_new_tokens: 8,
        scale: s
            .scale
            .parse::<ScaleMode>()
            .map_err(|e| format!("scale: {e}"))?,
        filler: Filler::Standard,
        seed: 0,
        // One core stays with the window.
        threads: e2llm_train::eval::default_threads(backend_name)
            .saturating_sub(1)
            .max(1),
    };
    if let Some(d) = eval.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        return Err(format!("depths: {d} is outside [0, 1]"));
    }
    let ckpts = checkpoints(s);
    if ckpts.is_empty() {
        return Err("choose a checkpoint".into());
    }
    let mut out = EvalResult::default();
    let per = eval.lengths.len() * eval.depths.len() * eval.trials;
    for (k, c) in ckpts.iter().enumerate() {
        let (model, tok) = load(Path::new(c), backend_name)?;
        let model = model.with_logn_requested(s.logn);
        let cells = passkey_grid(&model, &tok, &eval, |d, _| {
            p.report(k * per + d, ckpts.len() * per)
        })
        .map_err(|e| format!("{c}: {e}"))?;
        out.grids.push((c.clone(), cells));
    }
    Ok(out)
}

/// Perplexity vs length on the held-out text for each checkpoint, scoring the same tokens at
/// every length (the last min(L, shortest length) of each span), as `e2llm experiment` does.
pub fn ppl(
    s: &EvalSettings,
    backend_name: &str,
    p: &Progress<EvalResult>,
) -> Result<EvalResult, String> {
    let lengths: Vec<usize> = parse_list("PPL lengths", &s.ppl_lengths)?;
    let ckpts = checkpoints(s);
    if ckpts.is_empty() {
        return Err("choose a checkpoint".into());
    }
    let heldout = Corpus::embedded().map_err(|e| e.to_string())?.heldout;
    let max_windows = 4;
    let mut out = EvalResult::default();
    for (k, c) in ckpts.iter().enumerate() {
        let (model, tok) = load(Path::new(c), backend_name)?;
        let model = model.with_logn_requested(s.logn);
        let tokens = tok
            .encode(text_for_windows(&heldout, &lengths, max_windows), false)
            .map_err(|e| e.to_string())?;
        let shortest = lengths.iter().copied().min().unwrap_or(1);
        let scored = shortest.min(model.config.max_position_embeddings).max(1);
        let points = perplexity(
            &model,
            &tokens,
            &lengths,
            Scoring::LastTokens(scored),
            ScaleMode::Auto,
            max_windows,
            |d, t| p.report(k * t + d, ckpts.len() * t),
        )
        .map_err(|e| format!("{c}: {e}"))?;
        out.ppl.push((c.clone(), points));
    }
    Ok(out)
}

/// Copies a checkpoint's HF files (config.json, model.safetensors, tokenizer.json) to `to`,
/// through a temporary directory renamed into place, so `to` is never half-written.
pub fn export(from: &Path, to: &Path) -> Result<PathBuf, String> {
    let files = [
        checkpoint::CONFIG_FILE,
        checkpoint::WEIGHTS_FILE,
        checkpoint::TOKENIZER_FILE,
    ];
    for f in files {
        if !from.join(f).is_file() {
            return Err(format!(
                "{} has no {f}: choose a checkpoint directory (e.g. runs/desktop/checkpoint)",
                from.display()
            ));
        }
    }
    if to.exists() && !to.join(checkpoint::CONFIG_FILE).is_file() {
        return Err(format!(
            "{} exists and is not an exported model: choose a new directory",
            to.display()
        ));
    }
    let parent = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("export"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    for f in files {
        std::fs::copy(from.join(f), tmp.join(f))
            .map_err(|e| format!("copying {}: {e}", from.join(f).display()))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    std::fs::rename(&tmp, to).map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(to.to_path_buf())
}
