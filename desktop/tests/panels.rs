//! The app's panels driven through egui_kittest (no display, no GPU): every tab renders, and
//! a whole session works by clicking — train a tiny model (pause, continue, stop, resume),
//! attention at three scales, passkey grid and perplexity, export — with errors shown in the
//! UI for bad input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use desktop_trainer::autopilot;
use desktop_trainer::state::{PromptSource, RunState, Tab};
use desktop_trainer::DesktopApp;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("e2llm-desktop-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn harness(dir: &Path, steps: usize) -> Harness<'static, DesktopApp> {
    let mut settings = autopilot::settings(dir);
    settings.config.steps = steps;
    settings.attention.prompt = PromptSource::Passkey {
        length: 256,
        depth: 0.5,
        key: 4242,
    };
    settings.eval.checkpoint_a = settings.attention.checkpoint.clone();
    settings.export_from = settings.attention.checkpoint.clone();
    settings.export_to = dir.join("export").display().to_string();
    Harness::builder()
        .with_size([1200.0, 900.0])
        .build_ui_state(
            |ui, app: &mut DesktopApp| app.show(ui),
            DesktopApp::new(settings),
        )
}

/// Steps the UI until `done` holds (hang guard: panics after `secs`).
fn wait(
    h: &mut Harness<'_, DesktopApp>,
    what: &str,
    secs: u64,
    done: impl Fn(&DesktopApp) -> bool,
) {
    let t0 = Instant::now();
    while !done(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(30));
    }
    h.step();
}

fn open(h: &mut Harness<'_, DesktopApp>, tab: Tab) {
    h.get_by_label(tab.label()).click();
    h.step();
    h.step();
    assert_eq!(h.state().settings.tab, tab);
}

#[test]
fn every_tab_renders_its_controls() {
    let dir = tmp("tabs");
    let mut h = harness(&dir, 3);
    let expect = [
        (Tab::Setup, "Save config"),
        (Tab::Train, "Start"),
        (Tab::Attention, "Compute attention"),
        (Tab::Evaluate, "Run passkey grid"),
        (Tab::Export, "Export model"),
    ];
    for (tab, control) in expect {
        open(&mut h, tab);
        assert!(
            h.query_by_label(control).is_some(),
            "{tab:?} lacks `{control}`"
        );
    }
    // Setup saves and reloads the run config as TOML.
    open(&mut h, Tab::Setup);
    let path = dir.join("cfg/run.toml");
    h.state_mut().settings.config_path = path.display().to_string();
    h.state_mut().settings.config.steps = 77;
    h.get_by_label("Save config").click();
    h.step();
    assert!(path.is_file(), "config not written");
    h.state_mut().settings.config.steps = 1;
    h.get_by_label("Load config").click();
    h.step();
    assert_eq!(h.state().settings.config.steps, 77);
    // A bad file is an error in the UI, and the config stays as it was.
    std::fs::write(&path, "steps = \"many\"").expect("write");
    h.get_by_label("Load config").click();
    h.step();
    h.step();
    assert_eq!(h.state().settings.config.steps, 77);
    assert!(
        h.query_by_label_contains("run.toml").is_some(),
        "the error names the file"
    );
}

