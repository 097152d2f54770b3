//! The daemon started the way systemd starts it: a notify socket (READY, STATUS, WATCHDOG,
//! RELOADING with MONOTONIC_USEC, STOPPING), reload on SIGHUP with a good and a broken file,
//! a listening socket inherited through LISTEN_FDS, and log lines as journald fields.
//!
//! systemd is played by datagram sockets in a temporary folder. Every wait reads from a
//! socket or polls with a deadline; nothing sleeps a fixed time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use common::{BIN, ConfigText, DEADLINE, Daemon, FakeShipHero, sanitize, serve_command};
use tokio::net::UnixDatagram;
use tokio::process::Command;

/// A daemon config logging at `level` in `format` (journald or text).
fn config_text(dir: &Path, shiphero_base: &str, level: &str, format: &str) -> String {
    ConfigText {
        shiphero_base,
        level,
        format,
        ..ConfigText::default()
    }
    .render(dir)
}

/// Writes that config as `dir/shiptoken.toml`, where the daemon under test reads it.
fn write_config(dir: &Path, shiphero_base: &str, level: &str, format: &str) -> PathBuf {
    let path = dir.join("shiptoken.toml");
    std::fs::write(&path, config_text(dir, shiphero_base, level, format)).unwrap();
    path
}

/// systemd's end of NOTIFY_SOCKET.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Reads messages until one satisfies `want`, which it returns.
    async fn expect(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match tokio::time::timeout_at(deadline, self.socket.recv(&mut buf)).await {
                Ok(n) => n.unwrap(),
                Err(_) => panic!("no {what} notification; got {:?}", self.seen),
            };
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(msg.clone());
            if want(&msg) {
                return msg;
            }
        }
    }
}

/// The value of `KEY=` in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// Whether `msg` is that one line alone (sd_notify(3) lets a message end in a newline).
fn only_line(msg: &str, line: &str) -> bool {
    msg.lines().eq([line])
}

