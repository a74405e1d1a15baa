//! The trainer on CPU: gradients against finite differences, AdamW against a host reference,
//! loss falls, resume reproduces the uninterrupted run exactly, crash-safe checkpoints,
//! NaN stops the run, bad configs are clear errors.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::Device;
use e2llm_core::LlamaConfig;
use e2llm_model::{weights, Positions};
use e2llm_train::data::Corpus;
use e2llm_train::loss::{cross_entropy_host, weighted_cross_entropy};
use e2llm_train::optim::{AdamW, AdamWConfig, NamedGrads};
use e2llm_train::{checkpoint, Method, ModelShape, TrainConfig, TrainError, Trainer};

/// A small slice of the embedded corpus, so tokenizer training and tokenizing stay quick.
fn corpus() -> &'static Corpus {
    static C: OnceLock<Corpus> = OnceLock::new();
    C.get_or_init(|| {
        let full = Corpus::embedded().expect("embedded corpus");
        let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        Corpus {
            train: cut(&full.train, 150_000),
            heldout: cut(&full.heldout, 20_000),
        }
    })
}

fn tiny_run() -> TrainConfig {
    TrainConfig {
        model: ModelShape {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            intermediate_size: 64,
            vocab_size: 320,
            rope_theta: 10_000.0,
        },
        orig_len: 48,
        train_len: 48,
        method: Method::e2llm(4),
        batch_size: 4,
        grad_accum: 2,
        steps: 6,
        lr: 3e-3,
        warmup_steps: 2,
        checkpoint_every: 0,
        // The passkey prompt alone is longer than 48 tokens; passkey rows get their own test.
        passkey_share: 0.0,
        ..TrainConfig::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("e2llm-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small_model_config() -> LlamaConfig {
    let mut c = LlamaConfig::tiny();
    c.vocab_size = 40;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 8;
    c
}

#[test]
fn gradients_match_finite_differences() {
    let cfg = small_model_config();
    let ids: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % 40).collect();
    let targets: Vec<u32> = (0..10).map(|i| (i * 5 + 1) % 40).collect();
    let weights_: Vec<f32> = (0..10).map(|i| if i == 6 { 20.0 } else { 1.0 }).collect();
    let pos = Positions::row(vec![0., 1., 2., 3., 20., 21., 22., 23., 24., 25.], 3.0);

    let ad = Device::flex().autodiff();
    let model = weights::init_random(cfg.clone(), 0.3, 5, &ad);
    let loss = weighted_cross_entropy(
        model.forward(&ids, &pos, None).expect("f"),
        &targets,
        &weights_,
    );
    let mut grads = NamedGrads::default();
    grads.accumulate(&model, &loss.backward());

    let host = weights::to_host(&model).expect("host");
    let loss_at = |name: &str, idx: usize, delta: f32| -> f64 {
        let mut h = weights::HostWeights::new();
        for (n, s, v) in &host {
            let mut v = v.clone();
            if n == name {
                v[idx] += delta;
            }
            h.insert(n.clone(), (s.clone(), v));
        }
        let m = weights::from_host(cfg.clone(), h, "fd", &Device::flex()).expect("model");
        let logits = m
            .forward(&ids, &pos, None)
            .expect("f")
            .into_data()
            .try_to_vec::<f32>()
            .expect("v");
        cross_entropy_host(&logits, 40, &targets, &weights_)
    };
    let mut checked = 0;
    for name in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        let g = grads.grads[name]
            .to_data()
            .try_to_vec::<f32>()
            .expect("grad");
        for idx in [0, g.len() / 3, g.len() - 1] {
            let eps = 1e-2;
            let fd = (loss_at(name, idx, eps) - loss_at(name, idx, -eps)) / (2.0 * eps as f64);
            let err = (fd - g[idx] as f64).abs();
            assert!(
                err < 2e-3 + 0.02 * fd.abs(),
                "{name}[{idx}]: autodiff {} vs finite difference {fd}",
                g[idx]
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 21);
}

/// The AdamW step (burn ops, and the fused `adamw.wgsl` op on flex and wgpu) against the
/// update written out on the host.
#[test]
fn adamw_matches_a_host_reference() {
    let mut devices = vec![(Device::flex(), e2llm_model::Kernels::Reference)];
    devices.push((Device::flex(), e2llm_model::Kernels::Fused));
    match e2llm_model::backend::open("wgpu") {
        Ok(d) => devices.push((d, e2llm_model::Kernels::Fused)),
        Err(e) => eprintln!("wgpu part skipped: {e}"),
    }
    for (device, kernels) in devices {
        adamw_step_matches_host(&device, kernels);
    }
}

fn adamw_step_matches_host(device: &Device, kernels: e2llm_model::Kernels) {
    let cfg = small_model_config();
    let ad = device.clone().autodiff();
    let model = weights::init_random(cfg, 0.3, 9, &ad).with_kernels(kernels);
    let before = weights::to_host(&model).expect("host");
    let ids: Vec<u32> = (0..6).collect();
    let loss = weighted_cross_entropy(
        model
            .forward(&ids, &Positions::contiguous(1, 6, 0, 1.0), None)
            .expect("f"),
        &[1, 2, 3, 4, 5, 6],
        &[1.0; 6],
    );
    let mut grads = NamedGrads::default();
    grads.accumulate(&model, &loss.backward());
    let c = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut opt = AdamW::default();
    let lr = 0.01;
    let after = weights::to_host(&opt.step(model, &grads, lr, c)).expect("host");
    for ((name, shape, w0), (_, _, w1)) in before.iter().zip(&after) {
        let g = grads.grads[name].to_data().try_to_vec::<f32>().expect("g");
        let decay = if shape.len() >= 2 {
            c.weight_decay
        } else {
            0.0
        };
        for i in [0, w0.len() / 2, w0.len() - 1] {
            let (gi, wi) = (g[i] as f64, w0[i] as f64);
            let m = (1.0 - c.beta1) * gi / (1.0 - c.beta1);
            let v = (1.0 - c.beta2) * gi * gi / (1.0 - c.beta2);
            let want = wi * (1.0 - lr * decay) - lr * m / (v.sqrt() + c.eps);
            assert!(
                (w1[i] as f64 - want).abs() < 1e-5,
                "{kernels} {name}[{i}]: {} vs {want}",
                w1[i]
            );
        }
    }
}

#[test]
fn loss_falls_on_the_corpus() {
    let cfg = TrainConfig {
        steps: 40,
        lr: 1e-2,
        grad_accum: 1,
        batch_size: 8,
        passkey_share: 0.0,
        ..tiny_run()
    };
    let mut t = Trainer::new(cfg, &tmp("falls"), corpus()).expect("trainer");
    let mut losses = Vec::new();
    t.run(|r| losses.push(r.loss)).expect("run");
    let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = losses[35..].iter().sum::<f32>() / 5.0;
    assert!(last < first - 0.5, "loss did not fall: {first} → {last}");
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let full_dir = tmp("full");
    let mut full = Trainer::new(tiny_run(), &full_dir, corpus()).expect("trainer");
    full.run(|_| {}).expect("run");

    let dir = tmp("resumed");
    let mut first = Trainer::new(tiny_run(), &dir, corpus()).expect("trainer");
    for _ in 0..3 {
        first.step().expect("step");
    }
    first.save().expect("save");
    drop(first);
    let mut resumed = Trainer::resume(&dir, corpus()).expect("resume");
    assert_eq!(resumed.step, 3);
    resumed.run(|_| {}).expect("run");
    assert_eq!(
        resumed.losses, full.losses,
        "resumed losses differ from the uninterrupted run"
    );
}

#[test]
fn keep_every_leaves_the_model_of_each_kept_step() {
    let dir = tmp("kept");
    let cfg = TrainConfig {
        keep_every: 2,
        ..tiny_run()
    };
    Trainer::new(cfg, &dir, corpus())
        .expect("trainer")
        .run(|_| {})
        .expect("run");
    let weights = |d: PathBuf| std::fs::read(d.join("model.safetensors")).expect("weights");
    // A run stopped at step 2 writes the model step-2/ must hold.
    let short = tmp("kept-short");
    let mut two = Trainer::new(tiny_run(), &short, corpus()).expect("trainer");
    for _ in 0..2 {
        two.step().expect("step");
    }
    let two_dir = two.save().expect("save");
    assert_eq!(weights(dir.join("step-2")), weights(two_dir));
    assert_eq!(weights(dir.join("step-6")), weights(dir.join("checkpoint")));
    assert_ne!(weights(dir.join("step-4")), weights(dir.join("step-6")));
    for k in ["step-2", "step-4", "step-6"] {
        let d = dir.join(k);
        e2llm_model::checkpoint::load_with_tokenizer(&d, &Device::flex())
            .unwrap_or_else(|e| panic!("{k} is not a loadable HF directory: {e}"));
        assert!(
            !d.join(checkpoint::STATE_FILE).exists(),
            "{k} holds trainer state"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("run dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["step-2", "step-4", "step-6"],
        "no other kept or temp dirs"
    );
}

/// `average_last = 2` with `keep_every = 2` over 6 steps: `average/` is the element-wise mean
/// of `step-4/` and `step-6/` (computed here from the kept files), loadable with its tokenizer,
/// and `quickstart`/`experiment` evaluate it ([`e2llm_train::experiment::model_dir`]), which
/// rewrites it when a run stopped before writing it.
#[test]
fn average_last_writes_the_mean_of_the_last_kept_models() {
    let dir = tmp("averaged");
    let cfg = TrainConfig {
        keep_every: 2,
        average_last: 2,
        ..tiny_run()
    };
    assert_eq!(cfg.averaged_steps(), [4, 6]);
    let ckpt = Trainer::new(cfg.clone(), &dir, corpus())
        .expect("trainer")
        .run(|_| {})
        .expect("run");
    let host = |d: PathBuf| {
        e2llm_model::checkpoint::load_host(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .1
    };
    let (a, b, avg) = (
        host(dir.join("step-4")),
        host(dir.join("step-6")),
        host(dir.join("average")),
    );
    assert_eq!(avg.len(), a.len());
    let mut moved = 0;
    for (name, (shape, values)) in &avg {
        let (sa, va) = &a[name];
        let (_, vb) = &b[name];
        assert_eq!(shape, sa, "{name}");
        for ((m, x), y) in values.iter().zip(va).zip(vb) {
            assert!(
                (m - (x + y) / 2.0).abs() <= 1e-6,
                "{name}: {m} vs mean of {x}, {y}"
            );
        }
        moved += usize::from(va != vb);
    }
    assert!(
        moved > 0,
        "steps 4 and 6 hold the same weights: the test would prove nothing"
    );
    e2llm_model::checkpoint::load_with_tokenizer(&dir.join("average"), &Device::flex())
        .expect("average/ is a loadable HF directory");
    let model = e2llm_train::experiment::model_dir(&cfg, &dir, &ckpt).expect("model dir");
    assert_eq!(model, dir.join("average"));
    assert_eq!(
        e2llm_train::checkpoint::averaged_steps(&dir),
        Some(vec![4, 6])
    );
    // Read with another `average_last` (the same kept models): the mean of those steps is
    // written instead of reading the old one, and back again.
    let three = TrainConfig {
        average_last: 3,
        ..cfg.clone()
    };
    e2llm_train::experiment::model_dir(&three, &dir, &ckpt).expect("model dir");
    assert_eq!(
        e2llm_train::checkpoint::averaged_steps(&dir),
        Some(vec![2, 4, 6])
    );
    assert_ne!(host(dir.join("average")), avg, "still the mean of two");
    e2llm_train::experiment::model_dir(&cfg, &dir, &ckpt).expect("model dir");
    assert_eq!(host(dir.join("average")), avg);
    // A run killed before it wrote average/: the experiment writes it from the kept steps.
    let before = std::fs::read(dir.join("average/model.safetensors")).expect("weights");
    std::fs::remove_dir_all(dir.join("average")).expect("rm");
    let model = e2llm_train::experiment::model_dir(&cfg, &dir, &ckpt).expect("model dir");
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).expect("weights"),
        before
    );
    // Killed before even the final step's copy: it is kept again from checkpoint/.
    for d in ["average", "step-6"] {
        std::fs::remove_dir_all(dir.join(d)).expect("rm");
    }
    let model = e2llm_train::experiment::model_dir(&cfg, &dir, &ckpt).expect("model dir");
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).expect("weights"),
        before
    );
    // A kept model that is gone for good: one error that says what to do.
    std::fs::remove_dir_all(dir.join("average")).expect("rm");
    std::fs::remove_dir_all(dir.join("step-4")).expect("rm");
    let e = e2llm_train::experiment::model_dir(&cfg, &dir, &ckpt).expect_err("no step-4");
    assert!(e.to_string().contains("average_last = 0"), "{e}");
    // Off: the final checkpoint.
    let plain = e2llm_train::experiment::model_dir(&tiny_run(), &dir, &ckpt).expect("plain");
    assert_eq!(plain, ckpt);
}

/// `logn = true` trains with log-n attention by each token's position: on an E²-LLM batch
/// whose positions pass L the query weights get other gradients than without it (the factor
/// reaches the forward and the backward),
/// the step reports that loss, the saved config.json says `use_logn_attn`, the loaded model
/// reads with it, and a resumed run keeps it. Per-row factors against their definition:
/// `logn_scaling_follows_each_rows_positions` (model tests).
#[test]
fn logn_training_scales_the_rows_queries_and_is_saved_with_the_model() {
    let dir = tmp("logn");
    let cfg = TrainConfig {
        logn: true,
        steps: 2,
        grad_accum: 1,
        ..tiny_run()
    };
    let mut t = Trainer::new(cfg, &dir, corpus()).expect("trainer");
    assert!(t.model.logn());
    let (rows, placement) = t.batch(0, 0).expect("batch");
    let l = t.cfg.orig_len as f32;
    assert!(
        placement.positions.pos.iter().any(|&p| p + 1.0 > l),
        "the batch should reach past L"
    );
    let value = |loss: burn::tensor::Tensor<1>| loss.into_scalar::<f32>();
    let on = value(t.loss(&rows, &placement).expect("loss"));
    // At init the logits barely depend on attention, so compare what the factor scales: the
    // query weights' gradient.
    let q_grad = |t: &Trainer| {
        let (_, g) = t.gradients(&rows, &placement).expect("gradients");
        let name = "model.layers.0.self_attn.q_proj.weight";
        let q = g
            .grads
            .get(name)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        q.to_data().try_to_vec::<f32>().expect("f32")
    };
    let g_on = q_grad(&t);
    t.model = t.model.clone().with_logn(false);
    let g_off = q_grad(&t);
    t.model = t.model.clone().with_logn(true);
    let scale = g_off.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = g_on
        .iter()
        .zip(&g_off)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("q_proj gradient: log-n moves it by {d} of {scale}");
    assert!(
        d > 0.05 * scale,
        "log-n changed nothing: gradients differ by {d} of {scale}"
    );
    let step = t.step().expect("step 1").loss;
    assert!(
        (step - on).abs() <= 1e-5 * on.abs(),
        "step 1 loss {step} is not the log-n loss {on}"
    );
    t.step().expect("step 2");
    let saved = t.save().expect("save");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(saved.join("config.json")).expect("config.json"),
    )
    .expect("json");
    assert_eq!(config["use_logn_attn"], serde_json::json!(true));
    let loaded = e2llm_model::checkpoint::load_dir(&saved, &Device::flex()).expect("load");
    assert!(loaded.logn(), "the saved model reads with log-n");
    assert!(Trainer::resume(&dir, corpus())
        .expect("resume")
        .model
        .logn());
    // Without it, nothing is written.
    let mut p = Trainer::new(tiny_run(), &tmp("logn-off"), corpus()).expect("trainer");
    p.step().expect("step");
    let off_dir = p.save().expect("save");
    let text = std::fs::read_to_string(off_dir.join("config.json")).expect("config.json");
    assert!(!text.contains("use_logn_attn"), "{text}");
}

