//! The HTTP plumbing every provider's calls share: one client per provider (TLS on ring, no
//! redirects), sending a request with its metrics, reading the answer bounded and with the
//! secrets sent scrubbed from it, and the small readers (`Retry-After`, excerpts) judging needs.

use std::time::{Duration, Instant};

use super::Verdict;
use crate::metrics::Metrics;
use crate::names::Provider;
use crate::secret::Secret;

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

/// Reads a `Retry-After` header in either of its forms (RFC 9110 10.2.3): seconds, or an
/// HTTP date. A date is read against the answer's own `Date` header, so the wait does not
/// depend on how far our clock is from the server's; without one, against the system clock.
/// A date already past means no wait.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    };
    let at = unix(httpdate::parse_http_date(value).ok()?)?;
    let now = headers
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(unix)
        .or_else(|| u64::try_from(crate::clock::Clock::system_now().secs()).ok())?;
    Some(Duration::from_secs(at.saturating_sub(now)))
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
    use super::{excerpt, retry_after};
    use std::time::Duration;

    fn headers(pairs: &[(&'static str, &str)]) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date_against_the_answers_own_date() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "120")])),
            Some(Duration::from_secs(120))
        );
        let dated = headers(&[
            ("retry-after", "Wed, 21 Oct 2026 07:30:00 GMT"),
            ("date", "Wed, 21 Oct 2026 07:28:00 GMT"),
        ]);
        assert_eq!(retry_after(&dated), Some(Duration::from_secs(120)));
        let past = headers(&[
            ("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT"),
            ("date", "Wed, 21 Oct 2026 07:30:00 GMT"),
        ]);
        assert_eq!(retry_after(&past), Some(Duration::ZERO));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[])), None);
    }

    #[test]
    fn an_excerpt_is_one_line_without_control_characters_and_at_most_200_characters() {
        assert_eq!(excerpt("a\n\tb\x1b[31m c\r\n"), "a b [31m c");
        let long = "x".repeat(300);
        assert_eq!(excerpt(&long).chars().count(), 201);
    }
}
