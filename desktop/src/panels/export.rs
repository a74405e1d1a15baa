//! Export: a checkpoint's HF files (config.json, model.safetensors, tokenizer.json) as a
//! directory that transformers and the web demo load as-is.

use std::path::Path;

use eframe::egui;

use super::{error_label, field};
use crate::app::DesktopApp;
use crate::compute;

impl DesktopApp {
    pub(crate) fn export_panel(&mut self, ui: &mut egui::Ui) {
        ui.label(
            "Copies config.json, model.safetensors and tokenizer.json: the directory loads in \
             transformers (LlamaForCausalLM.from_pretrained) and in the web demo.",
        );
        field(ui, "Checkpoint", &mut self.settings.export_from);
        field(ui, "Export to", &mut self.settings.export_to);
        if ui.button("Export model").clicked() {
            self.message = Some(
                compute::export(
                    Path::new(&self.settings.export_from),
                    Path::new(&self.settings.export_to),
                )
                .map(|p| format!("exported to {}", p.display())),
            );
        }
        match &self.message {
            Some(Ok(m)) => {
                ui.label(m);
            }
            Some(Err(e)) => error_label(ui, e),
            None => {}
        }
    }
}
