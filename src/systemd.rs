//! The systemd service protocol: readiness, reload and stop notifications, the watchdog, and
//! socket activation. Written by hand (a datagram per message, `LISTEN_FDS` per sd_listen_fds(3))
//! because it is a few dozen lines and the daemon must read and clear the environment before
//! any thread starts, which a library calling `getenv` later cannot promise.
//!
//! Everything here is a no-op outside systemd: no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no
//! `LISTEN_FDS` means nothing is sent and the daemon binds its socket itself.

use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener as StdUnixListener};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::names::Status;
use crate::registry::Registry;
use crate::scheduler::LastSweep;

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// How often STATUS= is refreshed when no watchdog asks for a shorter period.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long a notification may block: systemd drains its socket promptly, and a stuck send
/// must not hold a runtime worker for long.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID` and `LISTEN_FDS`/`LISTEN_PID`, and
    /// removes the `LISTEN_*` and `WATCHDOG_*` variables so that child processes do not think
    /// these are meant for them.
    ///
    /// # Safety
    /// Call before any other thread exists (first thing in `main`, before the async runtime
    /// starts): it changes the process environment, which is not thread-safe.
    pub unsafe fn from_env() -> Systemd {
        let mut warnings = Vec::new();
        let pid = std::process::id().to_string();
        let notifier = std::env::var_os("NOTIFY_SOCKET")
            .and_then(|path| match Notifier::connect(&path.to_string_lossy()) {
                Ok(n) => Some(n),
                Err(e) => {
                    warnings.push(format!(
                        "NOTIFY_SOCKET {}: {e}; systemd will not hear from the daemon",
                        path.to_string_lossy()
                    ));
                    None
                }
            })
            .unwrap_or_default();
        let watchdog = std::env::var("WATCHDOG_PID")
            .map_or(true, |p| p == pid)
            .then(|| std::env::var("WATCHDOG_USEC").ok())
            .flatten()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| usec > 0)
            .map(Duration::from_micros);
        let listener = if std::env::var("LISTEN_PID").is_ok_and(|p| p == pid) {
            match std::env::var("LISTEN_FDS")
                .ok()
                .and_then(|n| n.parse::<i32>().ok())
            {
                Some(n) if n >= 1 => {
                    if n > 1 {
                        warnings.push(format!(
                            "systemd passed {n} sockets; only the first is used (the .socket unit should list one ListenStream=)"
                        ));
                    }
                    for fd in LISTEN_FDS_START..LISTEN_FDS_START + n {
                        // Inherited without close-on-exec; no child of ours should get them.
                        // SAFETY: fcntl on a descriptor number has no memory effects; a bad fd
                        // just fails.
                        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                    }
                    Some(inherited_listener(LISTEN_FDS_START))
                }
                _ => None,
            }
        } else {
            None
        };
        for var in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "WATCHDOG_PID",
            "WATCHDOG_USEC",
        ] {
            // SAFETY: the caller promises no other thread runs yet.
            unsafe { std::env::remove_var(var) };
        }
        Systemd {
            notifier,
            watchdog,
            listener,
            warnings,
        }
    }
}

/// Takes fd `fd` as the listening socket, after checking that it is one: a Unix stream
/// socket in the listening state (a `.socket` unit with `ListenStream=/path`).
fn inherited_listener(fd: RawFd) -> Result<StdUnixListener, String> {
    let int_opt = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len point to live locals of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&raw mut value).cast::<libc::c_void>(),
                &raw mut len,
            )
        };
        (r == 0).then_some(value)
    };
    let what = format!("fd {fd} passed by systemd (LISTEN_FDS)");
    match int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN) {
        None => return Err(format!("{what} is not a socket")),
        Some(libc::AF_UNIX) => {}
        Some(_) => {
            return Err(format!(
                "{what} is not a Unix socket; use ListenStream=/path"
            ));
        }
    }
    if int_opt(libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return Err(format!("{what} is not a stream socket; use ListenStream="));
    }
    if int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != Some(1) {
        return Err(format!("{what} is not listening; set Accept=no"));
    }
    // SAFETY: systemd passed this descriptor to us alone; it is taken exactly once, here,
    // since from_env runs once and clears LISTEN_FDS.
    Ok(unsafe { StdUnixListener::from_raw_fd(fd) })
}

/// Turns an inherited listener into a tokio one. Call inside the runtime.
pub fn into_tokio(listener: StdUnixListener) -> std::io::Result<tokio::net::UnixListener> {
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Sends sd_notify(3) messages; does nothing when systemd did not ask for them.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<(UnixDatagram, SocketAddr)>>,
}

impl Notifier {
    /// A notifier for `NOTIFY_SOCKET`: a path, or an abstract socket name after `@`.
    pub fn connect(notify_socket: &str) -> std::io::Result<Notifier> {
        let addr = match notify_socket.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None if notify_socket.starts_with('/') => SocketAddr::from_pathname(notify_socket)?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an abstract name (@...)",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Notifier {
            target: Some(Arc::new((socket, addr))),
        })
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message of `KEY=value` lines. Failures are logged, never fatal: the daemon
    /// works without systemd hearing from it (systemd then times it out, which says why).
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        let (socket, addr) = &**target;
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// READY=1: the registry is open and the socket listens; also after a reload.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// RELOADING=1 with the CLOCK_MONOTONIC time systemd needs to match it with READY=1.
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    /// STOPPING=1: shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// STATUS=: a one-line summary shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// WATCHDOG=1: proof of life.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd uses for MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
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
    fn notify_socket_forms() {
        assert!(Notifier::connect("relative/path").is_err());
        assert!(Notifier::connect("@abstract-name").is_ok_and(|n| n.enabled()));
        assert!(Notifier::connect("/run/systemd/notify").is_ok_and(|n| n.enabled()));
        assert!(!Notifier::default().enabled());
    }

    #[test]
    fn abstract_notify_socket_receives() {
        let name = format!("shiptoken-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::connect(&format!("@{name}")).unwrap().ready("ok");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
    }

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
    fn monotonic_clock_is_positive() {
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn not_a_listening_socket_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::IntoRawFd;
        let fd = a.into_raw_fd();
        let err = inherited_listener(fd).err().unwrap();
        assert!(err.contains("not listening"), "{err}");
        // SAFETY: fd is ours (into_raw_fd above) and not used after.
        unsafe { libc::close(fd) };
    }
}