#[test]
fn an_interrupted_checkpoint_write_keeps_the_previous_one() {
    let dir = tmp("crash");
    let mut t = Trainer::new(tiny_run(), &dir, corpus()).expect("trainer");
    t.step().expect("step");
    t.save().expect("save");
    // A crash while writing the next one: a half-written checkpoint.tmp/ ...
    let tmpdir = dir.join("checkpoint.tmp");
    std::fs::create_dir_all(&tmpdir).expect("mkdir");
    std::fs::write(tmpdir.join("model.safetensors"), b"partial").expect("write");
    let r = Trainer::resume(&dir, corpus()).expect("resume ignores checkpoint.tmp");
    assert_eq!(r.step, 1);
    // ... or between the two renames: only checkpoint.old/ is complete.
    std::fs::rename(dir.join("checkpoint"), dir.join("checkpoint.old")).expect("rename");
    let r = Trainer::resume(&dir, corpus()).expect("resume from checkpoint.old");
    assert_eq!(r.step, 1);
    assert_eq!(checkpoint::latest(&dir), Some(dir.join("checkpoint.old")));
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tmp("nan");
    let cfg = TrainConfig {
        lr: 1e9,
        warmup_steps: 1,
        grad_clip: 0.0,
        steps: 30,
        checkpoint_every: 1,
        ..tiny_run()
    };
    let mut t = Trainer::new(cfg, &dir, corpus()).expect("trainer");
    let e = t.run(|_| {}).expect_err("lr 1e9 must blow up");
    assert!(matches!(e, TrainError::NonFinite { .. }), "{e}");
    assert!(e.to_string().contains("last good checkpoint"), "{e}");
    let r = Trainer::resume(&dir, corpus()).expect("the last good checkpoint loads");
    assert!(r.losses.iter().all(|l| l.is_finite()));
}

