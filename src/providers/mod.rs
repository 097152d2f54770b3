//! Calls to the providers' HTTP APIs, and what each answer proves.
//!
//! Each provider module sends its requests and reads the answer's shape; [`evidence`] holds
//! the one table that says what each shape proves, and the rotation engine decides what a
//! [`Verdict`] does to an account. The engine sees providers only through [`Upstream`].

pub mod evidence;
pub mod shiphero;
pub mod shippo;

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::metrics::{CheckResult, Metrics};
use crate::names::Provider;
use crate::secret::Secret;

/// What one upstream answer proves about an account.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The token works for its account.
    Pass {
        /// The provider's id of the account the token acts for, when the answer names one.
        identity: Option<String>,
        /// A detail worth keeping in the history (ShipHero's `request_id`).
        note: Option<String>,
    },
    /// The provider refused the credential, in a documented way: evidence.
    Refused(String),
    /// The provider's own format, in a way no document covers (null account data, an unknown
    /// error code). `signature` identifies the answer so repetitions can be recognised.
    Undocumented {
        /// A short, stable form of the answer (e.g. `null account data`, `code 12`).
        signature: String,
        /// What was answered.
        message: String,
    },
    /// The probe is wrong for this token: a missing scope, a query the schema rejects.
    Misconfigured(String),
    /// The provider asked us to slow down; wait this long.
    Throttled {
        /// How long the provider said to wait.
        wait: Duration,
        /// What it said.
        message: String,
    },
    /// Says nothing about the account: a proxy page, a timeout, a server error.
    Inconclusive(String),
}

impl Verdict {
    /// The `result` label the metrics count this verdict under.
    pub fn metric_result(&self) -> CheckResult {
        match self {
            Verdict::Pass { .. } => CheckResult::Ok,
            Verdict::Refused(_) => CheckResult::Rejected,
            Verdict::Undocumented { .. } => CheckResult::Undocumented,
            Verdict::Misconfigured(_) => CheckResult::Misconfigured,
            Verdict::Throttled { .. } => CheckResult::Throttled,
            Verdict::Inconclusive(_) => CheckResult::Failed,
        }
    }

    /// The human-readable message, as stored in `last_error`.
    pub fn message(&self) -> &str {
        match self {
            Verdict::Pass { .. } => "the token works",
            Verdict::Refused(m) | Verdict::Misconfigured(m) | Verdict::Inconclusive(m) => m,
            Verdict::Undocumented { message, .. } | Verdict::Throttled { message, .. } => message,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// A token a provider issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access token.
    pub access_token: Secret,
    /// Its lifetime; `None` for tokens that never expire.
    pub lifetime: Option<Duration>,
}

/// The one view the rotation engine has of a provider.
pub trait Upstream: Send + Sync {
    /// Which provider this is.
    fn provider(&self) -> Provider;

    /// Whether tokens are renewed from a stored refresh credential (ShipHero); a provider
    /// without renewal only has its tokens probed (Shippo).
    fn renews(&self) -> bool;

    /// Gets a new access token from the refresh credential. Never a `Pass` in the error.
    fn renew<'a>(&'a self, refresh: &'a Secret) -> BoxFuture<'a, Result<Issued, Verdict>>;

    /// Proves the token works with a real API call.
    fn probe<'a>(&'a self, token: &'a Secret) -> BoxFuture<'a, Verdict>;
}

/// Every provider, each behind the one trait the rest of the daemon knows, indexed by
/// [`Provider`]: the registration point of providers, one line each in [`Providers::get`].
pub struct Providers {
    shiphero: shiphero::ShipHero,
    shippo: shippo::Shippo,
}

impl Providers {
    /// Builds each provider's client from its section of the configuration; each has its own
    /// connection pool and timeout.
    pub fn new(config: &crate::config::Config, metrics: &Metrics) -> Providers {
        Providers {
            shiphero: shiphero::ShipHero::new(
                http_client(config.shiphero.timeout),
                &config.shiphero.api_base,
                metrics.clone(),
            ),
            shippo: shippo::Shippo::new(
                http_client(config.shippo.timeout),
                &config.shippo.api_base,
                &config.shippo.oauth_base,
                &config.shippo.api_version,
                metrics.clone(),
            ),
        }
    }

    /// Builds the table from providers made elsewhere (tests that point them at nowhere).
    pub fn from_parts(shiphero: shiphero::ShipHero, shippo: shippo::Shippo) -> Providers {
        Providers { shiphero, shippo }
    }

    /// The provider's implementation.
    pub fn get(&self, provider: Provider) -> &dyn Upstream {
        match provider {
            Provider::ShipHero => &self.shiphero,
            Provider::Shippo => &self.shippo,
        }
    }

    /// Shippo's client, which the OAuth flow also uses for its code exchange.
    pub fn shippo(&self) -> &shippo::Shippo {
        &self.shippo
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
) -> Result<Answer, Verdict> {
    let started = Instant::now();
    let result = request.send().await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            let code = if e.is_timeout() { "timeout" } else { "error" };
            metrics.upstream(provider, endpoint, code, started.elapsed());
            return Err(Verdict::Inconclusive(describe_transport_error(
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
                return Err(Verdict::Inconclusive(describe_transport_error(
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
    // Only the error chain, never the URL: reqwest's Display of the error itself includes it.
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
/// Control characters become spaces, so nothing from outside can forge a log line or a
/// terminal escape; also used for text from the OAuth callback's query string.
pub(crate) fn excerpt(body: &str) -> String {
    let one_line: String = body
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
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

/// A `reqwest` client builder with TLS on ring, rustls' provider that the PostgreSQL
/// registry's TLS already uses. reqwest is built without its default provider (aws-lc), which
/// was 1.4 MB of code and a start-up constructor in every process, `get` included
/// (docs/socket.md); reqwest then takes the process-wide default, installed here first.
pub fn client_builder() -> reqwest::ClientBuilder {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err only when a default is already installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A `reqwest` client with the defaults (see [`client_builder`]).
pub fn plain_client() -> reqwest::Client {
    client_builder()
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

/// A GET with a [`plain_client`], as `reqwest::get` would do with reqwest's own default.
pub async fn http_get<U: reqwest::IntoUrl>(url: U) -> reqwest::Result<reqwest::Response> {
    plain_client().get(url).send().await
}

/// Builds the HTTP client used for one provider.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    client_builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("shiptoken/", env!("CARGO_PKG_VERSION")))
        // Redirects on token endpoints are never legitimate; following one could send a
        // credential somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|_| plain_client())
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn an_excerpt_is_one_line_without_control_characters_and_at_most_200_characters() {
        assert_eq!(excerpt("a\n\tb\x1b[31m c\r\n"), "a b [31m c");
        let long = "x".repeat(300);
        assert_eq!(excerpt(&long).chars().count(), 201);
    }
}
