//! PNG plots of evaluation results (plotters, bitmap backend, the bundled DejaVu Sans font):
//! a passkey heatmap (length × depth) and curves of passkey accuracy / perplexity vs length.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use e2llm_train::eval::Cell;
use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn font() {
    REGISTER.call_once(|| {
        // The font is bundled; registering it can only fail if the file were corrupt.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err(path: &Path) -> impl Fn(String) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {}: {e}", path.display())
}

/// Red (0 %) → yellow → green (100 %).
fn accuracy_color(a: f64) -> RGBColor {
    let a = a.clamp(0.0, 1.0);
    let (r, g) = if a < 0.5 {
        (230.0, 60.0 + 340.0 * a)
    } else {
        (230.0 - 380.0 * (a - 0.5), 230.0 - 40.0 * (a - 0.5))
    };
    RGBColor(r as u8, g as u8, 70)
}

/// Draws the passkey grid: a row per length, a column per depth, each cell's accuracy.
pub fn passkey_heatmap(cells: &[Cell], title: &str, path: &Path) -> Result<()> {
    font();
    let e = err(path);
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths: Vec<f64> = cells.iter().map(|c| c.depth).collect();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let (w, h) = (
        (170 + 110 * depths.len() as u32).max(460),
        140 + 56 * lengths.len() as u32,
    );
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let (nx, ny) = (depths.len() as f64, lengths.len() as f64);
    let chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..nx, 0.0..ny)
        .map_err(|x| e(x.to_string()))?;
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    let text = |s: String, (x, y): (i32, i32)| {
        root.draw(&Text::new(s, (x, y), font.clone()))
            .map_err(|x| e(x.to_string()))
    };
    for (i, d) in depths.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        text(format!("{d}"), (px - 10, py + 8))?;
    }
    let (cx, cy) = chart.backend_coord(&(nx / 2.0, 0.0));
    text("key depth".into(), (cx - 30, cy + 26))?;
    for (j, l) in lengths.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(0.0, j as f64 + 0.5));
        text(format!("{l} tok"), (px - 80, py - 7))?;
    }
    for c in cells {
        let (Some(x), Some(y)) = (
            depths.iter().position(|d| *d == c.depth),
            lengths.iter().position(|l| *l == c.length),
        ) else {
            continue;
        };
        let (x, y) = (x as f64, y as f64);
        let (p0, p1) = (
            chart.backend_coord(&(x, y + 1.0)),
            chart.backend_coord(&(x + 1.0, y)),
        );
        root.draw(&Rectangle::new(
            [(p0.0 + 1, p0.1 + 1), (p1.0 - 1, p1.1 - 1)],
            accuracy_color(c.accuracy()).filled(),
        ))
        .map_err(|x| e(x.to_string()))?;
        let (px, py) = chart.backend_coord(&(x + 0.5, y + 0.5));
        text(
            format!("{:.0}% (g={})", 100.0 * c.accuracy(), c.g),
            (px - 38, py - 7),
        )?;
    }
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(())
}

/// One named curve.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (length in tokens, value).
    pub points: Vec<(usize, f64)>,
}

/// Draws curves against length (log2 axis): passkey accuracy or perplexity.
pub fn curves(series: &[Series], title: &str, y_desc: &str, path: &Path) -> Result<()> {
    font();
    let e = err(path);
    let all: Vec<(usize, f64)> = series.iter().flat_map(|s| s.points.clone()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let x_min = all.iter().map(|p| p.0).min().unwrap_or(1).max(1) as f64;
    let x_max = all.iter().map(|p| p.0).max().unwrap_or(2).max(2) as f64;
    let y_max = all
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_top = if y_desc.contains('%') {
        105.0
    } else {
        y_max * 1.1 + 1e-9
    };
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min.log2() - 0.2)..(x_max.log2() + 0.2), 0.0..y_top)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{:.0}", v.exp2()))
        .x_desc("context length (tokens, log scale)")
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(l, v)| ((l.max(1) as f64).log2(), v.min(y_top)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(x.to_string()))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|x| e(x.to_string()))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))?;
    Ok(())
}
