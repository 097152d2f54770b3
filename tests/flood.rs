//! A local user without rights floods every listener while an authorized application reads
//! its token: the daemon runs with 1,024 open files, 1,100 connections hang on the metrics
//! port with unfinished headers, then 600 kept-alive connections from a uid that may read
//! nothing poll `/v1/health`. The reader must get its token every time, the daemon must stay
//! clear of its open-file limit, and the refusals must show in the metrics.
//!
//! The floods and the reader are Python programs given on the command line (`python3 -c`),
//! run as other uids: they need nothing from the checkout, which may be unreadable to them.
//! Needs root (CI runs as root); elsewhere it prints "skipped (needs root)" and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::*;
use futures_util::FutureExt;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// The uid and gid of the application `[[socket.clients]]` lets read shiphero/acme.
const READER: u32 = 1001;
/// Another application, allowed every ShipHero account.
const OTHER_READER: u32 = 1002;
/// A uid no rule lists: it may read nothing.
const STRANGER: u32 = 1004;
/// The daemon's soft limit on open files, the common default.
const NOFILE: u64 = 1024;

/// Opens N connections and keeps them open, replacing each one the daemon closes a second
/// later. `tcp HOST:PORT N`: each sends a `GET /metrics` head that never ends. `unix PATH N`:
/// each sends `GET /v1/health` every 2 s on its kept-alive connection. Prints its counts
/// once a second.
const FLOOD: &str = r#"
import resource, selectors, socket, sys, time
kind, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
sel = selectors.DefaultSelector()
HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
conns, retry = {}, []
stats = {"opened": 0, "closed": 0, "answers": 0, "queue_full": 0}

def open_one(now):
    if kind == "tcp":
        host, port = target.rsplit(":", 1)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, int(port)))
        sel.register(s, selectors.EVENT_WRITE)
        conns[s] = None
    else:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(target)
        except OSError:
            s.close()
            stats["queue_full"] += 1
            retry.append(now + 1)
            return
        sel.register(s, selectors.EVENT_READ)
        conns[s] = now
    stats["opened"] += 1

def drop(s, now):
    sel.unregister(s)
    s.close()
    del conns[s]
    stats["closed"] += 1
    retry.append(now + 1)

for _ in range(n):
    open_one(time.monotonic())
print("started", flush=True)
reported = 0
while True:
    now = time.monotonic()
    for key, events in sel.select(timeout=0.05):
        s = key.fileobj
        if s not in conns:
            continue
        if events & selectors.EVENT_WRITE:
            try:
                s.send(HEAD)
                sel.modify(s, selectors.EVENT_READ)
            except OSError:
                drop(s, now)
            continue
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if data:
            stats["answers"] += 1
        else:
            drop(s, now)
    if kind == "unix":
        for s, due in list(conns.items()):
            if due <= now:
                try:
                    s.send(HEALTH)
                    conns[s] = now + 2
                except OSError:
                    drop(s, now)
    due = [t for t in retry if t <= now]
    retry[:] = [t for t in retry if t > now]
    for _ in due:
        open_one(now)
    if now - reported >= 1:
        reported = now
        print("open", len(conns), " ".join(f"{k} {v}" for k, v in stats.items()), flush=True)
"#;

/// `PATH TRIES`: reads shiphero/acme as plain text on a fresh connection TRIES times, 250 ms
/// apart, with a 3 s timeout each; prints `STATUS MILLISECONDS BODY` or `error MS WHAT`.
const READ: &str = r#"
import socket, sys, time
path, tries = sys.argv[1], int(sys.argv[2])
for _ in range(tries):
    started = time.monotonic()
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(path)
        s.sendall(b"GET /v1/tokens/shiphero/acme HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ")[1].decode() if head else "none"
        print(status, f"{(time.monotonic() - started) * 1000:.1f}", body.decode().strip(), flush=True)
    except Exception as e:
        print("error", f"{(time.monotonic() - started) * 1000:.1f}", type(e).__name__, e, flush=True)
    time.sleep(0.25)
"#;

/// `PATH N`: opens N connections to the socket and keeps each alive with `GET /v1/health`
/// every 2 s; prints `open K` whenever the number the daemon has not closed changes.
const HOLD: &str = r#"
import selectors, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()
due = {}
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    due[s] = 0

def drop(s):
    sel.unregister(s)
    s.close()
    del due[s]

