//! What a client command says while the daemon waits on a provider for it (`accounts add`,
//! `rotate`, `verify`): on a terminal, after a second of silence, `waiting for ShipHero
//! (timeout 30s)... 4s` on standard error, counting, and erased when the answer comes. A
//! script (standard error not a terminal) sees nothing of it: its output stays as it was.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use crate::config::Config;
use crate::names::Provider;

/// How long a call may be silent before the line appears.
const QUIET: Duration = Duration::from_secs(1);

/// Says what a slow call waits on, when standard error is a terminal.
pub(super) struct Waiter {
    /// `--config`, read for the provider's timeout only when the line is shown.
    config_file: Option<PathBuf>,
    tty: bool,
}

impl Waiter {
    /// A waiter for this process: it speaks only when standard error is a terminal.
    pub(super) fn new(config_file: Option<PathBuf>) -> Waiter {
        Waiter {
            config_file,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// What the line says is waited on: the provider and its `timeout` from the configuration
    /// when that can be read (a client may not be allowed to read it).
    pub(super) fn what(&self, provider: Provider) -> String {
        let label = upstream_label(provider);
        match Config::load(self.config_file.as_deref()) {
            Ok(c) => format!(
                "waiting for {label} (timeout {})",
                humantime::format_duration(c.upstream(provider).timeout)
            ),
            Err(_) => format!("waiting for {label}"),
        }
    }

    /// Runs `work` (a blocking call to the daemon); on a terminal, says what it waits on
    /// once it has taken longer than [`QUIET`].
    pub(super) fn wait_on<T>(&self, provider: Option<Provider>, work: impl FnOnce() -> T) -> T {
        let Some(provider) = provider.filter(|_| self.tty) else {
            return work();
        };
        let what = self.what(provider);
        let (done, finished) = mpsc::channel::<()>();
        let speaker = std::thread::spawn(move || speak(&what, &finished));
        let out = work();
        let _ = done.send(());
        let _ = speaker.join();
        out
    }
}

/// Writes the counting line until `finished` fires, then erases it.
fn speak(what: &str, finished: &mpsc::Receiver<()>) {
    let mut stderr = std::io::stderr();
    let mut waited = Duration::ZERO;
    let mut shown = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(QUIET) {
        waited += QUIET;
        let _ = write!(stderr, "\r\x1b[K{what}... {}s", waited.as_secs());
        let _ = stderr.flush();
        shown = true;
    }
    if shown {
        let _ = write!(stderr, "\r\x1b[K");
        let _ = stderr.flush();
    }
}

/// The provider's name as its makers write it.
pub(super) fn upstream_label(provider: Provider) -> String {
    match provider.as_str() {
        "shiphero" => "ShipHero".into(),
        other => {
            let mut chars = other.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
    }
}
