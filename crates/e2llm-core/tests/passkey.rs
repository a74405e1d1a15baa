//! Passkey prompts: exact text, placement, length search, determinism; scorer; scale rule.

use e2llm_core::passkey::key_line;
use e2llm_core::{
    build_passkey, eval_scale, first_digits, first_integer, paper_auto_scale, score, Filler,
    PasskeyError, PasskeySpec, PASSKEY_FILLER, PASSKEY_INTRO, PASSKEY_QUESTION,
};

fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn spec(target: usize, depth: f64, key: Option<u32>) -> PasskeySpec {
    PasskeySpec {
        key,
        ..PasskeySpec::new(target, depth, 0)
    }
}

#[test]
fn exact_text_small_case() {
    // Words: intro 26, key line 12, question 9, filler unit 19 → 2 units = 85 ≤ 90 < 104.
    let p = build_passkey(&spec(90, 0.5, Some(12345)), &words).expect("builds");
    let want = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.\n\
The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n\
The pass key is 12345. Remember it. 12345 is the pass key.\n\
The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n\
What is the pass key? The pass key is";
    assert_eq!(p.text, want);
    assert_eq!(
        (p.key, p.filler_before, p.filler_after, p.num_tokens),
        (12345, 1, 1, 85)
    );
    assert_eq!(
        &p.text[p.key_line.clone()],
        "The pass key is 12345. Remember it. 12345 is the pass key."
    );
    assert_eq!(p.answer(), " 12345");
    // Units inside one piece are joined by a space.
    let p = build_passkey(&spec(130, 0.0, Some(7)), &words).expect("builds");
    assert_eq!(p.filler_before, 0);
    assert_eq!(p.filler_after, 4);
    assert!(p
        .text
        .contains(&format!("{PASSKEY_FILLER} {PASSKEY_FILLER}")));
}

#[test]
fn depth_zero_and_one() {
    let p0 = build_passkey(&spec(2_000, 0.0, Some(42)), &words).expect("builds");
    assert_eq!(p0.filler_before, 0);
    assert!(p0.filler_after > 50);
    assert!(p0
        .text
        .starts_with(&format!("{PASSKEY_INTRO}\n{}\n", key_line(42))));

    let p1 = build_passkey(&spec(2_000, 1.0, Some(42)), &words).expect("builds");
    assert_eq!(p1.filler_after, 0);
    assert!(p1
        .text
        .ends_with(&format!("{}\n{PASSKEY_QUESTION}", key_line(42))));
    assert_eq!(p1.filler_before, p0.filler_after);

    let mid = build_passkey(&spec(2_000, 0.25, Some(42)), &words).expect("builds");
    let n = mid.filler_before + mid.filler_after;
    assert_eq!(mid.filler_before, (0.25 * n as f64).round() as usize);
    assert!(mid.key_line.start < mid.text.len() / 2);
}

#[test]
fn length_never_exceeds_target_and_is_within_one_unit() {
    let unit = words(PASSKEY_FILLER);
    for target in (47..3_000).step_by(37) {
        for depth in [0.0, 0.3, 1.0] {
            let p = build_passkey(&spec(target, depth, Some(31_337)), &words).expect("builds");
            assert_eq!(p.num_tokens, words(&p.text));
            assert!(p.num_tokens <= target, "target {target}: {}", p.num_tokens);
            assert!(
                target - p.num_tokens < unit,
                "target {target}: {} is more than a unit short",
                p.num_tokens
            );
        }
    }
    // Characters as tokens also work (any counter).
    let chars = |s: &str| s.chars().count();
    let p = build_passkey(&spec(5_000, 0.5, None), &chars).expect("builds");
    assert!(p.num_tokens <= 5_000 && 5_000 - p.num_tokens <= PASSKEY_FILLER.len() + 1);
}

#[test]
fn too_short_target_is_an_error() {
    let e = build_passkey(&spec(46, 0.5, Some(1)), &words).expect_err("47 needed");
    assert_eq!(
        e,
        PasskeyError::TargetTooShort {
            target: 46,
            minimum: 47
        }
    );
    assert!(e.to_string().contains("ask for at least 47"));
    let ok = build_passkey(&spec(47, 0.5, Some(1)), &words).expect("exactly fits");
    assert_eq!((ok.filler_before, ok.filler_after), (0, 0));
    assert_eq!(
        ok.text,
        format!("{PASSKEY_INTRO}\n{}\n{PASSKEY_QUESTION}", key_line(1))
    );
}

#[test]
fn bad_inputs() {
    for d in [-0.1, 1.5, f64::NAN] {
        assert!(matches!(
            build_passkey(&spec(500, d, None), &words),
            Err(PasskeyError::DepthOutOfRange { .. })
        ));
    }
    let mut s = spec(500, 0.5, None);
    s.filler = Filler::Sample(vec![]);
    assert!(build_passkey(&s, &words)
        .expect_err("empty")
        .to_string()
        .contains("empty list"));
    s.filler = Filler::Cycle(vec!["ok.".into(), " ".into()]);
    assert!(build_passkey(&s, &words)
        .expect_err("blank")
        .to_string()
        .contains("unit 1 is empty"));
}

