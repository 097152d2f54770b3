//! The systemd service protocol: readiness, reload and stop notifications, the watchdog, and
//! socket activation, spoken through the `sd-notify` crate (sd_notify(3), sd_listen_fds(3)).
//! The environment is read, and the `LISTEN_*` and `WATCHDOG_*` variables cleared, once
//! before any thread starts ([`Systemd::from_env`]); notifications are then sent from anywhere.
//!
//! Everything here is a no-op outside systemd: no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no
//! `LISTEN_FDS` means nothing is sent and the daemon binds its socket itself.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::names::Status;
use crate::registry::Registry;
use crate::scheduler::LastSweep;

/// How often STATUS= is refreshed when no watchdog asks for a shorter period.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What systemd handed this process, read once from the environment at start-up.
#[derive(Default)]
pub struct Systemd {
    /// Where notifications go.
    pub notifier: Notifier,
    /// How often systemd expects WATCHDOG=1 at the latest (`WATCHDOG_USEC`), if it does.
    pub watchdog: Option<Duration>,
    /// The listening socket passed by socket activation, or why it could not be used.
    pub listener: Option<Result<StdUnixListener, String>>,
    /// Oddities noticed before logging started, logged once the daemon runs.
    pub warnings: Vec<String>,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID` and `LISTEN_FDS`/`LISTEN_PID`
    /// (each honoured only when its PID variable, if set, names this process), and removes
    /// the `LISTEN_*` and `WATCHDOG_*` variables so that child processes do not think these
    /// are meant for them.
    ///
    /// # Safety
    /// Call before any other thread exists (first thing in `main`, before the async runtime
    /// starts): it changes the process environment, which is not thread-safe.
    pub unsafe fn from_env() -> Systemd {
        let mut warnings = Vec::new();
        let notifier = Notifier::from_env(&mut warnings);
        // SAFETY: the caller promises no other thread runs yet. The crate's *_and_unset_env
        // functions are unsafe for the reason std::env::remove_var is, which no crate can lift.
        let watchdog = unsafe { sd_notify::watchdog_enabled_and_unset_env() }
            .filter(|period| !period.is_zero());
        // SAFETY: as above. The crate also sets close-on-exec on the descriptors, so no
        // child of ours inherits them.
        let listener = match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
            Err(e) => Some(Err(format!(
                "the sockets systemd passed (LISTEN_FDS) cannot be used: {e}"
            ))),
            Ok(fds) => {
                let fds: Vec<_> = fds.map(|(fd, _name)| fd).collect();
                if fds.len() > 1 {
                    warnings.push(format!(
                        "systemd passed {} sockets; only the first is used (the .socket unit should list one ListenStream=)",
                        fds.len()
                    ));
                }
                fds.first().map(|&fd| {
                    // SAFETY: systemd passed this descriptor to this process alone (LISTEN_PID
                    // matched), and it is taken exactly once, here: from_env runs once and
                    // has just cleared LISTEN_FDS. Owning an inherited descriptor can only be
                    // asserted, never checked, which is why sd-notify hands out raw numbers.
                    inherited_listener(unsafe { OwnedFd::from_raw_fd(fd) })
                })
            }
        };
        Systemd {
            notifier,
            watchdog,
            listener,
            warnings,
        }
    }
}

/// Takes `fd` as the listening socket, after checking that it is one: a Unix stream socket
/// in the listening state (a `.socket` unit with `ListenStream=/path`).
fn inherited_listener(fd: OwnedFd) -> Result<StdUnixListener, String> {
    use socket2::{Domain, Socket, Type};
    let what = "the socket passed by systemd (LISTEN_FDS)";
    let socket = Socket::from(fd);
    match socket.domain() {
        Err(_) => return Err(format!("{what} is not a socket")),
        Ok(Domain::UNIX) => {}
        Ok(_) => {
            return Err(format!(
                "{what} is not a Unix socket; use ListenStream=/path"
            ));
        }
    }
    if !matches!(socket.r#type(), Ok(Type::STREAM)) {
        return Err(format!("{what} is not a stream socket; use ListenStream="));
    }
    if !matches!(socket.is_listener(), Ok(true)) {
        return Err(format!("{what} is not listening; set Accept=no"));
    }
    Ok(StdUnixListener::from(OwnedFd::from(socket)))
}

/// Turns an inherited listener into a tokio one. Call inside the runtime.
pub fn into_tokio(listener: StdUnixListener) -> std::io::Result<tokio::net::UnixListener> {
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Sends sd_notify(3) messages; does nothing when systemd did not ask for them.
#[derive(Clone, Default)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`, if it is set to something the crate can reach: an
    /// absolute path (an abstract `@name`, which only old systemd versions use, is not).
    fn from_env(warnings: &mut Vec<String>) -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        if !path.to_string_lossy().starts_with('/') {
            warnings.push(format!(
                "NOTIFY_SOCKET {}: not an absolute path (abstract sockets are not supported); \
                 systemd will not hear from the daemon",
                path.to_string_lossy()
            ));
            return Notifier::default();
        }
        Notifier { enabled: true }
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Sends one message. Failures are logged, never fatal: the daemon works without
    /// systemd hearing from it (systemd then times it out, which says why).
    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// READY=1: the registry is open and the socket listens; also after a reload.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// RELOADING=1 with the CLOCK_MONOTONIC time systemd needs to match it with READY=1.
    pub fn reloading(&self) {
        let status = NotifyState::Status("reloading the configuration");
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, status]),
            Err(e) => {
                // Without the stamp systemd still sees the reload, it just cannot pair it.
                tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for systemd");
                self.send(&[NotifyState::Reloading, status]);
            }
        }
    }

    /// STOPPING=1: shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// STATUS=: a one-line summary shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// WATCHDOG=1: proof of life.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The STATUS= line: how many accounts, by status, e.g. `3 accounts: 2 active, 1 suspended`.