#[test]
fn bad_configs_are_clear_errors() {
    let e = TrainConfig::from_toml("run.toml", "stepz = 3").expect_err("unknown key");
    assert!(
        e.to_string().contains("run.toml") && e.to_string().contains("stepz"),
        "{e}"
    );
    let e = TrainConfig::from_toml("run.toml", "batch_size = 2\nthreads = 3")
        .expect_err("more threads than rows");
    assert!(e.to_string().contains("threads"), "{e}");
    let e = TrainConfig::from_toml("run.toml", "lr = -1.0").expect_err("negative lr");
    assert!(e.to_string().contains("lr"), "{e}");
    let e = TrainConfig::from_toml("run.toml", "[method]\nname = \"e2llm\"").expect_err("no g_max");
    assert!(e.to_string().contains("g_max"), "{e}");
    let e = TrainConfig::from_toml("run.toml", "[method]\nname = \"magic\"")
        .expect_err("unknown method");
    assert!(e.to_string().contains("magic"), "{e}");
    let ok = TrainConfig::from_toml("run.toml", "steps = 7\n[method]\nname = \"pi\"\ng = 4")
        .expect("ok");
    assert_eq!(ok.method, Method::Pi { g: 4 });
    let set = e2llm_train::config::apply_overrides(
        &ok,
        &[
            "method.name=e2llm".into(),
            "method.g_max=20".into(),
            "lr=0.5".into(),
        ],
    )
    .expect("overrides");
    assert_eq!(set.method, Method::e2llm(20));
    assert_eq!(set.lr, 0.5);
    // The kernels choice: spelled as the CLI spells it, checked against the head width.
    let k = e2llm_train::config::apply_overrides(&ok, &["kernels=fused".into()]).expect("kernels");
    assert_eq!(k.kernels, e2llm_model::Kernels::Fused);
    let e = e2llm_train::config::apply_overrides(&ok, &["kernels=fast".into()])
        .expect_err("unknown kernels");
    assert!(e.to_string().contains("fast"), "{e}");
    let e = TrainConfig::from_toml(
        "run.toml",
        "kernels = \"fused\"\n[model]\nhidden_size = 512\nnum_attention_heads = 2\nnum_key_value_heads = 2",
    )
    .expect_err("head width 256");
    assert!(e.to_string().contains("at most 128"), "{e}");
    // Averaging needs kept models at the steps it averages.
    for (toml, needle) in [
        ("steps = 6\naverage_last = 1", "at least 2"),
        ("steps = 6\naverage_last = 2", "keep_every"),
        ("steps = 6\nkeep_every = 4\naverage_last = 2", "divisor"),
        (
            "steps = 6\nkeep_every = 3\naverage_last = 3",
            "average_last = 3",
        ),
    ] {
        let e = TrainConfig::from_toml("run.toml", toml).expect_err(toml);
        assert!(e.to_string().contains(needle), "{toml}: {e}");
    }
    let ok = TrainConfig::from_toml("run.toml", "steps = 6\nkeep_every = 3\naverage_last = 2")
        .expect("two kept models");
    assert_eq!(ok.averaged_steps(), [3, 6]);
}

