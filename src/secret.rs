//! A string that must never reach a log, an error message or a metric label.
//!
//! Tokens and client secrets travel as [`Secret`] from the moment they are read (a file, an
//! HTTP body, the registry) until the one place that sends, stores or serves them, where
//! [`Secret::expose`] is called on purpose.

use std::fmt;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A credential. `Debug` and `Display` print `[redacted]`; it is deliberately not `Serialize`,
/// so putting it into a JSON answer takes an explicit [`Secret::expose`].
#[derive(Clone, serde::Deserialize)]
#[serde(from = "String")]
pub struct Secret(String, FingerprintCache);

/// The fingerprint, computed on first use: the socket reports it with every token it serves,
/// and hashing a 1 KiB JWT on each request was a measurable share of the hot path.
#[derive(Clone, Default)]
struct FingerprintCache(OnceLock<String>);

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value, FingerprintCache::default())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret::from(value.into())
    }

    /// The credential itself, for the few places that must send, store or serve it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (after trimming, as read from a file).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// A short, stable, non-reversible fingerprint (first 12 hex digits of SHA-256), used to
    /// tell tokens apart in the audit and to refuse a refresh token registered twice.
    pub fn fingerprint(&self) -> String {
        self.1
            .0
            .get_or_init(|| {
                let digest = Sha256::digest(self.0.as_bytes());
                digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
            })
            .clone()
    }

    /// Replaces every occurrence of this secret in `text` with `[redacted]`; used on upstream
    /// error bodies, which sometimes echo what they were sent.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 8 {
            return text.to_string();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_formats_its_value() {
        let s = Secret::new("eyJhbGciOi.secret-value");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert!(!format!("{:?}", Some(&s)).contains("secret-value"));
    }

    #[test]
    fn scrubs_echoed_values() {
        let s = Secret::new("abcdefgh12345");
        assert_eq!(
            s.scrub("bad token abcdefgh12345 here"),
            "bad token [redacted] here"
        );
    }
}
