//! The training loop: one code path for CPU (flex) and wgpu, seeded so a resumed run
//! reproduces the uninterrupted one.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;
use e2llm_model::{backend, weights, Llama, Positions};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::{self, TrainState};
use crate::config::TrainConfig;
use crate::data::{train_tokenizer, Corpus, DataSource, Row};
use crate::error::{Result, TrainError};
use crate::loss::{weighted_cross_entropy, weighted_cross_entropy_fused};
use crate::method::{model_config, Placement, Placer};
use crate::optim::{lr_at, AdamW, AdamWConfig, NamedGrads};

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Steps completed (1-based after this step).
    pub step: usize,
    /// Planned steps.
    pub steps: usize,
    /// Mean weighted loss over the step's micro-batches.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Training tokens per second of this step.
    pub tokens_per_s: f64,
    /// Scales `g` sampled for this step's rows.
    pub g: Vec<u32>,
    /// Offsets `t` (or PoSE skips) sampled for this step's rows.
    pub t: Vec<usize>,
}

impl StepReport {
    /// The step as one JSON line for `log.jsonl`.
    pub fn log_line(&self) -> String {
        serde_json::json!({"step": self.step, "loss": self.loss, "lr": self.lr,
            "grad_norm": self.grad_norm, "tokens_per_s": self.tokens_per_s})
        .to_string()
    }
}

/// A training run in progress.
pub struct Trainer {
    /// The run's config.
    pub cfg: TrainConfig,
    /// Where checkpoints go.
    pub run_dir: PathBuf,
    /// The model (on the autodiff device).
    pub model: Llama,
    /// Optimizer state.
    pub opt: AdamW,
    /// Rows come from here.
    pub data: DataSource,
    placer: Placer,
    /// Steps completed.
    pub step: usize,
    /// Loss of every completed step.
    pub losses: Vec<f32>,
}

/// The RNG of micro-batch `micro` of step `step`: every step's data is a pure function of
/// (seed, step), which is what makes resuming exact.
pub fn step_rng(seed: u64, step: usize, micro: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((step as u64) << 16) | micro as u64);
    rng
}

fn devices(name: &str) -> Result<(Device, Device)> {
    let base = backend::open(name)?;
    Ok((base.clone().autodiff(), base))
}

/// Token-weighted loss of `rows` (inputs `ids[..len]`, targets shifted by one) on `model`.
fn batch_loss(
    model: &Llama,
    len: usize,
    rows: &[Row],
    positions: &Positions,
) -> Result<burn::tensor::Tensor<1>> {
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut targets = Vec::with_capacity(rows.len() * len);
    let mut w = Vec::with_capacity(rows.len() * len);
    for r in rows {
        ids.extend_from_slice(&r.ids[..len]);
        targets.extend_from_slice(&r.ids[1..=len]);
        w.extend_from_slice(&r.weights);
    }
    let logits = model.forward(&ids, positions, None)?;
    Ok(if model.fused_layers() {
        weighted_cross_entropy_fused(logits, &targets, &w)
    } else {
        weighted_cross_entropy(logits, &targets, &w)
    })
}

