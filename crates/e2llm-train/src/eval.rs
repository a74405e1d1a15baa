//! Passkey retrieval over a length × depth grid (METHOD.md's protocol: greedy decoding, first
//! integer, exact match), with the RoPE scale chosen per length.

use e2llm_core::passkey::{
    build_passkey, first_digits, score, trained_answer, Filler, PasskeySpec,
};
use e2llm_model::generate::{continuation_logprobs, generate_after, read_prompt, GenerateOptions};
use e2llm_model::{Llama, Tokenizer};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How the scale `g` is picked (the core's one rule, re-exported for the CLI and desktop).
pub use e2llm_core::passkey::ScaleMode;

/// The grid to run.
#[derive(Debug, Clone)]
pub struct PasskeyEval {
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Key depths in `[0, 1]`.
    pub depths: Vec<f64>,
    /// Trials per cell.
    pub trials: usize,
    /// Tokens generated per answer.
    pub max_new_tokens: usize,
    /// RoPE scale choice.
    pub scale: ScaleMode,
    /// Filler text.
    pub filler: Filler,
    /// Seed of keys and filler.
    pub seed: u64,
    /// Prompts evaluated at once, each on its own thread (the CPU backend runs an op on one
    /// core). Results do not depend on it: every prompt is built from its own seed.
    pub threads: usize,
}

/// Cores available to this process (1 when unknown): the default of `PasskeyEval::threads`.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Prompts to run at once on `backend` by default: one per core on `cpu` (each op runs on one
/// core there), 1 on `wgpu` (the device is shared, and every prompt in flight holds its own
/// activations and cache in device memory).
pub fn default_threads(backend: &str) -> usize {
    match backend {
        "cpu" => cores(),
        _ => 1,
    }
}

/// One cell's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Target prompt length (tokens).
    pub length: usize,
    /// Key depth.
    pub depth: f64,
    /// Scale used.
    pub g: f32,
    /// Correct answers.
    pub correct: usize,
    /// Trials run.
    pub trials: usize,
    /// Every trial's key and what the model said, in trial order.
    pub answers: Vec<Answer>,
}

/// One trial: the hidden key, the generated text and how likely the model found the key.
/// Serialized with its [`AnswerKind`] as `kind` (the CLI's `--json`, the experiments'
/// `results.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Answer {
    /// The pass key hidden in the prompt.
    pub key: u32,
    /// The greedy continuation, decoded.
    pub text: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// `−ln p(" KEY." | prompt)` in nats, teacher-forced over the tokens of the answer as
    /// training writes it (the key, then the period that ends it): graded where exact match is
    /// all-or-nothing (0 = certain; a uniform guess over 1,024 tokens costs 6.9 per token).
    pub key_nll: f64,
}

/// How an answer relates to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerKind {
    /// The first integer is the key.
    Correct,
    /// The first integer starts with the key's digits and goes on (the key was found, the copy
    /// did not stop).
    KeyThenMoreDigits,
    /// A number made only of digits the key has, in another order or count (the key was found,
    /// its digits were not copied in order).
    KeyDigitsReordered,
    /// Some other number.
    WrongNumber,
    /// No digits at all.
    NoNumber,
}

impl Answer {
    /// What kind of answer this is.
    pub fn kind(&self) -> AnswerKind {
        let Some(digits) = first_digits(&self.text) else {
            return AnswerKind::NoNumber;
        };
        let key = self.key.to_string();
        if score(&self.text, self.key) {
            AnswerKind::Correct
        } else if digits.trim_start_matches('0').starts_with(&key) {
            AnswerKind::KeyThenMoreDigits
        } else if digits.chars().all(|c| key.contains(c)) {
            AnswerKind::KeyDigitsReordered
        } else {
            AnswerKind::WrongNumber
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Answer", 5)?;
        st.serialize_field("key", &self.key)?;
        st.serialize_field("text", &self.text)?;
        st.serialize_field("prompt_tokens", &self.prompt_tokens)?;
        st.serialize_field("key_nll", &self.key_nll)?;
        st.serialize_field("kind", &self.kind())?;
        st.end()
    }
}

impl Cell {
    /// Share of correct answers.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.trials.max(1) as f64
    }
}

/// Mean key NLL (nats) over every answer of `cells` (NaN when there are none).
pub fn mean_key_nll<'a>(cells: impl IntoIterator<Item = &'a Cell>) -> f64 {
    let (sum, n) = cells
        .into_iter()
        .flat_map(|c| &c.answers)
        .fold((0.0, 0usize), |(s, n), a| (s + a.key_nll, n + 1));
    sum / n as f64
}