#[test]
fn corrupt_checkpoints_are_clear_errors() {
    let dir = tmp("corrupt");
    let mut t = Trainer::new(tiny_run(), &dir, corpus()).expect("trainer");
    t.step().expect("step");
    t.save().expect("save");
    // Extending it with another L is refused up front (its RoPE and the samplers would
    // disagree about L), naming both values.
    let e = Trainer::new(
        TrainConfig {
            init: Some(dir.join("checkpoint").display().to_string()),
            orig_len: 64,
            train_len: 64,
            ..tiny_run()
        },
        &tmp("init-l"),
        corpus(),
    )
    .err()
    .expect("init with another L");
    assert!(
        e.to_string().contains("max_position_embeddings 48") && e.to_string().contains("orig_len"),
        "{e}"
    );
    let opt = dir.join("checkpoint").join(checkpoint::OPTIM_FILE);
    std::fs::write(&opt, b"garbage").expect("write");
    let e = Trainer::resume(&dir, corpus())
        .err()
        .expect("corrupt optimizer state");
    assert!(e.to_string().contains("optimizer.safetensors"), "{e}");
    let e = Trainer::resume(&tmp("empty"), corpus())
        .err()
        .expect("no checkpoint");
    assert!(e.to_string().contains("no complete checkpoint"), "{e}");
}

