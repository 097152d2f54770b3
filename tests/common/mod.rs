//! Shared harness for the integration tests: runs the real `shiptoken` binary with a config
//! in a temporary folder against the in-process simulated upstreams, and talks to it over
//! its real Unix socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[allow(unused_imports)]
pub use shiptoken::sim::{FakeShipHero, FakeShippo, ShipHeroMode};

pub mod postgres;

/// The built binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shiptoken");

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A temporary folder with mode 0755 that other uids can reach, or a panic naming the folder
/// on the way that keeps them out (a TMPDIR inside a private home folder, say).
pub fn reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for folder in dir.path().ancestors().skip(1) {
        let mode = std::fs::metadata(folder).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{} (mode {:o}) keeps other uids out of the temporary folder {}; \
             point TMPDIR at a folder they can enter, such as /tmp",
            folder.display(),
            mode & 0o7777,
            dir.path().display(),
        );
    }
    dir
}

/// Where a process running as another uid finds the binary: a link to (or copy of) [`BIN`]
/// in `dir`, because `BIN` lives under the checkout's target folder, which other uids cannot
/// reach when the checkout is in a private folder (a home folder with mode 0700).
pub fn reachable_bin(dir: &Path) -> PathBuf {
    dir.join("bin").join("shiptoken")
}

/// Puts [`reachable_bin`] in place: a hard link when the target folder is on the same file
/// system (no 200 MB copy), else a copy; either way mode 0755.
pub fn install_reachable_bin(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = reachable_bin(dir);
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A loopback port nothing listens on, for a daemon listener the test configures; the
/// daemon binds it a moment later. Taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port from `bind(0)` could be handed again, in that
/// moment, to another `bind(0)` or as the local port of an outgoing connection (the tests
/// make thousands), and the daemon then failed to start with "Address already in use".
/// Below the range the kernel hands out nothing by itself, and a counter keeps the tests of
/// one process apart (Cargo runs one test binary at a time).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(10_000).max(1024);
    let span = ephemeral_low.saturating_sub(low).max(1);
    // Where this process starts in the span, so that two test binaries run by hand at the
    // same time seldom meet.
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + (start + n) % span).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {ephemeral_low}");
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `DEADLINE`.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config for a daemon in `dir` talking to `shiphero_base`, with `extra` TOML appended
/// (sections in `extra` must not repeat the ones written here). Logs at debug, as text.
pub fn config_text(dir: &Path, shiphero_base: &str, extra: &str) -> String {
    ConfigText {
        shiphero_base,
        extra,
        ..ConfigText::default()
    }
    .render(dir)
}

/// The parts of a test daemon's config that tests vary. Everything else is fixed: state and
/// socket in the test's folder, a sweep every second, short retries, no metrics listener.
pub struct ConfigText<'a> {
    /// `shiphero.api_base`.
    pub shiphero_base: &'a str,
    /// `log.level`.
    pub level: &'a str,
    /// `log.format`.
    pub format: &'a str,
    /// `metrics.listen`; empty turns the listener off.
    pub metrics_listen: &'a str,
    /// Top-level lines such as `key_file = ...`.
    pub top: &'a str,
    /// The body of `[shippo]`.
    pub shippo: &'a str,
    /// More sections, appended.
    pub extra: &'a str,
}

impl Default for ConfigText<'_> {
    fn default() -> Self {
        ConfigText {
            shiphero_base: "http://127.0.0.1:9",
            level: "debug,tokio_cron_scheduler=warn,hyper=info,hyper_util=info,reqwest=info",
            format: "text",
            metrics_listen: "",
            top: "",
            shippo: "callback_listen = \"\"",
            extra: "",
        }
    }
}

impl ConfigText<'_> {
    /// The config file's text for a daemon in `dir`.
    pub fn render(&self, dir: &Path) -> String {
        format!(
            r#"state_dir = "{state}"
{top}

[log]
level = "{level}"
format = "{format}"

[socket]
path = "{socket}"

[metrics]
listen = "{metrics}"

[rotation]
schedule = "* * * * * *"
retry_initial = "1s"
retry_max = "4s"

[shiphero]
api_base = "{shiphero_base}"
timeout = "3s"

[shippo]
{shippo}
{extra}
"#,
            state = dir.join("state").display(),
            socket = dir.join("shiptoken.sock").display(),
            top = self.top,
            level = self.level,
            format = self.format,
            metrics = self.metrics_listen,
            shiphero_base = self.shiphero_base,
            shippo = self.shippo,
            extra = self.extra,
        )
    }
}

