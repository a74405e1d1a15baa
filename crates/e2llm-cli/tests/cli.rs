//! The `e2llm` binary end to end: help, info, logits against the HF golden file, generate,
//! and one clear error line (naming the file) for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use e2llm_tests::{hf_fixtures, max_abs_diff, read_golden};

fn e2llm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_e2llm"))
        .args(args)
        .output()
        .expect("run e2llm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("e2llm-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn case(name: &str) -> PathBuf {
    hf_fixtures().join(name)
}

/// A failed run: exit code 1, one `error:` line that mentions `needle`, no panic.
fn assert_clear_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        err.contains(needle),
        "error should mention `{needle}`: {err}"
    );
}

#[test]
fn help_is_available_everywhere() {
    for sub in [
        &[][..],
        &["info"],
        &["logits"],
        &["generate"],
        &["train"],
        &["passkey"],
    ] {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let o = e2llm(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage"), "{args:?}");
    }
}

#[test]
fn info_summarises_the_config() {
    let o = e2llm(&["info", "--model", case("llama3").to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for want in ["parameters", "llama3", "rope_theta", "head_dim"] {
        assert!(s.contains(want), "info output lacks `{want}`:\n{s}");
    }
}

#[test]
fn logits_match_the_transformers_golden_file() {
    let dir = case("linear_positions");
    let g = read_golden(&dir.join("golden.safetensors"));
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{}", *x as i64))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ids = join(&g["input_ids"].values);
    let pos = join(&g["position_ids"].values);
    let out = tmp("logits").join("logits.safetensors");
    let o = e2llm(&[
        "logits",
        "--model",
        dir.to_str().expect("utf8"),
        "--ids",
        &ids,
        "--positions",
        &pos,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_golden(&out);
    let logits = &got["logits"];
    assert_eq!(logits.shape, g["logits"].shape);
    let as_f32: Vec<f32> = logits.values.iter().map(|&v| v as f32).collect();
    let err = max_abs_diff(&as_f32, &g["logits"].values);
    assert!(err <= 1e-4, "CLI logits differ from transformers by {err}");
}

#[test]
fn generate_streams_text() {
    let o = e2llm(&[
        "generate",
        "--model",
        case("tokenizer_demo").to_str().expect("utf8"),
        "--prompt",
        "The pass key is",
        "--max-new-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("The pass key is"), "{}", stdout(&o));
    assert!(stderr(&o).contains("new"), "{}", stderr(&o));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn bad_input_gives_one_clear_error() {
    let missing = tmp("missing").join("nowhere");
    let o = e2llm(&["info", "--model", missing.to_str().expect("utf8")]);
    assert_clear_error(&o, "config.json");

    let dir = tmp("truncated");
    copy_dir(&case("default_legacy"), &dir);
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).expect("read");
    std::fs::write(&w, &bytes[..bytes.len() - 100]).expect("write");
    let out = dir.join("out.safetensors");
    let args = |ids: &'static str| {
        vec![
            "logits".to_string(),
            "--model".into(),
            dir.display().to_string(),
            "--ids".into(),
            ids.into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        e2llm(&a)
    };
    assert_clear_error(&run(args("1,2,3")), "model.safetensors");

    std::fs::write(&w, &bytes).expect("restore");
    assert_clear_error(&run(args("1,x,3")), "--ids");
    assert_clear_error(&run(args("1,2,99999")), "99999");
    let mut a = args("1,2,3");
    a.extend(["--positions".into(), "0,1".into()]);
    assert_clear_error(&run(a), "--positions");

    // A tokenizer with more tokens than the model's vocabulary.
    let tdir = tmp("tokenizer");
    copy_dir(&case("default_legacy"), &tdir);
    std::fs::copy(
        case("tokenizer_demo").join("tokenizer.json"),
        tdir.join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    let o = e2llm(&[
        "generate",
        "--model",
        tdir.to_str().expect("utf8"),
        "--prompt",
        "hi",
    ]);
    assert_clear_error(&o, "tokenizer.json");
}
