//! The metrics endpoint end to end: the real binary in dev mode is scraped like Prometheus
//! would; the account series are there, a suspended account shows as suspended, no token ever
//! appears in the exposition, and a removed account's series disappear.

// The helpers below are test code too: a failed step should panic with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shiptoken");

/// `shiptoken serve --dev`, stopped (SIGTERM, so it removes its temporary state) on drop.
struct DevDaemon {
    child: Child,
    socket: String,
    metrics: String,
}

impl DevDaemon {
    fn start() -> DevDaemon {
        let mut child = Command::new(BIN)
            .args(["serve", "--dev"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The instructions are printed once the daemon is ready; read until the metrics line.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut socket, mut metrics) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("dev mode did not print its metrics URL within 60 s");
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "--socket") {
                socket.get_or_insert_with(|| words[i + 1].to_string());
            }
            if let Some(url) = words.iter().find(|w| w.ends_with("/metrics")) {
                metrics = Some(url.to_string());
            }
        }
        DevDaemon {
            child,
            socket: socket.expect("dev mode printed no socket path"),
            metrics: metrics.unwrap(),
        }
    }

    async fn scrape(&self) -> String {
        let resp = shiptoken::providers::http_get(&self.metrics).await.unwrap();
        assert_eq!(resp.status(), 200);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        resp.text().await.unwrap()
    }

    /// Scrapes until `check` holds, for at most 60 s.
    async fn scrape_until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let body = self.scrape().await;
            if check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for DevDaemon {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to the child we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sample lines (not comments) of `metric` whose labels include every `labels` pair.
fn samples<'a>(body: &'a str, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect()
}

fn value(body: &str, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    match samples(body, metric, labels).as_slice() {
        [one] => one.rsplit(' ').next()?.parse().ok(),
        [] => None,
        many => panic!("{metric} {labels:?} matches several series: {many:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_series_follow_the_registry_and_never_carry_a_token() {
    let d = DevDaemon::start();
    let suspended = [("account", "demo-suspended"), ("status", "suspended")];
    let body = d
        .scrape_until("demo-suspended to be flagged suspended", |b| {
            value(b, "shiptoken_account_status", &suspended) == Some(1.0)
        })
        .await;

    // Every account has one series per status, exactly one of them 1.
    for (provider, account) in [
        ("shiphero", "demo-active"),
        ("shiphero", "demo-suspended"),
        ("shippo", "demo-shippo"),
    ] {
        let series = samples(
            &body,
            "shiptoken_account_status",
            &[("provider", provider), ("account", account)],
        );
        assert_eq!(series.len(), 5, "{account}: {series:?}");
        assert_eq!(
            series.iter().filter(|l| l.ends_with(" 1")).count(),
            1,
            "{account}: {series:?}"
        );
    }
    let active = [("account", "demo-active"), ("status", "active")];
    assert_eq!(value(&body, "shiptoken_account_status", &active), Some(1.0));
    let expiry = value(
        &body,
        "shiptoken_token_expiry_timestamp_seconds",
        &[("account", "demo-active")],
    )
    .expect("no expiry for demo-active");
    // The daemon's own clock, read from the same scrape.
    let now = value(&body, "shiptoken_last_sweep_timestamp_seconds", &[]).expect("no last sweep");
    assert!(
        expiry > now - 5.0 && expiry <= now + 61.0,
        "dev tokens live 60 s: expiry {expiry}, last sweep {now}"
    );
    assert!(
        value(
            &body,
            "shiptoken_rotations_total",
            &[("provider", "shiphero"), ("result", "ok")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(
        !samples(
            &body,
            "shiptoken_upstream_request_duration_seconds_bucket",
            &[]
        )
        .is_empty()
    );
    assert!(!samples(&body, "shiptoken_build_info", &[]).is_empty());
    assert!(!samples(&body, "process_resident_memory_bytes", &[]).is_empty());

    // The served token never appears in the exposition.
    let got = d.cli(&["get", "shiphero/demo-active"]);
    assert!(got.status.success(), "{got:?}");
    let token = String::from_utf8(got.stdout).unwrap().trim().to_string();
    assert!(token.len() > 20, "{token}");
    // A socket request is counted by route template, never by the raw path.
    let body = d.scrape().await;
    assert!(!body.contains(&token), "a token leaked into /metrics");
    assert!(
        !samples(
            &body,
            "shiptoken_socket_requests_total",
            &[
                ("route", "/v1/tokens/{provider}/{account}"),
                ("code", "200")
            ]
        )
        .is_empty(),
        "socket request not counted by route template:\n{body}"
    );
    assert!(!body.contains("route=\"/v1/tokens/shiphero/demo-active\""));

    // A removed account's series disappear at the next scrape; the others stay.
    let out = d.cli(&["accounts", "remove", "shiphero/demo-active"]);
    assert!(out.status.success(), "{out:?}");
    let body = d.scrape().await;
    assert!(
        !body.contains("account=\"demo-active\""),
        "series of a removed account remain:\n{body}"
    );
    assert_eq!(
        value(&body, "shiptoken_account_status", &suspended),
        Some(1.0)
    );
    assert_eq!(
        samples(
            &body,
            "shiptoken_account_status",
            &[("account", "demo-shippo")]
        )
        .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_ok_while_the_scheduler_runs() {
    let d = DevDaemon::start();
    let url = d.metrics.replace("/metrics", "/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = shiptoken::providers::http_get(&url).await.unwrap();
        if resp.status() == 200 {
            assert_eq!(resp.text().await.unwrap(), "ok\n");
            break;
        }
        assert!(Instant::now() < deadline, "healthz: {}", resp.status());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
