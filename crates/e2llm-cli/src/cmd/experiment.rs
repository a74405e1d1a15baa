//! `e2llm quickstart` and `e2llm experiment`: pretrain a base, extend it, evaluate, report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use e2llm_train::data::Corpus;
use e2llm_train::experiment::{self, Observer, Plan, Preset, Report};
use e2llm_train::StepReport;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::plot;

/// Arguments of `e2llm quickstart`.
#[derive(clap::Args, Debug)]
pub struct QuickstartArgs {
    /// Run directory (base/, e2llm/, results and plots). Running again continues or reuses it.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `e2llm experiment`.
#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// `ci` (test-sized, minutes) or `paper` (the README's table).
    #[arg(long, default_value = "ci")]
    preset: Preset,
    /// Output directory (default: runs/experiment-<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Jobs at the same time: the base's reading and the arms (each trains with its config's
    /// `threads`, 2 in the paper preset: add `--set-extend threads=1` to give each arm one core).
    /// Every model is read with cores / jobs threads.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Only these arms, comma-separated (default: all of the preset's).
    #[arg(long)]
    arms: Option<String>,
    #[command(flatten)]
    common: Common,
}

/// Overrides shared by both commands.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Compute backend of training and evaluation.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "wgpu"])]
    backend: String,
    /// Use this HF checkpoint directory (config.json, model.safetensors, tokenizer.json) as the
    /// base instead of pretraining one; `L` becomes its max_position_embeddings.
    #[arg(long, value_name = "DIR", conflicts_with = "base_steps")]
    base: Option<PathBuf>,
    /// Base pretraining steps (default: the preset's).
    #[arg(long)]
    base_steps: Option<usize>,
    /// Extension steps per arm (default: the preset's).
    #[arg(long)]
    steps: Option<usize>,
    /// Passkey trials per (length, depth) cell (default: the preset's).
    #[arg(long)]
    trials: Option<usize>,
    /// Override a field of every stage's training config, e.g. `--set passkey_share=0.7`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Override a field of the extension stages only, e.g. `--set-extend lr=5e-4`.
    /// `method.…` fields go to the one arm (`method.sinks=N` without `method.sinks_max` keeps
    /// N tokens in every row: `method.sinks=4` is the paper's 4 sinks).
    #[arg(long = "set-extend", value_name = "KEY=VALUE")]
    set_extend: Vec<String>,
    /// Print each stage (method, steps) and what its directory under the output holds —
    /// nothing, a part-trained run to resume, a finished one to reuse, or a run with another
    /// config (an error) — then stop without training or evaluating.
    #[arg(long)]
    dry_run: bool,
    /// Train every stage (resuming or reusing what the output holds), then stop without
    /// evaluating: e.g. train the arms on a machine with many cores, copy the output back and
    /// run the same command without this flag to evaluate them.
    #[arg(long, conflicts_with = "dry_run")]
    train_only: bool,
}

fn apply(mut plan: Plan, c: &Common) -> Result<Plan> {
    plan = plan.with_backend(&c.backend);
    if let Some(dir) = &c.base {
        plan = plan
            .with_base(dir)
            .with_context(|| format!("--base {}: cannot use it as the base", dir.display()))?;
    }
    if let Some(s) = c.base_steps {
        plan.base.steps = s;
    }
    if let Some(s) = c.steps {
        plan.extend.steps = s;
        // A preset that averages kept models keeps them every quarter of the run: with other
        // steps the quarters follow, and a count not divisible by 4 reads the final model.
        let k = plan.extend.average_last;
        if k > 0 && !experiment::keep_quarters(&mut plan.extend) {
            eprintln!(
                "note: --steps {s} has no quarters to keep, so the final model is read instead \
                 of the mean of the last {k} quarter-run models"
            );
        }
    }
    if let Some(t) = c.trials {
        anyhow::ensure!(t > 0, "--trials must be at least 1");
        plan.eval.trials = t;
    }
    plan.base = e2llm_train::config::apply_overrides(&plan.base, &c.set)?;
    plan.extend = e2llm_train::config::apply_overrides(&plan.extend, &c.set)?;
    plan.extend = e2llm_train::config::apply_overrides(&plan.extend, &c.set_extend)?;
    plan.follow_window();
    for cfg in [&plan.base, &plan.extend] {
        cfg.validate()
            .map_err(|r| anyhow::anyhow!("invalid stage config: {r}"))?;
    }
    Ok(plan)
}

