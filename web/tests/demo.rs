//! The demo's flow on the flex CPU backend, against the model crate's own `generate` and
//! forward: stepped prefill + async greedy answer = the library's greedy generation; bad
//! files give readable errors; the memory check refuses what cannot fit.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use e2llm_model::generate::{continuation_logprobs, generate, read_prompt, GenerateOptions};
use e2llm_model::{Device, Positions};
use e2llm_web::demo::{max_length, plan_chunk, top_k, Demo, PromptRequest, ScaleChoice};

/// On flex every read-back is ready at once: poll to completion.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf/tokenizer_demo")
}

fn files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let d = fixture();
    let read = |f: &str| std::fs::read(d.join(f)).expect("fixture file");
    (
        read("config.json"),
        read("model.safetensors"),
        read("tokenizer.json"),
    )
}

fn demo() -> Demo {
    let (c, w, t) = files();
    Demo::load(&c, &w, &t, &Device::flex()).expect("fixture loads")
}

fn request(length: usize) -> PromptRequest {
    PromptRequest {
        length,
        depth: 0.5,
        key: Some(31415),
        seed: 7,
        scale: ScaleChoice::Auto,
        max_new_tokens: 6,
        chunk: 64,
        max_binding_bytes: 0,
        budget_bytes: 0,
        logn: false,
    }
}

#[test]
fn stepped_prefill_and_answer_equal_the_library_generate() {
    stepped_prefill_and_answer(false);
}

/// The same with log-n attention scaling (the 300-token prompt is past the fixture's L = 64):
/// the run reads the model with it on, and so does the reference.
#[test]
fn stepped_prefill_and_answer_with_logn_equal_the_library_generate() {
    stepped_prefill_and_answer(true);
}

fn stepped_prefill_and_answer(logn: bool) {
    let d = demo();
    let reference_model = d.model.clone().with_logn(logn);
    let mut run = d
        .prepare(&PromptRequest {
            logn,
            ..request(300)
        })
        .expect("prompt");
    assert_eq!(run.info.logn, logn);
    let n = run.len();
    assert!(n <= 300 && n > 200, "prompt of {n} tokens");
    assert!(run.prompt.text.contains("The pass key is 31415."));
    // auto scale: ceil(n / L) with L = 64
    assert_eq!(run.g, n.div_ceil(64) as f32);
    let [k0, k1] = run.info.key_tokens;
    assert!(k0 < k1 && k1 < n, "key tokens {k0}..{k1} of {n}");

    // Uneven steps across chunk boundaries.
    let mut done = 0;
    for step in [50, 100, 7, 1000] {
        done = block_on(run.prefill_step(&d.model, step)).expect("prefill");
    }
    assert_eq!(done, n);
    let last = run.last.clone().expect("logits");

    // The whole prompt in one forward, no cache.
    let positions: Vec<f32> = (0..n).map(|p| p as f32).collect();
    let full = reference_model
        .forward(&run.ids, &Positions::row(positions, run.g), None)
        .expect("forward")
        .narrow(1, n - 1, 1)
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32");
    let diff = last
        .iter()
        .zip(&full)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff < 1e-4,
        "stepped prefill differs from forward by {diff}"
    );

    let answer = block_on(run.answer(&d.model, &d.tok, 5)).expect("answer");
    let opts = GenerateOptions {
        max_new_tokens: 6,
        rope_scale: run.g,
        ..GenerateOptions::default()
    };
    let reference = generate(&reference_model, &run.ids, &opts, |_| true).expect("generate");
    assert_eq!(answer.ids, reference);
    assert_eq!(answer.top.len(), 6);
    assert_eq!(answer.top[0], top_k(&last, 5));
    assert_eq!(answer.text, d.tok.decode(&reference).expect("decode"));
    assert_eq!(
        answer.correct,
        e2llm_core::passkey::score(&answer.text, 31415)
    );
    // The key's likelihood: the library's teacher-forced scoring of the same prompt.
    let read = read_prompt(&reference_model, &run.ids, &opts).expect("read");
    let key_ids = d.tok.encode(" 31415.", false).expect("encode");
    let want = -continuation_logprobs(&reference_model, &read, &key_ids, run.g)
        .expect("score")
        .iter()
        .sum::<f64>();
    assert!(
        (answer.key_nll - want).abs() < 1e-4 && want > 0.0,
        "key NLL {} vs the library's {want}",
        answer.key_nll
    );
    // A second answer would read the answer as prompt: refused.
    assert!(block_on(run.answer(&d.model, &d.tok, 5)).is_err());

    let strip = block_on(run.attention_strip(&d.model, 1, 2, 40)).expect("strip");
    assert_eq!((strip.rows, strip.cols), (1, 40));
    let sum: f32 = strip.data.iter().sum();
    assert!((sum - 1.0).abs() < 1e-3, "strip sums to {sum}");
}

#[test]
fn scale_choices_follow_the_cli_rules() {
    let d = demo();
    let mut r = request(300);
    let n = d.prepare(&r).expect("prompt").len();
    r.scale = ScaleChoice::Safe;
    assert_eq!(d.prepare(&r).expect("safe").g, (n + 6).div_ceil(64) as f32);
    r.scale = ScaleChoice::Manual(2.5);
    assert_eq!(d.prepare(&r).expect("manual").g, 2.5);
    r.scale = ScaleChoice::Manual(-1.0);
    let e = d.prepare(&r).expect_err("negative g").to_string();
    assert!(e.contains("positive"), "{e}");
    let e = d.prepare(&request(10)).expect_err("too short").to_string();
    assert!(e.contains("too short"), "{e}");
}

