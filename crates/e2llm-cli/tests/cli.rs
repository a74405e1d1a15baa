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
        &["ppl"],
        &["quickstart"],
        &["experiment"],
        &["average"],
        &["attend"],
        &["bench", "train"],
        &["bench", "kernels"],
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
    // 2 layers × (k + v) × 2 kv heads × 32 dims.
    assert!(s.contains("1024 B per token f32, 512 B f16"), "{s}");
}

#[test]
fn a_closed_stdout_stops_quietly() {
    // `e2llm info | head -0`: the reader is gone before the first line is written.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_e2llm"))
        .args(["info", "--model", case("llama3").to_str().expect("utf8")])
        .stdout(writer)
        .output()
        .expect("run e2llm");
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(141), "{err}");
}

#[test]
fn an_unknown_kv_cache_type_is_one_clear_error() {
    let model = case("llama3");
    let o = e2llm(&[
        "generate",
        "--model",
        model.to_str().expect("utf8"),
        "--prompt",
        "hi",
        "--kv-cache",
        "f8",
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("f8") && e.contains("f32, f16"), "{e}");
}

/// `e2llm logits` on `model` with the inputs of a transformers golden file: the largest
/// difference from the logits transformers wrote there.
fn cli_logits_error(model: &Path, golden: &Path, name: &str) -> f64 {
    let g = read_golden(golden);
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{}", *x as i64))
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = tmp(name).join("logits.safetensors");
    let o = e2llm(&[
        "logits",
        "--model",
        model.to_str().expect("utf8"),
        "--ids",
        &join(&g["input_ids"].values),
        "--positions",
        &join(&g["position_ids"].values),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = read_golden(&out);
    let logits = &got["logits"];
    assert_eq!(logits.shape, g["logits"].shape);
    let as_f32: Vec<f32> = logits.values.iter().map(|&v| v as f32).collect();
    max_abs_diff(&as_f32, &g["logits"].values)
}

#[test]
fn logits_match_the_transformers_golden_file() {
    let dir = case("linear_positions");
    let err = cli_logits_error(&dir, &dir.join("golden.safetensors"), "logits");
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

/// `attend`: every head's row from the last token sums to 1 (all keys shown), largest first;
/// `--passkey` rebuilds the very prompt and key of that trial in `e2llm passkey`'s grid; bad
/// input is one clear error.
#[test]
fn attend_shows_each_heads_weights_and_the_grids_passkey() {
    let model = case("tokenizer_demo");
    let model = model.to_str().expect("utf8");
    let dir = tmp("attend");
    let json = dir.join("attend.json");
    let prompt = "The grass is green. The pass key is 123. What is the pass key?";
    let o = e2llm(&[
        "attend",
        "--model",
        model,
        "--prompt",
        prompt,
        "--top",
        "1000",
        "--json",
        json.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("| layer | head |"), "{}", stdout(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    let n = v["tokens"].as_u64().expect("tokens") as usize;
    let heads = v["heads"].as_array().expect("heads");
    assert_eq!(heads.len(), 2 * 4, "2 layers × 4 heads");
    for h in heads {
        let w: Vec<f64> = (h["top"].as_array().expect("top").iter())
            .map(|t| t["weight"].as_f64().expect("weight"))
            .collect();
        assert_eq!(w.len(), n, "--top past the prompt shows every key");
        assert!(w.windows(2).all(|p| p[0] >= p[1]), "{w:?}");
        let sum: f64 = w.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{h}: sums to {sum}");
    }
    let next: f64 = (v["next"].as_array().expect("next").iter())
        .map(|t| t["p"].as_f64().expect("p"))
        .sum();
    assert!(next > 0.0 && next <= 1.0 + 1e-6, "{next}");

    // The grid's trial 1 at 200 tokens, depth 0.25, seed 7: the same key.
    let grid = dir.join("grid.json");
    let o = e2llm(&[
        "passkey",
        "--model",
        model,
        "--lengths",
        "200",
        "--depths",
        "0.25",
        "--trials",
        "2",
        "--seed",
        "7",
        "--rope-scale",
        "safe",
        "--json",
        grid.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&grid).expect("grid")).expect("parse");
    let cell = &g["cells"][0];
    let o = e2llm(&[
        "attend",
        "--model",
        model,
        "--passkey",
        "200",
        "--depth",
        "0.25",
        "--trial",
        "1",
        "--seed",
        "7",
        "--rope-scale",
        "safe",
        "--answer-digits",
        "2",
        "--layers",
        "1",
        "--json",
        json.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parse");
    assert_eq!(v["passkey"]["key"], cell["answers"][1]["key"], "{v}");
    assert_eq!(v["g"], cell["g"]);
    // The prompt as the grid read it, plus " " and two digits of the key.
    let prompt_tokens = cell["answers"][1]["prompt_tokens"].as_u64().expect("n");
    let tokens = v["tokens"].as_u64().expect("tokens");
    assert!(
        (prompt_tokens + 2..=prompt_tokens + 3).contains(&tokens),
        "{tokens} vs {prompt_tokens}"
    );
    let span = v["passkey"]["key_line"].as_array().expect("key line");
    assert!(span[0].as_u64() < span[1].as_u64(), "{span:?}");
    let heads = v["heads"].as_array().expect("heads");
    assert_eq!(heads.len(), 4, "layer 1 only");
    assert!(heads
        .iter()
        .all(|h| h["layer"] == 1 && h["key_line"].as_f64().is_some()));

    assert_clear_error(&e2llm(&["attend", "--model", model]), "--prompt");
    assert_clear_error(
        &e2llm(&["attend", "--model", model, "--prompt", "x", "--layers", "5"]),
        "layer 5",
    );
    assert_clear_error(
        &e2llm(&[
            "attend",
            "--model",
            model,
            "--passkey",
            "100",
            "--depth",
            "2",
        ]),
        "--depth",
    );
    // A passkey option without --passkey is refused, not ignored.
    assert_clear_error(
        &e2llm(&[
            "attend", "--model", model, "--prompt", "x", "--depth", "0.3",
        ]),
        "--passkey",
    );
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
    // A model that is not there is a loading error, whatever the (default) options were.
    let o = e2llm(&["passkey", "--model", missing.to_str().expect("utf8")]);
    assert_clear_error(&o, "config.json");
    assert!(
        stderr(&o).contains("loading the model in") && !stderr(&o).contains("--weights"),
        "{}",
        stderr(&o)
    );

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

#[test]
fn average_of_copies_is_the_model_and_mismatches_are_clear_errors() {
    // The mean of two copies of a transformers checkpoint is that checkpoint: its logits still
    // match the golden file transformers wrote.
    let src = case("linear_positions");
    let root = tmp("average");
    let (a, b, out) = (root.join("a"), root.join("b"), root.join("mean"));
    copy_dir(&src, &a);
    copy_dir(&src, &b);
    let models = format!("{},{}", a.display(), b.display());
    let o = e2llm(&[
        "average",
        "--models",
        &models,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("mean of 2 checkpoints"),
        "{}",
        stdout(&o)
    );
    let err = cli_logits_error(&out, &src.join("golden.safetensors"), "average-logits");
    assert!(
        err <= 1e-4,
        "the average's logits differ from transformers by {err}"
    );

    // One model, and two of different shapes, are one clear error each.
    let o = e2llm(&[
        "average",
        "--models",
        a.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_clear_error(&o, "at least two");
    let other = case("gqa_tied_headdim");
    let mixed = format!("{},{}", a.display(), other.display());
    let o = e2llm(&[
        "average",
        "--models",
        &mixed,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_clear_error(&o, "gqa_tied_headdim");
}

#[test]
fn quickstart_averages_its_last_three_quarters_at_any_step_count() {
    // The default: models kept every 750 of 3,000 steps, the last three averaged.
    let out = tmp("qs-dry");
    let dry = |extra: &[&str]| {
        let mut args = vec![
            "quickstart",
            "--dry-run",
            "--out",
            out.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        let o = e2llm(&args);
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        stdout(&o)
    };
    assert!(
        dry(&[]).contains("mean of the last 3 models kept every 750 steps"),
        "{}",
        dry(&[])
    );
    // --steps moves the quarters; a count that has none reads the final model.
    assert!(dry(&["--steps", "8"]).contains("mean of the last 3 models kept every 2 steps"));
    assert!(!dry(&["--steps", "10"]).contains("mean of the last"));
    // Averaging off by hand.
    let off = dry(&["--set-extend", "average_last=0"]);
    assert!(!off.contains("mean of the last"), "{off}");
    // The kept tokens: drawn by default; `method.sinks=N` alone keeps N in every row (the
    // paper's 4 sinks), with `method.sinks_max` a range of the user's.
    assert!(dry(&[]).contains("sinks ~ U{32..224}"), "{}", dry(&[]));
    let four = dry(&["--set-extend", "method.sinks=4"]);
    assert!(four.contains("E²-LLM (g ~ U{1..30}, per row)"), "{four}");
    assert!(!four.contains("sinks ~"), "{four}");
    let fixed = dry(&["--set-extend", "method.sinks=128"]);
    assert!(fixed.contains("per row, 128 sinks)"), "{fixed}");
    let range = dry(&[
        "--set-extend",
        "method.sinks=16",
        "--set-extend",
        "method.sinks_max=64",
    ]);
    assert!(range.contains("sinks ~ U{16..64}"), "{range}");
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 100 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// `experiment --preset ci`: one base, every arm, evaluated; a well-formed table, JSON, plots;
/// running it again reuses every finished stage instead of training anew.
#[test]
fn experiment_ci_preset_runs_end_to_end() {
    let out = tmp("experiment");
    let out_s = out.to_str().expect("utf-8 path");
    let args = [
        "experiment",
        "--preset",
        "ci",
        "--out",
        out_s,
        "--jobs",
        "2",
    ];
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    // `--train-only` trains every stage and evaluates nothing; the run after it reuses them.
    let t = e2llm(&[&args[..], &["--train-only"]].concat());
    assert!(t.status.success(), "stderr: {}", stderr(&t));
    let trained = out.join("e2llm-no-g/checkpoint/trainer_state.json");
    assert!(trained.exists(), "--train-only left no finished arm");
    assert!(
        !out.join("results.json").exists(),
        "--train-only wrote results"
    );
    let trained_at = mtime(&trained);
    let o = e2llm(&args);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(
        mtime(&trained),
        trained_at,
        "the run after --train-only trained again"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("results.json")).expect("results.json written"),
    )
    .expect("results.json parses");
    let results = json["results"].as_array().expect("results array");
    let names: Vec<&str> = results.iter().filter_map(|r| r["name"].as_str()).collect();
    // Every model read as trained (plain PI), then with log-n attention scaling.
    let expected: Vec<String> = [
        "base",
        "none",
        "pi",
        "pose",
        "yarn",
        "e2llm-g2",
        "e2llm-g4",
        "e2llm-g4-4sinks",
        "e2llm-no-t",
        "e2llm-no-g",
        "e2llm-no-g4",
    ]
    .iter()
    .flat_map(|n| [n.to_string(), format!("{n} + log-n")])
    .collect();
    assert_eq!(names, expected);
    let l = json["orig_len"].as_u64().expect("orig_len") as usize;
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    let table: Vec<&str> = md.lines().filter(|x| x.starts_with("| ")).collect();
    let mut wrong = 0;
    for r in results {
        let name = r["name"].as_str().expect("name");
        let cells = r["passkey"].as_array().expect("passkey cells");
        let lengths: Vec<u64> = cells.iter().filter_map(|c| c["length"].as_u64()).collect();
        assert_eq!(lengths, vec![4 * l as u64, 8 * l as u64], "{name}");
        for c in cells {
            let (k, n) = (
                c["correct"].as_u64().expect("n"),
                c["trials"].as_u64().expect("t"),
            );
            assert!(k <= n && n == 1, "{name}: {k}/{n}");
            assert!(c["g"].as_f64().expect("g") >= 1.0);
            // Each trial's key and answer are kept; the right ones are the cell's count.
            let answers = c["answers"].as_array().expect("answers");
            assert_eq!(answers.len() as u64, n, "{name}");
            assert!(answers.iter().all(|a| a["kind"].is_string()), "{name}");
            assert!(
                answers
                    .iter()
                    .all(|a| a["key_nll"].as_f64().is_some_and(|x| x >= 0.0)),
                "{name}: {answers:?}"
            );
            let right = answers.iter().filter(|a| a["kind"] == "correct").count();
            assert_eq!(right as u64, k, "{name}");
            wrong += n - k;
        }
        let ppl = r["ppl"].as_array().expect("ppl points");
        assert_eq!(ppl.len(), 2, "{name}");
        for p in ppl {
            let v = p["ppl"].as_f64().expect("ppl");
            // A 512-token vocabulary bounds a sane model's perplexity far below 10^4.
            assert!(v.is_finite() && v > 1.0 && v < 1e4, "{name}: ppl {v}");
        }
        let row = table
            .iter()
            .find(|x| x.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no table row for {name}"));
        // name, g, 2 passkey columns, 2 ppl columns, tok/s.
        assert_eq!(row.matches('|').count(), 8, "{row}");
        // Then its row in the key NLL table: name and one mean per passkey length.
        let rows: Vec<&&str> = (table.iter())
            .filter(|x| x.starts_with(&format!("| {name} |")))
            .collect();
        assert_eq!(rows.len(), 2, "{name}: {rows:?}");
        let nll: Vec<f64> = (rows[1].split('|').skip(2))
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        assert_eq!(nll.len(), 2, "{}", rows[1]);
        assert!(nll.iter().all(|x| *x >= 0.0), "{}", rows[1]);
        assert!(
            is_png(&out.join(format!("passkey_{}.png", name.replace(" + ", "+")))),
            "{name} heatmap"
        );
        assert_eq!(
            r["inference"]
                .as_str()
                .expect("inference")
                .ends_with(", log-n"),
            name.ends_with(" + log-n"),
            "{name}"
        );
    }
    // Under the grids: what the wrong answers were, for every model that had any.
    assert_eq!(wrong > 0, md.contains("wrong answers: "), "{md}");
    // E²-LLM picks g per length; the fixed-scale arms do not.
    let g_of = |name: &str| -> Vec<f64> {
        results.iter().find(|r| r["name"] == name).expect("arm")["passkey"]
            .as_array()
            .expect("cells")
            .iter()
            .filter_map(|c| c["g"].as_f64())
            .collect()
    };
    let g = g_of("e2llm-g4");
    assert!(g[1] > g[0] && g[0] >= 4.0, "{g:?}");
    assert_eq!(g_of("e2llm-g4 + log-n"), g, "log-n reads at the same g");
    // The no-g arms keep their one g: the paper's 2, and the target scale.
    assert_eq!(g_of("e2llm-no-g"), vec![2.0, 2.0]);
    assert_eq!(g_of("e2llm-no-g4"), vec![4.0, 4.0]);
    assert_eq!(g_of("none"), vec![1.0, 1.0]);
    assert!(is_png(&out.join("passkey_vs_length.png")));
    assert!(is_png(&out.join("key_nll_vs_length.png")));
    assert!(is_png(&out.join("ppl_vs_length.png")));
    // Every arm started from the base checkpoint.
    let arm_cfg = std::fs::read_to_string(out.join("pi/checkpoint/trainer_state.json"))
        .expect("pi trainer state");
    assert!(arm_cfg.contains("base/checkpoint"), "{arm_cfg}");

    // A second run reuses all of it (the stages finished, nothing is rewritten) and writes
    // the same table.
    let state = out.join("e2llm-g4/checkpoint/trainer_state.json");
    let before = mtime(&state);
    let again = e2llm(&["experiment", "--preset", "ci", "--out", out_s]);
    assert!(again.status.success(), "stderr: {}", stderr(&again));
    let md2 = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    let strip_tps = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|x| x.starts_with("| "))
            .map(|x| x.rsplitn(3, '|').nth(2).unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(strip_tps(&md), strip_tps(&md2));
    assert_eq!(mtime(&state), before, "a finished stage was trained again");

    // Every reading is kept in evals/ and reused while the model is the same: a kept count
    // marked by hand comes back in the next run's results; new weights (one bit of the last
    // weight flipped) are read again and the mark is gone.
    let kept = out.join("evals/pi.json");
    let pi_first_cell = || -> serde_json::Value {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results"))
                .expect("parses");
        let pi = json["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|r| r["name"] == "pi")
            .expect("pi row")
            .clone();
        pi["passkey"][0].clone()
    };
    let mut saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept).expect("evals/pi.json kept")).expect("parses");
    assert_eq!(saved["passkey"][0]["correct"], pi_first_cell()["correct"]);
    saved["passkey"][0]["correct"] = 7.into();
    std::fs::write(&kept, serde_json::to_vec(&saved).expect("json")).expect("write");
    let o = e2llm(&["experiment", "--preset", "ci", "--out", out_s]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert_eq!(
        pi_first_cell()["correct"],
        7,
        "the kept reading was not reused"
    );
    let weights = out.join("pi/checkpoint/model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("pi weights");
    *bytes.last_mut().expect("weights") ^= 1;
    std::fs::write(&weights, bytes).expect("rewrite");
    let o = e2llm(&["experiment", "--preset", "ci", "--out", out_s]);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(
        pi_first_cell()["correct"].as_u64().expect("count") <= 1,
        "new weights were not read again"
    );

    // --dry-run lists every stage as finished and trains nothing.
    let dry = e2llm(&["experiment", "--preset", "ci", "--out", out_s, "--dry-run"]);
    assert!(dry.status.success(), "stderr: {}", stderr(&dry));
    let listing = String::from_utf8_lossy(&dry.stdout);
    for n in [
        "base",
        "none",
        "e2llm-g4-4sinks",
        "e2llm-no-g",
        "e2llm-no-g4",
    ] {
        assert!(
            listing
                .lines()
                .any(|x| x.trim_start().starts_with(&format!("{n} ")) && x.contains("finished")),
            "{n}: {listing}"
        );
    }
    assert_eq!(mtime(&state), before, "--dry-run trained");
    // A different plan in the same directory: --dry-run says so, a real run refuses it rather
    // than overwrite.
    let clash = [
        "experiment",
        "--preset",
        "ci",
        "--out",
        out_s,
        "--base-steps",
        "5",
    ];
    let dry_clash = e2llm(&[&clash[..], &["--dry-run"]].concat());
    assert_clear_error(&dry_clash, "another run");
    let clash = e2llm(&clash);
    assert_clear_error(&clash, "different config");
    // It names the field that differs, with the saved and the wanted value.
    assert!(
        stderr(&clash).contains("steps: 4 → 5"),
        "{}",
        stderr(&clash)
    );

    // `--base DIR`: the arms start from an existing checkpoint; nothing is pretrained, and the
    // base row reads that checkpoint exactly as the run that trained it did.
    let out2 = tmp("experiment-base");
    let out2_s = out2.to_str().expect("utf-8 path");
    let base_dir = out.join("base/checkpoint");
    let b = e2llm(&[
        "experiment",
        "--preset",
        "ci",
        "--out",
        out2_s,
        "--arms",
        "e2llm-g4",
        "--base",
        base_dir.to_str().expect("utf-8"),
        // A method field reaches the one arm picked (the arm's method replaces the stage's).
        "--set-extend",
        "method.g_max=3",
    ]);
    assert!(b.status.success(), "stderr: {}", stderr(&b));
    assert!(!out2.join("base").exists(), "a base was trained");
    let json2: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out2.join("results.json")).expect("results.json written"),
    )
    .expect("results.json parses");
    let row = |j: &serde_json::Value, name: &str| {
        j["results"]
            .as_array()
            .expect("results")
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row {name}"))
    };
    for n in ["base", "base + log-n"] {
        assert_eq!(row(&json2, n)["passkey"], row(&json, n)["passkey"], "{n}");
        assert_eq!(row(&json2, n)["ppl"], row(&json, n)["ppl"], "{n}");
    }
    assert_eq!(
        row(&json2, "base")["final_loss"],
        row(&json, "base")["final_loss"]
    );
    assert_eq!(row(&json2, "e2llm-g4")["method"]["g_max"], 3);
    assert_eq!(row(&json, "e2llm-g4")["method"]["g_max"], 4);
    // With several arms a method override is refused, not dropped.
    let several = e2llm(&[
        "experiment",
        "--preset",
        "ci",
        "--out",
        out2_s,
        "--set-extend",
        "method.g_max=3",
    ]);
    assert_clear_error(&several, "pick one with --arms");
    let arm_state = std::fs::read_to_string(out2.join("e2llm-g4/checkpoint/trainer_state.json"))
        .expect("arm trainer state");
    assert!(
        arm_state.contains(base_dir.to_str().expect("utf-8")),
        "{arm_state}"
    );
    // An arm trained with log-n (`--set-extend logn=true`) is read with it as trained, and its
    // second row is the one without.
    let out3 = tmp("experiment-logn");
    let l3 = e2llm(&[
        "experiment",
        "--preset",
        "ci",
        "--out",
        out3.to_str().expect("utf-8 path"),
        "--arms",
        "e2llm-g4",
        "--base",
        base_dir.to_str().expect("utf-8"),
        "--set-extend",
        "logn=true",
    ]);
    assert!(l3.status.success(), "stderr: {}", stderr(&l3));
    let json3: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out3.join("results.json")).expect("results.json written"),
    )
    .expect("results.json parses");
    let names3: Vec<&str> = (json3["results"].as_array().expect("results").iter())
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names3,
        ["base", "base + log-n", "e2llm-g4", "e2llm-g4 without log-n"]
    );
    let inference = |name: &str| row(&json3, name)["inference"].as_str().map(str::to_owned);
    assert!(inference("e2llm-g4").expect("inference").contains("log-n"));
    assert!(!(inference("e2llm-g4 without log-n").expect("inference")).contains("log-n"));
    let arm_cfg = std::fs::read_to_string(out3.join("e2llm-g4/checkpoint/config.json"))
        .expect("arm config.json");
    assert!(arm_cfg.contains("use_logn_attn"), "{arm_cfg}");
    std::fs::remove_dir_all(&out3).ok();
    // A directory that is not a checkpoint is one clear error naming it.
    let bad = e2llm(&[
        "experiment",
        "--preset",
        "ci",
        "--out",
        out2_s,
        "--base",
        out2_s,
    ]);
    assert_clear_error(&bad, "config.json");
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&out2).ok();
}

/// `passkey --threads`: prompts on several threads give the grid one thread gives, on the
/// shipped demo model (which finds keys at L, so the cells are not all zero).
#[test]
fn passkey_grid_is_the_same_on_any_number_of_threads() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/model");
    let out = tmp("passkey-threads");
    let cells = |threads: &str| -> serde_json::Value {
        let json = out.join(format!("t{threads}.json"));
        let o = e2llm(&[
            "passkey",
            "--model",
            model.to_str().expect("utf-8"),
            "--lengths",
            "256,384",
            "--depths",
            "0,1",
            "--trials",
            "3",
            "--rope-scale",
            "safe",
            "--threads",
            threads,
            "--json",
            json.to_str().expect("utf-8"),
        ]);
        assert!(o.status.success(), "stderr: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
        v["cells"].clone()
    };
    let one = cells("1");
    let found: u64 = one
        .as_array()
        .expect("cells")
        .iter()
        .filter_map(|c| c["correct"].as_u64())
        .sum();
    assert!(found > 0, "the demo model found no key: {one}");
    assert_eq!(cells("3"), one);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn ppl_reports_every_length() {
    let out = tmp("ppl");
    let json = out.join("ppl.json");
    // `ppl` on lengths 16 and 32, two windows each, plus `extra`; the JSON it wrote.
    let run = |extra: &[&str]| -> serde_json::Value {
        let model = case("tokenizer_demo");
        let mut args = vec![
            "ppl",
            "--model",
            model.to_str().expect("utf-8"),
            "--lengths",
            "16,32",
            "--max-windows",
            "2",
            "--json",
            json.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let o = e2llm(&args);
        assert!(o.status.success(), "stderr: {}", stderr(&o));
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses")
    };
    let v = run(&[]);
    let pts = v["points"].as_array().expect("points");
    assert_eq!(pts.len(), 2);
    for p in pts {
        let (nll, ppl) = (
            p["nll"].as_f64().expect("nll"),
            p["ppl"].as_f64().expect("ppl"),
        );
        assert!((ppl - nll.exp()).abs() < 1e-6 * ppl, "{p}");
        assert_eq!(
            p["tokens"].as_u64(),
            Some(2 * p["length"].as_u64().expect("len"))
        );
    }
    // --score-last: both lengths score the same 8 tokens of each of 2 spans.
    let v = run(&["--score-last", "8"]);
    let pts = v["points"].as_array().expect("points");
    assert_eq!(pts.len(), 2);
    assert!(pts.iter().all(|p| p["tokens"].as_u64() == Some(16)), "{v}");
    assert_eq!(v["score_last"].as_u64(), Some(8));
    let model = case("tokenizer_demo");
    let model = model.to_str().expect("utf-8");
    for (args, needle) in [
        (&["--lengths", "0"][..], "--lengths"),
        (
            &["--lengths", "16,32", "--score-last", "20"][..],
            "--score-last",
        ),
    ] {
        let bad = e2llm(&[&["ppl", "--model", model][..], args].concat());
        assert_clear_error(&bad, needle);
    }
    std::fs::remove_dir_all(&out).ok();
}

/// A model whose config.json says `use_logn_attn` (what `e2llm train --set logn=true` saves)
/// is read with log-n without `--logn`: its perplexity past L equals the plain model's with
/// `--logn`, differs from the plain model's without it, and the report says so.
#[test]
fn a_model_trained_with_logn_is_read_with_it() {
    let out = tmp("logn-config");
    let logn_model = out.join("model");
    copy_dir(&case("tokenizer_demo"), &logn_model);
    let cfg_path = logn_model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).expect("config")).expect("json");
    cfg["use_logn_attn"] = serde_json::json!(true);
    std::fs::write(&cfg_path, cfg.to_string()).expect("write config");
    let json = out.join("ppl.json");
    // ppl at 128 tokens (L = 64), one window: the JSON and the header line.
    let run = |model: &Path, extra: &[&str]| -> (serde_json::Value, String) {
        let mut args = vec![
            "ppl",
            "--model",
            model.to_str().expect("utf-8"),
            "--lengths",
            "128",
            "--max-windows",
            "1",
            "--json",
            json.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let o = e2llm(&args);
        assert!(o.status.success(), "stderr: {}", stderr(&o));
        let v = serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parses");
        (v, stdout(&o))
    };
    let ppl = |v: &serde_json::Value| v["points"][0]["ppl"].as_f64().expect("ppl");
    let info = |m: &Path| stdout(&e2llm(&["info", "--model", m.to_str().expect("utf-8")]));
    assert!(info(&logn_model).contains("log-n attention"));
    assert!(!info(&case("tokenizer_demo")).contains("log-n"));
    let (trained, header) = run(&logn_model, &[]);
    let (flag, _) = run(&case("tokenizer_demo"), &["--logn"]);
    let (plain, plain_header) = run(&case("tokenizer_demo"), &[]);
    assert_eq!(trained["logn"], serde_json::json!(true));
    assert_eq!(plain["logn"], serde_json::json!(false));
    assert!(header.contains("log-n attention scaling"), "{header}");
    assert!(!plain_header.contains("log-n"), "{plain_header}");
    assert!(
        (ppl(&trained) - ppl(&flag)).abs() < 1e-9 * ppl(&flag),
        "{trained} vs {flag}"
    );
    assert!(
        (ppl(&trained) - ppl(&plain)).abs() > 1e-6 * ppl(&plain),
        "log-n changed nothing: {trained} vs {plain}"
    );
    std::fs::remove_dir_all(&out).ok();
}