/// Prepares `cmd` to run a daemon under test: none of the systemd variables the test runner
/// may have inherited (a test that wants one sets it afterwards), output piped for the
/// captured logs, killed when dropped.
pub fn sanitize(cmd: &mut Command) -> &mut Command {
    for var in [
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "LISTEN_FDS",
        "LISTEN_PID",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "CREDENTIALS_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
}

/// `shiptoken serve --config FILE`, [sanitized](sanitize).
pub fn serve_command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(config);
    sanitize(&mut cmd);
    cmd
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// The temporary folder holding state, socket and config.
    pub dir: PathBuf,
    /// The Unix socket.
    pub socket: PathBuf,
    /// The config file.
    pub config: PathBuf,
    logs: Arc<Mutex<String>>,
}

impl Daemon {
    /// Writes `config` into `dir` and starts `shiptoken serve --movable-clock`, returning
    /// once the socket answers.
    pub async fn start(dir: &Path, config: &str) -> Daemon {
        let path = dir.join("shiptoken.toml");
        std::fs::write(&path, config).unwrap();
        Self::start_with(dir, &path, &[]).await
    }

    /// Starts the daemon on an existing config file with extra environment variables.
    pub async fn start_with(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::spawn(dir, config, env);
        let socket = d.socket.clone();
        let logs = d.logs.clone();
        let child = d.child.as_mut().unwrap();
        wait_for("the daemon to answer on its socket", || {
            let socket = socket.clone();
            let exited = child.try_wait().unwrap();
            let logs = logs.clone();
            async move {
                if let Some(status) = exited {
                    panic!(
                        "daemon exited early with {status}:\n{}",
                        logs.lock().unwrap()
                    );
                }
                shiptoken::client::call(&socket, "GET", "/v1/health", None)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        d
    }

    /// Spawns the daemon without waiting for it.
    pub fn spawn(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = serve_command(config);
        cmd.arg("--movable-clock");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            config: config.to_path_buf(),
            ..Self::spawn_command(dir, cmd)
        }
    }

    /// Spawns `program`, which must exec the daemon with its own arguments (e.g. a wrapper
    /// that first enters a mount namespace), and captures its output like `spawn`.
    pub fn spawn_program(dir: &Path, program: &Path) -> Daemon {
        let mut cmd = Command::new(program);
        sanitize(&mut cmd);
        Self::spawn_command(dir, cmd)
    }

    /// Spawns `cmd` (from [`serve_command`] or [`sanitize`]d) for a daemon in `dir`.
    pub fn spawn_command(dir: &Path, mut cmd: Command) -> Daemon {
        Self::capture(cmd.spawn().unwrap(), dir)
    }

    /// Takes over a daemon spawned with piped output, whose config and socket are
    /// `dir/shiptoken.toml` and `dir/shiptoken.sock` (see [`Daemon::with_socket`]).
    pub fn capture(mut child: Child, dir: &Path) -> Daemon {
        let logs = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut l = logs.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Daemon {
            child: Some(child),
            dir: dir.to_path_buf(),
            socket: dir.join("shiptoken.sock"),
            config: dir.join("shiptoken.toml"),
            logs,
        }
    }

    /// The same daemon, reached on `socket` (one systemd passed it, say).
    pub fn with_socket(self, socket: PathBuf) -> Daemon {
        Daemon { socket, ..self }
    }

    /// Everything the daemon wrote to stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the daemon's output contains `needle`.
    pub async fn wait_for_log(&self, needle: &str) {
        let logs = self.logs.clone();
        wait_for(&format!("log line containing {needle:?}"), || {
            let found = logs.lock().unwrap().contains(needle);
            async move { found.then_some(()) }
        })
        .await
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().and_then(|c| c.id()).unwrap() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait().await
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("daemon did not exit in time")
            .unwrap()
    }

    /// A request over the socket.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let reply = shiptoken::client::call(&self.socket, method, path, body)
            .await
            .unwrap();
        (reply.status, reply.body)
    }

    /// `GET /v1/accounts/{key}`.
    pub async fn account(&self, key: &str) -> Value {
        let (status, body) = self.call("GET", &format!("/v1/accounts/{key}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until the account's status is `status`.
    pub async fn wait_for_status(&self, key: &str, status: &str) -> Value {
        wait_for(&format!("{key} to become {status}"), || async {
            let a = self.account(key).await;
            (a["status"] == status).then_some(a)
        })
        .await
    }

    /// Waits until at least one sweep has finished after this call.
    pub async fn wait_for_sweep(&self) {
        let (_, h) = self.call("GET", "/v1/health", None).await;
        let now = h["now"].as_str().unwrap().to_string();
        wait_for("a sweep to finish", || {
            let now = now.clone();
            async move {
                let (_, h) = self.call("GET", "/v1/health", None).await;
                (h["last_sweep_at"].as_str().unwrap() > now.as_str()).then_some(())
            }
        })
        .await;
    }

    /// Moves the daemon's clock forward.
    pub async fn advance(&self, by: &str) {
        let (status, body) = self
            .call(
                "POST",
                "/v1/debug/clock",
                Some(&serde_json::json!({ "advance": by })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Runs the CLI against this daemon's socket.
    pub async fn cli(&self, args: &[&str]) -> Cli {
        cli(
            &[&["--socket", self.socket.to_str().unwrap()], args].concat(),
            None,
        )
        .await
    }

    /// Runs the CLI with `stdin` piped in.
    pub async fn cli_stdin(&self, args: &[&str], stdin: &str) -> Cli {
        cli(
            &[&["--socket", self.socket.to_str().unwrap()], args].concat(),
            Some(stdin),
        )
        .await
    }

    /// Creates developer user `email` at `fake` and registers it as `shiphero/NAME` through
    /// the CLI, failing the test if registration fails.
    pub async fn register(
        &self,
        fake: &FakeShipHero,
        name: &str,
        email: &str,
    ) -> shiptoken::sim::DeveloperUser {
        let user = fake.add_user(email);
        let out = self
            .add_shiphero(name, email, &user.refresh_token, None)
            .await;
        assert_eq!(out.code, 0, "registering shiphero/{name} failed: {out:?}");
        user
    }

    /// Registers a Shippo OAuth token obtained elsewhere as `shippo/NAME` through the CLI,
    /// with the token in a file, failing the test if registration fails.
    pub async fn add_shippo(&self, name: &str, token: &str) {
        let file = self.dir.join(format!("{name}.shippo-token"));
        std::fs::write(&file, token).unwrap();
        let out = self
            .cli(&[
                "accounts",
                "add",
                "shippo",
                name,
                "--access-token-file",
                file.to_str().unwrap(),
            ])
            .await;
        assert_eq!(out.code, 0, "registering shippo/{name} failed: {out:?}");
    }

    /// Registers a ShipHero developer user through the CLI, with the refresh token in a file.
    pub async fn add_shiphero(
        &self,
        name: &str,
        email: &str,
        refresh_token: &str,
        access_token: Option<&str>,
    ) -> Cli {
        let refresh_file = self.dir.join(format!("{name}.refresh"));
        std::fs::write(&refresh_file, format!("{refresh_token}\n")).unwrap();
        let mut args = vec![
            "accounts",
            "add",
            "shiphero",
            name,
            "--email",
            email,
            "--refresh-token-file",
            refresh_file.to_str().unwrap(),
        ];
        let access_file = self.dir.join(format!("{name}.access"));
        if let Some(t) = access_token {
            std::fs::write(&access_file, t).unwrap();
            args.extend(["--access-token-file", access_file.to_str().unwrap()]);
        }
        self.cli(&args).await
    }
}

/// A finished CLI run.
#[derive(Debug)]
pub struct Cli {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs the CLI with `args`.
pub async fn cli(args: &[&str], stdin: Option<&str>) -> Cli {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("CLI hung")
        .unwrap();
    Cli::from(out)
}

impl From<std::process::Output> for Cli {
    fn from(out: std::process::Output) -> Cli {
        Cli {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A running `shiptoken serve --dev`: the process, the socket it printed, and everything it
/// printed up to its "Ctrl-C stops it" line.
pub struct DevDaemon {
    /// The process (killed on drop).
    pub child: Child,
    /// The socket path dev mode printed.
    pub socket: PathBuf,
    /// What it printed on stdout before it was ready for commands.
    pub printed: String,
}

/// Starts `shiptoken serve --dev` and reads the socket path from what it prints.
pub async fn start_dev() -> DevDaemon {
    let mut child = Command::new(BIN)
        .args(["serve", "--dev"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("Ctrl-C stops it") {
                return;
            }
        }
        panic!("dev mode exited early:\n{printed}");
    })
    .await
    .expect("dev mode did not start in time");
    // Keep draining stdout so the daemon never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let socket = printed
        .split("--socket ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("no socket path printed");
    DevDaemon {
        child,
        socket: PathBuf::from(socket),
        printed,
    }
}
