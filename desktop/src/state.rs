//! What the app remembers between launches (eframe storage) and the run-control state machine.

use serde::{Deserialize, Serialize};

use e2llm_train::experiment::{Plan, Preset};
use e2llm_train::TrainConfig;

/// The app's panels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    /// Run setup: model, L/R, method, schedule, device.
    Setup,
    /// Live training.
    Train,
    /// Attention at several RoPE scales.
    Attention,
    /// Passkey grid and perplexity.
    Evaluate,
    /// Copy a checkpoint out as an HF directory.
    Export,
}

impl Tab {
    /// Every tab, in display order.
    pub const ALL: [Tab; 5] = [
        Tab::Setup,
        Tab::Train,
        Tab::Attention,
        Tab::Evaluate,
        Tab::Export,
    ];

    /// The tab's button label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Setup => "Setup",
            Tab::Train => "Train",
            Tab::Attention => "Attention",
            Tab::Evaluate => "Evaluate",
            Tab::Export => "Export",
        }
    }
}

/// Where the attention panel's prompt comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PromptSource {
    /// METHOD.md's passkey prompt.
    Passkey {
        /// Target length in tokens.
        length: usize,
        /// Key depth in `[0, 1]`.
        depth: f64,
        /// The key (1..=50000).
        key: u32,
    },
    /// Any text.
    Text(String),
}

/// Attention panel settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionSettings {
    /// Checkpoint directory (HF files).
    pub checkpoint: String,
    /// The prompt.
    pub prompt: PromptSource,
    /// Layer (0-based).
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Scales to compare, e.g. `"1, 4, 16"`.
    pub scales: String,
    /// Heatmap side in cells.
    pub size: usize,
}

/// Evaluation panel settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// First checkpoint.
    pub checkpoint_a: String,
    /// Optional second checkpoint to compare.
    pub checkpoint_b: String,
    /// Passkey lengths, e.g. `"256, 512, 1024"`.
    pub lengths: String,
    /// Depths, e.g. `"0, 0.5, 1"`.
    pub depths: String,
    /// Trials per cell.
    pub trials: usize,
    /// `auto`, `safe` or a number.
    pub scale: String,
    /// PPL lengths.
    pub ppl_lengths: String,
    /// Log-n attention scaling past L (`e2llm passkey --logn`).
    #[serde(default)]
    pub logn: bool,
}

/// Everything persisted between launches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The run config being edited (the trainer's TOML).
    pub config: TrainConfig,
    /// Run directory (checkpoints, log).
    pub run_dir: String,
    /// Path for loading/saving the config as TOML.
    pub config_path: String,
    /// Open tab.
    pub tab: Tab,
    /// Attention panel.
    pub attention: AttentionSettings,
    /// Evaluation panel.
    pub eval: EvalSettings,
    /// Export source and destination.
    pub export_from: String,
    /// Export destination directory.
    pub export_to: String,
}

impl Default for Settings {
    /// The quickstart's base stage on the embedded corpus: it just runs.
    fn default() -> Self {
        let run_dir = "runs/desktop".to_string();
        let ckpt = format!("{run_dir}/checkpoint");
        let plan = Plan::preset(Preset::Quickstart);
        Self {
            config: plan.base,
            run_dir,
            config_path: "runs/desktop.toml".into(),
            tab: Tab::Setup,
            attention: AttentionSettings {
                checkpoint: ckpt.clone(),
                prompt: PromptSource::Passkey {
                    length: 512,
                    depth: 0.5,
                    key: 38142,
                },
                layer: 0,
                head: 0,
                scales: "1, 4, 16".into(),
                size: 64,
            },
            eval: EvalSettings {
                checkpoint_a: ckpt.clone(),
                checkpoint_b: String::new(),
                lengths: "256, 512, 1024".into(),
                depths: "0, 0.5, 1".into(),
                trials: 2,
                scale: "safe".into(),
                logn: false,
                ppl_lengths: "128, 256, 512".into(),
            },
            export_from: ckpt,
            export_to: "runs/desktop-export".into(),
        }
    }
}

/// Parses a comma/space separated list, naming the field and the bad item on error.
pub fn parse_list<T: std::str::FromStr>(field: &str, text: &str) -> Result<Vec<T>, String> {
    let items: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(format!("{field}: give at least one value"));
    }
    items
        .iter()
        .map(|s| {
            s.parse::<T>()
                .map_err(|_| format!("{field}: `{s}` is not a valid value"))
        })
        .collect()
}

