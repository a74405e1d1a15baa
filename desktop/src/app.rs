//! The app: persisted [`Settings`], the live run, background jobs, and the tab bar.

use std::path::PathBuf;
use std::time::Instant;

use eframe::egui;

use e2llm_train::{checkpoint, StepReport, TrainConfig};

use crate::compute::{AttentionResult, EvalResult};
use crate::state::{RunCmd, RunState, Settings, Tab};
use crate::worker::{Job, TrainEvent, TrainHandle};

/// Storage key of [`Settings`].
pub const SETTINGS_KEY: &str = "e2llm-desktop-settings";

/// The training run as the UI sees it.
pub struct RunView {
    /// State machine.
    pub state: RunState,
    /// The thread, while one lives.
    pub handle: Option<TrainHandle>,
    /// The config in effect (a resumed run's own).
    pub config: Option<TrainConfig>,
    /// `(step, loss)`.
    pub loss: Vec<[f64; 2]>,
    /// `(step, lr)`.
    pub lr: Vec<[f64; 2]>,
    /// `(step, tokens/s)`.
    pub tps: Vec<[f64; 2]>,
    /// How often each scale g was drawn (index g).
    pub g_counts: Vec<u64>,
    /// Every offset t drawn.
    pub t_values: Vec<usize>,
    /// Last step done and the run's total.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// When this session of the run started, and from which step.
    pub since: Option<(Instant, usize)>,
    /// The step the trainer started from (> 0 when it resumed a checkpoint).
    pub started_from: Option<usize>,
    /// Checkpoints written: `(step, dir)`, newest last.
    pub checkpoints: Vec<(usize, PathBuf)>,
    /// A finished run's averaged model (`average/`) and the steps it is the mean of.
    pub averaged: Option<(PathBuf, Vec<usize>)>,
    /// Why the run failed.
    pub error: Option<String>,
}

impl Default for RunView {
    fn default() -> Self {
        Self {
            state: RunState::Idle,
            handle: None,
            config: None,
            loss: Vec::new(),
            lr: Vec::new(),
            tps: Vec::new(),
            g_counts: Vec::new(),
            t_values: Vec::new(),
            step: 0,
            steps: 0,
            since: None,
            started_from: None,
            checkpoints: Vec::new(),
            averaged: None,
            error: None,
        }
    }
}

