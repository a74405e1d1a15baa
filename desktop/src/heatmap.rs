//! Painting heatmaps with egui's painter: attention images and accuracy grids.

use std::ops::Range;

use eframe::egui::{self, Color32, Pos2, Rect, Sense, Stroke, StrokeKind, Vec2};

/// A perceptually ordered dark-blue → teal → yellow ramp (viridis-like) for `v` in `[0, 1]`.
pub fn ramp(v: f32) -> Color32 {
    const STOPS: [[f32; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let x = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let c = |k: usize| (STOPS[i][k] + f * (STOPS[i + 1][k] - STOPS[i][k])).round() as u8;
    Color32::from_rgb(c(0), c(1), c(2))
}

/// Where the pointer is over a heatmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Row under the pointer.
    pub row: usize,
    /// Column under the pointer.
    pub col: usize,
}

/// Paints `rows × cols` values (`value(r, c)` in `[0, 1]` after the caller's scaling) into a
/// `size` rectangle; outlines the column band `mark` (e.g. the passkey's tokens). Returns the
/// response, the painted rect and the hovered cell.
pub fn paint(
    ui: &mut egui::Ui,
    size: Vec2,
    rows: usize,
    cols: usize,
    value: impl Fn(usize, usize) -> f32,
    mark: Option<Range<usize>>,
) -> (egui::Response, Rect, Option<Cell>) {
    let (rect, response) = ui.allocate_exact_size(size, Sense::hover());
    let painter = ui.painter_at(rect);
    let (cw, ch) = (
        rect.width() / cols.max(1) as f32,
        rect.height() / rows.max(1) as f32,
    );
    for r in 0..rows {
        for c in 0..cols {
            let min = Pos2::new(rect.left() + c as f32 * cw, rect.top() + r as f32 * ch);
            // A hair wider than the cell so no seams show between cells.
            let cell = Rect::from_min_size(min, Vec2::new(cw + 0.5, ch + 0.5));
            painter.rect_filled(cell, 0.0, ramp(value(r, c)));
        }
    }
    if let Some(m) = mark.filter(|m| m.end > m.start) {
        let band = Rect::from_x_y_ranges(
            rect.left() + m.start as f32 * cw..=rect.left() + m.end as f32 * cw,
            rect.y_range(),
        );
        painter.rect_stroke(
            band,
            0.0,
            Stroke::new(1.5, Color32::RED),
            StrokeKind::Outside,
        );
    }
    let hovered = response.hover_pos().and_then(|p| {
        if !rect.contains(p) {
            return None;
        }
        let col = (((p.x - rect.left()) / cw) as usize).min(cols.saturating_sub(1));
        let row = (((p.y - rect.top()) / ch) as usize).min(rows.saturating_sub(1));
        Some(Cell { row, col })
    });
    if let Some(h) = hovered {
        let min = Pos2::new(
            rect.left() + h.col as f32 * cw,
            rect.top() + h.row as f32 * ch,
        );
        painter.rect_stroke(
            Rect::from_min_size(min, Vec2::new(cw, ch)),
            0.0,
            Stroke::new(1.0, Color32::WHITE),
            StrokeKind::Inside,
        );
    }
    (response, rect, hovered)
}

/// The index range `[b·n/bins, (b+1)·n/bins)` of bin `b` (the pooling rule of the map kernel).
pub fn bin(b: usize, n: usize, bins: usize) -> Range<usize> {
    b * n / bins.max(1)..(b + 1) * n / bins.max(1)
}

/// The bins that hold any of the items `span` (of `n`), as a column range.
pub fn bins_of(span: &Range<usize>, n: usize, bins: usize) -> Range<usize> {
    let find = |i: usize| {
        (0..bins)
            .find(|&b| bin(b, n, bins).contains(&i))
            .unwrap_or(0)
    };
    if span.is_empty() || n == 0 {
        return 0..0;
    }
    find(span.start)..find(span.end - 1) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_item_once_and_find_spans() {
        for (n, bins) in [(37, 10), (10, 10), (100, 7), (5, 1)] {
            let mut seen = vec![0; n];
            for b in 0..bins {
                for i in bin(b, n, bins) {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "n {n} bins {bins}: {seen:?}");
        }
        assert_eq!(bins_of(&(0..1), 37, 10), 0..1);
        assert_eq!(bins_of(&(36..37), 37, 10), 9..10);
        assert_eq!(bins_of(&(8..12), 37, 10), 2..4);
        assert_eq!(bins_of(&(3..3), 37, 10), 0..0);
    }

    #[test]
    fn ramp_runs_dark_to_bright() {
        let lum = |c: Color32| c.r() as u32 + c.g() as u32 + c.b() as u32;
        let steps: Vec<u32> = (0..=10).map(|i| lum(ramp(i as f32 / 10.0))).collect();
        assert!(steps.first() < steps.last(), "{steps:?}");
        assert_eq!(ramp(-1.0), ramp(0.0));
        assert_eq!(ramp(2.0), ramp(1.0));
    }
}
