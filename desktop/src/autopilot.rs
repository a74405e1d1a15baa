//! A scripted session for CI and demos (`desktop-trainer --autopilot DIR`): train a tiny model
//! for a few seconds, stop (the trainer writes its checkpoint), open the attention panel at
//! g = 1, 4, 16, take a screenshot of the real window, write DIR/attention.png and
//! DIR/autopilot.json (status, heatmap rectangles in pixels), and close.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;
use serde::Serialize;

use e2llm_train::{Method, ModelShape, TrainConfig};

use crate::app::DesktopApp;
use crate::state::{PromptSource, RunCmd, RunState, Settings, Tab};

/// Give up after this long in any phase.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// The tiny run the autopilot trains.
pub fn tiny_config() -> TrainConfig {
    TrainConfig {
        model: ModelShape {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            intermediate_size: 64,
            vocab_size: 512,
            rope_theta: 10_000.0,
        },
        orig_len: 64,
        train_len: 64,
        method: Method::e2llm(8),
        batch_size: 4,
        steps: 100_000,
        lr: 3e-3,
        warmup_steps: 5,
        passkey_share: 0.0,
        checkpoint_every: 0,
        ..TrainConfig::default()
    }
}

/// Settings for a session writing under `out`.
pub fn settings(out: &Path) -> Settings {
    let mut s = Settings {
        config: tiny_config(),
        run_dir: out.join("run").display().to_string(),
        ..Settings::default()
    };
    s.attention.checkpoint = out.join("run/checkpoint").display().to_string();
    s.attention.prompt = PromptSource::Passkey {
        length: 256,
        depth: 0.5,
        key: 38142,
    };
    s.attention.scales = "1, 4, 16".into();
    s.attention.size = 48;
    // The last layer: the first one of a model this young reads mostly by content.
    s.attention.layer = s.config.model.num_hidden_layers - 1;
    s.tab = Tab::Train;
    s
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Train,
    Stopping,
    Attention,
    Settle(u32),
    Shot,
    Close,
}

#[derive(Debug, Serialize)]
struct HeatmapBox {
    g: f32,
    /// `[x0, y0, x1, y1]` in screenshot pixels.
    rect: [f32; 4],
}

#[derive(Debug, Serialize, Default)]
struct Report {
    status: String,
    message: String,
    steps_trained: usize,
    checkpoint: String,
    pixels_per_point: f32,
    screenshot: String,
    pooled_on: String,
    heatmaps: Vec<HeatmapBox>,
}

/// Wraps the app and drives it.
pub struct Autopilot {
    app: DesktopApp,
    out: PathBuf,
    train_for: Duration,
    phase: Phase,
    since: Instant,
    report: Report,
    shot_done: Arc<Mutex<Option<Result<(), String>>>>,
}

impl Autopilot {
    /// A session writing to `out`, training for `train_for` once the first step lands.
    pub fn new(out: PathBuf, train_for: Duration) -> Self {
        let _ = std::fs::remove_dir_all(out.join("run"));
        let app = DesktopApp::new(settings(&out));
        Self {
            app,
            out,
            train_for,
            phase: Phase::Train,
            since: Instant::now(),
            report: Report::default(),
            shot_done: Arc::new(Mutex::new(None)),
        }
    }

    fn goto(&mut self, p: Phase) {
        self.phase = p;
        self.since = Instant::now();
    }

    fn fail(&mut self, ctx: &egui::Context, msg: String) {
        eprintln!("[autopilot] FAILED: {msg}");
        self.report.status = "error".into();
        self.report.message = msg;
        self.write_report();
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        self.phase = Phase::Close;
    }

    fn write_report(&self) {
        let path = self.out.join("autopilot.json");
        let text = serde_json::to_string_pretty(&self.report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("[autopilot] cannot write {}: {e}", path.display());
        }
    }