/// CLOCK_MONOTONIC in microseconds, as the daemon reports it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_protocol_ready_status_watchdog_reload_stop() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &fake.base_url(), "info", "text");
    let mut notify = NotifySocket::bind(dir.path());
    let mut cmd = serve_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000");
    let socket = dir.path().join("shiptoken.sock");
    let mut d = Daemon::spawn_command(dir.path(), cmd);

    let ready = notify.expect("READY=1", |m| has_line(m, "READY=1")).await;
    assert_eq!(field(&ready, "STATUS"), Some("no accounts registered"));
    // Ready means the socket already answers.
    let (status, _) = d.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200);

    // WATCHDOG_USEC=200000: pings come every 100 ms while sweeps finish (one per second).
    notify
        .expect("WATCHDOG=1", |m| only_line(m, "WATCHDOG=1"))
        .await;
    let before = notify
        .seen
        .iter()
        .filter(|m| only_line(m, "WATCHDOG=1"))
        .count();
    notify
        .expect("more WATCHDOG=1", |m| only_line(m, "WATCHDOG=1"))
        .await;
    assert!(before >= 1);

    // STATUS= follows the account counts.
    d.register(&fake, "acme", "ops@acme.test").await;
    notify
        .expect("STATUS= with the new account", |m| {
            field(m, "STATUS") == Some("1 account: 1 active")
        })
        .await;

    // SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC, then READY=1.
    let sent_at = monotonic_usec();
    d.signal(libc::SIGHUP);
    let reloading = notify
        .expect("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    let stamp: u64 = field(&reloading, "MONOTONIC_USEC")
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!(
        stamp >= sent_at && stamp <= monotonic_usec(),
        "MONOTONIC_USEC {stamp} is not CLOCK_MONOTONIC around the signal ({sent_at})"
    );
    let ready = notify
        .expect("READY=1 after the reload", |m| has_line(m, "READY=1"))
        .await;
    assert_eq!(field(&ready, "STATUS"), Some("1 account: 1 active"));
    d.wait_for_log("configuration reloaded").await;

    // SIGTERM: STOPPING=1, exit 0, and the socket file the daemon bound is gone.
    d.signal(libc::SIGTERM);
    notify
        .expect("STOPPING=1", |m| has_line(m, "STOPPING=1"))
        .await;
    let status = d.wait().await;
    assert!(status.success(), "{status}\n{}", d.logs());
    assert!(!socket.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_good_file_and_refuses_a_broken_one() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = fake.base_url();
    let config = write_config(dir.path(), &base, "warn", "text");
    let mut notify = NotifySocket::bind(dir.path());
    let mut cmd = serve_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let d = Daemon::spawn_command(dir.path(), cmd);
    notify.expect("READY=1", |m| has_line(m, "READY=1")).await;

    // At level warn, a rotation logs nothing.
    d.register(&fake, "acme", "ops@acme.test").await;
    let (status, body) = d
        .call("POST", "/v1/accounts/shiphero/acme/rotate", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !d.logs().contains("issued a new access token"),
        "{}",
        d.logs()
    );

    // A good file: the new level applies at once.
    write_config(dir.path(), &base, "info", "text");
    d.signal(libc::SIGHUP);
    notify
        .expect("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    let ready = notify
        .expect("READY=1 after the reload", |m| has_line(m, "READY=1"))
        .await;
    assert!(!ready.contains("refused"), "{ready}");
    d.wait_for_log("configuration reloaded").await;
    let (status, body) = d
        .call("POST", "/v1/accounts/shiphero/acme/rotate", None)
        .await;
    assert_eq!(status, 200, "{body}");
    d.wait_for_log("issued a new access token").await;

    // A broken file: refused with a clear line, the old config kept, the socket still serves.
    std::fs::write(&config, "[rotation]\nrotate_at = \"half\"\n[log\n").unwrap();
    d.signal(libc::SIGHUP);
    notify
        .expect("RELOADING=1", |m| has_line(m, "RELOADING=1"))
        .await;
    let ready = notify
        .expect("READY=1 after the refused reload", |m| {
            has_line(m, "READY=1")
        })
        .await;
    assert!(
        field(&ready, "STATUS").is_some_and(|s| s.starts_with("reload refused")),
        "{ready}"
    );
    d.wait_for_log("reload refused").await;
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "active");

    // A restart-only key is reported as such.
    let moved =
        config_text(dir.path(), &base, "info", "text").replace("shiptoken.sock", "elsewhere.sock");
    std::fs::write(&config, moved).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_log("socket.path changed but takes effect only after a restart")
        .await;
    let mut d = d;
    assert!(d.stop().await.success(), "{}", d.logs());
}

/// Spawns the daemon as systemd would with socket activation: `listener` as fd 3,
/// `LISTEN_FDS=1`, and `LISTEN_PID` set to the daemon's own pid by a shell that then execs it.
fn spawn_activated(
    listener: &std::os::unix::net::UnixListener,
    dir: &Path,
    notify: &Path,
    listen_pid: Option<&str>,
    socket: PathBuf,
) -> Daemon {
    let fd = listener.as_raw_fd();
    let script = match listen_pid {
        Some(pid) => format!("LISTEN_PID={pid} exec \"$0\" \"$@\""),
        None => "LISTEN_PID=$$ exec \"$0\" \"$@\"".to_string(),
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .arg(BIN)
        .arg("serve")
        .arg("--config")
        .arg(dir.join("shiptoken.toml"));
    sanitize(&mut cmd)
        .env("NOTIFY_SOCKET", notify)
        .env("LISTEN_FDS", "1");
    // SAFETY: dup2 is async-signal-safe and touches only file descriptors.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Daemon::spawn_command(dir, cmd).with_socket(socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_serves_on_the_inherited_socket() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &fake.base_url(), "info", "text");
    // systemd's socket, deliberately not at socket.path: the daemon must not bind its own.
    let activated = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&activated).unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let mut d = spawn_activated(&listener, dir.path(), &notify.path, None, activated.clone());

    notify.expect("READY=1", |m| has_line(m, "READY=1")).await;
    let (status, body) = d.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200, "{body}");
    d.register(&fake, "acme", "ops@acme.test").await;
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !dir.path().join("shiptoken.sock").exists(),
        "the daemon bound socket.path although it was given a socket"
    );
    d.wait_for_log("using the socket passed by systemd").await;

    assert!(d.stop().await.success(), "{}", d.logs());
    // systemd owns the file and keeps listening on it.
    assert!(
        activated.exists(),
        "the daemon removed systemd's socket file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_for_another_pid_are_ignored() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &fake.base_url(), "info", "text");
    let other = dir.path().join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
    let mut notify = NotifySocket::bind(dir.path());
    let own = dir.path().join("shiptoken.sock");
    let mut d = spawn_activated(&listener, dir.path(), &notify.path, Some("1"), own.clone());

    notify.expect("READY=1", |m| has_line(m, "READY=1")).await;
    let (status, _) = d.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200, "the daemon did not bind socket.path itself");
    assert!(d.stop().await.success(), "{}", d.logs());
}

