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
//! With `--writes N` it measures instead what issue 32 item 3 asks: how fast the socket's
//! writes answer while the fleet keeps rotating. The simulated ShipHero issues 30 s tokens, so
//! every account is refreshed again every 15 s (sweeps every second), and daemon 0 is asked N
//! times each for `POST /v1/accounts` (a new account, refreshed and probed), `.../rotate` and
//! `.../verify` of a fleet account, one call at a time, spread evenly over 45 s (three of the
//! fleet's rotations, whose herds come every 15 s). It exits non-zero when an
//! operation's median is over 50 ms. Those calls reach the simulator too (2, 2 and 1 calls), so
//! run it with a small `--latency`:
//!
//! ```text
//! cargo run --release --example fleet_shared_bench -- --accounts 200 --daemons 3 --latency 5ms --writes 40
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
    /// Calls of each write to time under a rotating fleet; 0 for the sweep benchmark.
    writes: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        accounts: 2_000,
        latency: Duration::from_millis(100),
        concurrency: 64,
        daemons: vec![1, 3],
        postgres: "postgres://postgres@127.0.0.1:5432/test".into(),
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/shiptoken"),
        writes: 0,
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
            "--writes" => args.writes = value()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "fleet_shared_bench [--accounts N] [--latency 100ms] [--concurrency 64] [--daemons 1,3] [--postgres URL] [--bin PATH] [--writes N]"
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

