//! RoPE frequencies: known values, the relations between variants, yarn's and llama3's bands,
//! dynamic's threshold, and the reference rotation.

use e2llm_core::rope::{
    yarn_find_correction_dim, yarn_find_correction_range, yarn_get_mscale, yarn_linear_ramp,
};
use e2llm_core::{rope_rotate_half, RopeConfig, RopeError, RopeFreqs, RopeScaling};

fn freqs(theta: f64, scaling: RopeScaling, d: usize, max_pos: usize, seq: usize) -> RopeFreqs {
    let rope = RopeConfig::new(theta, scaling);
    rope.validate().expect("valid rope");
    rope.frequencies(d, max_pos, seq)
}

fn default_freqs(theta: f64, d: usize) -> Vec<f32> {
    freqs(theta, RopeScaling::Default, d, 4096, 4096).inv_freq
}

/// Yarn with HF's default betas and the given optional parameters.
fn yarn(
    factor: f64,
    original_max_position_embeddings: Option<usize>,
    attention_factor: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    truncate: bool,
) -> RopeScaling {
    RopeScaling::Yarn {
        factor,
        original_max_position_embeddings,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor,
        mscale,
        mscale_all_dim,
        truncate,
    }
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

#[test]
fn default_known_values() {
    for (theta, d) in [
        (10_000.0, 128),
        (10_000.0, 96),
        (500_000.0, 64),
        (10_000.0, 32),
    ] {
        let f = freqs(theta, RopeScaling::Default, d, 4096, 4096);
        assert_eq!(f.inv_freq.len(), d / 2);
        assert_eq!(f.attention_scaling, 1.0);
        assert_eq!(f.inv_freq[0], 1.0);
        for (j, &x) in f.inv_freq.iter().enumerate() {
            let exact = theta.powf(-2.0 * j as f64 / d as f64);
            // Within the f32 rounding of the exponent 2j/d (HF's float32 arange / dim).
            let tol = 2f64.powi(-23) * (1.0 + theta.ln());
            assert!(
                rel(x as f64, exact) < tol,
                "theta {theta} d {d} j {j}: {x} vs {exact}"
            );
        }
        // Strictly decreasing.
        assert!(f.inv_freq.windows(2).all(|w| w[1] < w[0]));
    }
    // Power-of-two widths: exponents are exact in f32, so the value is the correctly rounded one.
    let f = default_freqs(10_000.0, 128);
    for (j, &x) in f.iter().enumerate() {
        let p = (10_000f64.powf(2.0 * j as f64 / 128.0)) as f32;
        assert_eq!(x, 1.0f32 / p);
    }
    assert_eq!(f[1], 1.0f32 / 10_000f64.powf(1.0 / 64.0) as f32);
}

#[test]
fn exponent_is_rounded_in_f32_like_hf() {
    // d = 96: 2j/96 is not exact in binary; HF rounds it to f32 before the pow.
    let f = default_freqs(10_000.0, 96);
    for (j, &x) in f.iter().enumerate() {
        let e = (2 * j) as f32 / 96f32;
        assert_eq!(x, 1.0f32 / (10_000f64.powf(e as f64) as f32), "j {j}");
    }
}

#[test]
fn linear_is_default_over_factor() {
    let base = default_freqs(10_000.0, 64);
    for g in [1.0, 2.0, 3.0, 20.0] {
        let f = freqs(10_000.0, RopeScaling::Linear { factor: g }, 64, 128, 128);
        assert_eq!(f.attention_scaling, 1.0);
        for (a, b) in f.inv_freq.iter().zip(&base) {
            assert_eq!(*a, *b / g as f32);
        }
    }
}

#[test]
fn dynamic_unchanged_up_to_max_len_then_ntk() {
    let d = 64;
    let base = default_freqs(10_000.0, d);
    let dynamic = RopeScaling::Dynamic { factor: 4.0 };
    for seq in [1, 100, 2047, 2048] {
        assert_eq!(
            freqs(10_000.0, dynamic.clone(), d, 2048, seq).inv_freq,
            base,
            "seq {seq}"
        );
    }
    let long = freqs(10_000.0, dynamic.clone(), d, 2048, 4096).inv_freq;
    assert_eq!(long[0], 1.0);
    // base' = b · (s·ℓ/L − (s − 1))^(d/(d−2)) = 10000 · (8 − 3)^(64/62)
    let b2 = 10_000f64 * 5f64.powf(64.0 / 62.0);
    for (j, &x) in long.iter().enumerate() {
        let want = b2.powf(-2.0 * j as f64 / d as f64);
        assert!(rel(x as f64, want) < 1e-5, "j {j}: {x} vs {want}");
        if j > 0 {
            assert!(x < base[j]);
        }
    }
    // Longer sequences stretch further.
    let longer = freqs(10_000.0, dynamic, d, 2048, 8192).inv_freq;
    assert!(longer[d / 2 - 1] < long[d / 2 - 1]);
}

#[test]
fn llama3_three_bands() {
    // Llama 3.1: theta 500000, d 128, factor 8, low 1, high 4, L_o 8192.
    let (factor, lo, hi, orig) = (8.0, 1.0, 4.0, 8192usize);
    let base = default_freqs(500_000.0, 128);
    let f = freqs(
        500_000.0,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: lo,
            high_freq_factor: hi,
            original_max_position_embeddings: orig,
        },
        128,
        131_072,
        131_072,
    );
    assert_eq!(f.attention_scaling, 1.0);
    let (mut high_band, mut low_band, mut mid_band) = (0, 0, 0);
    for (j, (&x, &b)) in f.inv_freq.iter().zip(&base).enumerate() {
        let wavelen = 2.0 * std::f64::consts::PI / b as f64;
        if wavelen < orig as f64 / hi {
            assert_eq!(x, b, "high-frequency pair {j} is kept");
            high_band += 1;
        } else if wavelen > orig as f64 / lo {
            assert_eq!(x, b / 8.0, "low-frequency pair {j} is divided by factor");
            low_band += 1;
        } else {
            let smooth = (orig as f64 / wavelen - lo) / (hi - lo);
            let want = (1.0 - smooth) * b as f64 / factor + smooth * b as f64;
            assert!(rel(x as f64, want) < 1e-6, "pair {j}: {x} vs {want}");
            assert!(x < b && x > b / 8.0);
            mid_band += 1;
        }
    }
    assert!(
        high_band > 0 && low_band > 0 && mid_band > 0,
        "{high_band}/{mid_band}/{low_band}"
    );
    // Known split for Llama 3.1's settings.
    assert_eq!((high_band, mid_band, low_band), (29, 6, 29));
}

