//! `[shiphero]`: the section as written with its built-in defaults, and its validation into
//! [`ShipHeroConfig`]. The configuration embeds this section; the keys, defaults and error
//! messages are ShipHero's, so they live with ShipHero.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, UpstreamSettings, Validator};

/// `[shiphero]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShipHero {
    /// Base URL of the public API.
    pub api_base: String,
    /// Timeout of one upstream request.
    pub timeout: String,
    /// Sustained upstream calls per second, all accounts together.
    pub max_requests_per_second: i64,
    /// Calls that may start back to back after a quiet spell.
    pub burst: i64,
    /// ShipHero calls in flight at once; absent: `rotation.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
}

impl Default for RawShipHero {
    fn default() -> Self {
        RawShipHero {
            api_base: "https://public-api.shiphero.com".into(),
            timeout: "30s".into(),
            // ShipHero allows 7,000 requests per 5 minutes (23/s): stay well below.
            max_requests_per_second: 10,
            burst: 20,
            concurrency: None,
        }
    }
}

/// The validated `[shiphero]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipHeroConfig {
    /// Base URL without a trailing slash.
    pub api_base: String,
    /// Timeout of one request.
    pub timeout: Duration,
    /// How fast calls may start, all accounts together.
    pub pace: crate::pacing::Rate,
    /// How many ShipHero calls may be in flight at once.
    pub concurrency: usize,
}

impl ShipHeroConfig {
    /// Types `[shiphero]`; `concurrency` defaults to `default_concurrency`
    /// (`rotation.concurrency`).
    pub(crate) fn validate(
        v: &Validator,
        raw: &RawShipHero,
        default_concurrency: usize,
    ) -> Result<ShipHeroConfig, ConfigError> {
        Ok(ShipHeroConfig {
            api_base: v.api_base("shiphero.api_base", &raw.api_base)?,
            timeout: v.duration("shiphero.timeout", &raw.timeout)?,
            pace: crate::pacing::Rate {
                per_second: f64::from(v.count(
                    "shiphero.max_requests_per_second",
                    raw.max_requests_per_second,
                )?),
                burst: v.count("shiphero.burst", raw.burst)?,
            },
            concurrency: match raw.concurrency {
                Some(n) => v.concurrency("shiphero.concurrency", n)?,
                None => default_concurrency,
            },
        })
    }

    /// How the engine bounds, paces and times ShipHero's calls.
    pub fn upstream(&self) -> UpstreamSettings {
        UpstreamSettings {
            timeout: self.timeout,
            pace: self.pace,
            concurrency: self.concurrency,
            rotate_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load;
    use crate::names::Provider;

    #[test]
    fn each_provider_has_its_own_concurrency_defaulting_to_rotation_concurrency() {
        let c = load("[rotation]\nconcurrency = 5\n[shiphero]\nconcurrency = 3\n").unwrap();
        assert_eq!(c.upstream(Provider::ShipHero).concurrency, 3);
        assert_eq!(c.upstream(Provider::Shippo).concurrency, 5);
        let c = load("[shippo]\nconcurrency = 2\n").unwrap();
        assert_eq!(c.upstream(Provider::ShipHero).concurrency, 8);
        assert_eq!(c.upstream(Provider::Shippo).concurrency, 2);
        let err = load("[shippo]\nconcurrency = 0\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("shippo.concurrency") && err.contains("between 1 and 1024"),
            "{err}"
        );
    }
}
