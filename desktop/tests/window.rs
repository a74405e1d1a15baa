//! The real binary in a real window: under Xvfb (on lavapipe when there is no GPU) the
//! autopilot trains a tiny model for a few seconds, opens the attention panel at g = 1, 4, 16,
//! and screenshots the window. The picture must not be blank and the three heatmaps must
//! differ. The screenshot is kept under target/test-artifacts/.

use std::path::{Path, PathBuf};
use std::process::Command;

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts")
}

fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("screenshot"),
    ));
    let mut reader = dec.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("png data");
    assert_eq!(info.color_type, png::ColorType::Rgba);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// The RGB of every pixel in `rect` (pixels, 2 px inset).
fn crop(img: &(usize, usize, Vec<u8>), rect: [f64; 4]) -> Vec<[f64; 3]> {
    let (w, h, px) = img;
    let x0 = (rect[0].ceil() as usize + 2).min(*w);
    let x1 = (rect[2].floor() as usize).saturating_sub(2).min(*w);
    let y0 = (rect[1].ceil() as usize + 2).min(*h);
    let y1 = (rect[3].floor() as usize).saturating_sub(2).min(*h);
    let mut out = Vec::new();
    for y in y0..y1 {
        for x in x0..x1 {
            let p = &px[(y * w + x) * 4..][..3];
            out.push([p[0] as f64, p[1] as f64, p[2] as f64]);
        }
    }
    out
}

/// Standard deviation of the luminance.
fn spread(px: &[[f64; 3]]) -> f64 {
    let v: Vec<f64> = px.iter().map(|p| (p[0] + p[1] + p[2]) / 3.0).collect();
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

#[test]
fn real_window_trains_and_shows_attention_at_three_scales() {
    let has = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !has("xvfb-run") {
        eprintln!("skipped: xvfb-run is not installed (scripts/setup.sh installs xvfb)");
        return;
    }
    let out = std::env::temp_dir().join(format!("e2llm-desktop-window-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("out dir");
    let status = Command::new("timeout")
        .args(["600", "xvfb-run", "-a", "-s", "-screen 0 1280x860x24"])
        .arg(env!("CARGO_BIN_EXE_desktop-trainer"))
        .arg("--autopilot")
        .arg(&out)
        .args(["--train-seconds", "20"])
        .status()
        .expect("run xvfb-run");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("autopilot.json")).expect("autopilot.json"),
    )
    .expect("report json");
    assert!(
        status.success(),
        "desktop-trainer exited with {status}; report {report}"
    );
    assert_eq!(report["status"], "ok", "{report}");
    assert!(
        report["steps_trained"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    // With an adapter (lavapipe in CI) the maps come from shaders/attention_map.wgsl.
    eprintln!("pooled by: {}", report["pooled_on"]);
    assert!(
        report["pooled_on"]
            .as_str()
            .unwrap_or("")
            .contains("attention_map.wgsl"),
        "{report}"
    );

    let shot = out.join("attention.png");
    let img = read_png(&shot);
    std::fs::create_dir_all(artifacts()).expect("artifacts dir");
    let kept = artifacts().join("desktop-attention.png");
    std::fs::copy(&shot, &kept).expect("keep screenshot");
    eprintln!("screenshot: {} ({}×{})", kept.display(), img.0, img.1);

    let whole = crop(&img, [0.0, 0.0, img.0 as f64, img.1 as f64]);
    assert!(spread(&whole) > 10.0, "the window looks blank");
    let maps: Vec<(f64, Vec<[f64; 3]>)> = report["heatmaps"]
        .as_array()
        .expect("heatmaps")
        .iter()
        .map(|m| {
            let r: Vec<f64> = m["rect"]
                .as_array()
                .expect("rect")
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0))
                .collect();
            (
                m["g"].as_f64().unwrap_or(0.0),
                crop(&img, [r[0], r[1], r[2], r[3]]),
            )
        })
        .collect();
    assert_eq!(
        maps.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![1.0, 4.0, 16.0]
    );
    for (g, px) in &maps {
        assert!(px.len() > 1000, "heatmap g = {g} is off-screen");
        assert!(spread(px) > 3.0, "heatmap g = {g} is flat");
    }
    // Identical data renders to identical pixels, so any visible difference is the scale's.
    // Share of pixels whose colour moved by more than a just-visible step (sum over RGB > 15).
    let moved = |a: &[[f64; 3]], b: &[[f64; 3]]| {
        a.iter()
            .zip(b)
            .filter(|(x, y)| (0..3).map(|c| (x[c] - y[c]).abs()).sum::<f64>() > 15.0)
            .count() as f64
            / a.len() as f64
    };
    let (d4, d16) = (moved(&maps[0].1, &maps[1].1), moved(&maps[0].1, &maps[2].1));
    eprintln!(
        "pixels that change colour vs g = 1: g = 4 {:.1} %, g = 16 {:.1} %",
        100.0 * d4,
        100.0 * d16
    );
    assert!(d16 > 0.01, "g = 1 and g = 16 look the same ({d16:.4})");
    assert!(d4 > 0.005, "g = 1 and g = 4 look the same ({d4:.4})");
}
