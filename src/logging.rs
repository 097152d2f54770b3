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
    /// Whether log lines reach standard error already (text or JSON there, or journald when
    /// standard error is the journal): a failure logged need not be printed there again.
    pub fn reaches_stderr(&self) -> bool {
        self.destination != "journald" || stderr_is_journal()
    }

    /// Applies a new filter directive.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        check_filter(level)?;
        let filter = build_filter(level).map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

/// The levels a bare directive may name.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Refuses a `log.level` that tracing would accept but that cannot be what was meant: a bare
/// word that is no level (`verbose`) is read by tracing as a target to log at every level,
/// so every other line is dropped and the daemon logs nothing. A target is written with its
/// level (`shiptoken::registry=debug`). Called where the configuration is checked, so
/// `config check` and a start both refuse it.
pub fn check_filter(value: &str) -> Result<(), String> {
    EnvFilter::try_new(value).map_err(|e| format!("not a tracing filter: {e}"))?;
    for directive in value.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "\"{directive}\" is no level: use one of {} (or TARGET=LEVEL, e.g. \"info,shiptoken::registry=debug\")",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The filter for `level`, with the scheduler crate's start-up chatter ("Uninited", "Job
/// creator created" at INFO on every start) held to warnings unless `level` names it.
fn build_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(level)?;
    if level.contains("tokio_cron_scheduler") {
        return Ok(filter);
    }
    Ok(filter.add_directive("tokio_cron_scheduler=warn".parse()?))
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
    let filter = build_filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_word_that_is_no_level_is_refused() {
        assert!(check_filter("info").is_ok());
        assert!(check_filter("DEBUG,hyper=info").is_ok());
        assert!(check_filter("info,shiptoken::registry::owner=debug").is_ok());
        assert!(check_filter("warn,[sweep]=debug").is_ok());
        let e = check_filter("verbose").unwrap_err();
        assert!(
            e.starts_with("\"verbose\" is no level: use one of trace, debug"),
            "{e}"
        );
        assert!(check_filter("info,verbose").is_err());
        assert!(check_filter("info=nope=x").is_err());
    }
}