#[test]
fn a_whole_session_by_clicking() {
    let dir = tmp("session");
    let mut h = harness(&dir, 400);

    // Train: start, pause (no steps while paused), continue, stop (a checkpoint is written).
    open(&mut h, Tab::Train);
    h.get_by_label("Start").click();
    h.step();
    wait(&mut h, "the first steps", 300, |a| a.run.step >= 2);
    h.get_by_label("Pause").click();
    h.step();
    assert_eq!(h.state().run.state, RunState::Paused);
    std::thread::sleep(Duration::from_millis(400));
    h.step();
    let paused_at = h.state().run.step;
    std::thread::sleep(Duration::from_millis(1500));
    h.step();
    assert!(
        h.state().run.step <= paused_at + 1,
        "steps went on while paused"
    );
    h.get_by_label("Continue").click();
    h.step();
    wait(&mut h, "steps after continue", 120, |a| {
        a.run.step >= paused_at + 2
    });
    h.get_by_label("Stop").click();
    h.step();
    wait(&mut h, "the stop", 120, |a| {
        a.run.state == RunState::Finished
    });
    let run = &h.state().run;
    let stopped_at = run.step;
    assert_eq!(run.loss.len(), stopped_at);
    assert_eq!(run.checkpoints.last().map(|c| c.0), Some(stopped_at));
    assert!(run.g_counts.iter().skip(1).sum::<u64>() > 0, "no g drawn");
    assert!(
        run.g_counts.len() <= 9,
        "g above g_max = 8: {:?}",
        run.g_counts
    );
    assert!(run.loss.iter().all(|p| p[1].is_finite()));

    // The run directory now holds a checkpoint: the button resumes it.
    assert!(h.query_by_label("Resume run").is_some());
    h.get_by_label("Resume run").click();
    h.step();
    wait(&mut h, "the resumed run", 120, |a| {
        a.run.started_from.is_some()
    });
    assert_eq!(
        h.state().run.started_from,
        Some(stopped_at),
        "resumed from the checkpoint's step"
    );
    wait(&mut h, "a resumed step", 120, |a| a.run.step > stopped_at);
    h.get_by_label("Stop").click();
    h.step();
    wait(&mut h, "the second stop", 120, |a| {
        a.run.state == RunState::Finished
    });

    // Attention at g = 1, 4, 16 from that checkpoint.
    open(&mut h, Tab::Attention);
    h.get_by_label("Compute attention").click();
    h.step();
    wait(&mut h, "attention maps", 300, |a| {
        a.attention.is_some() || a.attention_error.is_some()
    });
    assert_eq!(h.state().attention_error, None);
    let a = h.state().attention.clone().expect("maps");
    assert_eq!(
        a.maps.iter().map(|m| m.0).collect::<Vec<_>>(),
        vec![1.0, 4.0, 16.0]
    );
    assert!(a.pooled_on.contains("CPU twin"), "{}", a.pooled_on);
    let k = a.key_span.clone().expect("passkey span");
    assert!(k.end > k.start && k.end <= a.tokens.len());
    assert!(
        a.tokens[k.clone()].concat().contains("4242"),
        "span misses the key"
    );
    let diff: f32 = a.maps[0]
        .1
        .data
        .iter()
        .zip(&a.maps[2].1.data)
        .map(|(x, y)| (x - y).abs())
        .sum();
    assert!(diff > 1e-3, "g = 1 and g = 16 give the same map");
    h.step();
    assert_eq!(
        h.state().heatmap_rects.len(),
        3,
        "three heatmaps side by side"
    );
    // Hovering a heatmap names the tokens and the weight.
    let centre = h.state().heatmap_rects[1].1.center();
    h.hover_at(centre);
    h.step();
    h.step();
    assert!(
        h.query_by_label_contains("weight").is_some(),
        "no hover text"
    );

    // Evaluation: a 1-cell passkey grid and PPL at two lengths.
    open(&mut h, Tab::Evaluate);
    {
        let e = &mut h.state_mut().settings.eval;
        e.lengths = "256".into();
        e.depths = "0.5".into();
        e.trials = 1;
        e.ppl_lengths = "32, 64".into();
    }
    h.get_by_label("Run passkey grid").click();
    h.step();
    wait(&mut h, "passkey grid", 300, |a| {
        a.eval_job.is_none() && (!a.eval.grids.is_empty() || a.eval_error.is_some())
    });
    assert_eq!(h.state().eval_error, None);
    assert_eq!(h.state().eval.grids[0].1.len(), 1);
    // Under the grid: the trial's answer (folded), and what was wrong if it was.
    h.step();
    assert!(h.query_by_label_contains("answers (1)").is_some());
    let wrong = h.state().eval.grids[0].1[0].correct == 0;
    assert_eq!(h.query_by_label_contains("wrong answers:").is_some(), wrong);
    h.get_by_label("Run perplexity").click();
    h.step();
    wait(&mut h, "perplexity", 300, |a| {
        a.eval_job.is_none() && (!a.eval.ppl.is_empty() || a.eval_error.is_some())
    });
    assert_eq!(h.state().eval_error, None);
    let ppl = &h.state().eval.ppl[0].1;
    assert_eq!(
        ppl.iter().map(|p| p.length).collect::<Vec<_>>(),
        vec![32, 64]
    );
    assert!(ppl.iter().all(|p| p.ppl.is_finite() && p.ppl > 1.0));

    // Export: the three HF files, loadable by the model crate.
    open(&mut h, Tab::Export);
    h.get_by_label("Export model").click();
    h.step();
    let out = dir.join("export");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} not exported");
    }
    let dev = e2llm_model::backend::device("cpu").expect("cpu");
    e2llm_model::checkpoint::load_dir(&out, &dev).expect("exported model loads");
}