#[test]
fn yarn_correction_range_known_values() {
    // d 128, base 10000, L 4096: beta_fast 32 → dim 20.9445, beta_slow 1 → 45.0269 (Python).
    let lo = yarn_find_correction_dim(32.0, 128, 10_000.0, 4096);
    let hi = yarn_find_correction_dim(1.0, 128, 10_000.0, 4096);
    assert!(
        (lo - 20.944_481_620_636).abs() < 1e-9 && (hi - 45.026_881_273_754).abs() < 1e-9,
        "{lo} {hi}"
    );
    assert_eq!(
        yarn_find_correction_range(32.0, 1.0, 128, 10_000.0, 4096, true),
        (20.0, 46.0)
    );
    let (a, b) = yarn_find_correction_range(32.0, 1.0, 128, 10_000.0, 4096, false);
    assert_eq!((a, b), (lo, hi));
    // Clamped at 0 and at dim − 1 (HF's bound).
    // low = 16·ln(8/(64π))/(2 ln 1e4) < 0 → 0; high = ceil(0.21) = 1.
    assert_eq!(
        yarn_find_correction_range(32.0, 1.0, 16, 10_000.0, 8, true),
        (0.0, 1.0)
    );
    assert_eq!(
        yarn_find_correction_range(1e-9, 1e-12, 16, 2.0, 1 << 20, true).1,
        15.0
    );
}