    fn drive(&mut self, ctx: &egui::Context) {
        if self.phase != Phase::Close && self.since.elapsed() > PHASE_LIMIT {
            let p = self.phase;
            return self.fail(ctx, format!("phase {p:?} took longer than {PHASE_LIMIT:?}"));
        }
        if let Some(e) = self.app.run.error.clone() {
            return self.fail(ctx, format!("training: {e}"));
        }
        if let Some(e) = self.app.attention_error.clone() {
            return self.fail(ctx, format!("attention: {e}"));
        }
        match self.phase {
            Phase::Train => {
                if self.app.run.state == RunState::Idle {
                    eprintln!(
                        "[autopilot] training a tiny model in {}",
                        self.app.settings.run_dir
                    );
                    self.app.start_training(ctx);
                    self.since = Instant::now();
                }
                // Count from the first step: corpus and tokenizer preparation come first.
                if self.app.run.step == 0 {
                    self.since = Instant::now();
                } else if self.since.elapsed() >= self.train_for {
                    eprintln!("[autopilot] stopping at step {}", self.app.run.step);
                    self.app.control(RunCmd::Stop);
                    self.goto(Phase::Stopping);
                }
            }
            Phase::Stopping => {
                if self.app.run.state == RunState::Finished {
                    self.report.steps_trained = self.app.run.step;
                    self.report.checkpoint = self.app.settings.attention.checkpoint.clone();
                    self.app.settings.tab = Tab::Attention;
                    let s = self.app.settings.attention.clone();
                    // The attention panel on wgpu when an adapter opens (the WGSL map kernel; lavapipe
                    // in CI), else on the CPU.
                    let backend = if e2llm_model::kernels::Gpu::new().is_ok() {
                        "wgpu"
                    } else {
                        "cpu"
                    };
                    let backend = backend.to_string();
                    self.app.attention_job = Some(crate::worker::Job::spawn(
                        "attention maps",
                        DesktopApp::waker(ctx),
                        move |p| crate::compute::attention(&s, &backend, p),
                    ));
                    eprintln!(
                        "[autopilot] computing attention at g = {}",
                        self.app.settings.attention.scales
                    );
                    self.goto(Phase::Attention);
                }
            }
            Phase::Attention => {
                if self.app.attention.is_some() && self.app.attention_job.is_none() {
                    self.goto(Phase::Settle(0));
                }
            }
            Phase::Settle(n) => {
                // A few frames so layout and fonts have settled before the picture.
                if n < 5 {
                    self.phase = Phase::Settle(n + 1);
                } else {
                    let ppp = ctx.pixels_per_point();
                    self.report.pooled_on = self
                        .app
                        .attention
                        .as_ref()
                        .map(|a| a.pooled_on.clone())
                        .unwrap_or_default();
                    self.report.pixels_per_point = ppp;
                    self.report.heatmaps = self
                        .app
                        .heatmap_rects
                        .iter()
                        .map(|(g, r)| HeatmapBox {
                            g: *g,
                            rect: [r.min.x * ppp, r.min.y * ppp, r.max.x * ppp, r.max.y * ppp],
                        })
                        .collect();
                    let path = self.out.join("attention.png");
                    self.report.screenshot = path.display().to_string();
                    let done = self.shot_done.clone();
                    let wake = ctx.clone();
                    ctx.request_screenshot(move |img| {
                        let r = write_png(&path, &img);
                        if let Ok(mut d) = done.lock() {
                            *d = Some(r);
                        }
                        wake.request_repaint();
                    });
                    self.goto(Phase::Shot);
                }
            }
            Phase::Shot => {
                let done = self.shot_done.lock().ok().and_then(|mut d| d.take());
                match done {
                    Some(Ok(())) => {
                        self.report.status = "ok".into();
                        eprintln!("[autopilot] screenshot {}", self.report.screenshot);
                        self.write_report();
                        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                        self.phase = Phase::Close;
                    }
                    Some(Err(e)) => self.fail(ctx, format!("screenshot: {e}")),
                    None => {}
                }
            }
            Phase::Close => {}
        }
        ctx.request_repaint_after(Duration::from_millis(100));
    }
}

/// Writes an egui screenshot as an RGBA PNG.
pub fn write_png(path: &Path, img: &egui::ColorImage) -> Result<(), String> {
    let [w, h] = img.size;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let bytes: Vec<u8> = img.pixels.iter().flat_map(|c| c.to_array()).collect();
    enc.write_header()
        .and_then(|mut wr| wr.write_image_data(&bytes))
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl eframe::App for Autopilot {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.app.show(ui);
        let ctx = ui.ctx().clone();
        self.drive(&ctx);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.app.shutdown();
    }
}