/// `threads`: a micro-batch split over threads (parts of 1, 1 and 2 rows, so unequal shares of
/// the answer weights) gives the one-pass loss and every gradient to float rounding, and the
/// same bits every time.
#[test]
fn threads_split_the_batch_and_sum_to_the_one_pass_gradients() {
    let cfg = TrainConfig {
        train_len: 256,
        orig_len: 256,
        passkey_share: 0.5,
        batch_size: 4,
        ..tiny_run()
    };
    let mut t = Trainer::new(cfg, &tmp("threads"), corpus()).expect("trainer");
    let (rows, placement) = t.batch(0, 0).expect("batch");
    let (l1, g1) = t.gradients(&rows, &placement).expect("one pass");
    t.cfg.threads = 3;
    let (l3, g3) = t.gradients(&rows, &placement).expect("three threads");
    let (l3b, g3b) = t.gradients(&rows, &placement).expect("three threads again");
    assert!((l1 - l3).abs() <= 1e-5 * l1.abs(), "loss {l1} vs {l3}");
    assert_eq!(l3.to_bits(), l3b.to_bits(), "not deterministic");
    let host = |x: &burn::tensor::Tensor<1>| {
        e2llm_model::backend::read_f32(x.clone()).expect("read gradient")
    };
    assert_eq!(g1.grads.len(), g3.grads.len());
    for (name, a) in &g1.grads {
        let (a, b, c) = (host(a), host(&g3.grads[name]), host(&g3b.grads[name]));
        let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.0, "{name}: zero gradient");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * max,
                "{name}[{i}]: {x} vs {y} (max {max})"
            );
        }
        assert!(
            b.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}: not deterministic"
        );
    }
}

