//! Run setup: model size, L and R, method and its parameters, schedule, device; TOML in/out.

use std::path::Path;

use eframe::egui::{self, DragValue};

use e2llm_model::backend::BACKENDS;
use e2llm_model::Kernels;
use e2llm_train::{Method, TrainConfig};

use super::{error_label, field};
use crate::app::DesktopApp;

/// Method names in the order shown.
const METHODS: [&str; 7] = [
    "none",
    "pi",
    "pose",
    "yarn",
    "e2llm",
    "e2llm-no-t",
    "e2llm-no-g",
];

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::None => "none",
        Method::Pi { .. } => "pi",
        Method::Pose { .. } => "pose",
        Method::Yarn { .. } => "yarn",
        Method::E2llm { .. } => "e2llm",
        Method::E2llmNoT { .. } => "e2llm-no-t",
        Method::E2llmNoG { .. } => "e2llm-no-g",
    }
}

/// A method of that name with sensible parameters (20 = the paper's g_max for 8× targets).
fn method_named(name: &str) -> Method {
    match name {
        "pi" => Method::Pi { g: 4 },
        "pose" => Method::Pose { s: 4 },
        "yarn" => Method::Yarn { factor: 4.0 },
        "e2llm" => Method::e2llm(20),
        "e2llm-no-t" => Method::E2llmNoT { g_max: 20 },
        "e2llm-no-g" => Method::E2llmNoG {
            g: 4,
            sinks: e2llm_core::positions::DEFAULT_SINKS,
            sinks_max: 0,
        },
        _ => Method::None,
    }
}

/// One grid row for a method's integer scale (g, s or g_max): 1 to 256.
fn scale_field(ui: &mut egui::Ui, label: &str, value: &mut u32) {
    ui.label(label);
    ui.add(DragValue::new(value).range(1..=256));
    ui.end_row();
}

/// The E²-LLM methods' leading tokens kept at their positions (at most the window).
fn sinks_field(ui: &mut egui::Ui, sinks: &mut usize, train_len: usize) {
    ui.label("sink tokens (kept at 0..n)");
    ui.add(DragValue::new(sinks).range(0..=train_len));
    ui.end_row();
}

/// The top of a drawn kept-token count `U{sinks..=sinks_max}` (0: always `sinks`).
fn sinks_max_field(ui: &mut egui::Ui, sinks_max: &mut usize, train_len: usize) {
    ui.label("sink tokens drawn up to (0: fixed)");
    ui.add(DragValue::new(sinks_max).range(0..=train_len));
    ui.end_row();
}

impl DesktopApp {
    pub(crate) fn setup_panel(&mut self, ui: &mut egui::Ui) {
        let locked = self.run.state.is_active();
        if locked {
            ui.label("A run is active: settings are read-only until it stops.");
        }
        ui.add_enabled_ui(!locked, |ui| self.config_form(ui));
        ui.separator();
        ui.heading("Run directory and config file");
        field(ui, "Run directory", &mut self.settings.run_dir);
        field(ui, "Config file (TOML)", &mut self.settings.config_path);
        ui.horizontal(|ui| {
            if ui.button("Load config").clicked() {
                self.message = Some(
                    TrainConfig::from_file(Path::new(&self.settings.config_path))
                        .map(|c| {
                            self.settings.config = c;
                            format!("loaded {}", self.settings.config_path)
                        })
                        .map_err(|e| e.to_string()),
                );
            }
            if ui.button("Save config").clicked() {
                self.message = Some(self.save_config());
            }
            if ui.button("Defaults").clicked() {
                self.settings.config = crate::state::Settings::default().config;
            }
        });
        match &self.message {
            Some(Ok(m)) => {
                ui.label(m);
            }
            Some(Err(e)) => error_label(ui, e),
            None => {}
        }
        if let Err(e) = self.settings.config.validate() {
            error_label(ui, &format!("config: {e}"));
        }
    }