/// One journal entry in the native protocol: `NAME=value` lines, or `NAME\n` followed by a
/// little-endian u64 length, the value and `\n` for values with newlines.
fn parse_journal_entry(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n').unwrap();
        let line = &data[..end];
        data = &data[end + 1..];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
        } else {
            let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
            let value = &data[8..8 + len];
            fields.push((
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
            data = &data[8 + len + 1..];
        }
    }
    fields
}

/// tracing-journald always writes to /run/systemd/journal/socket, so the daemon runs in a
/// private mount namespace where /run is a temporary folder holding the test's socket.
/// Needs CAP_SYS_ADMIN (root, as in CI); elsewhere the test says so and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_arrive_as_journald_fields() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake_run = dir.path().join("run");
    std::fs::create_dir_all(fake_run.join("systemd/journal")).unwrap();
    let journal = UnixDatagram::bind(fake_run.join("systemd/journal/socket")).unwrap();
    let config = write_config(dir.path(), &fake.base_url(), "info", "journald");
    let mut notify = NotifySocket::bind(dir.path());

    let source = CString::new(fake_run.as_os_str().as_encoded_bytes()).unwrap();
    let (root, run) = (c"/", c"/run");
    let mut cmd = serve_command(&config);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    // SAFETY: unshare and mount are plain system calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let bind = |src: *const libc::c_char, dst: *const libc::c_char, flags| {
                if libc::mount(src, dst, std::ptr::null(), flags, std::ptr::null()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            bind(
                std::ptr::null(),
                root.as_ptr(),
                libc::MS_REC | libc::MS_PRIVATE,
            )?;
            bind(source.as_ptr(), run.as_ptr(), libc::MS_BIND)
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: cannot give the daemon a private /run ({e}); needs root");
            return;
        }
    };
    let mut d = Daemon::capture(child, dir.path());
    notify.expect("READY=1", |m| has_line(m, "READY=1")).await;
    d.register(&fake, "acme", "ops@acme.test").await;

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 65536];
    let mut entries = Vec::new();
    let checked = loop {
        let n = tokio::time::timeout_at(deadline, journal.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no 'token works' entry; got {entries:#?}"))
            .unwrap();
        if n == 0 {
            continue; // tracing-journald's probe that the socket exists
        }
        let entry = parse_journal_entry(&buf[..n]);
        let is_checked = entry
            .iter()
            .any(|(k, v)| k == "MESSAGE" && v == "token works");
        if is_checked {
            break entry;
        }
        entries.push(entry);
    };
    let get = |name: &str| {
        checked
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("SYSLOG_IDENTIFIER"), Some("shiptoken"), "{checked:?}");
    assert_eq!(get("PRIORITY"), Some("6"), "{checked:?}");
    assert_eq!(get("PROVIDER"), Some("shiphero"), "{checked:?}");
    assert_eq!(get("ACCOUNT"), Some("acme"), "{checked:?}");
    assert_eq!(get("EVENT"), Some("checked"), "{checked:?}");
    assert_eq!(get("STATUS"), Some("active"), "{checked:?}");
    assert!(
        get("UPSTREAM_REQUEST_ID").is_some_and(|id| !id.is_empty()),
        "{checked:?}"
    );
    assert!(
        checked.iter().all(|(k, _)| !k.starts_with("F_")),
        "field prefix not removed: {checked:?}"
    );
    let ready_seen = entries.iter().any(|e| {
        e.iter()
            .any(|(k, v)| k == "MESSAGE" && v == "shiptoken ready")
    });
    assert!(ready_seen, "{entries:#?}");

    // Never both: with journald on, stderr carries no log lines.
    assert!(d.stop().await.success(), "{}", d.logs());
    assert!(!d.logs().contains("token works"), "{}", d.logs());
}