#[test]
fn seeded_key_and_determinism() {
    let mut keys = std::collections::HashSet::new();
    for seed in 0..200 {
        let s = PasskeySpec::new(300, 0.5, seed);
        let a = build_passkey(&s, &words).expect("builds");
        let b = build_passkey(&s, &words).expect("builds");
        assert_eq!(a, b);
        assert!((1..=50_000).contains(&a.key));
        keys.insert(a.key);
    }
    assert!(
        keys.len() > 190,
        "seeds give different keys: {}",
        keys.len()
    );
}

#[test]
fn custom_filler_cycle_and_sample() {
    let units: Vec<String> = ["Alpha beta.", "Gamma delta epsilon.", "Zeta."]
        .map(String::from)
        .to_vec();
    let mut s = spec(200, 0.5, Some(9));
    s.filler = Filler::Cycle(units.clone());
    let p = build_passkey(&s, &words).expect("builds");
    assert!(p
        .text
        .contains("Alpha beta. Gamma delta epsilon. Zeta. Alpha beta."));
    assert!(p.num_tokens <= 200 && 200 - p.num_tokens <= 3);

    s.filler = Filler::Sample(units.clone());
    s.seed = 5;
    let a = build_passkey(&s, &words).expect("builds");
    assert_eq!(a, build_passkey(&s, &words).expect("builds"));
    assert!(a.num_tokens <= 200 && 200 - a.num_tokens <= 3);
    for u in &units {
        assert!(a.text.contains(u.as_str()));
    }
    assert!(!a.text.contains(PASSKEY_FILLER));
    s.seed = 6;
    let b = build_passkey(&s, &words).expect("builds");
    assert_ne!(a.text, b.text);
}

#[test]
fn scorer() {
    // The run as written (what the scorer parses, and what tells the kinds of wrong answer apart).
    assert_eq!(first_digits(" is 00123. 4"), Some("00123"));
    assert_eq!(first_digits("٣ then 7x"), Some("7"));
    assert_eq!(first_digits("none"), None);
    assert_eq!(first_integer("12345."), Some(12345));
    assert_eq!(first_integer(" is 123 and 456"), Some(123));
    assert_eq!(first_integer("no digits here"), None);
    assert_eq!(first_integer(""), None);
    assert_eq!(first_integer("00123"), Some(123));
    assert_eq!(
        first_integer("key-42"),
        Some(42),
        "a minus sign is not part of \\d+"
    );
    assert_eq!(first_integer("3.14"), Some(3));
    assert_eq!(
        first_integer("٣ then 7"),
        Some(7),
        "non-ASCII digits are skipped"
    );
    assert_eq!(
        first_integer("99999999999999999999999 1"),
        None,
        "overflowing run"
    );
    assert!(score(" 12345. Remember", 12345));
    assert!(score("00012345", 12345));
    assert!(!score(" 1234", 12345));
    assert!(!score(" 123456", 12345));
    assert!(!score("none", 12345));
}

#[test]
fn scale_rules() {
    assert_eq!(paper_auto_scale(128, 128), 1.0);
    assert_eq!(paper_auto_scale(129, 128), 2.0);
    assert_eq!(paper_auto_scale(0, 128), 1.0);
    assert_eq!(paper_auto_scale(512, 128), 4.0);
    // The trap: prompt 512 at L 128 is 4× by the paper's rule, but 10 answer tokens need 5×.
    assert_eq!(eval_scale(512, 10, 128), 5.0);
    assert_eq!(eval_scale(500, 12, 128), 4.0);
    assert_eq!(eval_scale(100, 10, 128), 1.0);
    for p in 1..600usize {
        let g = eval_scale(p, 10, 128);
        assert!((p + 10) as f32 / g <= 128.0);
        assert!(g == 1.0 || (p + 10) as f32 / (g - 1.0) > 128.0, "smallest");
    }
    assert_eq!(eval_scale(10, 10, 0), f32::INFINITY);
}

#[test]
fn scale_modes_parse_and_pick_g() {
    use e2llm_core::ScaleMode;
    let parse = |s: &str| s.parse::<ScaleMode>();
    assert_eq!(parse("auto"), Ok(ScaleMode::Auto));
    assert_eq!(parse("safe"), Ok(ScaleMode::Safe));
    assert_eq!(parse("2.5"), Ok(ScaleMode::Fixed(2.5)));
    for bad in ["0", "-1", "nan", "inf", "fast"] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    // Prompt 512 + 10 answer tokens at L 128: the paper's 4, the safe 5.
    assert_eq!(ScaleMode::Auto.g(512, 10, 128), 4.0);
    assert_eq!(ScaleMode::Safe.g(512, 10, 128), 5.0);
    assert_eq!(ScaleMode::Fixed(3.0).g(512, 10, 128), 3.0);
    // Never below 1.
    assert_eq!(ScaleMode::Fixed(0.5).g(10, 0, 128), 1.0);
    assert_eq!(ScaleMode::Auto.g(0, 0, 128), 1.0);
}
