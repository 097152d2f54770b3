//! Where log lines go: journald (structured fields) under systemd, else text or JSON on
//! stderr; never both, since stderr under systemd already is the journal.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

/// Changes the log filter of the running daemon (SIGHUP).
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// What was chosen, for the start-up log line.
    pub destination: &'static str,
}

impl LogHandle {
    /// Applies a new filter directive.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=dev:inode` of
/// the stream it gave us, which we compare with stderr's own.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == meta.dev())
        && ino.parse::<u64>().is_ok_and(|i| i == meta.ino())
}

/// tracing levels as the syslog priorities journalctl expects: the crate's default maps info
/// to notice (5), which makes `journalctl -p info` useless for telling them apart.
fn syslog_priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(level: &str, format: LogFormat) -> LogHandle {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let want_journald = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => stderr_is_journal(),
        LogFormat::Text | LogFormat::Json => false,
    };
    // Field names as given (ACCOUNT, PROVIDER, ...) so `journalctl ACCOUNT=acme` works.
    let journald = if want_journald {
        match tracing_journald::layer() {
            Ok(l) => Some(
                l.with_field_prefix(None)
                    .with_syslog_identifier("shiptoken".into())
                    .with_priority_mappings(syslog_priorities()),
            ),
            Err(e) => {
                eprintln!("shiptoken: journald is not available ({e}); logging to stderr");
                None
            }
        }
    } else {
        None
    };
    let destination = if journald.is_some() {
        "journald"
    } else if format == LogFormat::Json {
        "stderr (json)"
    } else {
        "stderr"
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let text = (journald.is_none() && format != LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let json = (journald.is_none() && format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(journald)
        .try_init();
    log_panics();
    LogHandle {
        filter: handle,
        destination,
    }
}

/// Sends panics to the log with where they happened, as well as to stderr: under journald a
/// panic on a worker or the registry thread (which the daemon survives) would otherwise be a
/// bare line without the daemon's fields.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(thread, location, panic = %message, "a thread panicked");
        default(info);
    }));
}
