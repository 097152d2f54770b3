//! Bad input on the socket: garbage, oversized and half-sent requests, hundreds of idle
//! connections. Every refusal of a request that parses as HTTP is a 4xx JSON error, the daemon
//! never panics, and its memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

async fn daemon() -> (tempfile::TempDir, FakeShipHero, Daemon) {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    (dir, fake, d)
}

/// Sends raw bytes on a fresh connection and reads until the daemon closes it (or `DEADLINE`).
async fn raw(d: &Daemon, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(&d.socket).await.unwrap();
    // The daemon may answer and close before reading everything we send.
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and JSON body of the first answer in `text`.
fn answer(text: &str) -> (u16, Option<Value>) {
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok());
    (status, body)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_json_errors() {
    let (_dir, _fake, d) = daemon().await;
    let close = "Host: x\r\nConnection: close\r\n";
    let big = "x".repeat(70 * 1024);
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("GET /v1/tokens/shiphero/..%2F..%2Fetc HTTP/1.1\r\n{close}\r\n"),
            400,
            "invalid_account",
        ),
        (
            format!("GET /v1/tokens/shiphero/../../etc/passwd HTTP/1.1\r\n{close}\r\n"),
            404,
            "not_found",
        ),
        (
            format!("GET /v1/tokens/shiphero/%FF%FE HTTP/1.1\r\n{close}\r\n"),
            400,
            "bad_request",
        ),
        (
            format!("GET /v1/tokens/shiphero/ACME HTTP/1.1\r\n{close}\r\n"),
            400,
            "invalid_account",
        ),
        (
            format!("GET /v1/tokens/ups/acme HTTP/1.1\r\n{close}\r\n"),
            404,
            "unknown_provider",
        ),
        (
            format!(
                "GET /v1/tokens/shiphero/{} HTTP/1.1\r\n{close}\r\n",
                "a".repeat(65)
            ),
            400,
            "invalid_account",
        ),
        (
            format!("BREW /v1/health HTTP/1.1\r\n{close}\r\n"),
            405,
            "method_not_allowed",
        ),
        (
            format!("DELETE /v1/tokens/shiphero/acme HTTP/1.1\r\n{close}\r\n"),
            405,
            "method_not_allowed",
        ),
        (
            format!("GET /etc/passwd HTTP/1.1\r\n{close}\r\n"),
            404,
            "not_found",
        ),
        (
            format!("POST /v1/accounts HTTP/1.1\r\n{close}Content-Length: 9\r\n\r\n{{\"a\": tru"),
            400,
            "bad_request",
        ),
        (
            format!("POST /v1/accounts HTTP/1.1\r\n{close}Content-Length: 2\r\n\r\n[]"),
            400,
            "bad_request",
        ),
        (
            format!("POST /v1/accounts HTTP/1.1\r\n{close}Content-Length: 0\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            format!(
                "POST /v1/accounts HTTP/1.1\r\n{close}Content-Length: 30\r\n\r\n{{\"provider\":\"shippo\",\"x\":1}}   "
            ),
            400,
            "bad_request",
        ),
        (
            format!(
                "POST /v1/accounts HTTP/1.1\r\n{close}Content-Length: {}\r\n\r\n{big}",
                big.len()
            ),
            413,
            "body_too_large",
        ),
        (
            format!(
                "POST /v1/shippo/connect HTTP/1.1\r\n{close}Transfer-Encoding: chunked\r\n\r\n11000\r\n{}\r\n0\r\n\r\n",
                "y".repeat(0x11000)
            ),
            413,
            "body_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let text = raw(&d, request.as_bytes()).await;
        let (got, body) = answer(&text);
        let line = request
            .lines()
            .next()
            .unwrap()
            .chars()
            .take(80)
            .collect::<String>();
        assert_eq!(got, status, "{line}: {text}");
        let body = body.unwrap_or_else(|| panic!("{line}: not JSON: {text}"));
        assert_eq!(body["error"], code, "{line}: {body}");
        assert!(body["message"].is_string(), "{line}: {body}");
    }

    // What is not HTTP at all never reaches the router: hyper answers a bare 4xx and closes.
    let oversized_head = format!(
        "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    for (request, status) in [
        (b"\x00\x01\x02garbage\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 400),
        (oversized_head.into_bytes(), 431),
    ] {
        let (got, _) = answer(&raw(&d, &request).await);
        assert_eq!(got, status);
    }

    // Still healthy, and nothing panicked.
    let (status, _) = d.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200);
    assert!(!d.logs().contains("panicked"), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_time_out_and_memory_stays_bounded() {
    let (_dir, _fake, d) = daemon().await;
    let (status, _) = d.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200);
    let before = rss_kib(d.pid());

    // 600 connections, more than the 512 the daemon serves at once: half send nothing, half
    // a request head that never ends.
    let mut idle = Vec::new();
    for i in 0..600 {
        let mut s = UnixStream::connect(&d.socket).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        idle.push(s);
    }
    // A fresh client is served once the idle ones time out (header_read_timeout, 10 s).
    let fresh = tokio::time::timeout(
        DEADLINE,
        shiptoken::client::call(&d.socket, "GET", "/v1/health", None),
    )
    .await
    .expect("a fresh client was never served")
    .unwrap();
    assert_eq!(fresh.status, 200);
    // The daemon closed the idle connections itself.
    let mut closed = 0;
    for s in &mut idle {
        let mut buf = [0u8; 512];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, idle.len());
    let after = rss_kib(d.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(!d.logs().contains("panicked"));
}
