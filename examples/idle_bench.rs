//! Idle-memory benchmark: the resident size of the real daemon doing nothing, with N accounts
//! and the default configuration (only paths and ports are set). Exits 1 when it is over the
//! target: 10 MB with one account, 31 MB with more (issue 17).
//!
//! ```text
//! cargo build --release --bin shiptoken --example idle_bench
//! target/release/examples/idle_bench                     # 1 account
//! target/release/examples/idle_bench --accounts 10000
//! ```
//!
//! It registers N ShipHero accounts straight into a fresh state folder, each with a token
//! issued a moment ago and just checked, so the daemon has no upstream work; starts
//! `target/release/shiptoken serve` with the metrics and Shippo callback listeners on free
//! loopback ports; waits until it answers and its first sweep is done; then idles (10 s by
//! default) and reads `/proc/<pid>/status` and `smaps_rollup`. Where the memory goes is
//! printed beside the total: anonymous memory (heap, stacks) and the binary's and
//! libraries' touched pages.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

mod common;
use shiptoken::clock::Clock;
use shiptoken::registry::Registry;
use shiptoken::sim::FakeShipHero;

struct Args {
    accounts: usize,
    bin: PathBuf,
    idle: Duration,
    target_mb: Option<f64>,
    env: Vec<(String, String)>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        accounts: 1,
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/shiptoken"),
        idle: Duration::from_secs(10),
        target_mb: None,
        env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--accounts" => args.accounts = value()?.parse()?,
            "--bin" => args.bin = PathBuf::from(value()?),
            "--idle" => args.idle = humantime::parse_duration(&value()?)?,
            "--target-mb" => args.target_mb = Some(value()?.parse()?),
            // An environment variable for the daemon, to try a tunable without a rebuild.
            "--daemon-env" => {
                let kv = value()?;
                let (k, v) = kv.split_once('=').context("--daemon-env takes KEY=VALUE")?;
                args.env.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!(
                    "idle_bench [--accounts N] [--bin PATH] [--idle 10s] [--target-mb MB] [--daemon-env K=V]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// The fields of a `/proc/<pid>/` file that are in kB, by name.
fn proc_kb(pid: u32, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the daemon on the state in `dir` with the defaults, except where files go, which
/// ports, and which ShipHero (so that a probe, if one were due, would reach the simulator and
/// not the real API).
fn spawn_daemon(
    args: &Args,
    dir: &Path,
    fake: &FakeShipHero,
) -> anyhow::Result<tokio::process::Child> {
    let config = dir.join("shiptoken.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n\n[socket]\npath = \"{socket}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n\
             [shiphero]\napi_base = \"{shiphero}\"\n\n[shippo]\ncallback_listen = \"127.0.0.1:{callback}\"\n",
            state = dir.join("state").display(),
            socket = dir.join("shiptoken.sock").display(),
            metrics = free_port()?,
            shiphero = fake.base_url(),
            callback = free_port()?,
        ),
    )?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    Ok(tokio::process::Command::new(&args.bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .envs(args.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if !args.bin.exists() {
        bail!(
            "{} not found: run `cargo build --release` first (or pass --bin)",
            args.bin.display()
        );
    }
    let target_mb = args
        .target_mb
        .unwrap_or(if args.accounts <= 1 { 10.0 } else { 31.0 });
    let dir = tempfile::tempdir()?;
    let fake = FakeShipHero::start().await?;
    {
        let registry = Registry::open(&dir.path().join("state")).await?;
        common::register_fleet(&registry, &fake, args.accounts, Clock::system().now()).await?;
    }

    let socket = dir.path().join("shiptoken.sock");
    let mut child = spawn_daemon(&args, dir.path(), &fake)?;
    let pid = child.id().context("the daemon has no pid")?;
    // Ready, and its first sweep (which finds nothing due) is done.
    loop {
        if let Ok(reply) = shiptoken::client::call(&socket, "GET", "/v1/health", None).await
            && reply.body["last_sweep_at"].is_string()
        {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited with {status}; see its log");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(args.idle).await;
    let kb = |file, field| proc_kb(pid, file, field).unwrap_or(0);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let (rss, anon, file) = (
        kb("status", "VmRSS"),
        kb("status", "RssAnon"),
        kb("status", "RssFile"),
    );
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))?.count();
    let requests = fake.total_requests();
    child.start_kill()?;
    let _ = child.wait().await;

    println!(
        "| accounts | idle RSS | target | anonymous (heap, stacks) | file-backed (binary, libraries) | threads | upstream calls |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} MB | {target_mb:.0} MB | {:.1} MB | {:.1} MB | {threads} | {requests} |",
        args.accounts,
        mb(rss),
        mb(anon),
        mb(file),
    );
    if mb(rss) > target_mb {
        bail!(
            "idle RSS {:.1} MB is over the target of {target_mb:.0} MB",
            mb(rss)
        );
    }
    Ok(())
}
