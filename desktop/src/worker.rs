//! Background threads: the training run (pause/resume/stop between steps) and one-shot jobs
//! (attention maps, evaluation, export). The UI never blocks on either: it drains channels
//! each frame, and the threads ask egui for a repaint when they send.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use e2llm_train::data::Corpus;
use e2llm_train::{StepReport, TrainConfig, Trainer};

/// What the training thread reports.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// The trainer is ready (`step` > 0 when resumed).
    Started {
        /// Step it starts from.
        step: usize,
        /// The config in effect (a resumed run's own).
        config: Box<TrainConfig>,
    },
    /// One optimizer step.
    Step(StepReport),
    /// A checkpoint was written.
    Saved {
        /// Step of the checkpoint.
        step: usize,
        /// Its directory.
        dir: PathBuf,
    },
    /// The run ended (all steps, or stopped) with this checkpoint.
    Done(PathBuf),
    /// The run failed; the last good checkpoint stays.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Run,
    Pause,
    Stop,
}

/// Shared between the UI and the training thread.
#[derive(Debug)]
struct Control {
    flag: Mutex<Flag>,
    cv: Condvar,
}

impl Control {
    fn set(&self, f: Flag) {
        if let Ok(mut g) = self.flag.lock() {
            *g = f;
        }
        self.cv.notify_all();
    }

    /// Blocks while paused; `Break` when a stop was asked.
    fn gate(&self) -> ControlFlow<()> {
        let Ok(mut g) = self.flag.lock() else {
            return ControlFlow::Break(());
        };
        while *g == Flag::Pause {
            g = match self.cv.wait(g) {
                Ok(g) => g,
                Err(_) => return ControlFlow::Break(()),
            };
        }
        if *g == Flag::Stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// A running training thread.
pub struct TrainHandle {
    control: Arc<Control>,
    /// Events, in order.
    pub events: Receiver<TrainEvent>,
    thread: Option<JoinHandle<()>>,
}

impl TrainHandle {
    /// Starts training `cfg` in `run_dir` (or resumes the checkpoint there when `resume`).
    /// `wake` is called after every event (the UI's repaint request).
    pub fn spawn(
        cfg: TrainConfig,
        run_dir: PathBuf,
        resume: bool,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let control = Arc::new(Control {
            flag: Mutex::new(Flag::Run),
            cv: Condvar::new(),
        });
        let (tx, events) = channel();
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name("e2llm-train".into())
            .spawn(move || {
                let send = |e: TrainEvent| {
                    let _ = tx.send(e);
                    wake();
                };
                match train(cfg, &run_dir, resume, &c, &send) {
                    Ok(dir) => send(TrainEvent::Done(dir)),
                    Err(e) => send(TrainEvent::Failed(e)),
                }
            })
            .ok();
        Self {
            control,
            events,
            thread,
        }
    }

    /// Pause between steps.
    pub fn pause(&self) {
        self.control.set(Flag::Pause);
    }

    /// Continue after a pause.
    pub fn resume(&self) {
        self.control.set(Flag::Run);
    }

    /// Ask for a checkpoint and an end (returns at once).
    pub fn stop(&self) {
        self.control.set(Flag::Stop);
    }

    /// Stops and waits for the thread (which writes its checkpoint first).
    pub fn stop_and_wait(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn train(
    cfg: TrainConfig,
    run_dir: &Path,
    resume: bool,
    control: &Control,
    send: &dyn Fn(TrainEvent),
) -> Result<PathBuf, String> {
    let corpus = Corpus::embedded().map_err(|e| e.to_string())?;
    let mut trainer = if resume {
        Trainer::resume(run_dir, &corpus)
    } else {
        Trainer::new(cfg, run_dir, &corpus)
    }
    .map_err(|e| e.to_string())?;
    send(TrainEvent::Started {
        step: trainer.step,
        config: Box::new(trainer.cfg.clone()),
    });
    trainer
        .run_until(
            |r| {
                send(TrainEvent::Step(r.clone()));
                control.gate()
            },
            |step, dir| {
                send(TrainEvent::Saved {
                    step,
                    dir: dir.to_path_buf(),
                })
            },
        )
        .map_err(|e| e.to_string())
}

/// A one-shot background computation with progress.
pub struct Job<T> {
    rx: Receiver<JobMsg<T>>,
    /// What it is doing, for the UI.
    pub label: String,
    /// Progress in `[0, 1]`.
    pub progress: f32,
}

enum JobMsg<T> {
    Progress(f32),
    Done(Result<T, String>),
}

/// Handed to a job's body to report progress.
pub struct Progress<T> {
    tx: Sender<JobMsg<T>>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl<T> Progress<T> {
    /// Reports `done / total`.
    pub fn report(&self, done: usize, total: usize) {
        let _ = self
            .tx
            .send(JobMsg::Progress(done as f32 / total.max(1) as f32));
        (self.wake)();
    }
}

impl<T: Send + 'static> Job<T> {
    /// Runs `body` on its own thread.
    pub fn spawn(
        label: impl Into<String>,
        wake: impl Fn() + Send + Sync + 'static,
        body: impl FnOnce(&Progress<T>) -> Result<T, String> + Send + 'static,
    ) -> Self {
        let (tx, rx) = channel();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(wake);
        let p = Progress {
            tx: tx.clone(),
            wake: wake.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("e2llm-job".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&p)))
                    .unwrap_or_else(|_| Err("the job panicked (see the terminal)".into()));
                let _ = tx.send(JobMsg::Done(r));
                wake();
            });
        if let Err(e) = spawned {
            let (tx, rx2) = channel();
            let _ = tx.send(JobMsg::Done(Err(format!("could not start a thread: {e}"))));
            return Self {
                rx: rx2,
                label: label.into(),
                progress: 0.0,
            };
        }
        Self {
            rx,
            label: label.into(),
            progress: 0.0,
        }
    }

    /// Drains progress; `Some` once the job ended.
    pub fn poll(&mut self) -> Option<Result<T, String>> {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                JobMsg::Progress(p) => self.progress = p,
                JobMsg::Done(r) => return Some(r),
            }
        }
        None
    }
}