/// Runs the grid; `on_trial(done, total)` reports progress (from the calling thread).
pub fn passkey_grid(
    model: &Llama,
    tok: &Tokenizer,
    eval: &PasskeyEval,
    mut on_trial: impl FnMut(usize, usize),
) -> Result<Vec<Cell>> {
    let mut cells: Vec<Cell> = eval
        .lengths
        .iter()
        .flat_map(|&length| {
            eval.depths.iter().map(move |&depth| Cell {
                length,
                depth,
                g: 1.0,
                correct: 0,
                trials: eval.trials,
                answers: Vec::with_capacity(eval.trials),
            })
        })
        .collect();
    let jobs: Vec<(usize, usize)> = (0..cells.len())
        .flat_map(|c| (0..eval.trials).map(move |t| (c, t)))
        .collect();
    let total = jobs.len();
    // (g, answer) of every (cell, trial), filled as the workers finish.
    let mut outcome: Vec<Option<Result<(f32, Answer)>>> = (0..total).map(|_| None).collect();
    let mut done = 0;
    crate::pool::for_each_index(
        total,
        eval.threads,
        |j| {
            let (c, t) = jobs[j];
            run_trial(model, tok, eval, cells[c].length, cells[c].depth, t)
        },
        |j, r| {
            if r.is_ok() {
                done += 1;
                on_trial(done, total);
            }
            outcome[j] = Some(r);
        },
    );
    for (&(c, _), o) in jobs.iter().zip(outcome) {
        // A failed trial stops the grid: its error, or the trials it left unstarted.
        let (g, answer) =
            o.ok_or_else(|| TrainError::Data("a passkey trial did not run".into()))??;
        // The cell reports the g of its last trial (they differ only when `safe` rounds).
        cells[c].g = g;
        cells[c].correct += usize::from(answer.kind() == AnswerKind::Correct);
        cells[c].answers.push(answer);
    }
    Ok(cells)
}

/// The prompt of trial `trial` in the grid's cell `(length, depth)` under `seed`: the same
/// spec every time, so one trial of a grid can be looked at again (`e2llm attend --passkey`).
pub fn trial_spec(
    filler: &Filler,
    seed: u64,
    length: usize,
    depth: f64,
    trial: usize,
) -> PasskeySpec {
    PasskeySpec {
        target_tokens: length,
        depth,
        key: None,
        filler: filler.clone(),
        seed: seed
            .wrapping_mul(1_000_003)
            .wrapping_add((length as u64) << 20)
            .wrapping_add(((depth * 1000.0) as u64) << 8)
            .wrapping_add(trial as u64),
    }
}

/// One passkey prompt: `(g, the answer)`.
fn run_trial(
    model: &Llama,
    tok: &Tokenizer,
    eval: &PasskeyEval,
    length: usize,
    depth: f64,
    trial: usize,
) -> Result<(f32, Answer)> {
    let orig_len = model.config.max_position_embeddings;
    let spec = trial_spec(&eval.filler, eval.seed, length, depth, trial);
    let count = |s: &str| tok.count(s);
    let prompt = build_passkey(&spec, &count)
        .map_err(|e| TrainError::Data(format!("passkey prompt at {length} tokens: {e}")))?;
    let ids = tok.encode(&prompt.text, false)?;
    let g = eval.scale.g(ids.len(), eval.max_new_tokens, orig_len);
    let opts = GenerateOptions {
        max_new_tokens: eval.max_new_tokens,
        rope_scale: g,
        ..GenerateOptions::default()
    };
    let read = read_prompt(model, &ids, &opts)?;
    let key_ids = tok.encode(&trained_answer(prompt.key), false)?;
    let key_nll = -continuation_logprobs(model, &read, &key_ids, g)?
        .iter()
        .sum::<f64>();
    let out = generate_after(model, read, &opts, |_| true)?;
    let answer = Answer {
        key: prompt.key,
        text: tok.decode(&out)?,
        prompt_tokens: ids.len(),
        key_nll,
    };
    Ok((g, answer))
}

