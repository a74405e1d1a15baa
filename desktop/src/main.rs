//! `desktop-trainer`: the e2llm desktop app (`cargo run -p desktop-trainer`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::Parser;
use desktop_trainer::{autopilot::Autopilot, DesktopApp};
use eframe::egui;

/// Train with E²-LLM, watch it, and see attention at several RoPE scales side by side.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Renderer: wgpu (Vulkan/Metal/DX12) or glow (OpenGL, for machines without a working
    /// wgpu adapter).
    #[arg(long, default_value = "wgpu")]
    renderer: String,
    /// Start from the defaults instead of the settings saved at the last exit.
    #[arg(long)]
    reset: bool,
    /// Scripted session (CI, demos): train a tiny model, show attention at g = 1, 4, 16,
    /// screenshot the window into DIR/attention.png, write DIR/autopilot.json, and exit.
    #[arg(long, value_name = "DIR")]
    autopilot: Option<PathBuf>,
    /// Seconds the autopilot trains after the first step.
    #[arg(long, default_value_t = 5.0)]
    train_seconds: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let renderer = match args.renderer.as_str() {
        "wgpu" => eframe::Renderer::Wgpu,
        "glow" => eframe::Renderer::Glow,
        other => return Err(anyhow!("--renderer: `{other}` is not wgpu or glow")),
    };
    let options = eframe::NativeOptions {
        renderer,
        viewport: egui::ViewportBuilder::default()
            .with_title("e2llm desktop trainer")
            .with_inner_size([1100.0, 760.0]),
        ..Default::default()
    };
    let result = match args.autopilot {
        Some(out) => {
            std::fs::create_dir_all(&out)
                .map_err(|e| anyhow!("--autopilot {}: {e}", out.display()))?;
            let train_for = Duration::from_secs_f64(args.train_seconds.max(0.0));
            eframe::run_native(
                "e2llm-desktop-autopilot",
                eframe::NativeOptions {
                    persist_window: false,
                    ..options
                },
                Box::new(move |_| Ok(Box::new(Autopilot::new(out, train_for)))),
            )
        }
        None => {
            let reset = args.reset;
            eframe::run_native(
                "e2llm-desktop",
                options,
                Box::new(move |cc| {
                    let mut app = DesktopApp::from_creation(cc);
                    if reset {
                        app.settings = Default::default();
                    }
                    Ok(Box::new(app))
                }),
            )
        }
    };
    result.map_err(|e| {
        anyhow!(
            "could not open the window: {e} (no display? run under Xvfb, or try --renderer glow)"
        )
    })
}
