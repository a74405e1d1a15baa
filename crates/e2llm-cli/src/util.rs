//! Small helpers shared by the subcommands.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use e2llm_model::{checkpoint, Device, Kernels, Llama};

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
    /// context stays as sharp as at L. Not part of E²-LLM, whose inference is plain PI; off by
    /// default.
    #[arg(long)]
    pub logn: bool,
}

impl Compute {
    /// The opened device (see [`open_device`]).
    pub fn device(&self) -> Result<Device> {
        open_device(&self.backend)
    }

    /// The HF checkpoint in `dir` on this device, attention through `--kernels`.
    pub fn load(&self, dir: &Path) -> Result<Llama> {
        let device = self.device()?;
        self.setup(checkpoint::load_dir(dir, &device)?, dir)
    }

    /// [`Self::load`] and the checkpoint's `tokenizer.json`.
    pub fn load_with_tokenizer(&self, dir: &Path) -> Result<(Llama, e2llm_model::Tokenizer)> {
        let device = self.device()?;
        let (model, tok) = checkpoint::load_with_tokenizer(dir, &device)?;
        Ok((self.setup(model, dir)?, tok))
    }

    /// `", log-n attention scaling"` with `--logn`, else nothing: for report headers.
    pub fn logn_note(&self) -> &'static str {
        if self.logn {
            ", log-n attention scaling"
        } else {
            ""
        }
    }

    /// Applies `--kernels` and `--logn` to a loaded model.
    fn setup(&self, model: Llama, dir: &Path) -> Result<Llama> {
        let d = model.config.head_dim();
        if self.kernels == Kernels::Fused && !(d <= 128 && d.is_multiple_of(2)) {
            bail!(
                "{}: --kernels fused needs an even head width of at most 128, this model's is {d}; \
                 use --kernels auto or reference",
                dir.display()
            );
        }
        Ok(model.with_kernels(self.kernels).with_logn(self.logn))
    }
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} attention{}",
            self.backend,
            self.kernels,
            self.logn_note()
        )
    }
}