#[test]
fn yarn_ramp_and_mscale() {
    let r = yarn_linear_ramp(2.0, 6.0, 8);
    assert_eq!(r, vec![0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    // min == max: HF adds 0.001.
    let r = yarn_linear_ramp(3.0, 3.0, 5);
    assert_eq!(&r[..4], &[0.0, 0.0, 0.0, 0.0]);
    assert_eq!(r[4], 1.0);
    assert_eq!(yarn_get_mscale(1.0, 1.0), 1.0);
    assert_eq!(yarn_get_mscale(0.5, 1.0), 1.0);
    assert!((yarn_get_mscale(4.0, 1.0) - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
}

#[test]
fn yarn_endpoints_and_attention_factor() {
    let (d, theta, factor, orig) = (128, 10_000.0, 8.0, 4096);
    let base = default_freqs(theta, d);
    let f = freqs(theta, RopeScaling::yarn(factor), d, orig, orig);
    assert_eq!(f.attention_scaling, (0.1 * 8f64.ln() + 1.0) as f32);
    let (low, high) = yarn_find_correction_range(32.0, 1.0, d, theta, orig, true);
    for (j, (&x, &b)) in f.inv_freq.iter().zip(&base).enumerate() {
        if (j as f64) <= low {
            assert_eq!(x, b, "pair {j} below the ramp is extrapolated (unchanged)");
        } else if (j as f64) >= high {
            assert!(
                rel(x as f64, b as f64 / factor) < 2e-7,
                "pair {j} above the ramp is interpolated"
            );
        } else {
            assert!(x < b && x > b / 8.0 * 0.999_999, "pair {j} is blended");
        }
    }
    // original_max_position_embeddings defaults to max_position_embeddings.
    let explicit = yarn(factor, Some(orig), None, None, None, true);
    assert_eq!(
        RopeScaling::yarn(factor),
        yarn(factor, None, None, None, None, true)
    );
    assert_eq!(freqs(theta, explicit, d, 4 * orig, 4 * orig), f);
}

#[test]
fn yarn_attention_factor_variants() {
    let with = |attention_factor, mscale, mscale_all_dim| {
        yarn(40.0, None, attention_factor, mscale, mscale_all_dim, true)
    };
    let att = |s| freqs(10_000.0, s, 64, 4096, 4096).attention_scaling;
    assert_eq!(att(with(Some(1.5), None, None)), 1.5);
    // DeepSeek-V2: mscale == mscale_all_dim → ratio 1.
    assert_eq!(att(with(None, Some(0.707), Some(0.707))), 1.0);
    let ratio = yarn_get_mscale(40.0, 1.0) / yarn_get_mscale(40.0, 0.5);
    assert_eq!(att(with(None, Some(1.0), Some(0.5))), ratio as f32);
    // HF: `if mscale and mscale_all_dim` — one alone, or a zero, falls back to get_mscale(factor).
    let plain = yarn_get_mscale(40.0, 1.0) as f32;
    assert_eq!(att(with(None, Some(0.707), None)), plain);
    assert_eq!(att(with(None, Some(1.0), Some(0.0))), plain);
}

#[test]
fn yarn_truncate_false_uses_fractional_range() {
    let t = freqs(10_000.0, RopeScaling::yarn(8.0), 128, 4096, 4096);
    let nt = freqs(
        10_000.0,
        yarn(8.0, None, None, None, None, false),
        128,
        4096,
        4096,
    );
    assert_ne!(t.inv_freq, nt.inv_freq);
    assert_eq!(t.inv_freq[..21], nt.inv_freq[..21]);
}

#[test]
fn validate_rejects_bad_parameters() {
    let bad = [
        RopeConfig::new(0.5, RopeScaling::Default),
        RopeConfig::new(10_000.0, RopeScaling::Linear { factor: f64::NAN }),
        RopeConfig::new(10_000.0, RopeScaling::Dynamic { factor: -1.0 }),
        RopeConfig::new(
            10_000.0,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 4.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        ),
        RopeConfig::new(10_000.0, yarn(2.0, None, Some(-1.0), None, None, true)),
    ];
    for rope in bad {
        let e = rope.validate().expect_err("invalid");
        assert!(matches!(e, RopeError::InvalidParameter { .. }), "{e}");
        assert!(e.to_string().contains(rope.scaling.rope_type()));
    }
}

#[test]
fn angle_divides_position_by_scale() {
    let f = freqs(10_000.0, RopeScaling::Default, 32, 128, 128);
    assert_eq!(f.head_dim(), 32);
    assert_eq!(f.angle(10.0, 1.0, 0), 10.0);
    assert_eq!(f.angle(10.0, 4.0, 0), 2.5);
    assert_eq!(f.angle(10.0, 4.0, 3), 2.5 * f.inv_freq[3]);
    // E²-LLM's largest training position g·L − 1 stays below L after division, for every g.
    for g in 1..=30u32 {
        let max_pos = (g as usize * 128 - 1) as f32;
        assert!(max_pos / (g as f32) < 128.0);
    }
}

#[test]
fn rotate_half_layout_and_properties() {
    let f = freqs(10_000.0, RopeScaling::Default, 8, 128, 128);
    let x: Vec<f32> = (0..8).map(|i| (i as f32 * 0.37).sin() + 0.1).collect();
    // Position 0 is the identity.
    assert_eq!(rope_rotate_half(&x, 0.0, 1.0, &f).expect("len ok"), x);
    // e_j rotates into the pair (j, j + d/2).
    let mut e1 = vec![0.0f32; 8];
    e1[1] = 1.0;
    let r = rope_rotate_half(&e1, 3.0, 1.0, &f).expect("len ok");
    let a = f.angle(3.0, 1.0, 1);
    assert_eq!(r[1], a.cos());
    assert_eq!(r[5], a.sin());
    assert!(r
        .iter()
        .enumerate()
        .all(|(i, v)| i == 1 || i == 5 || *v == 0.0));
    // Norm-preserving without attention scaling.
    let y = rope_rotate_half(&x, 17.0, 3.0, &f).expect("len ok");
    let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
    assert!((n(&x) - n(&y)).abs() < 1e-5);
    // Scale g is PI: position p at scale g equals position p/g at scale 1.
    let p = rope_rotate_half(&x, 12.0, 4.0, &f).expect("len ok");
    let q = rope_rotate_half(&x, 3.0, 1.0, &f).expect("len ok");
    assert_eq!(p, q);
    // q·k depends only on the position difference.
    let k: Vec<f32> = (0..8).map(|i| (i as f32 * 1.3).cos()).collect();
    let dot = |m: f32, n: f32| {
        let a = rope_rotate_half(&x, m, 1.0, &f).expect("len ok");
        let b = rope_rotate_half(&k, n, 1.0, &f).expect("len ok");
        a.iter().zip(&b).map(|(u, v)| u * v).sum::<f32>()
    };
    assert!((dot(10.0, 3.0) - dot(107.0, 100.0)).abs() < 1e-4);
    // Attention scaling multiplies the output.
    let yarn = freqs(10_000.0, RopeScaling::yarn(4.0), 8, 128, 128);
    let s = rope_rotate_half(&x, 0.0, 1.0, &yarn).expect("len ok");
    for (a, b) in s.iter().zip(&x) {
        assert!((a - b * yarn.attention_scaling).abs() < 1e-6);
    }
    assert_eq!(
        rope_rotate_half(&x[..7], 0.0, 1.0, &f),
        Err(RopeError::LengthMismatch {
            got: 7,
            head_dim: 8,
            half: 4
        })
    );
}