/// Where a training run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Nothing started yet (or the last run was cleared).
    Idle,
    /// Steps are being taken.
    Running,
    /// The worker waits between steps.
    Paused,
    /// A stop was asked; the worker writes a checkpoint and ends.
    Stopping,
    /// The run ended (all steps done, or stopped) with a checkpoint on disk.
    Finished,
    /// The run ended with an error (the last good checkpoint is kept).
    Failed,
}

/// What the user (or the worker) asks of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunCmd {
    /// Start a new run or resume the one in the run directory.
    Start,
    /// Pause between steps.
    Pause,
    /// Continue after a pause.
    Resume,
    /// Save a checkpoint and end.
    Stop,
    /// The worker ended normally.
    Done,
    /// The worker ended with an error.
    Fail,
}

impl RunState {
    /// The state after `cmd`, or why `cmd` does not apply now.
    pub fn apply(self, cmd: RunCmd) -> Result<RunState, String> {
        use RunCmd as C;
        use RunState as S;
        match (self, cmd) {
            (S::Idle | S::Finished | S::Failed, C::Start) => Ok(S::Running),
            (S::Running, C::Pause) => Ok(S::Paused),
            (S::Paused, C::Resume) => Ok(S::Running),
            (S::Running | S::Paused, C::Stop) => Ok(S::Stopping),
            (S::Running | S::Paused | S::Stopping, C::Done) => Ok(S::Finished),
            (S::Running | S::Paused | S::Stopping, C::Fail) => Ok(S::Failed),
            (s, c) => Err(format!("cannot {c:?} while {s:?}")),
        }
    }

    /// A worker thread is alive.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunState::Running | RunState::Paused | RunState::Stopping
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_state_machine_allows_only_sensible_moves() {
        use RunCmd as C;
        use RunState as S;
        let all_states = [
            S::Idle,
            S::Running,
            S::Paused,
            S::Stopping,
            S::Finished,
            S::Failed,
        ];
        let all_cmds = [C::Start, C::Pause, C::Resume, C::Stop, C::Done, C::Fail];
        let allowed = [
            (S::Idle, C::Start, S::Running),
            (S::Finished, C::Start, S::Running),
            (S::Failed, C::Start, S::Running),
            (S::Running, C::Pause, S::Paused),
            (S::Paused, C::Resume, S::Running),
            (S::Running, C::Stop, S::Stopping),
            (S::Paused, C::Stop, S::Stopping),
            (S::Running, C::Done, S::Finished),
            (S::Paused, C::Done, S::Finished),
            (S::Stopping, C::Done, S::Finished),
            (S::Running, C::Fail, S::Failed),
            (S::Paused, C::Fail, S::Failed),
            (S::Stopping, C::Fail, S::Failed),
        ];
        for s in all_states {
            for c in all_cmds {
                let want = allowed
                    .iter()
                    .find(|(a, b, _)| *a == s && *b == c)
                    .map(|t| t.2);
                match (s.apply(c), want) {
                    (Ok(got), Some(w)) => assert_eq!(got, w, "{s:?} + {c:?}"),
                    (Err(e), None) => assert!(e.contains("cannot"), "{e}"),
                    (got, want) => panic!("{s:?} + {c:?}: got {got:?}, want {want:?}"),
                }
            }
        }
        // A full session: start, pause, resume, stop, done, start again.
        let mut s = S::Idle;
        for c in [C::Start, C::Pause, C::Resume, C::Stop, C::Done, C::Start] {
            s = s.apply(c).expect("allowed");
        }
        assert_eq!(s, S::Running);
    }

    #[test]
    fn settings_round_trip_through_json_and_the_config_through_toml() {
        let mut s = Settings::default();
        s.config.steps = 123;
        s.attention.prompt = PromptSource::Text("hello".into());
        s.tab = Tab::Evaluate;
        let json = serde_json::to_string(&s).expect("json");
        let back: Settings = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, s);
        let toml = s.config.to_toml();
        let cfg = TrainConfig::from_toml("mem.toml", &toml).expect("toml");
        assert_eq!(cfg, s.config);
        // Old or partial storage still loads: missing fields take their defaults.
        let partial: Settings = serde_json::from_str(r#"{"run_dir":"x"}"#).expect("partial");
        assert_eq!(partial.run_dir, "x");
        assert_eq!(partial.config, Settings::default().config);
    }

    #[test]
    fn lists_parse_or_name_the_bad_item() {
        assert_eq!(
            parse_list::<f32>("scales", "1, 4,16").expect("ok"),
            vec![1.0, 4.0, 16.0]
        );
        let e = parse_list::<usize>("lengths", "256, x").expect_err("bad");
        assert!(e.contains("lengths") && e.contains("`x`"), "{e}");
        assert!(parse_list::<usize>("lengths", " ").is_err());
    }
}