    fn save_config(&self) -> Result<String, String> {
        let path = Path::new(&self.settings.config_path);
        self.settings
            .config
            .validate()
            .map_err(|e| format!("config: {e}"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.settings.config.to_toml())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(format!("saved {}", path.display()))
    }

    fn config_form(&mut self, ui: &mut egui::Ui) {
        let c = &mut self.settings.config;
        ui.heading("Model");
        egui::Grid::new("model").num_columns(2).show(ui, |ui| {
            let m = &mut c.model;
            ui.label("hidden size");
            ui.add(DragValue::new(&mut m.hidden_size).range(8..=4096));
            ui.end_row();
            ui.label("layers");
            ui.add(DragValue::new(&mut m.num_hidden_layers).range(1..=64));
            ui.end_row();
            ui.label("heads / KV heads");
            ui.horizontal(|ui| {
                ui.add(DragValue::new(&mut m.num_attention_heads).range(1..=64));
                ui.add(DragValue::new(&mut m.num_key_value_heads).range(1..=64));
            });
            ui.end_row();
            ui.label("MLP size");
            ui.add(DragValue::new(&mut m.intermediate_size).range(8..=16384));
            ui.end_row();
            ui.label("vocabulary (BPE trained on the corpus)");
            ui.add(DragValue::new(&mut m.vocab_size).range(64..=65536));
            ui.end_row();
            ui.label("RoPE θ");
            ui.add(DragValue::new(&mut m.rope_theta).range(1.0..=1e7));
            ui.end_row();
        });
        ui.heading("Lengths and method");
        egui::Grid::new("method").num_columns(2).show(ui, |ui| {
            ui.label("L (original length)");
            ui.add(DragValue::new(&mut c.orig_len).range(8..=65536));
            ui.end_row();
            ui.label("R (training window)");
            ui.add(DragValue::new(&mut c.train_len).range(8..=65536));
            ui.end_row();
            ui.label("method");
            let current = method_name(&c.method);
            egui::ComboBox::from_id_salt("method")
                .selected_text(current)
                .show_ui(ui, |ui| {
                    for name in METHODS {
                        if ui.selectable_label(current == name, name).clicked() && current != name {
                            c.method = method_named(name);
                        }
                    }
                });
            ui.end_row();
            match &mut c.method {
                Method::None => {}
                Method::Pi { g } => scale_field(ui, "g (fixed scale)", g),
                Method::E2llmNoG {
                    g,
                    sinks,
                    sinks_max,
                } => {
                    scale_field(ui, "g (fixed scale)", g);
                    sinks_field(ui, sinks, c.train_len);
                    sinks_max_field(ui, sinks_max, c.train_len);
                }
                Method::Pose { s } => scale_field(ui, "s (extension factor)", s),
                Method::Yarn { factor } => {
                    ui.label("factor");
                    ui.add(DragValue::new(factor).range(1.0..=256.0));
                    ui.end_row();
                }
                Method::E2llm {
                    g_max,
                    per_batch,
                    sinks,
                    sinks_max,
                } => {
                    scale_field(ui, "g_max", g_max);
                    ui.label("draw (g, t) per batch");
                    ui.checkbox(per_batch, "");
                    ui.end_row();
                    sinks_field(ui, sinks, c.train_len);
                    sinks_max_field(ui, sinks_max, c.train_len);
                }
                Method::E2llmNoT { g_max } => scale_field(ui, "g_max", g_max),
            }
            ui.label("start from checkpoint (empty: scratch)");
            let mut init = c.init.clone().unwrap_or_default();
            if ui.text_edit_singleline(&mut init).changed() {
                c.init = (!init.trim().is_empty()).then_some(init);
            }
            ui.end_row();
        });
        ui.heading("Schedule");
        egui::Grid::new("schedule").num_columns(2).show(ui, |ui| {
            ui.label("steps");
            ui.add(DragValue::new(&mut c.steps).range(1..=1_000_000));
            ui.end_row();
            ui.label("batch size / grad accumulation");
            ui.horizontal(|ui| {
                ui.add(DragValue::new(&mut c.batch_size).range(1..=1024));
                ui.add(DragValue::new(&mut c.grad_accum).range(1..=1024));
            });
            ui.end_row();
            ui.label("learning rate");
            ui.add(DragValue::new(&mut c.lr).speed(1e-4).range(1e-6..=1.0));
            ui.end_row();
            ui.label("warmup steps");
            ui.add(DragValue::new(&mut c.warmup_steps).range(0..=1_000_000));
            ui.end_row();
            ui.label("passkey share");
            ui.add(
                DragValue::new(&mut c.passkey_share)
                    .speed(0.01)
                    .range(0.0..=1.0),
            );
            ui.end_row();
            ui.label("log-n attention in training");
            ui.checkbox(&mut c.logn, "").on_hover_text(
                "Multiply each query's logits by ln(p + 1) / ln(L) past L (p: its position \
                     before dividing by g). A variant, not the paper's; the model is then read \
                     with log-n at every length.",
            );
            ui.end_row();
            ui.label("checkpoint every (steps, 0 = end only)");
            ui.add(DragValue::new(&mut c.checkpoint_every).range(0..=1_000_000));
            ui.end_row();
            ui.label("keep the model every (steps, 0 = off)");
            ui.add(DragValue::new(&mut c.keep_every).range(0..=1_000_000));
            ui.end_row();
            ui.label("average the last kept models (0 = off)")
                .on_hover_text(
                    "At the end, also write average/: the element-wise mean of the last this many \
                 kept models (keep_every apart, the final step's among them). The quickstart \
                 reads the mean of its last 3 quarter-run models. Needs keep_every to divide \
                 steps.",
                );
            ui.add(DragValue::new(&mut c.average_last).range(0..=64));
            ui.end_row();
            ui.label("seed");
            ui.add(DragValue::new(&mut c.seed));
            ui.end_row();
            ui.label("device");
            egui::ComboBox::from_id_salt("backend")
                .selected_text(c.backend.clone())
                .show_ui(ui, |ui| {
                    for b in BACKENDS {
                        ui.selectable_value(&mut c.backend, b.to_string(), *b);
                    }
                });
            ui.end_row();
            ui.label("kernels").on_hover_text(
                "auto: the fused WGSL kernels (attention, RMSNorm, SwiGLU, loss) on wgpu; \
                 on the CPU the fused attention (written for a CPU core) and plain burn ops \
                 for the rest; fused: the kernels everywhere (the others' CPU twins on the \
                 CPU); reference: plain burn ops everywhere",
            );
            egui::ComboBox::from_id_salt("kernels")
                .selected_text(c.kernels.to_string())
                .show_ui(ui, |ui| {
                    for k in [Kernels::Auto, Kernels::Fused, Kernels::Reference] {
                        ui.selectable_value(&mut c.kernels, k, k.to_string());
                    }
                });
            ui.end_row();
        });
    }
}
