//! E²-LLM and PoSE samplers: ranges, distributions, sinks, determinism.

use e2llm_core::{
    e2llm_positions, E2LlmSampler, E2Sample, Granularity, PoseSampler, PositionError,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Pearson's chi² of `counts` against `n` draws spread evenly over them.
fn chi2(counts: &[usize], n: usize) -> f64 {
    let expected = n as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

#[test]
fn g_is_uniform_over_1_to_g_max() {
    let s = E2LlmSampler::new(20, 128, 128).expect("valid");
    let mut r = rng(7);
    let n = 40_000;
    let mut counts = [0usize; 21];
    for _ in 0..n {
        let E2Sample { g, .. } = s.sample(&mut r);
        assert!((1..=20).contains(&g));
        counts[g as usize] += 1;
    }
    assert_eq!(counts[0], 0);
    let chi2 = chi2(&counts[1..], n);
    // 19 degrees of freedom: P(chi² > 43.8) = 0.001.
    assert!(chi2 < 43.8, "chi² = {chi2}, counts {counts:?}");
}

#[test]
fn t_stays_in_range_and_hits_both_ends() {
    let (l, r_len) = (16, 12);
    let s = E2LlmSampler::new(3, l, r_len).expect("valid");
    let mut r = rng(11);
    let mut hit_zero = [false; 4];
    let mut hit_max = [false; 4];
    for _ in 0..20_000 {
        let draw = s.sample(&mut r);
        let E2Sample { g, t, sinks } = draw;
        assert_eq!(sinks, 4);
        let max_t = g as usize * l - r_len;
        assert_eq!(s.max_offset(g), max_t);
        assert!(t <= max_t, "g {g} t {t} > {max_t}");
        hit_zero[g as usize] |= t == 0;
        hit_max[g as usize] |= t == max_t;
        // Largest rotated position stays below L.
        let pos = s.positions(r_len, draw);
        let top = pos.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(top as usize, r_len - 1 + t);
        assert!(top / (g as f32) < l as f32);
    }
    assert!(
        hit_zero[1..].iter().all(|&h| h) && hit_max[1..].iter().all(|&h| h),
        "{hit_zero:?} {hit_max:?}"
    );
}

#[test]
fn t_is_roughly_uniform() {
    let s = E2LlmSampler::without_g(2, 8, 8).expect("valid"); // t ~ U{0..=8}
    let mut r = rng(3);
    let mut counts = [0usize; 9];
    let n = 18_000;
    for _ in 0..n {
        let e = s.sample(&mut r);
        assert_eq!(e.g, 2);
        counts[e.t] += 1;
    }
    let chi2 = chi2(&counts, n);
    assert!(chi2 < 26.1, "chi² = {chi2} (8 dof, p = 0.001), {counts:?}");
}

#[test]
fn sinks_keep_their_positions() {
    let s = E2LlmSampler::new(5, 64, 32).expect("valid");
    let draw = |t| E2Sample { g: 5, t, sinks: 4 };
    let pos = s.positions(10, draw(100));
    assert_eq!(
        pos,
        vec![0.0, 1.0, 2.0, 3.0, 104.0, 105.0, 106.0, 107.0, 108.0, 109.0]
    );
    assert_eq!(e2llm_positions(3, 4, 50), vec![0.0, 1.0, 2.0]);
    assert_eq!(e2llm_positions(6, 0, 2), vec![2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(s.positions(6, draw(0)), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    // The draw's own kept count splits the row, not the sampler's.
    let seven = E2Sample {
        sinks: 7,
        ..draw(100)
    };
    assert_eq!(s.positions(9, seven)[6..], [6.0, 107.0, 108.0]);
}

/// A kept-token range: each draw keeps `U{sinks..=sinks_max}` leading tokens, drawn after `g`
/// and `t` (a batch: after every row's); without a range (0, or a top at `sinks`) no extra number is drawn, so the stream of
/// `(g, t)` is the fixed sampler's exactly.
#[test]
fn kept_tokens_drawn_from_a_range() {
    let (l, r_len) = (32, 16);
    let fixed = E2LlmSampler::with_sinks(4, l, r_len, 3).expect("valid");
    let ranged = fixed.clone().with_sinks_max(9).expect("3..=9 in R = 16");
    let mut r = rng(13);
    let n = 14_000;
    let mut counts = [0usize; 10];
    for _ in 0..n {
        let draw = ranged.sample(&mut r);
        assert!((3..=9).contains(&draw.sinks), "{draw:?}");
        counts[draw.sinks] += 1;
        assert!(draw.t <= ranged.max_offset(draw.g));
        let pos = ranged.positions(r_len, draw);
        for (i, &x) in pos.iter().enumerate() {
            let want = if i < draw.sinks { i } else { i + draw.t };
            assert_eq!(x as usize, want, "{draw:?} token {i}");
        }
    }
    let chi2 = chi2(&counts[3..], n);
    assert!(chi2 < 22.5, "chi² = {chi2} (6 dof, p = 0.001), {counts:?}");
    // The kept counts come after the batch's (g, t): row for row the fixed sampler's.
    let g_t = |s: &E2LlmSampler| {
        s.sample_batch(50, Granularity::PerExample, &mut rng(5))
            .iter()
            .map(|d| (d.g, d.t))
            .collect::<Vec<_>>()
    };
    assert_eq!(g_t(&fixed), g_t(&ranged));
    let (a, b) = (fixed.sample(&mut rng(5)), ranged.sample(&mut rng(5)));
    assert_eq!(
        (a.g, a.t),
        (b.g, b.t),
        "one draw: g, t, then the kept count"
    );
    // No range, no extra draw: every draw of a long stream equals the fixed sampler's.
    for off in [0, 3] {
        let same = fixed.clone().with_sinks_max(off).expect("no range");
        let draws = |s: &E2LlmSampler| s.sample_batch(200, Granularity::PerExample, &mut rng(6));
        assert_eq!(draws(&same), draws(&fixed), "sinks_max {off}");
    }
    // Per batch: one draw, kept count included, for every row.
    let batch = ranged.sample_batch(8, Granularity::PerBatch, &mut rng(8));
    assert!(batch.iter().all(|d| *d == batch[0]));
    // A top below the bottom, or past R, is refused with the fields named.
    let e = fixed.clone().with_sinks_max(2).expect_err("2 < 3");
    assert_eq!(
        e,
        PositionError::SinksRange {
            sinks: 3,
            sinks_max: 2
        }
    );
    assert!(
        e.to_string().contains("sinks_max = 2 is below sinks = 3"),
        "{e}"
    );
    let e = fixed.with_sinks_max(17).expect_err("17 > R");
    assert!(
        e.to_string().contains("sinks = 17 exceeds train_len = 16"),
        "{e}"
    );
}

#[test]
fn ablations() {
    let no_t = E2LlmSampler::without_t(10, 64, 64).expect("valid");
    let no_g = E2LlmSampler::without_g(2, 4096, 8192).expect("paper's no-g run: g 2, R 8k, L 4k");
    let mut r = rng(5);
    let mut gs = std::collections::HashSet::new();
    for _ in 0..500 {
        let a = no_t.sample(&mut r);
        assert_eq!(a.t, 0);
        gs.insert(a.g);
        let b = no_g.sample(&mut r);
        assert_eq!(
            b,
            E2Sample {
                g: 2,
                t: 0,
                sinks: 4
            },
            "R = g·L leaves only t = 0"
        );
    }
    assert_eq!(gs.len(), 10);
}

#[test]
fn determinism_and_seed_sensitivity() {
    let s = E2LlmSampler::new(20, 4096, 4096).expect("valid");
    let draw = |seed| s.sample_batch(64, Granularity::PerExample, &mut rng(seed));
    assert_eq!(draw(1), draw(1));
    assert_ne!(draw(1), draw(2));
    let p = PoseSampler::new(128, 64, 8).expect("valid");
    let pose = |seed| {
        (0..32)
            .map(|_| ())
            .scan(rng(seed), |r, _| Some(p.sample(r)))
            .collect::<Vec<_>>()
    };
    assert_eq!(pose(9), pose(9));
    assert_ne!(pose(9), pose(10));
}

#[test]
fn batch_granularity() {
    let s = E2LlmSampler::new(20, 512, 256).expect("valid");
    let per_batch = s.sample_batch(8, Granularity::PerBatch, &mut rng(4));
    assert_eq!(per_batch.len(), 8);
    assert!(per_batch.iter().all(|x| *x == per_batch[0]));
    let per_row = s.sample_batch(8, Granularity::PerExample, &mut rng(4));
    assert_eq!(per_row.len(), 8);
    assert_eq!(per_row[0], per_batch[0], "same stream, same first draw");
    assert!(per_row.iter().any(|x| *x != per_row[0]));
    assert!(s
        .sample_batch(0, Granularity::PerBatch, &mut rng(4))
        .is_empty());
}

#[test]
fn pose_positions() {
    let p = PoseSampler::new(16, 8, 4).expect("valid");
    let mut r = rng(21);
    let (mut min_c, mut max_c, mut max_u) = (usize::MAX, 0, 0);
    for _ in 0..5_000 {
        let smp = p.sample(&mut r);
        assert!((1..8).contains(&smp.split));
        assert!(smp.skip <= 4 * 16 - 8);
        let pos = p.positions(smp);
        assert_eq!(pos.len(), 8);
        for (i, &x) in pos.iter().enumerate() {
            let want = if i < smp.split { i } else { i + smp.skip };
            assert_eq!(x as usize, want);
        }
        assert!(*pos.last().expect("non-empty") < 64.0);
        min_c = min_c.min(smp.split);
        max_c = max_c.max(smp.split);
        max_u = max_u.max(smp.skip);
    }
    assert_eq!((min_c, max_c, max_u), (1, 7, 56));
}

#[test]
fn invalid_settings_are_rejected() {
    assert_eq!(
        E2LlmSampler::new(0, 4, 4),
        Err(PositionError::Zero { what: "g_max" })
    );
    let e = E2LlmSampler::new(20, 4096, 8192).expect_err("R > L");
    assert!(
        e.to_string()
            .contains("train_len R = 8192 exceeds g·L = 1 × 4096"),
        "{e}"
    );
    assert!(matches!(
        E2LlmSampler::without_g(1, 4096, 8192),
        Err(PositionError::WindowTooLong { .. })
    ));
    assert_eq!(
        E2LlmSampler::new(2, 8, 2),
        Err(PositionError::TooManySinks {
            sinks: 4,
            train_len: 2
        })
    );
    // A window shorter than the default 4 sinks takes a sampler with fewer.
    assert_eq!(E2LlmSampler::with_sinks(2, 8, 2, 1).map(|s| s.sinks), Ok(1));
    assert!(E2LlmSampler::with_sinks(2, 8, 4, 5)
        .expect_err("5 > 4")
        .to_string()
        .contains("sinks = 5 exceeds train_len = 4"));
    let mut s = E2LlmSampler::new(2, 8, 4).expect("valid");
    s.sinks = 5;
    assert!(s
        .validate()
        .expect_err("5 > 4")
        .to_string()
        .contains("sinks = 5 exceeds train_len = 4"));
    assert_eq!(
        PoseSampler::new(16, 1, 2),
        Err(PositionError::PoseTooShort { train_len: 1 })
    );
    assert!(PoseSampler::new(16, 40, 2).is_err());
    assert!(PoseSampler::new(16, 8, 0).is_err());
    // An invalid sampler still samples without panicking.
    let broken = E2LlmSampler {
        g_max: 0,
        orig_len: 0,
        train_len: 5,
        sinks: 4,
        sinks_max: 0,
        vary_g: true,
        vary_t: true,
    };
    assert_eq!(
        broken.sample(&mut rng(0)),
        E2Sample {
            g: 1,
            t: 0,
            sinks: 4
        }
    );
}