#[test]
fn passkey_rows_weight_exactly_the_answer() {
    let cfg = TrainConfig {
        train_len: 256,
        orig_len: 256,
        passkey_share: 1.0,
        ..tiny_run()
    };
    let t = Trainer::new(cfg, &tmp("passkey"), corpus()).expect("trainer");
    let tok = &t.data.tokenizer;
    let mut rng = e2llm_train::trainer::step_rng(3, 0, 0);
    for _ in 0..5 {
        let row = t.data.passkey_row(256, &mut rng).expect("row");
        assert_eq!(row.ids.len(), 257);
        let text = tok.decode(&row.ids).expect("decode");
        let key = e2llm_core::passkey::first_integer(&text).expect("a key in the text");
        assert!(
            text.contains(&format!("The pass key is {key}. Remember it.")),
            "{text}"
        );
        assert!(
            text.contains(&format!("What is the pass key? The pass key is {key}.")),
            "{text}"
        );
        // The weighted targets decode to the answer " {key}.".
        let answer: Vec<u32> = row
            .weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 1.0)
            .map(|(j, _)| row.ids[j + 1])
            .collect();
        assert_eq!(tok.decode(&answer).expect("decode"), format!(" {key}."));
    }
}

/// `passkey_min_len`: prompts of every size between it and the row, each row still full length
/// with the answer weighted; 0 keeps full-length prompts.
#[test]
fn passkey_min_len_varies_the_haystack() {
    let answer_end = |min: usize| -> Vec<usize> {
        let cfg = TrainConfig {
            train_len: 256,
            orig_len: 256,
            passkey_share: 1.0,
            passkey_min_len: min,
            ..tiny_run()
        };
        let t = Trainer::new(cfg, &tmp(&format!("minlen{min}")), corpus()).expect("trainer");
        let mut rng = e2llm_train::trainer::step_rng(5, 0, 0);
        (0..24)
            .map(|_| {
                let row = t.data.passkey_row(256, &mut rng).expect("row");
                assert_eq!(row.ids.len(), 257);
                let weighted: Vec<usize> = (0..256).filter(|&j| row.weights[j] > 1.0).collect();
                assert!(!weighted.is_empty(), "no answer in the row");
                weighted[weighted.len() - 1] + 1
            })
            .collect()
    };
    // The builder fills whole filler blocks, so even "full" prompts end 0-90 tokens short.
    let full = answer_end(0);
    assert!(full.iter().all(|&e| e > 160), "full prompts: {full:?}");
    // A target below the filler-free prompt (166 tokens with this small vocabulary) gets that
    // prompt, with no filler at all.
    let varied = answer_end(120);
    assert!(
        varied.iter().all(|&e| (160..=257).contains(&e)),
        "{varied:?}"
    );
    let short = |v: &[usize]| v.iter().filter(|&&e| e < 180).count();
    assert!(
        short(&varied) >= short(&full) + 6,
        "short haystacks: {varied:?} vs full rows {full:?}"
    );
    let bad = TrainConfig {
        passkey_min_len: 300,
        train_len: 256,
        ..tiny_run()
    };
    let e = bad.validate().expect_err("longer than the row");
    assert!(e.contains("passkey_min_len"), "{e}");
}

