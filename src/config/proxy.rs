//! `[proxy]`: the authenticating proxy on the socket (`/v1/proxy/<provider>/<account>/...`),
//! its size and time caps and its throttle queue. A child of `config` so it validates with
//! the same `Validator` (key, origin and reason in every error).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validator};

/// `[proxy]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// See [`ProxyConfig::enabled`].
    pub enabled: bool,
    /// See [`ProxyConfig::timeout`].
    pub timeout: String,
    /// See [`ProxyConfig::max_request_bytes`].
    pub max_request_bytes: i64,
    /// See [`ProxyConfig::max_answer_bytes`].
    pub max_answer_bytes: i64,
    /// See [`ProxyConfig::queue_depth`].
    pub queue_depth: i64,
    /// See [`ProxyConfig::max_wait`].
    pub max_wait: String,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            enabled: true,
            timeout: "60s".into(),
            max_request_bytes: 10 << 20,
            max_answer_bytes: 32 << 20,
            queue_depth: 32,
            max_wait: "30s".into(),
        }
    }
}

/// The validated `[proxy]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Whether `/v1/proxy/...` forwards at all; off, it answers 404 `proxy_disabled`.
    pub enabled: bool,
    /// The longest one forwarded call may take, from sending to the answer's last byte.
    pub timeout: Duration,
    /// The largest request body forwarded; a larger one is refused with 413.
    pub max_request_bytes: u64,
    /// The largest answer body passed back; a larger one is cut off (and answered 502 when
    /// its `Content-Length` says so before anything was sent).
    pub max_answer_bytes: u64,
    /// Requests of one account that may wait out a throttle at once; past it, 429.
    pub queue_depth: usize,
    /// The longest a request waits out a throttle before it is answered 429; a caller may
    /// ask for less with the `Shiptoken-Max-Wait` header (seconds).
    pub max_wait: Duration,
}

impl Validator<'_> {
    /// Types `[proxy]`.
    pub(crate) fn proxy(&self, raw: &RawProxy) -> Result<ProxyConfig, ConfigError> {
        let bytes = |key: &str, value: i64| match u64::try_from(value) {
            Ok(n) if n >= 1024 => Ok(n),
            _ => Err(self.invalid(
                key,
                &value.to_string(),
                "must be a number of bytes, at least 1024".into(),
            )),
        };
        Ok(ProxyConfig {
            enabled: raw.enabled,
            timeout: self.duration("proxy.timeout", &raw.timeout)?,
            max_request_bytes: bytes("proxy.max_request_bytes", raw.max_request_bytes)?,
            max_answer_bytes: bytes("proxy.max_answer_bytes", raw.max_answer_bytes)?,
            queue_depth: self.concurrency("proxy.queue_depth", raw.queue_depth)?,
            max_wait: self.duration("proxy.max_wait", &raw.max_wait)?,
        })
    }
}