/// The field a `KEY=VALUE` override names: `method.sinks` of `method.sinks=4`.
fn override_key(o: &str) -> &str {
    o.split_once('=').map_or(o, |(k, _)| k).trim()
}

/// `--set method.…` / `--set-extend method.…` on the extension: each arm carries its own method
/// (the stage config's is replaced by it), so such an override goes to the arm — when there is
/// exactly one (the quickstart's, or one picked with `--arms`); with several it is an error
/// rather than silently ignored.
fn apply_method_overrides(plan: &mut Plan, c: &Common) -> Result<()> {
    let is_method = |o: &&String| {
        let key = override_key(o);
        key == "method" || key.starts_with("method.")
    };
    let mut overrides: Vec<String> = c
        .set
        .iter()
        .chain(&c.set_extend)
        .filter(is_method)
        .cloned()
        .collect();
    if overrides.is_empty() {
        return Ok(());
    }
    // `method.sinks=N` alone means N kept tokens in every row, as it did before the arms drew
    // a range (`method.sinks=4` is the paper's 4 sinks, not U{4..224}).
    let sets = |k: &str| overrides.iter().any(|o| override_key(o) == k);
    if sets("method.sinks") && !sets("method.sinks_max") {
        overrides.push("method.sinks_max=0".into());
    }
    let [arm] = plan.arms.as_mut_slice() else {
        anyhow::bail!(
            "{}: each of the {} arms has its own method; pick one with --arms to change its fields",
            overrides.join(", "),
            plan.arms.len()
        );
    };
    let cfg = e2llm_train::config::TrainConfig {
        method: arm.method,
        ..plan.extend.clone()
    };
    let cfg = e2llm_train::config::apply_overrides(&cfg, &overrides)
        .with_context(|| format!("arm `{}`", arm.name))?;
    cfg.validate()
        .map_err(|r| anyhow::anyhow!("arm `{}`: invalid method: {r}", arm.name))?;
    arm.method = cfg.method;
    // The user's method is taken as given: its kept tokens no longer follow the window.
    arm.follows_window = false;
    Ok(())
}

/// Progress bars, one per running stage; without a terminal (logs, CI) a plain line every
/// tenth of a stage instead, since indicatif draws nothing there.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    plain: bool,
}

impl Bars {
    fn log(&self, name: &str, what: &str, done: usize, total: usize, msg: &str) {
        let every = (total / 10).max(1);
        if self.plain && (done.is_multiple_of(every) || done == total) {
            eprintln!("{name:>12} {what:<5} {done}/{total} {msg}");
        }
    }
}

impl Bars {
    fn bar(&self, name: &str, len: usize, pos: usize, what: &str) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        let key = format!("{name}/{what}");
        bars.entry(key)
            .or_insert_with(|| {
                let b = self.multi.add(ProgressBar::new(len as u64));
                b.set_style(
                    ProgressStyle::with_template(&format!(
                        "{{spinner}} {name:>12} {what:<5} [{{elapsed_precise}}<{{eta_precise}}] \
                         {{bar:24}} {{pos}}/{{len}} {{msg}}"
                    ))
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_position(pos as u64);
                b
            })
            .clone()
    }
}