/// Daemon `i`'s configuration; `schedule` is `rotation.schedule`.
fn config_text(
    dir: &Path,
    i: usize,
    db: &str,
    key: &Path,
    shiphero: &str,
    (c, schedule): (usize, &str),
) -> String {
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
schedule = "{schedule}"

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

/// A fleet of daemons over one fresh database, every account due.
struct Fleet {
    dir: tempfile::TempDir,
    db: Database,
    fake: FakeShipHero,
    emails: Vec<String>,
    children: Vec<tokio::process::Child>,
    /// The simulator's request count when the daemons started.
    before: usize,
    started: Instant,
}

impl Fleet {
    /// Registers the accounts and starts `daemons` daemons sweeping on `schedule`.
    async fn start(
        args: &Args,
        daemons: usize,
        run: usize,
        fake: FakeShipHero,
        schedule: &str,
    ) -> anyhow::Result<Fleet> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key");
        std::fs::write(&key, MasterKey::generate().encode())?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let db = Database::create(&args.postgres, run).await?;
        let target =
            PostgresTarget::new(&db.url, None, "bench-setup").map_err(anyhow::Error::msg)?;
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
            let issued =
                Timestamp::from_millis(now.millis() - i64::try_from((20 * DAY).as_millis())?);
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
                    (args.concurrency, schedule),
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
        Ok(Fleet {
            dir,
            db,
            fake,
            emails,
            children,
            before,
            started,
        })
    }

    /// Waits until the simulator counted `calls` more requests than at the start.
    async fn wait_for_calls(&mut self, calls: usize) -> anyhow::Result<()> {
        while self.fake.total_requests() < self.before + calls {
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "a daemon exited with {status}; see its log in {}",
                        self.dir.path().display()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The socket of daemon `i`.
    fn socket(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("d{i}.sock"))
    }

    async fn stop(self) {
        for mut child in self.children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.db.drop().await;
    }
}

/// One fleet: `daemons` daemons over a fresh database. Returns (seconds, refreshes per
/// account: min, max).
async fn run(args: &Args, daemons: usize, run: usize) -> anyhow::Result<(f64, usize, usize)> {
    let fake = FakeShipHero::start().await?;
    fake.set_latency(args.latency);
    let mut fleet = Fleet::start(args, daemons, run, fake, "0 * * * * *").await?;
    // Every account refreshed and probed: two calls each, at the simulated ShipHero.
    fleet.wait_for_calls(2 * args.accounts).await?;
    let elapsed = fleet.started.elapsed().as_secs_f64() + args.latency.as_secs_f64();
    // A second refresh, were there one, would come within the next sweeps: wait two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts: Vec<usize> = fleet
        .emails
        .iter()
        .map(|e| fleet.fake.refresh_count(e))
        .collect();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    fleet.stop().await;
    Ok((elapsed, min, max))
}

/// One write's timings.
#[derive(Default)]
struct Timed {
    /// The calls that did the work.
    done: Vec<Duration>,
    /// Calls answered 409 `in_progress_elsewhere`: another daemon was on the account.
    elsewhere: usize,
}

/// `--writes`: the socket's writes on daemon 0 while `daemons` daemons keep the fleet
/// rotating every 15 s. Returns whether every median was within 50 ms.
async fn run_writes(args: &Args, daemons: usize) -> anyhow::Result<bool> {
    let fake = FakeShipHero::start().await?;
    fake.set_latency(args.latency);
    fake.set_token_lifetime(Duration::from_secs(30));
    let mut fleet = Fleet::start(args, daemons, 0, fake, "* * * * * *").await?;
    // The first sweep: every account gets a 30 s token, due again 15 s later.
    fleet.wait_for_calls(2 * args.accounts).await?;
    let socket = fleet.socket(0);
    let refreshes_from = fleet.fake.total_requests();
    let from = Instant::now();
    let gap = Duration::from_secs(45) / u32::try_from(3 * args.writes.max(1))?;
    let mut next = from + gap;
    let (mut add, mut rotate, mut verify) = (Timed::default(), Timed::default(), Timed::default());
    for i in 0..args.writes {
        let email = format!("added{i}@bench.test");
        let user = fleet.fake.add_user(&email);
        let body = serde_json::json!({
            "provider": "shiphero", "account": format!("added-{i}"), "email": email,
            "refresh_token": user.refresh_token,
        });
        let account = format!("merchant-{}", (i * 7919) % args.accounts);
        for (timed, method, path, body) in [
            (&mut add, "POST", "/v1/accounts".to_string(), Some(&body)),
            (
                &mut rotate,
                "POST",
                format!("/v1/accounts/shiphero/{account}/rotate"),
                None,
            ),
            (
                &mut verify,
                "POST",
                format!("/v1/accounts/shiphero/{account}/verify"),
                None,
            ),
        ] {
            let at = Instant::now();
            let reply = shiptoken::client::call(&socket, method, &path, body).await?;
            match reply.status {
                200 | 201 => timed.done.push(at.elapsed()),
                409 if reply.body["error"] == "in_progress_elsewhere" => timed.elsewhere += 1,
                status => bail!("{method} {path} answered {status}: {}", reply.body),
            }
            tokio::time::sleep_until(next.into()).await;
            next += gap;
        }
    }
    let seconds = from.elapsed().as_secs_f64();
    // The writes' own calls (2, 2 and 1) are not the fleet's.
    let own = 2 * add.done.len() + 2 * rotate.done.len() + verify.done.len();
    let fleet_calls = (fleet.fake.total_requests() - refreshes_from).saturating_sub(own);
    fleet.stop().await;
    println!("| operation | done | 409 elsewhere | p50 | p95 | max | its upstream calls |");
    println!("|---|---|---|---|---|---|---|");
    let latency_ms = args.latency.as_secs_f64() * 1000.0;
    let mut within = true;
    for (name, timed, calls) in [
        ("POST /v1/accounts", &add, 2.0),
        ("POST .../rotate", &rotate, 2.0),
        ("POST .../verify", &verify, 1.0),
    ] {
        let mut done = timed.done.clone();
        done.sort();
        if done.is_empty() {
            bail!(
                "{name}: no call did the work (all {} found another daemon on the account)",
                timed.elsewhere
            );
        }
        let ms = |p: f64| common::percentile(&done, p).as_secs_f64() * 1000.0;
        println!(
            "| {name} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ms |",
            done.len(),
            timed.elsewhere,
            ms(0.5),
            ms(0.95),
            ms(1.0),
            calls * latency_ms,
        );
        within &= ms(0.5) <= 50.0;
    }
    println!(
        "\n{daemons} daemons, {} accounts on 30 s tokens, {} ms upstream latency: the fleet made {:.0} upstream calls/s during the {seconds:.0} s measured (writes' own calls not counted)",
        args.accounts,
        args.latency.as_millis(),
        fleet_calls as f64 / seconds,
    );
    Ok(within)
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
    if args.writes > 0 {
        let daemons = args.daemons.last().copied().unwrap_or(3);
        if !run_writes(&args, daemons).await? {
            bail!("an operation's median is over 50 ms (issue 32 item 3)");
        }
        return Ok(());
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
