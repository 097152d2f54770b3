//! Whole-process time of `shiptoken get`, the command scripts run in a loop, and, when a
//! running pizauth is given, of `pizauth show` side by side: both print one account's access
//! token from a daemon over a Unix socket, so the comparison is start-up, one request and
//! exit against the same on another design.
//!
//! ```text
//! cargo build --release --bin shiptoken && cargo build --release --example get_bench
//! target/release/examples/get_bench [--pizauth PATH [--pizauth-account NAME]]
//! ```
//!
//! Options: `--runs N` (per program, default 1000; the programs alternate run by run so background
//! load hits both alike), `--daemon PATH` (default: `shiptoken` beside this example's
//! directory, i.e. `target/release/shiptoken`), `--pizauth PATH` (or `PIZAUTH=PATH`): a pizauth
//! binary whose server is already running and holds a token for `--pizauth-account` (or
//! `PIZAUTH_ACCOUNT`, default `bench`); README "Performance" says how one was set up. Exits 1
//! when `get`'s median is above 1.0x `pizauth show`'s (issue 32: ahead of pizauth in every run,
//! aiming at 0.9x, which it reports), or when either command fails; without
//! pizauth the comparison is reported as skipped, never as passed.
//!
//! `--baseline PATH`: another `shiptoken` build (e.g. one of the commit before a change, copied
//! out of `target/release`) whose `get` runs against the same daemon, alternating run by run
//! with this one's, and is reported beside it: how a change to the client's start-up moves its
//! time and page faults under the same load. It only reports; the exit code stays pizauth's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `get`'s median may be at most this fraction of `pizauth show`'s: ahead of it (issue 32).
const TARGET: f64 = 1.0;

/// What issue 32 aims at below [`TARGET`], reported beside it.
const AIM: f64 = 0.9;

/// One program to time: what to run and the token it must print.
struct Target {
    name: &'static str,
    command: Vec<String>,
    times: Vec<Duration>,
    faults: Vec<i64>,
}

fn main() {
    // `exit` runs no destructors: the daemon is stopped inside `run`, before it.
    std::process::exit(run());
}

fn run() -> i32 {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let exe = std::env::current_exe().unwrap();
    let runs: usize = value("--runs").map_or(1000, |v| v.parse().unwrap());
    let daemon = value("--daemon").map_or_else(
        || exe.parent().unwrap().parent().unwrap().join("shiptoken"),
        PathBuf::from,
    );
    let pizauth = value("--pizauth").or_else(|| std::env::var("PIZAUTH").ok());
    let baseline = value("--baseline");
    let pizauth_account = value("--pizauth-account")
        .or_else(|| std::env::var("PIZAUTH_ACCOUNT").ok())
        .unwrap_or_else(|| "bench".into());
    assert!(
        daemon.exists(),
        "{} not found: cargo build --release first, or pass --daemon",
        daemon.display()
    );

    // The simulated ShipHero runs on this runtime's threads for the whole run, so the daemon
    // can refresh if it wants to; the timing itself is plain blocking code.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fake = runtime
        .block_on(shiptoken::sim::FakeShipHero::start())
        .unwrap();
    let (started, socket, _) =
        runtime.block_on(common::daemon_with_one_account(&daemon, dir.path(), &fake));

    let mut targets = vec![Target {
        name: "shiptoken get",
        command: vec![
            daemon.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "get".into(),
            "shiphero/bench".into(),
        ],
        times: Vec::new(),
        faults: Vec::new(),
    }];
    if let Some(path) = &baseline {
        let mut command = targets[0].command.clone();
        command[0] = path.clone();
        targets.push(Target {
            name: "baseline get",
            command,
            times: Vec::new(),
            faults: Vec::new(),
        });
    }
    if let Some(path) = &pizauth {
        targets.push(Target {
            name: "pizauth show",
            command: vec![path.clone(), "show".into(), pizauth_account.clone()],
            times: Vec::new(),
            faults: Vec::new(),
        });
    }
    for t in &targets {
        let out = Command::new(&t.command[0])
            .args(&t.command[1..])
            .output()
            .unwrap();
        let token = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !token.trim().is_empty(),
            "`{}` printed no token (exit {:?}): {}",
            t.command.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for _ in 0..runs / 10 {
        for t in &targets {
            run_once(&t.command);
        }
    }
    for _ in 0..runs {
        for t in targets.iter_mut() {
            let (time, faults) = run_once(&t.command);
            t.times.push(time);
            t.faults.push(faults);
        }
    }
    drop(started);
    drop(fake);
    drop(runtime);

    println!(
        "\n{runs} runs each, alternating, after {} warm-up runs",
        runs / 10
    );
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>13}",
        "program", "median", "p10", "p90", "page faults"
    );
    let mut medians = Vec::new();
    for t in targets.iter_mut() {
        t.times.sort();
        t.faults.sort();
        let median = common::percentile(&t.times, 0.5);
        println!(
            "{:<15} {:>7.0} us {:>7.0} us {:>7.0} us {:>13}",
            t.name,
            micros(median),
            micros(common::percentile(&t.times, 0.1)),
            micros(common::percentile(&t.times, 0.9)),
            t.faults[t.faults.len() / 2]
        );
        medians.push(median);
    }
    for t in &targets {
        println!("  {}: {}", t.name, t.command.join(" "));
    }
    if baseline.is_some() {
        println!(
            "\n`get` median {:.2}x the baseline's; page faults {} against {}",
            medians[0].as_secs_f64() / medians[1].as_secs_f64(),
            targets[0].faults[targets[0].faults.len() / 2],
            targets[1].faults[targets[1].faults.len() / 2]
        );
    }
    // pizauth, when given, is the last program timed.
    let (get, Some(show)) = (medians[0], pizauth.as_ref().and(medians.last().copied())) else {
        println!(
            "\n`get` vs `pizauth show` (target <= {TARGET}x): skipped, no pizauth given \
             (--pizauth PATH or PIZAUTH=PATH)"
        );
        return 0;
    };
    let ratio = get.as_secs_f64() / show.as_secs_f64();
    let ok = ratio <= TARGET;
    println!(
        "\n`get` median {ratio:.2}x `pizauth show`'s (target <= {TARGET}x): {} (aim {AIM}x: {})",
        if ok { "PASS" } else { "FAIL" },
        if ratio <= AIM {
            "reached"
        } else {
            "not reached"
        }
    );
    i32::from(!ok)
}

/// Runs `command` once with its output discarded: the wall time from spawn to exit, and the
/// child's minor page faults.
fn run_once(command: &[String]) -> (Duration, i64) {
    let before = children_faults();
    let started = Instant::now();
    let status = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(status.success(), "`{}` failed: {status}", command.join(" "));
    (elapsed, children_faults() - before)
}

/// Minor page faults of every waited-for child so far.
fn children_faults() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_minflt
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