#[test]
fn passkey_grid_reports_every_cell_with_the_chosen_scale() {
    use e2llm_train::eval::{markdown_table, passkey_grid, PasskeyEval, ScaleMode};
    let cfg = TrainConfig {
        steps: 1,
        ..tiny_run()
    };
    let t = Trainer::new(cfg, &tmp("grid"), corpus()).expect("trainer");
    let eval = PasskeyEval {
        lengths: vec![200, 400],
        depths: vec![0.0, 1.0],
        trials: 2,
        max_new_tokens: 4,
        scale: ScaleMode::Safe,
        filler: e2llm_core::passkey::Filler::Standard,
        seed: 1,
        threads: 1,
    };
    let mut progress = Vec::new();
    let cells = passkey_grid(&t.model, &t.data.tokenizer, &eval, |d, n| {
        progress.push((d, n))
    })
    .expect("grid");
    assert_eq!(cells.len(), 4);
    assert_eq!(progress.last(), Some(&(8, 8)));
    for c in &cells {
        assert_eq!(c.trials, 2);
        assert!(c.correct <= 2);
        // Every trial's answer is kept, and the count of right ones is the score's.
        assert_eq!(c.answers.len(), 2);
        let right = c
            .answers
            .iter()
            .filter(|a| e2llm_core::passkey::score(&a.text, a.key))
            .count();
        assert_eq!(c.correct, right);
        assert!(c
            .answers
            .iter()
            .all(|a| a.prompt_tokens > 0 && a.prompt_tokens <= c.length));
        // A 1-step model is far from every key: each of its tokens costs nats.
        assert!(
            c.answers
                .iter()
                .all(|a| a.key_nll.is_finite() && a.key_nll > 1.0),
            "{:?}",
            c.answers
        );
        // L = 48: the smallest integer g with (prompt + 4) / g ≤ 48.
        let need = ((c.length as f32 + 4.0) / 48.0).ceil();
        assert!(
            c.g <= need && c.g >= need - 1.0,
            "length {} got g {}",
            c.length,
            c.g
        );
    }
    // Prompts on several threads: the same grid, progress still counted 1..=8 in order.
    let mut progress3 = Vec::new();
    let cells3 = passkey_grid(
        &t.model,
        &t.data.tokenizer,
        &PasskeyEval {
            threads: 3,
            ..eval.clone()
        },
        |d, n| progress3.push((d, n)),
    )
    .expect("grid on 3 threads");
    assert_eq!(cells3, cells);
    assert_eq!(progress3, progress);
    let table = markdown_table(&cells);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.contains("| 200 |") && table.contains("depth 1") && table.contains("key NLL"),
        "{table}"
    );
    assert_eq!("auto".parse::<ScaleMode>(), Ok(ScaleMode::Auto));
    assert_eq!("8".parse::<ScaleMode>(), Ok(ScaleMode::Fixed(8.0)));
    assert!("-1".parse::<ScaleMode>().is_err());
}

