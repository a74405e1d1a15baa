//! What burn's runtime logs, kept: on wasm cubecl cannot wait for WebGPU to validate a kernel,
//! so a kernel the browser refuses to compile is only *logged* (and its launch's outputs keep
//! whatever they held). The wasm module installs [`install`]ed capture at start; the page
//! takes the messages ([`take`]) and shows them as errors, and the attention self-check
//! reports them.

use std::sync::Mutex;

static MESSAGES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let msg = format!(
                "{} ({}): {}",
                record.level(),
                record.target(),
                record.args()
            );
            MESSAGES.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

/// Keeps every warning and error logged from now on (once per process; later calls do nothing).
pub fn install() {
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// The messages kept since the last call.
pub fn take() -> Vec<String> {
    std::mem::take(&mut *MESSAGES.lock().unwrap_or_else(|e| e.into_inner()))
}