impl RunView {
    /// Applies a command to the state machine, or records why it does not apply.
    pub fn command(&mut self, cmd: RunCmd) -> bool {
        match self.state.apply(cmd) {
            Ok(s) => {
                self.state = s;
                true
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    fn record(&mut self, r: &StepReport) {
        let x = r.step as f64;
        self.loss.push([x, r.loss as f64]);
        self.lr.push([x, r.lr]);
        self.tps.push([x, r.tokens_per_s]);
        for &g in &r.g {
            let g = g as usize;
            if self.g_counts.len() <= g {
                self.g_counts.resize(g + 1, 0);
            }
            self.g_counts[g] += 1;
        }
        self.t_values.extend(&r.t);
        self.step = r.step;
        self.steps = r.steps;
    }

    /// Seconds left at this session's pace.
    pub fn eta_s(&self) -> Option<f64> {
        let (t0, s0) = self.since?;
        let done = self.step.checked_sub(s0).filter(|&d| d > 0)?;
        let per = t0.elapsed().as_secs_f64() / done as f64;
        Some(per * self.steps.saturating_sub(self.step) as f64)
    }
}

/// The whole app.
pub struct DesktopApp {
    /// What persists.
    pub settings: Settings,
    /// The run.
    pub run: RunView,
    /// Attention maps being computed.
    pub attention_job: Option<Job<AttentionResult>>,
    /// The last maps.
    pub attention: Option<AttentionResult>,
    /// Why the last maps failed.
    pub attention_error: Option<String>,
    /// Evaluation being computed.
    pub eval_job: Option<Job<EvalResult>>,
    /// The last evaluation (grids and curves are kept separately).
    pub eval: EvalResult,
    /// Why the last evaluation failed.
    pub eval_error: Option<String>,
    /// Status of the Setup/Export panels' file actions.
    pub message: Option<Result<String, String>>,
    /// Screen rects of the attention heatmaps last painted, with their scale (autopilot, tests).
    pub heatmap_rects: Vec<(f32, egui::Rect)>,
    /// GPU adapter of the renderer, when eframe runs on wgpu.
    pub adapter: Option<String>,
}

impl DesktopApp {
    /// An app with these settings and nothing running.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            run: RunView::default(),
            attention_job: None,
            attention: None,
            attention_error: None,
            eval_job: None,
            eval: EvalResult::default(),
            eval_error: None,
            message: None,
            heatmap_rects: Vec::new(),
            adapter: None,
        }
    }

    /// From eframe: restores the settings saved at the last exit.
    pub fn from_creation(cc: &eframe::CreationContext<'_>) -> Self {
        let settings = cc
            .storage
            .and_then(|s| eframe::get_value::<Settings>(s, SETTINGS_KEY))
            .unwrap_or_default();
        let mut app = Self::new(settings);
        app.adapter = cc.wgpu_render_state.as_ref().map(|rs| {
            let i = rs.adapter.get_info();
            format!("{} ({:?})", i.name, i.backend)
        });
        app
    }

    /// Starts (or resumes, when the run directory holds a checkpoint) training.
    pub fn start_training(&mut self, ctx: &egui::Context) {
        let fresh = self.run.state != RunState::Idle;
        if !self.run.command(RunCmd::Start) {
            return;
        }
        if fresh {
            // A new session after a finished or failed run starts with clean plots.
            self.run = RunView {
                state: RunState::Running,
                ..RunView::default()
            };
        }
        if let Err(e) = self.settings.config.validate() {
            self.run.state = RunState::Failed;
            self.run.error = Some(format!("config: {e}"));
            return;
        }
        let dir = PathBuf::from(&self.settings.run_dir);
        let resume = dir.join("checkpoint").join("trainer_state.json").is_file();
        let ctx = ctx.clone();
        self.run.handle = Some(TrainHandle::spawn(
            self.settings.config.clone(),
            dir,
            resume,
            move || ctx.request_repaint(),
        ));
    }

    /// Drains the training thread's events.
    pub fn poll_training(&mut self) {
        let Some(h) = &self.run.handle else { return };
        let events: Vec<TrainEvent> = h.events.try_iter().collect();
        for e in events {
            match e {
                TrainEvent::Started { step, config } => {
                    self.run.step = step;
                    self.run.steps = config.steps;
                    self.run.since = Some((Instant::now(), step));
                    self.run.started_from = Some(step);
                    self.run.config = Some(*config);
                }
                TrainEvent::Step(r) => self.run.record(&r),
                TrainEvent::Saved { step, dir } => self.run.checkpoints.push((step, dir)),
                TrainEvent::Done(ckpt) => {
                    self.run.command(RunCmd::Done);
                    self.run.handle = None;
                    self.run.averaged = self.run.config.as_ref().and_then(|c| {
                        let run_dir = ckpt.parent()?;
                        let steps = c.averaged_steps();
                        (!steps.is_empty()
                            && checkpoint::averaged_steps(run_dir).as_ref() == Some(&steps))
                        .then(|| (checkpoint::average_dir(run_dir), steps))
                    });
                }
                TrainEvent::Failed(msg) => {
                    self.run.command(RunCmd::Fail);
                    self.run.error = Some(msg);
                    self.run.handle = None;
                }
            }
        }
    }

    /// Pause, resume or stop the run.
    pub fn control(&mut self, cmd: RunCmd) {
        if !self.run.command(cmd) {
            return;
        }
        if let Some(h) = &self.run.handle {
            match cmd {
                RunCmd::Pause => h.pause(),
                RunCmd::Resume => h.resume(),
                RunCmd::Stop => h.stop(),
                _ => {}
            }
        }
    }

    /// Drains the jobs.
    pub fn poll_jobs(&mut self) {
        if let Some(r) = self.attention_job.as_mut().and_then(|j| j.poll()) {
            self.attention_job = None;
            match r {
                Ok(a) => {
                    self.attention = Some(a);
                    self.attention_error = None;
                }
                Err(e) => self.attention_error = Some(e),
            }
        }
        if let Some(r) = self.eval_job.as_mut().and_then(|j| j.poll()) {
            self.eval_job = None;
            match r {
                Ok(e) => {
                    if !e.grids.is_empty() {
                        self.eval.grids = e.grids;
                    }
                    if !e.ppl.is_empty() {
                        self.eval.ppl = e.ppl;
                    }
                    self.eval_error = None;
                }
                Err(e) => self.eval_error = Some(e),
            }
        }
    }

    /// The whole UI (eframe calls this every frame; tests call it through egui_kittest).
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.poll_training();
        self.poll_jobs();
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("e2llm");
                for t in Tab::ALL {
                    ui.selectable_value(&mut self.settings.tab, t, t.label());
                }
                ui.separator();
                ui.label(format!("run: {:?}", self.run.state));
                if let Some(a) = &self.adapter {
                    ui.separator();
                    ui.label(format!("renderer: {a}"));
                }
            });
        });
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| match self.settings.tab {
                Tab::Setup => self.setup_panel(ui),
                Tab::Train => self.train_panel(ui),
                Tab::Attention => self.attention_panel(ui),
                Tab::Evaluate => self.eval_panel(ui),
                Tab::Export => self.export_panel(ui),
            });
        });
        if self.run.state.is_active() || self.attention_job.is_some() || self.eval_job.is_some() {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(250));
        }
    }

    /// Stops a live run and waits for its checkpoint (window closing).
    pub fn shutdown(&mut self) {
        if let Some(h) = self.run.handle.as_mut() {
            h.stop_and_wait();
        }
        self.poll_training();
    }

    /// A wake-up closure for background threads.
    pub fn waker(ctx: &egui::Context) -> impl Fn() + Send + Sync + 'static {
        let ctx = ctx.clone();
        move || ctx.request_repaint()
    }
}

impl eframe::App for DesktopApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        // Closing mid-run keeps the work: the trainer writes a checkpoint before the thread ends.
        self.shutdown();
    }
}