impl Observer for Bars {
    fn stage(&self, name: &str, done: usize, steps: usize) {
        let b = self.bar(name, steps, done, "train");
        if done >= steps {
            b.finish_with_message("(done earlier, reused)");
        }
    }
    fn step(&self, name: &str, r: &StepReport) {
        let b = self.bar(name, r.steps, r.step, "train");
        b.set_position(r.step as u64);
        let msg = format!("loss {:.3}  {:.0} tok/s", r.loss, r.tokens_per_s);
        self.log(name, "train", r.step, r.steps, &msg);
        b.set_message(msg);
        if r.step >= r.steps {
            b.finish();
        }
    }
    fn eval(&self, name: &str, done: usize, total: usize) {
        let b = self.bar(name, total, done, "eval");
        b.set_position(done as u64);
        self.log(name, "eval", done, total, "");
    }
    fn done(&self, name: &str) {
        let bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = bars.get(&format!("{name}/eval")) {
            b.finish();
        }
    }
    fn note(&self, name: &str, msg: &str) {
        let line = format!("{name:>12} {msg}");
        if self.plain || self.multi.println(&line).is_err() {
            eprintln!("{line}");
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    e2llm_model::weights::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes results.md, results.json and the plots; prints the table.
fn report(rep: &Report, out: &Path, title: &str) -> Result<()> {
    let table = rep.markdown();
    let logn = if rep.plan.eval.logn {
        " Rows `… + log-n` read the same checkpoint with log-n attention scaling (each query's \
         logits × ln(n)/ln(L) past L; an inference option, not part of E²-LLM); a model trained \
         with it (`logn = true`) is read with it, and its `… without log-n` row without."
    } else {
        ""
    };
    let ppl = if rep.plan.eval.ppl_multiples.is_empty() {
        String::new()
    } else {
        format!(
            " Perplexity: held-out text cut into {} span(s) of the longest length; every length \
             scores the same last {} tokens of each span, so a longer length only adds context.",
            rep.plan.eval.ppl_windows, rep.orig_len
        )
    };
    let md = format!(
        "# {title}\n\nL = {} tokens; passkey: {} trials per (length, depth) cell, depths {:?}; \
         values are accuracy averaged over depths.{ppl}{logn}\n\n{table}\n## Key NLL\n\n\
         Mean −ln p(\" KEY.\" | prompt) in nats over each length's prompts, teacher-forced \
         over the answer's tokens (lower is better): how close a model comes to the key where \
         accuracy ties at 0 % or 100 %.\n\n{}\n## Passkey grids\n\n{}",
        rep.orig_len,
        rep.plan.eval.trials,
        rep.plan.eval.depths,
        rep.key_nll_markdown(),
        rep.grids_markdown()
    );
    write(&out.join("results.md"), md.as_bytes())?;
    write(
        &out.join("results.json"),
        serde_json::to_string_pretty(rep)?.as_bytes(),
    )?;
    let mut curves = Vec::new();
    let mut nll = Vec::new();
    let mut ppl = Vec::new();
    for r in &rep.results {
        plot::passkey_heatmap(
            &r.passkey,
            &format!("passkey accuracy: {} (L = {})", r.name, rep.orig_len),
            &out.join(format!("passkey_{}.png", r.name.replace(" + ", "+"))),
        )?;
        curves.push(plot::Series {
            name: r.name.clone(),
            points: rep
                .passkey_lengths()
                .into_iter()
                .filter_map(|l| r.passkey_at(l).map(|a| (l, 100.0 * a)))
                .collect(),
        });
        nll.push(plot::Series {
            name: r.name.clone(),
            points: (rep.passkey_lengths().into_iter())
                .filter_map(|l| r.key_nll_at(l).map(|n| (l, n)))
                .collect(),
        });
        ppl.push(plot::Series {
            name: r.name.clone(),
            points: r.ppl.iter().map(|p| (p.length, p.ppl)).collect(),
        });
    }
    plot::curves(
        &curves,
        "passkey accuracy vs context length",
        "accuracy (%)",
        &out.join("passkey_vs_length.png"),
    )?;
    plot::curves(
        &nll,
        "key NLL vs context length (lower is better)",
        "−ln p(key | prompt), nats",
        &out.join("key_nll_vs_length.png"),
    )?;
    if ppl.iter().any(|s| !s.points.is_empty()) {
        plot::curves(
            &ppl,
            "held-out perplexity vs context length",
            "perplexity",
            &out.join("ppl_vs_length.png"),
        )?;
    }
    println!("\n{title} (L = {} tokens){logn}\n\n{table}", rep.orig_len);
    println!(
        "results: {0}/results.md, {0}/results.json; plots: {0}/*.png",
        out.display()
    );
    Ok(())
}

/// `--dry-run`: each stage and the state of its directory; an error if one holds another run.
fn dry_run(plan: &Plan, out: &Path) -> Result<()> {
    use experiment::StageState;
    let state = |cfg: &e2llm_train::TrainConfig, dir: &Path| match experiment::stage_state(cfg, dir)
    {
        Ok(StageState::New) => ("trains from the start".to_string(), true),
        Ok(StageState::Resume { step }) => (format!("resumes at step {step}"), true),
        Ok(StageState::Done { checkpoint }) if !cfg.averaged_steps().is_empty() => (
            format!(
                "finished, reused ({}; the model read is {})",
                checkpoint.display(),
                e2llm_train::checkpoint::average_dir(dir).display()
            ),
            true,
        ),
        Ok(StageState::Done { checkpoint }) => {
            (format!("finished, reused ({})", checkpoint.display()), true)
        }
        Err(e) => (format!("ERROR: {e}"), false),
    };
    println!(
        "dry run: nothing is trained or evaluated. Output: {}",
        out.display()
    );
    let mut ok = true;
    let base_ckpt = match &plan.base_dir {
        Some(dir) => {
            println!("  {:<18} {} (--base)", "base", dir.display());
            dir.clone()
        }
        None => {
            let dir = out.join("base");
            let (s, good) = state(&plan.base, &dir);
            ok &= good;
            println!(
                "  {:<18} {}, {} steps at L = {}: {s}",
                "base",
                plan.base.method_label(),
                plan.base.steps,
                plan.base.orig_len
            );
            dir.join("checkpoint")
        }
    };
    for arm in &plan.arms {
        let cfg = plan.arm_config(arm, &base_ckpt);
        let (s, good) = state(&cfg, &out.join(&arm.name));
        ok &= good;
        println!(
            "  {:<18} {}, {} steps: {s}",
            arm.name,
            cfg.method_label(),
            cfg.steps
        );
    }
    let e = &plan.eval;
    let ppl = match e.ppl_multiples.is_empty() {
        true => String::new(),
        false => format!(
            "; perplexity at {:?}× L ({} spans)",
            e.ppl_multiples, e.ppl_windows
        ),
    };
    println!(
        "  evaluation: passkey at {:?}× L, {} trials × {} depths{}{ppl}",
        e.passkey_multiples,
        e.trials,
        e.depths.len(),
        if e.logn {
            ", each model also with log-n"
        } else {
            ""
        },
    );
    anyhow::ensure!(ok, "a stage directory holds another run (see ERROR above)");
    Ok(())
}

fn execute(plan: &Plan, out: &Path, jobs: usize, title: &str, train_only: bool) -> Result<()> {
    let corpus = Corpus::embedded()?;
    let bars = Bars {
        multi: MultiProgress::new(),
        bars: Mutex::new(HashMap::new()),
        plain: !std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let rep = experiment::run(plan, out, &corpus, jobs, !train_only, &bars)?;
    if train_only {
        println!(
            "trained every stage in {}; the same command without --train-only evaluates them",
            out.display()
        );
        return Ok(());
    }
    report(&rep, out, title)
}

/// `e2llm quickstart`.
pub fn quickstart(a: QuickstartArgs) -> Result<()> {
    let mut plan = apply(Plan::preset(Preset::Quickstart), &a.common)?;
    apply_method_overrides(&mut plan, &a.common)?;
    let base = match &plan.base_dir {
        Some(dir) => format!("start from {} (L = {})", dir.display(), plan.base.orig_len),
        None => format!(
            "pretrain a {}-layer, {}-wide Llama at L = {} for {} steps",
            plan.base.model.num_hidden_layers,
            plan.base.model.hidden_size,
            plan.base.orig_len,
            plan.base.steps
        ),
    };
    println!(
        "quickstart: {base}, extend it with {} for {} steps, then find passkeys at {}× L. \
         Output: {}",
        plan.arms
            .iter()
            .map(|a| plan.arm_config(a, Path::new("")).method_label())
            .collect::<Vec<_>>()
            .join(", "),
        plan.extend.steps,
        plan.eval
            .passkey_multiples
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        a.out.display()
    );
    if a.common.dry_run {
        return dry_run(&plan, &a.out);
    }
    execute(&plan, &a.out, 1, "E²-LLM quickstart", a.common.train_only)
}

/// `e2llm experiment`.
pub fn experiment(a: ExperimentArgs) -> Result<()> {
    let mut plan = apply(Plan::preset(a.preset), &a.common)?;
    if let Some(list) = &a.arms {
        let want: Vec<&str> = list.split(',').map(str::trim).collect();
        for w in &want {
            anyhow::ensure!(
                plan.arms.iter().any(|x| x.name == *w),
                "--arms: no arm `{w}` in this preset (it has: {})",
                plan.arms
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        plan.arms.retain(|x| want.contains(&x.name.as_str()));
    }
    apply_method_overrides(&mut plan, &a.common)?;
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/experiment-{}",
            format!("{:?}", a.preset).to_lowercase()
        ))
    });
    let title = format!("E²-LLM ablation ({:?} preset)", a.preset);
    if a.common.dry_run {
        return dry_run(&plan, &out);
    }
    execute(&plan, &out, a.jobs, &title, a.common.train_only)
}
