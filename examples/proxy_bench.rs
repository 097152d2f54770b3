//! Load tool for the proxy (issue 30): what `/v1/proxy/...` adds over calling the same
//! upstream directly with the token, on one keep-alive connection (median and p99) and on 16
//! (throughput), and the token-read latency while those 16 proxy connections are busy.
//!
//! The upstream is the simulated ShipHero in this process (`POST /graphql`); the direct
//! client sends the account's token itself over TCP, the proxied one sends nothing secret
//! over the daemon's Unix socket. Both hit the same fake, so the difference is the proxy's.
//!
//! ```text
//! cargo build --release && cargo run --release --example proxy_bench
//! ```
//!
//! Options: `--requests N` (latency samples per round, default 5000), `--seconds S`
//! (throughput time per round, default 3), `--rounds R` (default 3; the targets alternate so
//! background load hits both alike), `--daemon PATH` (default: `target/release/shiptoken`).
//! Exits 1 when a target is missed: at most 150 us added at the median and 1 ms at p99.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const CONNECTIONS: usize = 16;
const QUERY: &str = r#"{"query": "query { user_quota { credits_remaining } }"}"#;

struct Options {
    requests: usize,
    seconds: u64,
    rounds: usize,
    daemon: PathBuf,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let exe = std::env::current_exe().unwrap();
    let options = Options {
        requests: value("--requests").map_or(5_000, |v| v.parse().unwrap()),
        seconds: value("--seconds").map_or(3, |v| v.parse().unwrap()),
        rounds: value("--rounds").map_or(3, |v| v.parse().unwrap()),
        daemon: value("--daemon").map_or_else(
            || exe.parent().unwrap().parent().unwrap().join("shiptoken"),
            PathBuf::from,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    std::process::exit(runtime.block_on(run(options)));
}

/// Where a request goes: the fake over TCP with the token, or the daemon's socket without.
#[derive(Clone)]
enum Target {
    Direct {
        addr: std::net::SocketAddr,
        token: String,
    },
    Proxy {
        socket: PathBuf,
    },
    TokenRead {
        socket: PathBuf,
    },
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: &Target) -> Sender {
    let (sender, conn) = match target {
        Target::Direct { addr, .. } => {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(c);
            return s;
        }
        Target::Proxy { socket } | Target::TokenRead { socket } => {
            let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
            hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap()
        }
    };
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender, target: &Target) {
    sender.ready().await.unwrap();
    let request = match target {
        Target::Direct { token, .. } => hyper::Request::post("/graphql")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(QUERY.as_bytes()))),
        Target::Proxy { .. } => hyper::Request::post("/v1/proxy/shiphero/bench/graphql")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(QUERY.as_bytes()))),
        Target::TokenRead { .. } => {
            hyper::Request::get("/v1/tokens/shiphero/bench").body(Full::new(Bytes::new()))
        }
    }
    .map(|mut r| {
        r.headers_mut()
            .insert("host", hyper::header::HeaderValue::from_static("localhost"));
        r
    })
    .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

async fn latency(target: &Target, n: usize) -> Vec<Duration> {
    let mut sender = connect(target).await;
    for _ in 0..n / 10 {
        one(&mut sender, target).await;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        one(&mut sender, target).await;
        out.push(started.elapsed());
    }
    out.sort();
    out
}

/// Starts `CONNECTIONS` connections sending back to back; the returned flag stops them and
/// the counter counts answers.
async fn load(
    target: &Target,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut sender = connect(target).await;
        let (done, stop, target) = (done.clone(), stop.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                one(&mut sender, &target).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    (stop, done, tasks)
}

async fn throughput(target: &Target, time: Duration) -> f64 {
    let (stop, done, tasks) = load(target).await;
    let started = Instant::now();
    tokio::time::sleep(time).await;
    let count = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count as f64 / elapsed.as_secs_f64()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn run(options: Options) -> i32 {
    let dir = tempfile::tempdir().unwrap();
    let fake = shiptoken::sim::FakeShipHero::start().await.unwrap();
    let (_daemon, socket, answer) =
        common::daemon_with_one_account(&options.daemon, dir.path(), &fake).await;
    let token = answer["access_token"].as_str().unwrap().to_string();
    let direct = Target::Direct {
        addr: fake.addr(),
        token,
    };
    let proxy = Target::Proxy {
        socket: socket.clone(),
    };
    let read = Target::TokenRead { socket };

    let (mut d_lat, mut p_lat, mut idle_reads, mut busy_reads) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut d_rps, mut p_rps) = (Vec::new(), Vec::new());
    for round in 1..=options.rounds {
        let d = latency(&direct, options.requests).await;
        let p = latency(&proxy, options.requests).await;
        let idle = latency(&read, options.requests).await;
        let dr = throughput(&direct, Duration::from_secs(options.seconds)).await;
        let pr = throughput(&proxy, Duration::from_secs(options.seconds)).await;
        // Token reads while 16 connections keep the proxy busy.
        let (stop, _, tasks) = load(&proxy).await;
        let busy = latency(&read, options.requests / 5).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        eprintln!(
            "round {round}: direct median {:.1} us p99 {:.1} us {dr:.0} req/s | proxy median {:.1} us p99 {:.1} us {pr:.0} req/s | token read {:.1} us idle, {:.1} us beside 16 proxy connections",
            micros(common::percentile(&d, 0.5)),
            micros(common::percentile(&d, 0.99)),
            micros(common::percentile(&p, 0.5)),
            micros(common::percentile(&p, 0.99)),
            micros(common::percentile(&idle, 0.5)),
            micros(common::percentile(&busy, 0.5)),
        );
        d_lat.extend(d);
        p_lat.extend(p);
        idle_reads.extend(idle);
        busy_reads.extend(busy);
        d_rps.push(dr);
        p_rps.push(pr);
    }
    for v in [&mut d_lat, &mut p_lat, &mut idle_reads, &mut busy_reads] {
        v.sort();
    }
    d_rps.sort_by(f64::total_cmp);
    p_rps.sort_by(f64::total_cmp);
    let added_median =
        micros(common::percentile(&p_lat, 0.5)) - micros(common::percentile(&d_lat, 0.5));
    let added_p99 =
        micros(common::percentile(&p_lat, 0.99)) - micros(common::percentile(&d_lat, 0.99));
    println!("\n{} rounds of {} calls", options.rounds, options.requests);
    println!(
        "direct with the token:  median {:>7.1} us  p99 {:>7.1} us  {:>7.0} req/s (16 connections)",
        micros(common::percentile(&d_lat, 0.5)),
        micros(common::percentile(&d_lat, 0.99)),
        d_rps[d_rps.len() / 2]
    );
    println!(
        "through the proxy:      median {:>7.1} us  p99 {:>7.1} us  {:>7.0} req/s (16 connections)",
        micros(common::percentile(&p_lat, 0.5)),
        micros(common::percentile(&p_lat, 0.99)),
        p_rps[p_rps.len() / 2]
    );
    println!(
        "token read median: {:.1} us idle, {:.1} us beside 16 busy proxy connections",
        micros(common::percentile(&idle_reads, 0.5)),
        micros(common::percentile(&busy_reads, 0.5))
    );
    let ok = added_median <= 150.0 && added_p99 <= 1000.0;
    println!(
        "\nthe proxy adds {added_median:.1} us at the median (target <= 150 us) and {added_p99:.1} us at p99 (target <= 1000 us): {}",
        if ok { "PASS" } else { "FAIL" }
    );
    i32::from(!ok)
}