impl Trainer {
    /// Starts a fresh run in `run_dir`: trains the tokenizer on the corpus's training split
    /// (or uses the `init` checkpoint's), builds or loads the model.
    pub fn new(cfg: TrainConfig, run_dir: &Path, corpus: &Corpus) -> Result<Self> {
        cfg.validate().map_err(|reason| TrainError::Config {
            file: "<run config>".into(),
            reason,
        })?;
        let (device, _) = devices(&cfg.backend)?;
        let (model, tokenizer) = match &cfg.init {
            Some(dir) => {
                let dir = Path::new(dir);
                let mut model = e2llm_model::checkpoint::load_dir(dir, &device)?;
                let l = model.config.max_position_embeddings;
                if l != cfg.orig_len {
                    return Err(TrainError::Config {
                        file: "<run config>".into(),
                        reason: format!(
                            "init checkpoint {} has max_position_embeddings {l}, but orig_len \
                             (L) is {}; set orig_len = {l} (and train_len, usually = L)",
                            dir.display(),
                            cfg.orig_len
                        ),
                    });
                }
                let tok = e2llm_model::checkpoint::load_tokenizer(dir, model.config.vocab_size)?;
                model.config.rope.scaling =
                    crate::method::rope_scaling_for(cfg.method, cfg.orig_len);
                (model, tok)
            }
            None => {
                let tok = train_tokenizer(&corpus.train, cfg.model.vocab_size)?;
                let mc = model_config(&cfg.model, cfg.orig_len, cfg.method, cfg.model.vocab_size);
                (weights::init_random(mc, 0.02, cfg.seed, &device), tok)
            }
        };
        let data = DataSource::new(corpus, tokenizer, &cfg)?;
        let placer = Placer::new(cfg.method, cfg.orig_len, cfg.train_len)?;
        std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io {
            path: run_dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            model: model.with_kernels(cfg.kernels).with_logn(cfg.logn),
            cfg,
            run_dir: run_dir.to_path_buf(),
            opt: AdamW::default(),
            data,
            placer,
            step: 0,
            losses: Vec::new(),
        })
    }

    /// Continues the run whose newest checkpoint is in `run_dir`.
    pub fn resume(run_dir: &Path, corpus: &Corpus) -> Result<Self> {
        let dir = checkpoint::latest(run_dir).ok_or_else(|| TrainError::Checkpoint {
            path: run_dir.to_path_buf(),
            reason: "no complete checkpoint here (looked for checkpoint/ and checkpoint.old/)"
                .into(),
        })?;
        let state = checkpoint::read_state(&dir)?;
        let (device, base) = devices(&state.config.backend)?;
        let loaded = checkpoint::load(&dir, state, &device, &base)?;
        let cfg = loaded.state.config.clone();
        let data = DataSource::new(corpus, loaded.tokenizer, &cfg)?;
        let placer = Placer::new(cfg.method, cfg.orig_len, cfg.train_len)?;
        Ok(Self {
            cfg,
            run_dir: run_dir.to_path_buf(),
            model: (loaded.model)
                .with_kernels(loaded.state.config.kernels)
                .with_logn(loaded.state.config.logn),
            opt: loaded.opt,
            data,
            placer,
            step: loaded.state.step,
            losses: loaded.state.losses,
        })
    }

    /// The rows and positions of micro-batch `micro` of step `step`.
    pub fn batch(&self, step: usize, micro: usize) -> Result<(Vec<Row>, Placement)> {
        let mut rng = step_rng(self.cfg.seed, step, micro);
        let len = self.cfg.train_len;
        let rows = (0..self.cfg.batch_size)
            .map(|_| self.data.row(len, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        let placement = self.placer.place(self.cfg.batch_size, len, &mut rng);
        Ok((rows, placement))
    }

    /// Loss of a batch on the current model (tracked for autodiff).
    pub fn loss(&self, rows: &[Row], placement: &Placement) -> Result<burn::tensor::Tensor<1>> {
        batch_loss(&self.model, self.cfg.train_len, rows, &placement.positions)
    }

    /// Loss value and gradients of one micro-batch: one pass, or (`threads` > 1) its rows in
    /// contiguous parts on as many threads, each on its own fork of the model (a separate
    /// autodiff graph), each part's loss weighted by its share of the answer weights so that
    /// the parts sum to the micro-batch's loss; the gradients are summed in part order.
    pub fn gradients(&self, rows: &[Row], placement: &Placement) -> Result<(f32, NamedGrads)> {
        let one = |model: &Llama, rows: &[Row], pos: &Positions, share: f32| {
            let mut loss = batch_loss(model, self.cfg.train_len, rows, pos)?;
            if share != 1.0 {
                loss = loss * share;
            }
            // A device failure is an error of its own, not a NaN loss.
            let value = backend::read_f32(loss.clone())?
                .first()
                .copied()
                .unwrap_or(f32::NAN);
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    step: self.step + 1,
                    loss: value,
                });
            }
            let mut grads = NamedGrads::default();
            grads.accumulate(model, &loss.backward());
            Ok((value, grads))
        };
        let parts = self.cfg.threads.min(rows.len()).max(1);
        if parts == 1 {
            return one(&self.model, rows, &placement.positions, 1.0);
        }
        let weight = |rs: &[Row]| rs.iter().flat_map(|r| &r.weights).sum::<f32>();
        let total = weight(rows).max(f32::MIN_POSITIVE);
        let seq = placement.positions.seq();
        let device = self.model.device();
        let results: Vec<Result<(f32, NamedGrads)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..parts)
                .map(|p| {
                    let (a, b) = (p * rows.len() / parts, (p + 1) * rows.len() / parts);
                    let pos = Positions {
                        pos: placement.positions.pos[a * seq..b * seq].to_vec(),
                        scale: placement.positions.scale[a..b].to_vec(),
                        batch: b - a,
                    };
                    let model = burn::module::Module::fork(self.model.clone(), &device);
                    let one = &one;
                    s.spawn(move || one(&model, &rows[a..b], &pos, weight(&rows[a..b]) / total))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut value = 0.0f32;
        let mut grads = NamedGrads::default();
        for r in results {
            let (v, g) = r?;
            value += v;
            grads.add(g);
        }
        Ok((value, grads))
    }

    /// One optimizer step (with gradient accumulation and clipping).
    pub fn step(&mut self) -> Result<StepReport> {
        let t0 = Instant::now();
        let mut grads = NamedGrads::default();
        let mut loss_sum = 0.0f32;
        let (mut gs, mut ts) = (Vec::new(), Vec::new());
        for micro in 0..self.cfg.grad_accum {
            let (rows, placement) = self.batch(self.step, micro)?;
            let (value, g) = self.gradients(&rows, &placement)?;
            loss_sum += value;
            grads.add(g);
            gs.extend(placement.g);
            ts.extend(placement.t);
        }
        let micro = self.cfg.grad_accum as f32;
        if self.cfg.grad_accum > 1 {
            grads.scale(1.0 / micro);
        }
        let norm = grads.global_norm()?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step + 1,
                loss: norm,
            });
        }
        if self.cfg.grad_clip > 0.0 && norm as f64 > self.cfg.grad_clip {
            grads.scale((self.cfg.grad_clip / norm as f64) as f32);
        }
        let c = &self.cfg;
        let lr = lr_at(self.step, c.steps, c.warmup_steps, c.lr, c.min_lr_ratio);
        let adam = AdamWConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        };
        // `Module::map` consumes the model; a clone only copies tensor handles.
        self.model = self.opt.step(self.model.clone(), &grads, lr, adam);
        self.step += 1;
        let loss = loss_sum / micro;
        self.losses.push(loss);
        let tokens = (c.batch_size * c.grad_accum * c.train_len) as f64;
        Ok(StepReport {
            step: self.step,
            steps: c.steps,
            loss,
            lr,
            grad_norm: norm,
            tokens_per_s: tokens / t0.elapsed().as_secs_f64().max(1e-9),
            g: gs,
            t: ts,
        })
    }

    /// Writes a checkpoint of the current state.
    pub fn save(&self) -> Result<PathBuf> {
        checkpoint::save(
            &self.run_dir,
            &self.model,
            &self.data.tokenizer,
            &self.opt,
            &TrainState {
                step: self.step,
                losses: self.losses.clone(),
                config: self.cfg.clone(),
            },
        )
    }

    /// Trains to `cfg.steps`, checkpointing every `checkpoint_every` steps and at the end,
    /// keeping the model as `step-N/` every `keep_every` steps, and at the end writing
    /// `average/` when `average_last` asks for it.
    /// A non-finite loss stops the run and leaves the last good checkpoint in place.
    pub fn run(&mut self, mut on_step: impl FnMut(&StepReport)) -> Result<PathBuf> {
        self.run_until(
            |r| {
                on_step(r);
                ControlFlow::Continue(())
            },
            |_, _| {},
        )
    }

    /// [`Trainer::run`] that the caller can stop: `on_step` returning `Break` saves a checkpoint
    /// and returns (a paused UI simply blocks inside `on_step`). `on_save(step, dir)` follows
    /// every checkpoint written.
    pub fn run_until(
        &mut self,
        mut on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
        mut on_save: impl FnMut(usize, &Path),
    ) -> Result<PathBuf> {
        while self.step < self.cfg.steps {
            let report = self.step()?;
            let flow = on_step(&report);
            let keep = self.due(self.cfg.keep_every);
            if flow.is_break()
                || ((self.due(self.cfg.checkpoint_every) || keep) && self.step < self.cfg.steps)
            {
                let dir = self.save()?;
                on_save(self.step, &dir);
                if keep {
                    checkpoint::keep(&self.run_dir, self.step)?;
                }
                if flow.is_break() {
                    return Ok(dir);
                }
            }
        }
        let dir = self.save()?;
        on_save(self.step, &dir);
        if self.due(self.cfg.keep_every) {
            checkpoint::keep(&self.run_dir, self.step)?;
        }
        let averaged = self.cfg.averaged_steps();
        if !averaged.is_empty() {
            checkpoint::average(&self.run_dir, &averaged)?;
        }
        Ok(dir)
    }

    /// Whether the current step is a multiple of `every` (0 = never).
    fn due(&self, every: usize) -> bool {
        every > 0 && self.step.is_multiple_of(every)
    }
}
