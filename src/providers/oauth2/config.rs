//! `[oauth2]`: the carriers' section as written with its built-in defaults (timeout, pace,
//! concurrency, operator presets), validated into [`OAuth2Config`], whose presets are the
//! built-in rows with the operator's added (an operator row of the same name replaces one).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::presets::{self, Preset};
use crate::config::{ConfigError, UpstreamSettings, Validator};

/// `[oauth2]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOAuth2 {
    /// Timeout of one upstream request.
    pub timeout: String,
    /// Sustained token and probe calls per second, all oauth2 accounts together.
    pub max_requests_per_second: i64,
    /// Calls that may start back to back after a quiet spell.
    pub burst: i64,
    /// oauth2 calls in flight at once; absent: `rotation.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
    /// Share of a token's life after which it is renewed (in place of `rotation.rotate_at`).
    pub rotate_at: f64,
    /// Presets the operator adds, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub presets: BTreeMap<String, Preset>,
}

/// The default `oauth2.rotate_at`: a carrier's 1-hour token is renewed from 40 minutes, which
/// leaves 20 for a renewal that fails to be retried before the token ends (a 28-day ShipHero
/// token can afford 0.5; an hour cannot).
pub const DEFAULT_ROTATE_AT: f64 = 2.0 / 3.0;

impl Default for RawOAuth2 {
    fn default() -> Self {
        RawOAuth2 {
            timeout: "30s".into(),
            // The carriers publish no token-endpoint limit (UPSTREAM.md); 10,000 accounts with
            // 1-hour tokens renewed at about 0.7 of their life make 4 token calls a second,
            // and probes come on top.
            max_requests_per_second: 10,
            burst: 20,
            concurrency: None,
            rotate_at: DEFAULT_ROTATE_AT,
            presets: BTreeMap::new(),
        }
    }
}

/// The validated `[oauth2]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2Config {
    /// Timeout of one request.
    pub timeout: Duration,
    /// How fast calls may start, all accounts together.
    pub pace: crate::pacing::Rate,
    /// How many oauth2 calls may be in flight at once.
    pub concurrency: usize,
    /// Share of a token's life after which it is renewed.
    pub rotate_at: f64,
    /// Every preset by name: built in, then the operator's.
    pub presets: BTreeMap<String, Preset>,
}

impl OAuth2Config {
    /// Types `[oauth2]`; `concurrency` defaults to `default_concurrency`.
    pub(crate) fn validate(
        v: &Validator,
        raw: &RawOAuth2,
        default_concurrency: usize,
    ) -> Result<OAuth2Config, ConfigError> {
        let mut presets =
            presets::built_in().map_err(|e| v.invalid("oauth2.presets", "(built in)", e))?;
        for (name, preset) in &raw.presets {
            let key = format!("oauth2.presets.{name}");
            crate::names::validate_account_name(name).map_err(|_| {
                v.invalid(&key, name, "use 1-64 characters of a-z 0-9 . _ -".into())
            })?;
            for url in [&preset.token_url, &preset.probe_url, &preset.api_base]
                .into_iter()
                .flatten()
            {
                check_url(url).map_err(|e| v.invalid(&key, url, e))?;
            }
            presets.insert(name.clone(), preset.clone());
        }
        Ok(OAuth2Config {
            timeout: v.duration("oauth2.timeout", &raw.timeout)?,
            pace: crate::pacing::Rate {
                per_second: f64::from(v.count(
                    "oauth2.max_requests_per_second",
                    raw.max_requests_per_second,
                )?),
                burst: v.count("oauth2.burst", raw.burst)?,
            },
            concurrency: match raw.concurrency {
                Some(n) => v.concurrency("oauth2.concurrency", n)?,
                None => default_concurrency,
            },
            rotate_at: v.fraction("oauth2.rotate_at", raw.rotate_at)?,
            presets,
        })
    }

    /// How the engine bounds, paces and times oauth2 calls.
    pub fn upstream(&self) -> UpstreamSettings {
        UpstreamSettings {
            timeout: self.timeout,
            pace: self.pace,
            concurrency: self.concurrency,
            rotate_at: Some(self.rotate_at),
        }
    }
}

/// An endpoint URL: absolute, http or https, without credentials in it.
pub fn check_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not hold credentials; they belong in the account's secret".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load;
    use crate::names::Provider;

    #[test]
    fn operators_add_presets_and_built_ins_stay() {
        let c = load(
            "[oauth2]\nconcurrency = 2\n[oauth2.presets.dhl]\ntoken_url = \"https://api.example.com/token\"\nauth = \"body\"\n",
        )
        .unwrap();
        assert_eq!(c.upstream(Provider::OAuth2).concurrency, 2);
        assert!(c.oauth2.presets.contains_key("dhl"));
        assert!(c.oauth2.presets.contains_key("ups"));
        let err = load("[oauth2.presets.x]\ntoken_url = \"ftp://x\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("oauth2.presets.x"), "{err}");
        assert!(load("[oauth2.presets.x]\nauth = \"digest\"\n").is_err());
    }
}