shown = None
while True:
    now = time.monotonic()
    for s, at in list(due.items()):
        if at <= now:
            try:
                s.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
                due[s] = now + 2
            except OSError:
                drop(s)
    for key, _ in sel.select(timeout=0.1):
        try:
            data = key.fileobj.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            drop(key.fileobj)
    if len(due) != shown:
        shown = len(due)
        print("open", shown, flush=True)
"#;

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the Python program `script` with `args` as `uid` (same gid, no supplementary
/// groups), in `cwd`, its stdout read line by line.
fn python_as(
    uid: u32,
    cwd: &std::path::Path,
    script: &str,
    args: &[&str],
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .args(args)
        .uid(uid)
        .gid(uid)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Reads `lines` until one satisfies `done`, which gets every line; fails after `DEADLINE`.
async fn until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) {
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if done(&line) {
                return;
            }
        }
        panic!("{what}: the program ended");
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// The number after `key` in a flood's count line.
fn count(line: &str, key: &str) -> u64 {
    let mut words = line.split_whitespace();
    words.find(|w| *w == key);
    words.next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The daemon's open file descriptors.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Starts the daemon on `config` with a soft limit of `NOFILE` open files.
async fn start_with_nofile(dir: &std::path::Path, config: &str) -> Daemon {
    let path = dir.join("shiptoken.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = serve_command(&path);
    // SAFETY: setrlimit is async-signal-safe and touches only the struct on this stack.
    unsafe {
        cmd.pre_exec(|| {
            let mut rl = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            rl.rlim_cur = NOFILE;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = Daemon::spawn_command(dir, cmd);
    wait_for("the daemon to answer on its socket", || async {
        shiptoken::client::call(&d.socket, "GET", "/v1/health", None)
            .await
            .ok()
    })
    .await;
    d
}

/// A daemon with 1,024 open files, its metrics on, its socket open to every uid (mode 0666),
/// shiphero/acme registered and readable by `READER` and by `OTHER_READER`: the temporary
/// folder, the fake, the daemon, the metrics address and acme's token.
async fn reader_and_daemon() -> (tempfile::TempDir, FakeShipHero, Daemon, String, String) {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Other uids reach the socket in this folder and run their programs from it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let rules = format!(
        "[[socket.clients]]\nname = \"order-sync\"\nuids = [{READER}]\naccounts = [\"shiphero/acme\"]\n\n\
         [[socket.clients]]\nname = \"reporting\"\nuids = [{OTHER_READER}]\naccounts = [\"shiphero/*\"]\n"
    );
    let config = ConfigText {
        shiphero_base: &fake.base_url(),
        // One line per refused connection would be a flood of its own.
        level: "info",
        metrics_listen: &metrics_listen,
        extra: &rules,
        ..ConfigText::default()
    }
    .render(dir.path())
    .replace("[socket]\n", "[socket]\nmode = \"0666\"\n");
    let d = start_with_nofile(dir.path(), &config).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("1024")),
        "{limits}"
    );
    d.register(&fake, "acme", "ops@acme.test").await;
    let (status, answer) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200, "{answer}");
    let token = answer["access_token"].as_str().unwrap().to_string();

    (dir, fake, d, metrics_listen, token)
}

/// The scrape once the floods are gone and Prometheus gets in again.
async fn scrape(metrics_listen: &str) -> String {
    let url = format!("http://{metrics_listen}/metrics");
    wait_for("a scrape", || async {
        let r = shiptoken::providers::http_get(&url).await.ok()?;
        r.text().await.ok()
    })
    .await
}

/// The value of `shiptoken_connections_refused_total{listener, reason}` in `body`.
fn refused(body: &str, listener: &str, reason: &str) -> f64 {
    let prefix = format!(
        "shiptoken_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} "
    );
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
        .parse()
        .unwrap()
}

/// [`reads_as`] `READER`, 20 times.
async fn twenty_reads(d: &Daemon, token: &str, when: &str) -> (Vec<f64>, usize) {
    reads_as(READER, 20, d, token, when).await
}

/// Runs the reader as `uid` for `tries` reads, each of which must answer 200 with `token`;
/// returns their latencies in ms and the most files the daemon had open meanwhile.
async fn reads_as(uid: u32, tries: u32, d: &Daemon, token: &str, when: &str) -> (Vec<f64>, usize) {
    let socket = d.socket.to_str().unwrap();
    let (mut reader, mut reads) = python_as(uid, &d.dir, READ, &[socket, &tries.to_string()]);
    let mut latencies = Vec::new();
    let mut most = 0;
    for n in 1..=tries {
        let line = tokio::time::timeout(DEADLINE, reads.next_line())
            .await
            .expect("the reader hung")
            .unwrap()
            .expect("the reader ended early");
        let fields: Vec<&str> = line.splitn(3, ' ').collect();
        assert_eq!(
            fields[0], "200",
            "read {n} of {tries} {when} failed: {line}"
        );
        assert_eq!(
            fields[2], token,
            "read {n} of {tries} {when}: not the token"
        );
        latencies.push(fields[1].parse::<f64>().unwrap());
        most = most.max(open_fds(d.pid()));
    }
    reader.wait().await.unwrap();
    (latencies, most)
}

/// "median / max ms" of `latencies`.
fn summary(latencies: &[f64]) -> String {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "{:.1} / {:.1} ms",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_from_a_user_without_rights_never_keep_a_reader_from_its_token() {
    if !is_root() {
        eprintln!("skipped (needs root)");
        return;
    }
    let (_dir, _fake, d, metrics_listen, token) = reader_and_daemon().await;
    // The same reads without a flood, for comparison (and proof the reader works).
    let (quiet, _) = twenty_reads(&d, &token, "without a flood").await;

    let (metrics_flood, mut metrics_counts) =
        python_as(STRANGER, &d.dir, FLOOD, &["tcp", &metrics_listen, "1100"]);
    until(&mut metrics_counts, "the metrics flood to start", |l| {
        l == "started"
    })
    .await;
    let socket = d.socket.to_str().unwrap();
    let (socket_flood, mut socket_counts) =
        python_as(STRANGER, &d.dir, FLOOD, &["unix", socket, "600"]);
    until(&mut socket_counts, "the socket flood to start", |l| {
        l == "started"
    })
    .await;
    until(
        &mut socket_counts,
        "the stranger's connections to be answered",
        |l| count(l, "opened") >= 600 && count(l, "answers") > 0,
    )
    .await;

    let (flooded, most) = twenty_reads(&d, &token, "under the flood").await;
    // The floods cost the daemon what the caps allow (16 socket and 64 metrics connections),
    // far from the limit: limits.reserved_fds stays untouched.
    assert!(
        most < 1024 - 256,
        "the daemon held {most} open files under the flood"
    );
    eprintln!(
        "token reads, median and max: {} quiet, {} under the flood; daemon open files at most {most}",
        summary(&quiet),
        summary(&flooded)
    );
    let last = |lines: &mut Lines<BufReader<ChildStdout>>| {
        let mut last = String::new();
        while let Some(Ok(Some(l))) = lines.next_line().now_or_never() {
            last = l;
        }
        last
    };
    eprintln!("metrics flood: {}", last(&mut metrics_counts));
    eprintln!("socket flood: {}", last(&mut socket_counts));
    drop((metrics_flood, socket_flood));

    // With the floods gone, Prometheus gets in again and sees what was refused.
    let body = scrape(&metrics_listen).await;
    assert!(refused(&body, "metrics", "connections") > 0.0, "{body}");
    assert!(refused(&body, "socket", "unauthorized") > 0.0, "{body}");
    assert_eq!(refused(&body, "socket", "per_uid"), 0.0, "{body}");
    let logs = d.logs();
    assert!(!logs.contains("Too many open files"), "{logs}");
    assert!(logs.contains("connections refused"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_application_cannot_take_every_readers_slot() {
    if !is_root() {
        eprintln!("skipped (needs root)");
        return;
    }
    let (_dir, _fake, d, metrics_listen, token) = reader_and_daemon().await;
    let socket = d.socket.to_str().unwrap();
    // 80 kept-alive connections from one reader: its 64
    // (limits.socket_connections_per_uid) stay open, the other 16 are closed at once.
    let (_holder, mut held) = python_as(READER, &d.dir, HOLD, &[socket, "80"]);
    until(
        &mut held,
        "the reader's connections beyond 64 to be closed",
        |l| l == "open 64",
    )
    .await;
    // Another application, and the daemon's own uid, still read.
    reads_as(OTHER_READER, 3, &d, &token, "beside a hog").await;
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200, "{body}");
    let body = scrape(&metrics_listen).await;
    assert_eq!(refused(&body, "socket", "per_uid"), 16.0, "{body}");
    // The 64 it holds stay open all along.
    if let Some(Ok(Some(line))) = held.next_line().now_or_never() {
        panic!("the daemon closed a connection within the cap: {line}");
    }
    assert_eq!(refused(&body, "socket", "unauthorized"), 0.0, "{body}");
    assert!(d.logs().contains(&format!("uid={READER}")), "{}", d.logs());
}
