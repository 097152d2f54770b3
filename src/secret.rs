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

    /// Replaces every occurrence of this secret in `text`, in every encoding an upstream
    /// could echo it in (see [`Secret::encodings`]), with `[redacted]`; used on upstream
    /// bodies, which sometimes echo what they were sent. A secret under 8 characters is left:
    /// it would match ordinary words.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 8 {
            return text.to_string();
        }
        let mut text = text.to_string();
        for form in self.encodings() {
            if text.contains(&form) {
                text = text.replace(&form, "[redacted]");
            }
        }
        text
    }

    /// The forms an echo of this secret takes: raw; URL-encoded (form or percent encoding,
    /// upper- or lower-case hex); base64 (standard or URL-safe, padded or not); JSON-escaped
    /// (with `/` as `\/` too). Issue 28: an exact match alone let URL-encoded and base64
    /// echoes of a refresh token through. A body encoding every byte (`%61%62...`) is
    /// decoded by the excerpt before this runs ([`redact_token_shaped`] catches the rest).
    fn encodings(&self) -> Vec<String> {
        use base64::Engine as _;
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let raw = self.0.as_str();
        let form: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        let percent = form.replace('+', "%20");
        let mut forms = vec![
            raw.to_string(),
            lower_hex_escapes(&form),
            lower_hex_escapes(&percent),
            form,
            percent,
            raw.replace('/', "\\/"),
        ];
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            forms.push(engine.encode(raw));
        }
        if let Ok(json) = serde_json::to_string(raw) {
            forms.push(json.trim_matches('"').to_string());
        }
        // Longest first, so that a longer form is not cut by a shorter one inside it.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        forms
    }
}

/// `%2F` as `%2f`: percent-encoding's hex digits may come in either case.
fn lower_hex_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        out.push_str(&escape.to_ascii_lowercase());
        rest = &rest[at + escape.len()..];
    }
    out.push_str(rest);
    out
}

/// Prefixes of credentials the providers issue (UPSTREAM.md): Shippo's OAuth tokens
/// (`oauth.`), API keys (`shippo_live_`, `shippo_test_`), `shippo_oauth_`, and a JWT's
/// header (`eyJ`, base64 of `{"`), which ShipHero's tokens are.
const TOKEN_PREFIXES: [&str; 5] = [
    "oauth.",
    "shippo_live_",
    "shippo_test_",
    "shippo_oauth_",
    "eyj",
];

/// A run this long of token characters is treated as a credential, whatever it is: base64,
/// base64url, hex or a URL-encoded string of that length is rarely anything an operator needs
/// to read in an error, and a token an upstream echoes is always longer.
const LONG_RUN: usize = 20;

/// Hex runs are credentials from this length (64 bits) on.
const LONG_HEX_RUN: usize = 16;

/// Replaces everything token-shaped in `text` with `[redacted]`: runs of base64, base64url,
/// hex or URL-encoded characters of [`LONG_RUN`] or more (hex: [`LONG_HEX_RUN`]), and any
/// run holding a known token prefix ([`TOKEN_PREFIXES`]), JWTs included. Used on every
/// excerpt of an upstream body, which may carry a token nobody sent it (issue 28 item 5).
pub fn redact_token_shaped(text: &str) -> String {
    let token_char = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '-' | '.' | '~' | '%')
    };
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if looks_like_a_token(run) {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn looks_like_a_token(run: &str) -> bool {
    let lower = run.to_ascii_lowercase();
    run.len() >= LONG_RUN
        || (run.len() >= LONG_HEX_RUN && run.chars().all(|c| c.is_ascii_hexdigit()))
        || TOKEN_PREFIXES.iter().any(|p| lower.contains(p))
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
    fn scrubs_every_encoding_of_the_secret() {
        use base64::Engine as _;
        let raw = "rt/ab+cd=ef gh\"ij";
        let s = Secret::new(raw);
        let form: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let json = serde_json::to_string(raw).unwrap();
        for echo in [
            raw.to_string(),
            form.clone(),
            form.to_ascii_lowercase(),
            form.replace('+', "%20"),
            b64,
            b64url,
            json.trim_matches('"').to_string(),
            raw.replace('/', "\\/"),
        ] {
            let text = format!("bad token <{echo}> here");
            assert_eq!(s.scrub(&text), "bad token <[redacted]> here", "{echo}");
        }
    }

    #[test]
    fn token_shaped_runs_are_redacted_and_words_are_not() {
        let text = "invalid_grant: token eyJhbGciOiJIUzI1NiJ9.e30.sig oauth.abc \
                    shippo_live_0123 deadbeefdeadbeef QUJDREVGR0hJSktMTU5PUFFSU1RV short words stay";
        assert_eq!(
            redact_token_shaped(text),
            "invalid_grant: token [redacted] [redacted] [redacted] [redacted] [redacted] \
             short words stay"
        );
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
