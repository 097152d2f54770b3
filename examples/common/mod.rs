//! What the benchmarks share: a fleet of ShipHero accounts registered straight into a
//! registry (as `accounts add` would, then proven), each known to the simulated ShipHero;
//! the release daemon started with one account, for the socket and proxy benchmarks; and
//! what the sweep benchmarks read of a process in /proc.
//! Each benchmark uses part of it (hence the `dead_code` allowances).

use shiptoken::clock::{Clock, Timestamp};
use shiptoken::names::{AccountKey, Status};
use shiptoken::registry::{NewAccount, Registry, TokenRecord};
use shiptoken::secret::Secret;
use shiptoken::sim::FakeShipHero;

/// A ShipHero access token's life.
#[allow(dead_code)]
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(28 * 86_400);

/// Registers `n` active accounts `shiphero/merchant-<i>` whose tokens were issued at `issued`
/// (20 days ago: due for a refresh; now: nothing due) and proven now. Returns their emails,
/// by which the simulator counts their calls.
#[allow(dead_code)]
pub async fn register_fleet(
    registry: &Registry,
    fake: &FakeShipHero,
    n: usize,
    issued: Timestamp,
) -> anyhow::Result<Vec<String>> {
    let mut emails = Vec::with_capacity(n);
    let mut news = Vec::with_capacity(n);
    for i in 0..n {
        let email = format!("ops{i}@merchant{i}.test");
        let user = fake.add_user(&email);
        emails.push(email.clone());
        let new = NewAccount {
            key: AccountKey::parse(&format!("shiphero/merchant-{i}"))?,
            email: Some(email),
            first_name: None,
            last_name: None,
            refresh_token: Some(Secret::new(user.refresh_token)),
            access_token: Some(TokenRecord {
                access_token: Secret::new(user.access_token),
                issued_at: issued,
                expires_at: Some(issued.plus(LIFETIME)),
            }),
        };
        news.push(new);
    }
    register_proven(registry, news).await?;
    Ok(emails)
}

/// Registers each account and stores it as proven now, what a passing first probe leaves,
/// with many in flight so the registry thread never waits for the benchmark.
#[allow(dead_code)]
pub async fn register_proven(registry: &Registry, news: Vec<NewAccount>) -> anyhow::Result<()> {
    let now = Clock::system().now();
    let mut pending = tokio::task::JoinSet::new();
    for new in news {
        let registry = registry.clone();
        pending.spawn(async move {
            let mut record = (*registry.add(new, now).await?).clone();
            record.current = record.candidate.take().map(|c| *c);
            record.status = Status::Active;
            record.last_verified_at = Some(now);
            registry.save(record, Vec::new(), now).await?;
            anyhow::Ok(())
        });
        if pending.len() >= 256
            && let Some(r) = pending.join_next().await
        {
            r??;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }
    Ok(())
}

/// The configuration of a sweep benchmark's daemon in `dir`: `concurrency` calls in flight
/// and `section` (the provider's, its pacing set out of the way, since a benchmark measures
/// the daemon, not the configured rate).
#[allow(dead_code)]
pub fn sweep_config(dir: &std::path::Path, concurrency: usize, section: &str) -> String {
    format!(
        r#"state_dir = "{state}"

[log]
level = "info"
format = "text"

[socket]
path = "{socket}"

[metrics]
listen = ""

[rotation]
concurrency = {concurrency}

{section}
max_requests_per_second = 1000000
burst = 100000

[shippo]
callback_listen = ""
"#,
        state = dir.join("state").display(),
        socket = dir.join("shiptoken.sock").display(),
    )
}

/// A child process killed (and reaped) when dropped, so a benchmark that panics leaves no
/// daemon behind.
#[allow(dead_code)]
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something answers on the Unix socket at `path` (10 s at most).
#[allow(dead_code)]
pub async fn wait_for_socket(path: &std::path::Path) {
    for _ in 0..500 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("nothing answers on {}", path.display());
}

/// The release daemon at `daemon`, started in `dir` against `fake` with one ShipHero account
/// `shiphero/bench` registered and proven: the daemon, its socket and the token answer.
#[allow(dead_code, clippy::unwrap_used)]
pub async fn daemon_with_one_account(
    daemon: &std::path::Path,
    dir: &std::path::Path,
    fake: &FakeShipHero,
) -> (Killed, std::path::PathBuf, serde_json::Value) {
    assert!(
        daemon.exists(),
        "{} not found: cargo build --release first, or pass --daemon",
        daemon.display()
    );
    let user = fake.add_user("bench@acme.test");
    let socket = dir.join("shiptoken.sock");
    let config = dir.join("shiptoken.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[log]\nlevel = \"warn\"\nformat = \"text\"\n[socket]\npath = \"{}\"\n\
             [metrics]\nlisten = \"\"\n[shiphero]\napi_base = \"{}\"\n[shippo]\ncallback_listen = \"\"\n",
            dir.join("state").display(),
            socket.display(),
            fake.base_url()
        ),
    )
    .unwrap();
    let child = Killed(
        std::process::Command::new(daemon)
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_socket(&socket).await;
    let body = serde_json::json!({
        "provider": "shiphero", "account": "bench", "email": "bench@acme.test",
        "refresh_token": user.refresh_token,
    });
    let added = shiptoken::client::call(&socket, "POST", "/v1/accounts", Some(&body))
        .await
        .unwrap();
    assert_eq!(added.status, 201, "{:?}", added.body);
    let answer = shiptoken::client::call(&socket, "GET", "/v1/tokens/shiphero/bench", None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    (child, socket, answer.body)
}

/// The value at share `p` (0-1) of `sorted`, which is sorted and not empty.
#[allow(dead_code)]
pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A `/proc/<pid>/status` field in kB.
#[allow(dead_code)]
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The daemon's pid: `pid` itself, or its child when `--bin` is a wrapper (a script that
/// execs strace, which runs the daemon as its child).
#[allow(dead_code)]
pub fn daemon_pid(pid: u32) -> u32 {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "shiptoken" {
        return pid;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// User plus system CPU time of the process, in clock ticks (1/100 s on Linux).
#[allow(dead_code)]
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after its closing parenthesis are fixed.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