/// The wrong answers by kind, as one line (`None` when every answer was right): e.g.
/// "wrong answers: 2 the key then more digits, 12 the key's digits out of order, 3 another
/// number, 0 no number".
pub fn failure_summary(cells: &[Cell]) -> Option<String> {
    let count = |k| {
        cells
            .iter()
            .flat_map(|c| &c.answers)
            .filter(|a| a.kind() == k)
            .count()
    };
    let (more, order, wrong, none) = (
        count(AnswerKind::KeyThenMoreDigits),
        count(AnswerKind::KeyDigitsReordered),
        count(AnswerKind::WrongNumber),
        count(AnswerKind::NoNumber),
    );
    (more + order + wrong + none > 0).then(|| {
        format!(
            "wrong answers: {more} the key then more digits, {order} the key's digits out of \
             order, {wrong} another number, {none} no number"
        )
    })
}

/// The grid as a markdown table: one row per length, one column per depth, accuracy in %, then
/// the mean over depths and the row's mean key NLL (nats).
pub fn markdown_table(cells: &[Cell]) -> String {
    let mut depths: Vec<f64> = cells.iter().map(|c| c.depth).collect();
    depths.dedup();
    depths.sort_by(f64::total_cmp);
    depths.dedup();
    let mut lengths: Vec<usize> = cells.iter().map(|c| c.length).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut s = String::from("| length | g |");
    for d in &depths {
        s += &format!(" depth {d} |");
    }
    s += " mean | key NLL |\n|---:|---:|";
    s += &"---:|".repeat(depths.len() + 2);
    s.push('\n');
    for l in lengths {
        let row: Vec<&Cell> = cells.iter().filter(|c| c.length == l).collect();
        let g = row.first().map_or(1.0, |c| c.g);
        s += &format!("| {l} | {g} |");
        for d in &depths {
            match row.iter().find(|c| c.depth == *d) {
                Some(c) => s += &format!(" {:.0}% |", 100.0 * c.accuracy()),
                None => s += " – |",
            }
        }
        let mean = row.iter().map(|c| c.accuracy()).sum::<f64>() / row.len().max(1) as f64;
        s += &format!(" {:.0}% | {:.2} |\n", 100.0 * mean, mean_key_nll(row));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{failure_summary, mean_key_nll, Answer, AnswerKind, Cell};

    fn answer(key: u32, text: &str) -> Answer {
        Answer {
            key,
            text: text.into(),
            prompt_tokens: 10,
            key_nll: text.len() as f64 / 4.0,
        }
    }

    #[test]
    fn answers_are_sorted_into_kinds_by_their_first_integer() {
        use AnswerKind::*;
        for (key, text, kind) in [
            (31415, " 31415. Remember", Correct),
            (31415, " 031415.", Correct),
            (31415, " 31415154. Re", KeyThenMoreDigits),
            (31415, " 3141. 31415", KeyDigitsReordered),
            (31415, " 13415.", KeyDigitsReordered),
            (31415, " 1315151", KeyDigitsReordered),
            (31415, " 31416", WrongNumber),
            (31415, " green. The sky", NoNumber),
            (7, " 7", Correct),
            (7, " 77", KeyThenMoreDigits),
        ] {
            assert_eq!(answer(key, text).kind(), kind, "{key} {text:?}");
        }
        // Serialized with its kind, as the JSON files keep it.
        let json = serde_json::to_value(answer(31415, " 31415154")).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "key": 31415, "text": " 31415154", "prompt_tokens": 10,
                "key_nll": 2.25, "kind": "key-then-more-digits",
            })
        );
        let cell = |answers: Vec<Answer>| Cell {
            length: 10,
            depth: 0.0,
            g: 1.0,
            correct: 0,
            trials: answers.len(),
            answers,
        };
        assert_eq!(failure_summary(&[cell(vec![answer(5, "5")])]), None);
        // The mean key NLL weighs answers, not cells: 2, 1 and 4 nats (the texts' length ÷ 4).
        let two = [
            cell(vec![answer(5, "55555555")]),
            cell(vec![answer(5, "5555"), answer(5, "5".repeat(16).as_str())]),
        ];
        assert_eq!(mean_key_nll(&two), (2.0 + 1.0 + 4.0) / 3.0);
        assert!(mean_key_nll(&[]).is_nan());
        let mixed = [
            cell(vec![answer(5, "55"), answer(5, "x")]),
            cell(vec![answer(12, "21"), answer(12, "123"), answer(12, "30")]),
        ];
        assert_eq!(
            failure_summary(&mixed).as_deref(),
            Some(
                "wrong answers: 2 the key then more digits, 1 the key's digits out of order, \
                 1 another number, 1 no number"
            )
        );
    }
}
