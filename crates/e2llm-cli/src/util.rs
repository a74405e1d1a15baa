//! Small helpers shared by the subcommands.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use e2llm_model::{checkpoint, Device, Kernels, Llama, Precision};

/// Parses a comma-separated list like `5,17,3`; `what` names the flag in errors.
pub fn parse_list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<T>()
                .map_err(|_| anyhow::anyhow!("{what}: `{x}` is not a valid number"))
        })
        .collect()
}

/// Opens the named backend and checks it can run a tensor op, so a missing GPU adapter is
/// one clear error instead of a panic deep inside the backend.
pub fn open_device(name: &str) -> Result<Device> {
    e2llm_model::backend::open(name)
        .with_context(|| format!("backend `{name}` is not usable on this machine"))
}

/// Checks a RoPE scale given on the command line.
pub fn check_scale(g: f32) -> Result<f32> {
    if !(g.is_finite() && g > 0.0) {
        bail!("--rope-scale must be a positive number, got {g}");
    }
    Ok(g)
}

/// Where a command computes: `--backend` and `--kernels`.
#[derive(clap::Args, Debug, Clone)]
pub struct Compute {
    /// Compute backend.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "wgpu"])]
    pub backend: String,
    /// Kernels: `auto` (the fused WGSL kernels on wgpu; on cpu the fused attention written for
    /// a CPU core and plain burn ops for the rest), `fused` (every kernel; on cpu the others'
    /// CPU twins) or `reference` (plain burn ops).
    #[arg(long, default_value = "auto")]
    pub kernels: Kernels,
    /// Log-n attention scaling: a query that sees n > L keys has its attention logits
    /// multiplied by ln(n) / ln(L) (L = max_position_embeddings), so the softmax over a long
    /// context stays as sharp as at L. Not part of E²-LLM, whose inference is plain PI. Without
    /// this flag the model's config.json decides (`use_logn_attn`: on for models trained with
    /// `logn = true`, off otherwise).
    #[arg(long)]
    pub logn: bool,
    /// How the KV cache stores keys and values: `f32`, or `f16` (half the memory; the fused
    /// attention reads half the bytes per cached key and sums in f32). f16 needs a device with
    /// f16 (on wgpu the adapter's shader-f16; lavapipe has it). Used where prompts go through
    /// the cache (generate, passkey); ppl and logits run without one.
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    pub kv_cache: Precision,
    /// How the weights are stored on the device: `f32`, or `f16` (half the memory — a 1B model
    /// in 2.2 instead of 4.4 GB; rounded once at load, lossless for f16 checkpoints; every
    /// computation stays f32). f16 needs a device with f16, as `--kv-cache f16`.
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    pub weights: Precision,
}

impl Compute {
    /// The opened device (see [`open_device`]).
    pub fn device(&self) -> Result<Device> {
        open_device(&self.backend)
    }

    /// The HF checkpoint in `dir` on this device, attention through `--kernels`.
    pub fn load(&self, dir: &Path) -> Result<Llama> {
        let device = self.device()?;
        let model = checkpoint::load_dir_as(dir, &device, self.weights)
            .with_context(|| self.loading(dir))?;
        self.setup(model, dir)
    }

    /// [`Self::load`] and the checkpoint's `tokenizer.json`.
    pub fn load_with_tokenizer(&self, dir: &Path) -> Result<(Llama, e2llm_model::Tokenizer)> {
        let device = self.device()?;
        let (model, tok) = checkpoint::load_with_tokenizer_as(dir, &device, self.weights)
            .with_context(|| self.loading(dir))?;
        Ok((self.setup(model, dir)?, tok))
    }

    /// What a load error is about: the directory, and `--weights f16` where it was asked for
    /// (the device may lack f16).
    fn loading(&self, dir: &Path) -> String {
        match self.weights {
            Precision::F32 => format!("loading the model in {}", dir.display()),
            w => format!(
                "loading the model in {} with --weights {w} on backend `{}`",
                dir.display(),
                self.backend
            ),
        }
    }

    /// `", log-n attention scaling"` when `model` reads with it (`--logn` or its config),
    /// `", f16 KV cache"` with `--kv-cache f16`, `", f16 weights"` with `--weights f16`, else
    /// nothing: for report headers.
    pub fn notes(&self, model: &Llama) -> String {
        let logn = if model.logn() {
            ", log-n attention scaling"
        } else {
            ""
        };
        format!("{logn}{}", self.precision_notes())
    }

    /// `", f16 KV cache"` with `--kv-cache f16`, `", f16 weights"` with `--weights f16`.
    fn precision_notes(&self) -> String {
        let mut s = String::new();
        if self.kv_cache != Precision::F32 {
            s.push_str(&format!(", {} KV cache", self.kv_cache));
        }
        if self.weights != Precision::F32 {
            s.push_str(&format!(", {} weights", self.weights));
        }
        s
    }

    /// Applies `--kernels` and `--logn` (on; without it the config's `use_logn_attn` stays) to a
    /// loaded model.
    fn setup(&self, model: Llama, dir: &Path) -> Result<Llama> {
        let d = model.config.head_dim();
        if self.kernels == Kernels::Fused && !(d <= 128 && d.is_multiple_of(2)) {
            bail!(
                "{}: --kernels fused needs an even head width of at most 128, this model's is {d}; \
                 use --kernels auto or reference",
                dir.display()
            );
        }
        model
            .with_kernels(self.kernels)
            .with_logn_requested(self.logn)
            .with_kv_cache(self.kv_cache)
            .with_context(|| format!("--kv-cache {} on backend `{}`", self.kv_cache, self.backend))
    }
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} attention{}{}",
            self.backend,
            self.kernels,
            if self.logn { ", --logn" } else { "" },
            self.precision_notes()
        )
    }
}