#[test]
fn bad_input_shows_an_error_instead_of_crashing() {
    let dir = tmp("bad");
    let mut h = harness(&dir, 3);
    // A config that does not validate: the run fails at start with the reason.
    h.state_mut().settings.config.train_len = 0;
    open(&mut h, Tab::Train);
    h.get_by_label("Start").click();
    h.step();
    h.step();
    assert_eq!(h.state().run.state, RunState::Failed);
    assert!(
        h.query_by_label_contains("train_len").is_some(),
        "reason not shown"
    );
    // A checkpoint directory with a corrupt config: the attention panel says so.
    let ck = dir.join("broken");
    std::fs::create_dir_all(&ck).expect("dir");
    std::fs::write(ck.join("config.json"), "{ not json").expect("write");
    h.state_mut().settings.attention.checkpoint = ck.display().to_string();
    open(&mut h, Tab::Attention);
    h.get_by_label("Compute attention").click();
    h.step();
    wait(&mut h, "the error", 60, |a| a.attention_error.is_some());
    let e = h.state().attention_error.clone().expect("error");
    assert!(e.contains("config.json"), "{e}");
    h.step();
    assert!(
        h.query_by_label_contains("config.json").is_some(),
        "error not shown"
    );
}

#[test]
fn closing_mid_run_writes_a_checkpoint_at_the_last_step() {
    let dir = tmp("close");
    let mut h = harness(&dir, 100_000);
    open(&mut h, Tab::Train);
    h.get_by_label("Start").click();
    h.step();
    wait(&mut h, "the first steps", 300, |a| a.run.step >= 3);
    // What eframe's on_exit does when the window closes.
    h.state_mut().shutdown();
    let app = h.state();
    assert_eq!(app.run.state, RunState::Finished);
    let (step, ckpt) = app
        .run
        .checkpoints
        .last()
        .cloned()
        .expect("a checkpoint on close");
    assert_eq!(step, app.run.step);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ckpt.join("trainer_state.json")).expect("state file"),
    )
    .expect("json");
    assert_eq!(state["step"].as_u64(), Some(step as u64));
}

#[test]
fn a_run_that_averages_offers_its_averaged_model() {
    let dir = tmp("average");
    let mut h = harness(&dir, 4);
    {
        let c = &mut h.state_mut().settings.config;
        c.keep_every = 2;
        c.average_last = 2;
    }
    open(&mut h, Tab::Train);
    h.get_by_label("Start").click();
    h.step();
    wait(&mut h, "the run to finish", 300, |a| {
        a.run.state == RunState::Finished
    });
    let avg = dir.join("run/average");
    assert!(
        avg.join("model.safetensors").is_file(),
        "no averaged model written"
    );
    assert!(
        h.query_by_label_contains("steps [2, 4]").is_some(),
        "the averaged model is not shown"
    );
    h.get_by_label("Read the averaged model").click();
    h.step();
    let s = &h.state().settings;
    let shown = avg.display().to_string();
    assert_eq!(s.attention.checkpoint, shown);
    assert_eq!(s.eval.checkpoint_a, shown);
    assert_eq!(s.export_from, shown);
    let dev = e2llm_model::backend::device("cpu").expect("cpu");
    e2llm_model::checkpoint::load_dir(&avg, &dev).expect("the averaged model loads");
}
