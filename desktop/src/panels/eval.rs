//! Evaluation: the passkey length × depth grid and perplexity vs length, for one checkpoint
//! or two side by side.

use eframe::egui::{self, Color32, DragValue, Vec2};
use egui_plot::{Legend, Line, Plot};

use super::{error_label, field};
use crate::app::DesktopApp;
use crate::compute::{self, EvalResult};
use crate::heatmap;
use crate::worker::Job;
use e2llm_train::eval::{failure_summary, AnswerKind, Cell};

impl DesktopApp {
    pub(crate) fn eval_panel(&mut self, ui: &mut egui::Ui) {
        let s = &mut self.settings.eval;
        field(ui, "Checkpoint A", &mut s.checkpoint_a);
        field(ui, "Checkpoint B (optional)", &mut s.checkpoint_b);
        field(ui, "Passkey lengths", &mut s.lengths);
        field(ui, "Depths", &mut s.depths);
        ui.horizontal(|ui| {
            ui.label("trials");
            ui.add(DragValue::new(&mut s.trials).range(1..=100));
            ui.label("RoPE scale (auto, safe or g)");
            ui.text_edit_singleline(&mut s.scale);
            ui.checkbox(&mut s.logn, "log-n attention scaling")
                .on_hover_text(
                    "Past the training length L, multiply each query's attention logits by \
                     ln(n) / ln(L) (n = keys it sees). Not part of E²-LLM (plain PI). \
                     Always on for a model trained with it (use_logn_attn in its config).",
                );
        });
        field(ui, "PPL lengths", &mut s.ppl_lengths);
        let busy = self.eval_job.is_some();
        let backend = self.settings.config.backend.clone();
        type Body = fn(
            &crate::state::EvalSettings,
            &str,
            &crate::worker::Progress<EvalResult>,
        ) -> Result<EvalResult, String>;
        let mut start: Option<(&str, Body)> = None;
        ui.horizontal(|ui| {
            if ui
                .add_enabled(!busy, egui::Button::new("Run passkey grid"))
                .clicked()
            {
                start = Some(("passkey grid", compute::passkey));
            }
            if ui
                .add_enabled(!busy, egui::Button::new("Run perplexity"))
                .clicked()
            {
                start = Some(("perplexity", compute::ppl));
            }
        });
        if let Some((label, body)) = start {
            let settings = s.clone();
            self.eval_job = Some(Job::spawn(label, DesktopApp::waker(ui.ctx()), move |p| {
                body(&settings, &backend, p)
            }));
        }
        if let Some(j) = &self.eval_job {
            ui.add(egui::ProgressBar::new(j.progress).text(format!("{}…", j.label)));
        }
        if let Some(e) = &self.eval_error {
            error_label(ui, e);
        }
        ui.horizontal_wrapped(|ui| {
            for (name, cells) in &self.eval.grids {
                ui.vertical(|ui| {
                    ui.label(format!("passkey accuracy: {name}"));
                    grid(ui, cells);
                    answers(ui, name, cells);
                });
            }
        });
        if !self.eval.ppl.is_empty() {
            ui.label("perplexity vs length (held-out text, g = ceil(length / L))");
            Plot::new("ppl")
                .height(200.0)
                .width(500.0)
                .legend(Legend::default())
                .show(ui, |p| {
                    for (name, pts) in &self.eval.ppl {
                        let line: Vec<[f64; 2]> =
                            pts.iter().map(|q| [q.length as f64, q.ppl]).collect();
                        p.line(Line::new(name.clone(), line));
                    }
                });
        }
    }
}

/// What the wrong answers were (by kind), and every trial's key and answer, folded.
fn answers(ui: &mut egui::Ui, name: &str, cells: &[Cell]) {
    if let Some(line) = failure_summary(cells) {
        ui.label(line);
    }
    let n: usize = cells.iter().map(|c| c.answers.len()).sum();
    egui::CollapsingHeader::new(format!("answers ({n})"))
        .id_salt(("answers", name))
        .show(ui, |ui| {
            for c in cells {
                for a in &c.answers {
                    let mark = if a.kind() == AnswerKind::Correct {
                        "✔"
                    } else {
                        "✘"
                    };
                    ui.label(format!(
                        "{mark} {} tok, depth {}, g {}: key {} → {:?} (key NLL {:.2})",
                        c.length, c.depth, c.g, a.key, a.text, a.key_nll
                    ));
                }
            }
        });
}

/// Length (rows) × depth (columns) accuracy heatmap with the numbers written in.
fn grid(ui: &mut egui::Ui, cells: &[Cell]) {
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.dedup();
    let mut depths: Vec<f64> = cells.iter().map(|c| c.depth).collect();
    depths.sort_by(|a, b| a.total_cmp(b));
    depths.dedup();
    let acc = |r: usize, c: usize| {
        cells
            .iter()
            .find(|x| x.length == lengths[r] && x.depth == depths[c])
            .map_or(0.0, |x| x.accuracy() as f32)
    };
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            for l in &lengths {
                ui.add_sized(Vec2::new(60.0, 28.0), egui::Label::new(format!("{l} tok")));
            }
        });
        let size = Vec2::new(48.0 * depths.len() as f32, 28.0 * lengths.len() as f32);
        let (_, rect, _) = heatmap::paint(ui, size, lengths.len(), depths.len(), acc, None);
        let painter = ui.painter_at(rect);
        for r in 0..lengths.len() {
            for c in 0..depths.len() {
                let center =
                    rect.left_top() + Vec2::new((c as f32 + 0.5) * 48.0, (r as f32 + 0.5) * 28.0);
                painter.text(
                    center,
                    egui::Align2::CENTER_CENTER,
                    format!("{:.0}%", 100.0 * acc(r, c)),
                    egui::FontId::proportional(12.0),
                    Color32::WHITE,
                );
            }
        }
    });
    ui.label(format!(
        "depths: {}",
        depths
            .iter()
            .map(|d| format!("{d}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}
