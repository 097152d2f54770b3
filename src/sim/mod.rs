//! The plumbing every simulated provider shares (a loopback server with a lifecycle, canned
//! answers, a clock of its own, form encoding), for integration tests and `serve --dev`.
//!
//! Each fake is a small axum server on a loopback port that behaves like the real service as
//! described in `UPSTREAM.md`, including every UNCONFIRMED variant, chosen per account by
//! switches. The fakes themselves live with their providers (`providers/<name>/sim/`); they are
//! re-exported here so tests name them in one place.

pub mod canned;
pub mod jwt;

pub use crate::providers::shiphero::sim::{
    self as shiphero, AuthFailureShape, DeveloperUser, FakeShipHero, RefreshRejectShape,
    ShipHeroMode,
};
pub use crate::providers::shippo::sim::{
    self as shippo, ExchangeMode, FakeShippo, ShippoMode, SuspendedShape, UserDecision,
};
pub use canned::{Canned, Route};

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// The `Server` header of every answer from a fake: a client pointed at one by mistake can
/// tell. Only the simulators carry this string, so the .deb check greps the packaged binary
/// for it to prove the simulators are not in it (.ci/checks/deb-package.sh).
pub const SERVER_HEADER: &str = "shiptoken-simulated-upstream (not a real ShipHero or Shippo)";

/// Locks a mutex, tolerating poison: a panicking test thread must not take the fake down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` random bytes as lowercase hex, for tokens, codes and request ids.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds on a fake's clock: real time plus the offset the tests advanced it by.
///
/// The fakes stand for another party, with a clock of their own; only they and
/// `crate::clock` read the system time.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_now(offset: Duration) -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    real.saturating_add(offset.as_secs())
}

/// Stops a fake's server when the last handle to it goes away (or on an explicit shutdown).
///
/// Handlers only hold the receiving side, so they never keep the server alive by themselves.
pub(crate) struct Lifecycle {
    /// Flips to `true` once; the server and any hanging or sleeping handler watch it.
    shutdown: watch::Sender<bool>,
}

impl Lifecycle {
    /// A fresh lifecycle and the receiver handlers use to notice shutdown.
    pub(crate) fn new() -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (Self { shutdown: tx }, rx)
    }

    /// Asks the server to stop accepting and ends hanging handlers; idempotent.
    pub(crate) fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `addr` (loopback only) and serves `router` in a spawned task until `shutdown` flips.
///
/// Returns the bound address, so callers may pass port 0.
pub(crate) async fn spawn_server(
    addr: SocketAddr,
    router: Router,
    shutdown: watch::Receiver<bool>,
) -> io::Result<SocketAddr> {
    // The fakes hand out tokens to anyone who asks; never expose them beyond this machine.
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fake upstream servers bind loopback addresses only, not {addr}"),
        ));
    }
    let router = router.layer(axum::middleware::map_response(
        |mut response: axum::response::Response| async move {
            response.headers_mut().insert(
                axum::http::header::SERVER,
                axum::http::HeaderValue::from_static(SERVER_HEADER),
            );
            response
        },
    ));
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(until_shutdown(shutdown));
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "fake upstream server stopped with an error");
        }
    });
    Ok(local)
}

/// Resolves once shutdown is signalled (or the signal's sender is gone).
pub(crate) async fn until_shutdown(mut shutdown: watch::Receiver<bool>) {
    // An Err means the sender was dropped, which is a shutdown too.
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

/// Sleeps for `d`, cut short by shutdown so slow answers never hold a stopping server.
pub(crate) async fn sleep_or_shutdown(shutdown: &watch::Receiver<bool>, d: Duration) {
    if d.is_zero() {
        return;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = until_shutdown(shutdown.clone()) => {}
    }
}

/// Waits until `cond` holds, re-checking each time `events` is notified.
///
/// The notification is armed before the check, so an event between check and wait is not lost.
pub(crate) async fn wait_until(events: &Notify, cond: impl Fn() -> bool) {
    loop {
        let notified = events.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if cond() {
            return;
        }
        notified.await;
    }
}

/// Parses an `application/x-www-form-urlencoded` string; later duplicates win.
pub(crate) fn form_decode(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `+` and `%XX` escapes; a malformed escape is kept literally.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i + 1..i + 3) {
            // Checked by hand: from_str_radix would also accept a sign such as "%+1".
            Some(hex) if bytes[i] == b'%' && hex.iter().all(u8::is_ascii_hexdigit) => {
                std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            }
            _ => None,
        };
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes one form value: unreserved characters stay, space becomes `+`, the rest `%XX`.
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip() {
        let encoded = format!("a={}&b={}", form_encode("x y&z=1/é"), form_encode("*"));
        let decoded = form_decode(&encoded);
        assert_eq!(decoded.get("a").map(String::as_str), Some("x y&z=1/é"));
        assert_eq!(decoded.get("b").map(String::as_str), Some("*"));
        assert_eq!(form_decode("k=%2").get("k").map(String::as_str), Some("%2"));
        assert_eq!(
            form_decode("flag").get("flag").map(String::as_str),
            Some("")
        );
    }

    #[tokio::test]
    async fn every_answer_names_the_simulator() {
        let (lifecycle, shutdown) = Lifecycle::new();
        let router = Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let addr = spawn_server("127.0.0.1:0".parse().unwrap(), router, shutdown)
            .await
            .unwrap();
        for path in ["/", "/no-such-route"] {
            let answer = crate::providers::http_get(format!("http://{addr}{path}"))
                .await
                .unwrap();
            assert_eq!(answer.headers()["server"], SERVER_HEADER, "{path}");
        }
        lifecycle.shutdown();
    }

    #[test]
    fn clock_offset_moves_time() {
        let base = unix_now(Duration::ZERO);
        assert!(unix_now(Duration::from_secs(3600)) >= base + 3600);
    }
}
