//! One file per tab; each is an `impl DesktopApp` block.

mod attention;
mod eval;
mod export;
mod setup;
mod train;

use eframe::egui;

/// An error line in the UI's error colour.
pub(crate) fn error_label(ui: &mut egui::Ui, msg: &str) {
    ui.colored_label(ui.visuals().error_fg_color, msg);
}

/// A labelled text field.
pub(crate) fn field(ui: &mut egui::Ui, label: &str, value: &mut String) -> egui::Response {
    ui.horizontal(|ui| {
        ui.label(label);
        ui.text_edit_singleline(value)
    })
    .inner
}
