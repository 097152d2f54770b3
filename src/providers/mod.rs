//! Calls to the providers' HTTP APIs, and what each answer means.
//!
//! Each provider module turns raw HTTP answers into a [`Failure`] class; the rotation module
//! decides what a class does to an account. Keeping the two apart is what lets the
//! classification be tested against every answer shape UPSTREAM.md lists.

pub mod shiphero;
pub mod shippo;

use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::names::Provider;
use crate::secret::Secret;

/// Why an upstream call did not produce what was asked, classified for the state machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The provider clearly refused the credential (401/403, `invalid_grant`, an auth error).
    Rejected(String),
    /// An answer that might be a refusal or a glitch (null data without errors, an odd 4xx,
    /// a body that is not what the provider sends); confirmed before anything is flagged.
    Ambiguous(String),
    /// The provider asked us to slow down; wait this long.
    Throttled {
        /// How long the provider said to wait.
        wait: Duration,
        /// What it said.
        message: String,
    },
    /// An outage: 5xx, timeout, connection failure. Never a reason to flag an account.
    Transient(String),
}

impl Failure {
    /// A short word for metrics: rejected, failed or throttled.
    pub fn metric_result(&self) -> &'static str {
        match self {
            Failure::Rejected(_) => "rejected",
            Failure::Throttled { .. } => "throttled",
            Failure::Ambiguous(_) | Failure::Transient(_) => "failed",
        }
    }

    /// The human-readable message, as stored in `last_error`.
    pub fn message(&self) -> &str {
        match self {
            Failure::Rejected(m) | Failure::Ambiguous(m) | Failure::Transient(m) => m,
            Failure::Throttled { message, .. } => message,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// An HTTP answer read in full, with the secrets we sent scrubbed from its body.
pub(crate) struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

/// Sends a request, records its metrics, and reads the answer (bounded to 1 MiB, since a
/// probe never needs more and a misbehaving upstream must not exhaust memory).
pub(crate) async fn send(
    metrics: &Metrics,
    provider: Provider,
    endpoint: &str,
    request: reqwest::RequestBuilder,
    sent: &[&Secret],
) -> Result<Answer, Failure> {
    let started = Instant::now();
    let result = request.send().await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            let code = if e.is_timeout() { "timeout" } else { "error" };
            metrics.upstream(provider, endpoint, code, started.elapsed());
            return Err(Failure::Transient(describe_transport_error(
                provider, endpoint, &e,
            )));
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > 1 << 20 {
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                let code = if e.is_timeout() { "timeout" } else { "error" };
                metrics.upstream(provider, endpoint, code, started.elapsed());
                return Err(Failure::Transient(describe_transport_error(
                    provider, endpoint, &e,
                )));
            }
        }
    }
    metrics.upstream(provider, endpoint, status.as_str(), started.elapsed());
    let mut body = String::from_utf8_lossy(&bytes).into_owned();
    for s in sent {
        body = s.scrub(&body);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn describe_transport_error(provider: Provider, endpoint: &str, e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // reqwest's Display includes the URL, which holds no secret (tokens go in headers/bodies).
    let mut msg = format!("{provider} {endpoint} request {what}");
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Cuts an upstream body to something fit for a log line and `last_error`.
pub(crate) fn excerpt(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else {
        one_line
    }
}

/// Reads a `Retry-After` header given in seconds.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Builds the HTTP client used for one provider.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("shiptoken/", env!("CARGO_PKG_VERSION")))
        // Redirects on token endpoints are never legitimate; following one could send a
        // credential somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