pub fn status_line(accounts: &[Status]) -> String {
    if accounts.is_empty() {
        return "no accounts registered".into();
    }
    let counts: Vec<String> = Status::ALL
        .iter()
        .filter_map(|&status| {
            let n = accounts.iter().filter(|&&a| a == status).count();
            (n > 0).then(|| format!("{n} {status}"))
        })
        .collect();
    let total = accounts.len();
    let noun = if total == 1 { "account" } else { "accounts" };
    format!("{total} {noun}: {}", counts.join(", "))
}

/// The STATUS= line for the registry as it is now.
pub fn registry_status(registry: &Registry) -> String {
    let statuses: Vec<Status> = registry.accounts().iter().map(|a| a.status).collect();
    status_line(&statuses)
}

/// How long without a finished sweep means the scheduler stalled. A sweep waits for every
/// account's upstream calls, which an outage slows to their timeouts, so the margin is wide:
/// restarting the daemon cannot cure an outage, only a stuck scheduler.
pub fn stall_after(config: &Config) -> Duration {
    let tick = crate::scheduler::tick_interval(&config.rotation.schedule)
        .unwrap_or(Duration::from_secs(60));
    tick * 2 + Duration::from_secs(300)
}

/// Keeps systemd informed until `shutdown`: STATUS= when the account counts change, and
/// WATCHDOG=1 every half `watchdog` period while sweeps keep finishing. This task running
/// proves the runtime is alive; `last_sweep` changing proves the scheduler is. When sweeps
/// stop, the pings stop and systemd restarts the daemon (`Restart=on-failure`).
pub async fn supervise(
    notifier: Notifier,
    watchdog: Option<Duration>,
    registry: Registry,
    last_sweep: Arc<LastSweep>,
    config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    if !notifier.enabled() {
        return;
    }
    let period = watchdog.map_or(STATUS_EVERY, |w| (w / 2).min(STATUS_EVERY));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = registry_status(&registry);
    let mut stalled = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let limit = stall_after(&config.borrow());
        // Monotonic: a step of the wall clock neither hides a stall nor fakes one.
        let age = last_sweep.silence();
        let status = registry_status(&registry);
        if age > limit {
            if !stalled {
                stalled = true;
                tracing::error!(
                    seconds = age.as_secs(),
                    "no sweep finished for {}s: the scheduler looks stuck; {}",
                    age.as_secs(),
                    if watchdog.is_some() {
                        "no longer pinging the systemd watchdog, so systemd restarts the daemon"
                    } else {
                        "no systemd watchdog is set to restart the daemon"
                    }
                );
                notifier.status(&format!(
                    "scheduler stalled: no sweep for {}s",
                    age.as_secs()
                ));
            }
            continue;
        }
        if stalled {
            stalled = false;
            tracing::info!("sweeps finish again");
            last_status.clear();
        }
        if watchdog.is_some() {
            notifier.watchdog();
        }
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_by_status() {
        assert_eq!(status_line(&[]), "no accounts registered");
        assert_eq!(status_line(&[Status::Active]), "1 account: 1 active");
        assert_eq!(
            status_line(&[Status::Suspended, Status::Active, Status::Active]),
            "3 accounts: 2 active, 1 suspended"
        );
    }

    #[test]
    fn a_listening_unix_socket_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = StdUnixListener::bind(&path).unwrap();
        let taken = inherited_listener(OwnedFd::from(listener)).unwrap();
        assert_eq!(
            taken.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
    }

    #[test]
    fn not_a_listening_unix_stream_socket_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = inherited_listener(OwnedFd::from(a)).err().unwrap();
        assert!(err.contains("not listening"), "{err}");

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = inherited_listener(OwnedFd::from(tcp)).err().unwrap();
        assert!(err.contains("not a Unix socket"), "{err}");

        let dgram = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let err = inherited_listener(OwnedFd::from(dgram)).err().unwrap();
        assert!(err.contains("not a stream socket"), "{err}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let err = inherited_listener(OwnedFd::from(file)).err().unwrap();
        assert!(err.contains("not a socket"), "{err}");
    }
}
