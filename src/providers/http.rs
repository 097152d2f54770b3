//! The HTTP plumbing every provider's calls share: one client per provider (TLS on ring, no
//! redirects), sending a request with its metrics, reading the answer bounded and with the
//! secrets sent scrubbed from it, and the small readers (`Retry-After`, excerpts) judging needs.

use std::time::{Duration, Instant};

use super::Verdict;
use super::evidence::Body;
use crate::metrics::Metrics;
use crate::names::Provider;
use crate::secret::{Secret, redact_token_shaped};

/// An HTTP answer read in full, with the secrets we sent scrubbed from its body.
pub(crate) struct Answer {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    /// The secrets the request carried, scrubbed again (in every encoding) from any text
    /// taken from the body: see [`Answer::excerpt`].
    pub sent: Vec<Secret>,
}

impl Answer {
    /// A short excerpt of `text` (the body or a field of it) fit for `last_error` and the log:
    /// [`excerpt`] with every encoding of the secrets the request carried removed too.
    /// Never used on the answers of the refresh and code-exchange endpoints, which may carry
    /// a token in any form: their text is never copied ([`summary`]).
    pub fn excerpt(&self, text: &str) -> String {
        let sent: Vec<&Secret> = self.sent.iter().collect();
        scrubbed_excerpt(text, &sent)
    }
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
        sent: sent.iter().map(|s| (*s).clone()).collect(),
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

/// Cuts untrusted text (an upstream body, a query string) to a short excerpt fit for a log
/// line and `last_error`, keeping nothing token-shaped ([`scrubbed_excerpt`] without secrets).
pub(crate) fn excerpt(body: &str) -> String {
    scrubbed_excerpt(body, &[])
}

/// How many characters of untrusted text an excerpt keeps.
const EXCERPT_CHARS: usize = 200;

/// The excerpt: a JSON body is first re-serialized (so `\u0061`-style escapes are undone)
/// and `%XX` escapes decoded, so that an encoded echo shows in plain form; then every
/// encoding of `secrets` and everything token-shaped ([`redact_token_shaped`]) is removed
/// (issue 28 item 5: an exact match let URL-encoded and base64 echoes through). Control
/// characters become spaces, so nothing from outside can forge a log line or a terminal
/// escape; at most [`EXCERPT_CHARS`] characters are kept.
pub(crate) fn scrubbed_excerpt(body: &str, secrets: &[&Secret]) -> String {
    let canonical = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string(&v).ok())
        .unwrap_or_else(|| body.to_string());
    let mut text = percent_decoded(&canonical);
    for s in secrets {
        text = s.scrub(&text);
    }
    let text = redact_token_shaped(&text);
    let one_line: String = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if one_line.chars().count() > EXCERPT_CHARS {
        format!(
            "{}…",
            one_line.chars().take(EXCERPT_CHARS).collect::<String>()
        )
    } else {
        one_line
    }
}

/// `text` with every `%XX` escape decoded (invalid UTF-8 replaced); `+` is left alone, as a
/// base64 token's `+` would otherwise turn into a space and split it.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error codes of RFC 6749 (5.2 and 4.1.2.1). A code from this list is the only word of
/// a refresh or code-exchange answer that reaches any text, and then as our own copy of it.
const OAUTH_ERROR_CODES: [&str; 10] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "unsupported_response_type",
    "server_error",
    "temporarily_unavailable",
];

/// `code` as one of [`OAUTH_ERROR_CODES`], if it is one.
pub(crate) fn oauth_error_code(code: &str) -> Option<&'static str> {
    OAUTH_ERROR_CODES.iter().copied().find(|c| *c == code)
}

/// What an answer of a token endpoint (ShipHero's refresh, Shippo's code exchange) was, in
/// our own words: its body is never copied into any text (issue 28 item 5), since a token
/// can hide in it in any encoding and no scrubbing is sure to find every one.
pub(crate) fn summary(body: &Body) -> String {
    match body {
        Body::OAuthError(code) => match oauth_error_code(code) {
            Some(c) => format!("OAuth error {c}"),
            None => "an OAuth error with a code outside RFC 6749 (not shown)".into(),
        },
        Body::Token => "a token answer".into(),
        Body::NotJson => "a body that is not JSON (not shown)".into(),
        Body::Foreign => "JSON of another shape (not shown)".into(),
        Body::GraphqlError { code: Some(c), .. } => format!("a GraphQL error, code {c}"),
        _ => "an error message (not shown: token endpoint answers are never copied)".into(),
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

/// How long a connection of the engine's clients ([`http_client`]) stays pooled unused.
/// The pool closes it within twice this.
pub const POOL_IDLE: Duration = Duration::from_secs(4);

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
        // The engine's calls come in bursts (a sweep) or minutes apart, so a connection idle
        // for a few seconds is rarely used again, while each one pooled holds a socket and
        // about 30 KB of buffers: reqwest's 90 s kept a sweep's 64 connections per provider
        // long after it. Applications' calls go through the proxy's own clients.
        .pool_idle_timeout(POOL_IDLE)
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
        // Words, as one long run would be redacted as token-shaped.
        let long = "ab ".repeat(150);
        assert_eq!(excerpt(&long).chars().count(), 201);
    }

    #[test]
    fn an_excerpt_decodes_before_it_scrubs_so_no_encoding_of_a_secret_survives() {
        let secret = crate::secret::Secret::new("s3cr3t/v4lue");
        let every_byte: String = "s3cr3t/v4lue"
            .bytes()
            .map(|b| format!("%{b:02x}"))
            .collect();
        let escaped: String = "s3cr3t/v4lue"
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        for body in [
            format!("echo {every_byte} end"),
            format!(r#"{{"message":"echo {escaped} end"}}"#),
            "echo czNjcjN0L3Y0bHVl end".to_string(),
        ] {
            let out = super::scrubbed_excerpt(&body, &[&secret]);
            assert!(out.contains("echo") && out.contains("end"), "{out}");
            assert!(
                !out.contains("s3cr3t") && !out.contains("czNjcjN0"),
                "{out}"
            );
        }
    }

    #[test]
    fn a_token_endpoints_answer_is_described_in_our_words_only() {
        use super::super::evidence::Body;
        assert_eq!(
            super::summary(&Body::OAuthError("invalid_grant".into())),
            "OAuth error invalid_grant"
        );
        let odd = super::summary(&Body::OAuthError("eyJhbGciOi.token".into()));
        assert!(!odd.contains("eyJ"), "{odd}");
    }
}