#[test]
fn bad_files_give_readable_errors() {
    let (c, w, t) = files();
    let dev = Device::flex();
    let err = |c: &[u8], w: &[u8], t: &[u8]| {
        Demo::load(c, w, t, &dev)
            .expect_err("must fail")
            .to_string()
    };
    let e = err(&c, &w[..w.len() / 2], &t);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    let wrong = String::from_utf8(c.clone())
        .expect("utf8")
        .replace("\"hidden_size\": 64", "\"hidden_size\": 48");
    let e = err(wrong.as_bytes(), &w, &t);
    assert!(e.contains("shape") && e.contains("config.json"), "{e}");
    let e = err(b"{ not json", &w, &t);
    assert!(e.starts_with("config.json"), "{e}");
    let e = err(&[0xff, 0xfe, 0], &w, &t);
    assert!(e.contains("config.json") && e.contains("UTF-8"), "{e}");
    let e = err(&c, &w, b"[]");
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn memory_check_refuses_what_cannot_fit() {
    let d = demo();
    let cfg = &d.model.config;
    // A 1 MiB binding limit forces smaller chunks as the context grows (reference attention:
    // the score matrix is the largest binding).
    assert_eq!(plan_chunk(cfg, 100, 1 << 20, false), 256);
    assert!(plan_chunk(cfg, 65_536, 1 << 20, false) < 8);
    let fit = max_length(cfg, 1 << 20, 64 << 20, false);
    assert!(fit > 1000 && fit < 1 << 20, "fits {fit}");
    // The fused kernel has no score matrix and pages its KV cache: full chunks, and a longer
    // context in the same budget (bounded by the KV cache's memory, not by one binding).
    assert_eq!(plan_chunk(cfg, 65_536, 1 << 20, true), 256);
    let (fused_fit, plain_fit) = (
        max_length(cfg, 0, 64 << 20, true),
        max_length(cfg, 0, 64 << 20, false),
    );
    assert_eq!(max_length(cfg, 1 << 20, 64 << 20, true), fused_fit);
    assert!(
        fused_fit > 2 * plain_fit,
        "fused fits {fused_fit}, reference {plain_fit}"
    );
    let mut r = request(300);
    r.budget_bytes = 1 << 10;
    let e = d.prepare(&r).expect_err("over budget").to_string();
    assert!(e.contains("choose a shorter context"), "{e}");
}

#[test]
fn requests_parse_as_the_page_sends_them() {
    let r: PromptRequest = serde_json::from_str(
        r#"{"length": 300, "depth": 0.25, "key": null, "seed": 5, "scale": "safe", "max_new_tokens": 8}"#,
    )
    .expect("page request");
    assert_eq!(
        (r.scale, r.key, r.chunk, r.budget_bytes),
        (ScaleChoice::Safe, None, 0, 0)
    );
    let r: PromptRequest = serde_json::from_str(
        r#"{"length": 300, "depth": 1, "key": 42, "seed": 5, "scale": {"manual": 2.5}, "max_new_tokens": 8}"#,
    )
    .expect("manual g");
    assert_eq!((r.scale, r.key), (ScaleChoice::Manual(2.5), Some(42)));
}

/// The in-browser kernel check (`selfcheck`, what the browser test runs on WebGPU) natively:
/// every build on the adapter (lavapipe in CI) matches the CPU twin, and a broken input is
/// reported, not hidden. Skipped without an adapter.
#[test]
fn the_attention_self_check_passes_on_the_adapter_in_every_build() {
    use e2llm_web::selfcheck::{attention_check, CheckRequest};
    let device = match e2llm_model::backend::open("wgpu") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: no wgpu adapter ({e})");
            return;
        }
    };
    let req = |tuning: &str, sq, skv, hq, hkv, d| CheckRequest {
        tuning: tuning.into(),
        sq,
        skv,
        hq,
        hkv,
        d,
        tol: 1e-4,
        kv_f16: false,
    };
    let f16 = |mut r: CheckRequest| {
        r.kv_f16 = true;
        r
    };
    for (r, kernel) in [
        (req("gpu,block=0", 256, 256, 2, 2, 32), "rows"),
        (req("gpu,block=1", 256, 256, 2, 2, 32), "block"),
        (req("gpu,block=1", 44, 300, 2, 1, 32), "block"),
        (req("cpu", 44, 300, 4, 2, 64), "rows"),
        (req("gpu", 3, 700, 4, 1, 32), "decode"),
        (f16(req("gpu,block=1", 44, 300, 2, 1, 32)), "block"),
        (f16(req("gpu", 3, 700, 4, 1, 32)), "decode"),
    ] {
        if r.kv_f16 && !device.supports_dtype(burn::tensor::DType::F16) {
            eprintln!("{r:?} skipped: the adapter has no shader-f16");
            continue;
        }
        let rep = block_on(attention_check(&device, &r)).expect("check runs");
        eprintln!("{r:?}: {rep:?}");
        assert_eq!(rep.kernel, kernel, "{r:?}");
        assert_eq!(rep.bad_count, 0, "{r:?}: {rep:?}");
        assert!(rep.max_abs < 1e-4, "{r:?}: {rep:?}");
        assert!(rep.lse_max_abs < 1e-4, "{r:?}: {rep:?}");
        assert!(rep.logged.is_empty(), "{r:?}: {rep:?}");
    }
    assert!(block_on(attention_check(&device, &req("gpu", 5, 3, 2, 2, 32))).is_err());
}
