//! Carrier benchmark (issue 31): how long the real daemon takes to renew thousands of carrier
//! (`oauth2`, client credentials) accounts whose 1-hour tokens are all due at once, against
//! the simulated UPS token endpoint with a set latency.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example carrier_bench -- --accounts 10000 --latency 100ms
//! cargo run --release --example carrier_bench -- --accounts 10000 --latency 100ms --probe
//! ```
//!
//! It registers N accounts straight into a fresh state folder (through
//! `shiptoken::registry::Registry`, as `accounts add oauth2` would), each a UPS-style client
//! whose token was issued 50 minutes ago with an hour to live: past `oauth2.rotate_at` (2/3
//! plus the spread, 40 to 45 minutes), so every one is due. Then it starts
//! `target/release/shiptoken serve` with the carrier's pacing out of the way, and measures the
//! time from spawn until the first sweep has renewed every account (one token call each; with
//! `--probe`, a probe of each new token as well) against the ideal
//! `accounts x calls x latency / concurrency`, and the peak and idle RSS.
//!
//! With the shipped pacing (`oauth2.max_requests_per_second = 10`), the same herd would take
//! `accounts x calls / 10` seconds; the output says so, since that, not the daemon, bounds a
//! cold start of a large carrier fleet.
//!
//! Exits 1 when an account was not renewed, or above `--max-ratio` (1.1) of the ideal.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod common;
use common::{daemon_pid, status_kb};
use shiptoken::clock::{Clock, Timestamp};
use shiptoken::names::AccountKey;
use shiptoken::providers::oauth2::account::Credential;
use shiptoken::providers::oauth2::sim::{FakeCarrier, PROBE_PATH, UPS_TOKEN_PATH};
use shiptoken::registry::{NewAccount, Registry, TokenRecord};
use shiptoken::secret::Secret;

const HOUR: Duration = Duration::from_secs(3600);

