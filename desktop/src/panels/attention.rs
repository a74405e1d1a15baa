//! Attention at several RoPE scales, side by side: one head of one layer over the whole
//! prompt, pooled to a fixed image by `Llama::attention_map` at any length. Hover shows the
//! tokens and the weight; the passkey's tokens are outlined in red.

use eframe::egui::{self, DragValue, Vec2};

use super::{error_label, field};
use crate::app::DesktopApp;
use crate::compute;
use crate::heatmap::{self, bin, bins_of};
use crate::state::PromptSource;
use crate::worker::Job;

/// Side of each heatmap on screen, in points.
const SIDE: f32 = 300.0;

/// Colour position of a weight: log10 from 1e-3 (0) to 1 (1); masked cells (0) are dark.
fn log_scale(w: f32) -> f32 {
    if w > 0.0 {
        ((w.log10() + 3.0) / 3.0).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn snippet(tokens: &[String], range: std::ops::Range<usize>) -> String {
    let text: String = tokens[range.clone()].concat();
    let text = text.replace('\n', "\\n");
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

impl DesktopApp {
    pub(crate) fn attention_panel(&mut self, ui: &mut egui::Ui) {
        let s = &mut self.settings.attention;
        field(ui, "Checkpoint", &mut s.checkpoint);
        ui.horizontal(|ui| {
            let passkey = matches!(s.prompt, PromptSource::Passkey { .. });
            if ui.radio(passkey, "passkey prompt").clicked() && !passkey {
                s.prompt = PromptSource::Passkey {
                    length: 512,
                    depth: 0.5,
                    key: 38142,
                };
            }
            if ui.radio(!passkey, "any text").clicked() && passkey {
                s.prompt = PromptSource::Text("Once upon a time".into());
            }
        });
        match &mut s.prompt {
            PromptSource::Passkey { length, depth, key } => {
                ui.horizontal(|ui| {
                    ui.label("length (tokens)");
                    ui.add(DragValue::new(length).range(16..=65536));
                    ui.label("depth");
                    ui.add(DragValue::new(depth).speed(0.05).range(0.0..=1.0));
                    ui.label("key");
                    ui.add(DragValue::new(key).range(1..=50000));
                });
            }
            PromptSource::Text(t) => {
                ui.add(egui::TextEdit::multiline(t).desired_rows(3));
            }
        }
        ui.horizontal(|ui| {
            ui.label("layer");
            ui.add(DragValue::new(&mut s.layer).range(0..=255));
            ui.label("head");
            ui.add(DragValue::new(&mut s.head).range(0..=255));
            ui.label("scales g");
            ui.text_edit_singleline(&mut s.scales);
            ui.label("cells");
            ui.add(DragValue::new(&mut s.size).range(4..=256));
        });
        let busy = self.attention_job.is_some();
        if ui
            .add_enabled(!busy, egui::Button::new("Compute attention"))
            .clicked()
        {
            let settings = s.clone();
            let backend = self.settings.config.backend.clone();
            self.attention_job = Some(Job::spawn(
                "attention maps",
                DesktopApp::waker(ui.ctx()),
                move |p| compute::attention(&settings, &backend, p),
            ));
        }
        if let Some(j) = &self.attention_job {
            ui.add(egui::ProgressBar::new(j.progress).text(format!("computing {}…", j.label)));
        }
        if let Some(e) = &self.attention_error {
            error_label(ui, e);
        }
        self.heatmap_rects.clear();
        let Some(a) = &self.attention else {
            ui.label("Pick a checkpoint and press Compute.");
            return;
        };
        let n = a.tokens.len();
        ui.label(format!(
            "layer {}, head {}: {n} tokens, model trained at L = {}; colour = log10 of the mean weight of \
             each query-bin × key-bin cell, 1e-3 (dark) to 1 (yellow) (rows: queries, columns: keys). Red band: the passkey line.",
            a.layer, a.head, a.orig_len
        ));
        ui.label(format!("pooled by {}", a.pooled_on));
        let mut rects = Vec::new();
        ui.horizontal_wrapped(|ui| {
            for (g, img) in &a.maps {
                ui.vertical(|ui| {
                    ui.label(format!(
                        "g = {g} (positions / {g}: {:.0} of {} trained)",
                        n as f32 / g,
                        a.orig_len
                    ));
                    let mark = a.key_span.as_ref().map(|k| bins_of(k, n, img.cols));
                    let (resp, rect, hover) = heatmap::paint(
                        ui,
                        Vec2::splat(SIDE),
                        img.rows,
                        img.cols,
                        |r, c| log_scale(img.at(r, c)),
                        mark,
                    );
                    rects.push((*g, rect));
                    if let Some(h) = hover {
                        let qs = bin(h.row, n, img.rows);
                        let ks = bin(h.col, n, img.cols);
                        let text = format!(
                            "queries {}..{} «{}»\nkeys {}..{} «{}»\nweight {:.4}",
                            qs.start,
                            qs.end,
                            snippet(&a.tokens, qs.clone()),
                            ks.start,
                            ks.end,
                            snippet(&a.tokens, ks.clone()),
                            img.at(h.row, h.col)
                        );
                        resp.on_hover_text(text);
                    }
                });
            }
        });
        self.heatmap_rects = rects;
        if let (Some(k), Some(key)) = (&a.key_span, a.key) {
            ui.label(format!(
                "passkey {key} at tokens {}..{} «{}»",
                k.start,
                k.end,
                snippet(&a.tokens, k.clone())
            ));
        }
    }
}
