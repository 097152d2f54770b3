//! Shared-registry benchmark: N ShipHero accounts, all due at once, in one PostgreSQL
//! registry, swept by one daemon and then by several, against a simulated ShipHero with a set
//! latency. It reports, for each fleet size, the time until every account was refreshed and
//! probed (against the ideal `accounts x 2 x latency / (concurrency x daemons)`) and how many
//! refreshes each account got, which must be exactly one: it exits non-zero otherwise.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example fleet_shared_bench -- --accounts 2000 --latency 100ms --daemons 1,3
//! ```
//!
//! Each run gets a database of its own on the server `--postgres` names (default
//! `postgres://postgres@127.0.0.1:5432/test`, the machine's PostgreSQL), dropped afterwards.
//! The figures go in docs/deployment.md and the README's Performance section.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod common;
use shiptoken::clock::{Clock, Timestamp};
use shiptoken::keys::MasterKey;
use shiptoken::registry::postgres::PostgresTarget;
use shiptoken::registry::{OpenOptions, Registry};
use shiptoken::sim::FakeShipHero;

const DAY: Duration = Duration::from_secs(86_400);

struct Args {
    accounts: usize,
    latency: Duration,
    concurrency: usize,
    daemons: Vec<usize>,
    postgres: String,
    bin: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        accounts: 2_000,
        latency: Duration::from_millis(100),
        concurrency: 64,
        daemons: vec![1, 3],
        postgres: "postgres://postgres@127.0.0.1:5432/test".into(),
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/shiptoken"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--accounts" => args.accounts = value()?.parse()?,
            "--latency" => args.latency = humantime::parse_duration(&value()?)?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--daemons" => {
                args.daemons = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--postgres" => args.postgres = value()?,
            "--bin" => args.bin = PathBuf::from(value()?),
            "-h" | "--help" => {
                println!(
                    "fleet_shared_bench [--accounts N] [--latency 100ms] [--concurrency 64] [--daemons 1,3] [--postgres URL] [--bin PATH]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// A database of its own on the server, dropped when the run ends.
struct Database {
    admin: tokio_postgres::Client,
    name: String,
    url: String,
}

impl Database {
    async fn create(server: &str, run: usize) -> anyhow::Result<Database> {
        let (admin, connection) = tokio_postgres::connect(server, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("no PostgreSQL at {server}"))?;
        tokio::spawn(connection);
        let name = format!("shiptoken_bench_{}_{run}", std::process::id());
        // Two statements: CREATE DATABASE cannot run inside the implicit transaction of a batch.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(server)?;
        url.set_path(&name);
        Ok(Database {
            admin,
            name,
            url: url.to_string(),
        })
    }

    async fn drop(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

fn config_text(dir: &Path, i: usize, db: &str, key: &Path, shiphero: &str, c: usize) -> String {
    format!(
        r#"state_dir = "{state}"
key_file = "{key}"

[log]
level = "warn"
format = "text"

[socket]
path = "{socket}"

[metrics]
listen = ""

[rotation]
concurrency = {c}

[shiphero]
api_base = "{shiphero}"
max_requests_per_second = 1000000
burst = 100000

[shippo]
callback_listen = ""

[registry]
url = "{db}"
host_name = "bench-{i}"
"#,
        state = dir.join(format!("state-{i}")).display(),
        socket = dir.join(format!("d{i}.sock")).display(),
        key = key.display(),
    )
}

/// One fleet: `daemons` daemons over a fresh database. Returns (seconds, refreshes per
/// account: min, max).
async fn run(args: &Args, daemons: usize, run: usize) -> anyhow::Result<(f64, usize, usize)> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key");
    std::fs::write(&key, MasterKey::generate().encode())?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let db = Database::create(&args.postgres, run).await?;
    let fake = FakeShipHero::start().await?;
    fake.set_latency(args.latency);
    let target = PostgresTarget::new(&db.url, None, "bench-setup").map_err(anyhow::Error::msg)?;
    let emails = {
        let registry = Registry::open_with(
            &dir.path().join("setup"),
            OpenOptions {
                key_file: Some(key.clone()),
                postgres: Some(target),
                ..OpenOptions::default()
            },
        )
        .await?;
        let now = Clock::system().now();
        let issued = Timestamp::from_millis(now.millis() - i64::try_from((20 * DAY).as_millis())?);
        common::register_fleet(&registry, &fake, args.accounts, issued).await?
    };
    let before = fake.total_requests();

    let started = Instant::now();
    let mut children = Vec::new();
    for i in 0..daemons {
        let config = dir.path().join(format!("d{i}.toml"));
        std::fs::write(
            &config,
            config_text(
                dir.path(),
                i,
                &db.url,
                &key,
                &fake.base_url(),
                args.concurrency,
            ),
        )?;
        let log = std::fs::File::create(dir.path().join(format!("d{i}.log")))?;
        children.push(
            tokio::process::Command::new(&args.bin)
                .args(["serve", "--config"])
                .arg(&config)
                .env_remove("NOTIFY_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    // Every account refreshed and probed: two calls each, at the simulated ShipHero.
    let all = before + 2 * args.accounts;
    while fake.total_requests() < all {
        for child in &mut children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a daemon exited with {status}; see its log in {}",
                    dir.path().display()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64() + args.latency.as_secs_f64();
    // A second refresh, were there one, would come within the next sweeps: wait two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts: Vec<usize> = emails.iter().map(|e| fake.refresh_count(e)).collect();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    for mut child in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    db.drop().await;
    Ok((elapsed, min, max))
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
    println!(
        "| daemons | accounts | latency | concurrency each | ideal | all refreshed and probed | ratio | refreshes per account |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut wrong = false;
    for (i, &daemons) in args.daemons.iter().enumerate() {
        let (secs, min, max) = run(&args, daemons, i).await?;
        let ideal = args.accounts as f64 * 2.0 * args.latency.as_secs_f64()
            / (args.concurrency * daemons) as f64;
        println!(
            "| {daemons} | {} | {} ms | {} | {ideal:.1} s | {secs:.1} s | {:.2}x | {} |",
            args.accounts,
            args.latency.as_millis(),
            args.concurrency,
            secs / ideal,
            if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            },
        );
        wrong |= min != 1 || max != 1;
    }
    if wrong {
        bail!("some account was refreshed other than exactly once");
    }
    Ok(())
}