#[test]
fn run_until_stops_on_request_and_keeps_a_checkpoint_that_resumes() {
    use std::ops::ControlFlow;
    let dir = tmp("run_until");
    let mut t = Trainer::new(tiny_run(), &dir, corpus()).expect("trainer");
    let mut saved = Vec::new();
    t.run_until(
        |r| {
            if r.step == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
        |step, _| saved.push(step),
    )
    .expect("run");
    assert_eq!(
        saved,
        vec![2],
        "a stop writes exactly one checkpoint, at the stop"
    );
    let mut resumed = Trainer::resume(&dir, corpus()).expect("resume");
    assert_eq!(resumed.step, 2);
    let mut steps = Vec::new();
    resumed
        .run_until(
            |r| {
                steps.push(r.step);
                ControlFlow::Continue(())
            },
            |s, _| saved.push(s),
        )
        .expect("run");
    assert_eq!(steps, vec![3, 4, 5, 6]);
    assert_eq!(saved, vec![2, 6]);
}

/// One E²-LLM training step (rows with their own g and t) through the fused kernels
/// (attention, RMSNorm, SwiGLU, cross-entropy) and through the plain burn ops: same loss, same
/// gradient of every parameter (≤ 1e-3 of its largest), and the same loss again after the AdamW
/// update — on flex (the CPU attention and the other kernels' CPU twins) and on wgpu (the WGSL
/// with their backward kernels; lavapipe in CI).
#[test]
fn fused_and_reference_kernels_train_alike() {
    use e2llm_model::Kernels;
    let mut backends = vec!["cpu"];
    match e2llm_model::backend::open("wgpu") {
        Ok(_) => backends.push("wgpu"),
        Err(e) => eprintln!("wgpu part skipped: {e}"),
    }
    // Without and with log-n attention (the quickstart trains with it: the queries of positions
    // past L scaled per token, forward and backward).
    for (backend, logn) in backends.iter().flat_map(|b| [(*b, false), (*b, true)]) {
        let run = |kernels: Kernels| {
            let cfg = TrainConfig {
                backend: backend.into(),
                kernels,
                logn,
                ..tiny_run()
            };
            let mut t = Trainer::new(
                cfg,
                &tmp(&format!("kern-{backend}-{kernels}-{logn}")),
                corpus(),
            )
            .expect("trainer");
            assert_eq!(
                (t.model.fused_attention(), t.model.fused_layers()),
                (kernels == Kernels::Fused, kernels == Kernels::Fused),
                "{backend} {kernels}"
            );
            let (rows, placement) = t.batch(0, 0).expect("batch");
            assert!(
                placement.g.iter().any(|&g| g != placement.g[0]),
                "the rows should carry different scales g: {:?}",
                placement.g
            );
            let loss = t.loss(&rows, &placement).expect("loss");
            let mut grads = NamedGrads::default();
            grads.accumulate(&t.model, &loss.backward());
            let first = t.step().expect("step 1").loss;
            let second = t.step().expect("step 2").loss;
            let grads: Vec<(String, Vec<f32>)> = grads
                .grads
                .iter()
                .map(|(n, g)| (n.clone(), g.to_data().try_to_vec::<f32>().expect("grad")))
                .collect();
            (first, second, grads)
        };
        let (f, r) = (run(Kernels::Fused), run(Kernels::Reference));
        eprintln!(
            "{backend} log-n {logn}: loss fused {} / {} vs reference {} / {}",
            f.0, f.1, r.0, r.1
        );
        assert!(
            (f.0 - r.0).abs() <= 1e-3 * r.0.abs(),
            "{backend} log-n {logn}: step 1 loss"
        );
        assert!(
            (f.1 - r.1).abs() <= 1e-3 * r.1.abs(),
            "{backend} log-n {logn}: step 2 loss"
        );
        assert_eq!(f.2.len(), r.2.len());
        // Relative to each parameter's largest gradient: at init attention is nearly uniform
        // and its gradients are small, so an absolute bound would let a wrong kernel through.
        let mut worst = (0.0f32, String::new());
        for (name, g) in &f.2 {
            let want =
                &r.2.iter()
                    .find(|(n, _)| n == name)
                    .expect("same parameters")
                    .1;
            let top = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let err = g
                .iter()
                .zip(want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            let rel = err / top.max(1e-12);
            assert!(
                rel <= 1e-3,
                "{backend} log-n {logn} {name}: max |Δ| {err:.2e} = {rel:.2e} of max |g|"
            );
            if rel > worst.0 {
                worst = (rel, name.clone());
            }
        }
        eprintln!(
            "{backend} log-n {logn}: {} gradients, worst max |Δ| / max |g| = {:.2e} ({})",
            f.2.len(),
            worst.0,
            worst.1
        );
    }
}