struct Args {
    accounts: usize,
    latency: Duration,
    concurrency: usize,
    probe: bool,
    bin: PathBuf,
    idle: Duration,
    max_ratio: f64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        accounts: 10_000,
        latency: Duration::from_millis(100),
        concurrency: 64,
        probe: false,
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/shiptoken"),
        idle: Duration::from_secs(10),
        max_ratio: 1.1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--accounts" => args.accounts = value()?.parse()?,
            "--latency" => args.latency = humantime::parse_duration(&value()?)?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--probe" => args.probe = true,
            "--bin" => args.bin = PathBuf::from(value()?),
            "--idle" => args.idle = humantime::parse_duration(&value()?)?,
            "--max-ratio" => args.max_ratio = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "carrier_bench [--accounts N] [--latency 100ms] [--concurrency 64] [--probe] [--bin PATH] [--idle 10s] [--max-ratio 1.1]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// Registers `n` active accounts `oauth2/carrier-<i>`, each a client of `fake` whose token
/// was issued at `issued` with an hour to live, proven now.
async fn register_carriers(
    registry: &Registry,
    fake: &FakeCarrier,
    n: usize,
    issued: Timestamp,
    probe: bool,
) -> anyhow::Result<()> {
    let mut news = Vec::with_capacity(n);
    for i in 0..n {
        let client_id = format!("client-{i}");
        let credential = Credential {
            preset: "ups".into(),
            token_url: Some(format!("{}{UPS_TOKEN_PATH}", fake.base_url())),
            client_secret: fake.add_client(&client_id),
            client_id,
            probe_url: probe.then(|| format!("{}{PROBE_PATH}", fake.base_url())),
            ..Credential::default()
        };
        news.push(NewAccount {
            key: AccountKey::parse(&format!("oauth2/carrier-{i}"))?,
            email: None,
            first_name: None,
            last_name: None,
            refresh_token: Some(credential.encode()),
            access_token: Some(TokenRecord {
                access_token: Secret::new(format!("issued-before-{i}")),
                issued_at: issued,
                expires_at: Some(issued.plus(HOUR)),
            }),
        });
    }
    common::register_proven(registry, news).await
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
    let dir = tempfile::tempdir()?;
    let fake = FakeCarrier::start().await?;
    fake.set_latency(args.latency);
    fake.set_lifetime(HOUR.as_secs());

    let setup = Instant::now();
    {
        let registry = Registry::open(&dir.path().join("state")).await?;
        let now = Clock::system().now();
        let issued = Timestamp::from_millis(now.millis() - 50 * 60 * 1000);
        register_carriers(&registry, &fake, args.accounts, issued, args.probe).await?;
    }
    eprintln!(
        "registered {} carrier accounts in {:.1} s",
        args.accounts,
        setup.elapsed().as_secs_f64()
    );
    let config = dir.path().join("shiptoken.toml");
    std::fs::write(
        &config,
        common::sweep_config(dir.path(), args.concurrency, "[oauth2]"),
    )?;
    let socket = dir.path().join("shiptoken.sock");
    let log = std::fs::File::create(dir.path().join("daemon.log"))?;
    let calls = if args.probe { 2 } else { 1 };
    let all_calls = fake.total_requests() + (calls * args.accounts) as u64;

    let spawned = Instant::now();
    let since = Clock::system().now().millis() - 60_000;
    let mut child = tokio::process::Command::new(&args.bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let pid = daemon_pid(child.id().context("the daemon has no pid")?);
    let renewed = loop {
        if fake.total_requests() >= all_calls {
            // The last call is answered after the carrier's latency.
            break spawned.elapsed() + args.latency;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited with {status}; see its log");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let peak_kb = status_kb(pid, "VmHWM:").unwrap_or(0);
    tokio::time::sleep(args.idle).await;
    let idle_kb = status_kb(pid, "VmRSS:").unwrap_or(0);

    // Only now, after the idle figure: every account stored as renewed by this daemon?
    let reply = shiptoken::client::call(&socket, "GET", "/v1/accounts", None).await?;
    let accounts = reply.body["accounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let done = accounts
        .iter()
        .filter(|a| {
            a["status"] == "active"
                && a["last_rotated_at"]
                    .as_str()
                    .and_then(Timestamp::parse_rfc3339)
                    .is_some_and(|t| t.millis() >= since)
        })
        .count();
    let next_due: Vec<i64> = accounts
        .iter()
        .filter_map(|a| {
            a["refresh_after"]
                .as_str()
                .and_then(Timestamp::parse_rfc3339)
        })
        .map(Timestamp::millis)
        .collect();
    child.start_kill()?;
    let _ = child.wait().await;

    let ideal =
        args.accounts as f64 * calls as f64 * args.latency.as_secs_f64() / args.concurrency as f64;
    let took = renewed.as_secs_f64();
    println!(
        "| accounts | calls each | latency | concurrency | ideal | all renewed | ratio | peak RSS | idle RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {calls} | {} ms | {} | {ideal:.1} s | {took:.1} s | {:.2}x | {:.1} MB | {:.1} MB |",
        args.accounts,
        args.latency.as_millis(),
        args.concurrency,
        took / ideal,
        peak_kb as f64 / 1024.0,
        idle_kb as f64 / 1024.0,
    );
    if let (Some(first), Some(last)) = (next_due.iter().min(), next_due.iter().max()) {
        println!(
            "\ndone: {done}/{} accounts renewed; their next renewals spread over {:.1} minutes; \
             at the shipped pacing (10 calls/s) this herd would take {:.0} s",
            args.accounts,
            (last - first) as f64 / 60_000.0,
            (calls * args.accounts) as f64 / 10.0,
        );
    }
    if done != args.accounts {
        bail!(
            "only {done} of {} accounts were renewed; see the daemon log",
            args.accounts
        );
    }
    if took / ideal > args.max_ratio {
        bail!(
            "{:.2}x the ideal is over the target of {}x",
            took / ideal,
            args.max_ratio
        );
    }
    Ok(())
}
