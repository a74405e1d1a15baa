//! Training: start/pause/resume/stop, progress and ETA, live loss/lr/throughput plots,
//! histograms of the sampled scale g and offset t, the checkpoints as they are written, and a
//! finished run's averaged model (`average_last`).

use eframe::egui;
use egui_plot::{Bar, BarChart, Line, Plot};

use super::error_label;
use crate::app::DesktopApp;
use crate::state::{RunCmd, RunState};

/// Bins of the t histogram.
const T_BINS: usize = 24;

fn plot(ui: &mut egui::Ui, id: &str, name: &str, points: &[[f64; 2]], log_y: bool) {
    let pts: Vec<[f64; 2]> = points
        .iter()
        .map(|&[x, y]| [x, if log_y { y.max(1e-12).log10() } else { y }])
        .collect();
    ui.vertical(|ui| {
        ui.label(if log_y {
            format!("{name} (log10)")
        } else {
            name.to_string()
        });
        Plot::new(id)
            .height(150.0)
            .width(300.0)
            .allow_zoom(false)
            .allow_drag(false)
            .show(ui, |p| p.line(Line::new(name, pts)));
    });
}

impl DesktopApp {
    pub(crate) fn train_panel(&mut self, ui: &mut egui::Ui) {
        let state = self.run.state;
        ui.horizontal(|ui| {
            let can_start = matches!(
                state,
                RunState::Idle | RunState::Finished | RunState::Failed
            );
            let resumable = std::path::Path::new(&self.settings.run_dir)
                .join("checkpoint/trainer_state.json")
                .is_file();
            let start = if resumable { "Resume run" } else { "Start" };
            if ui
                .add_enabled(can_start, egui::Button::new(start))
                .clicked()
            {
                self.start_training(ui.ctx());
            }
            if ui
                .add_enabled(state == RunState::Running, egui::Button::new("Pause"))
                .clicked()
            {
                self.control(RunCmd::Pause);
            }
            if ui
                .add_enabled(state == RunState::Paused, egui::Button::new("Continue"))
                .clicked()
            {
                self.control(RunCmd::Resume);
            }
            let can_stop = matches!(state, RunState::Running | RunState::Paused);
            if ui
                .add_enabled(can_stop, egui::Button::new("Stop"))
                .clicked()
            {
                self.control(RunCmd::Stop);
            }
            ui.label(format!("run directory: {}", self.settings.run_dir));
        });
        let r = &self.run;
        if r.steps > 0 {
            let frac = r.step as f32 / r.steps as f32;
            let eta = r
                .eta_s()
                .map(|s| format!(", ETA {}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64))
                .unwrap_or_default();
            let last = r
                .loss
                .last()
                .map(|p| format!(", loss {:.3}", p[1]))
                .unwrap_or_default();
            ui.add(
                egui::ProgressBar::new(frac)
                    .text(format!("step {}/{}{last}{eta}", r.step, r.steps)),
            );
        } else if state == RunState::Running {
            ui.label("preparing the corpus, tokenizer and model…");
        }
        if let Some(e) = &self.run.error {
            error_label(ui, e);
        }
        if let Some(c) = &self.run.config {
            ui.label(format!(
                "method {:?}, L = {}, R = {}, batch {} × {}, {} steps, backend {}",
                c.method, c.orig_len, c.train_len, c.batch_size, c.grad_accum, c.steps, c.backend
            ));
        }
        ui.horizontal_wrapped(|ui| {
            plot(ui, "loss", "loss", &self.run.loss, false);
            plot(ui, "lr", "learning rate", &self.run.lr, true);
            plot(ui, "tps", "tokens/s", &self.run.tps, false);
        });
        ui.horizontal_wrapped(|ui| {
            self.g_histogram(ui);
            self.t_histogram(ui);
        });
        ui.heading("Checkpoints");
        if self.run.checkpoints.is_empty() {
            ui.label("none yet in this session");
        }
        for (step, dir) in self.run.checkpoints.iter().rev().take(8) {
            ui.label(format!("step {step}: {}", dir.display()));
        }
        self.averaged_model(ui);
    }

    /// A finished run that averages its last kept models: where the mean is, and a button that
    /// makes it the model the other tabs read.
    fn averaged_model(&mut self, ui: &mut egui::Ui) {
        let Some((dir, steps)) = &self.run.averaged else {
            return;
        };
        if self.run.state != RunState::Finished {
            return;
        }
        let shown = dir.display().to_string();
        ui.label(format!(
            "averaged model: {shown} (the mean of the models at steps {steps:?})"
        ));
        if ui.button("Read the averaged model").clicked() {
            let s = &mut self.settings;
            s.attention.checkpoint = shown.clone();
            s.eval.checkpoint_a = shown.clone();
            s.export_from = shown;
        }
    }

    fn g_histogram(&self, ui: &mut egui::Ui) {
        let bars: Vec<Bar> = self
            .run
            .g_counts
            .iter()
            .enumerate()
            .filter(|(g, _)| *g > 0)
            .map(|(g, &n)| Bar::new(g as f64, n as f64).width(0.8))
            .collect();
        ui.vertical(|ui| {
            ui.label("sampled scale g (rows)");
            Plot::new("g_hist")
                .height(150.0)
                .width(300.0)
                .allow_zoom(false)
                .allow_drag(false)
                .show(ui, |p| p.bar_chart(BarChart::new("g", bars)));
        });
    }

    fn t_histogram(&self, ui: &mut egui::Ui) {
        let t = &self.run.t_values;
        let max = t.iter().copied().max().unwrap_or(0) + 1;
        let mut counts = [0u64; T_BINS];
        for &v in t {
            counts[(v * T_BINS / max).min(T_BINS - 1)] += 1;
        }
        let w = max as f64 / T_BINS as f64;
        let bars: Vec<Bar> = counts
            .iter()
            .enumerate()
            .map(|(i, &n)| Bar::new((i as f64 + 0.5) * w, n as f64).width(w * 0.9))
            .collect();
        ui.vertical(|ui| {
            ui.label("sampled offset t (rows)");
            Plot::new("t_hist")
                .height(150.0)
                .width(300.0)
                .allow_zoom(false)
                .allow_drag(false)
                .show(ui, |p| p.bar_chart(BarChart::new("t", bars)));
        });
    }
}
