//! `[shippo]`: the section as written with its built-in defaults, its validation into
//! [`ShippoConfig`], and the OAuth client secret it points at. The configuration embeds this
//! section; the keys, defaults and error messages are Shippo's, so they live with Shippo.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, UpstreamSettings, Validator, credential_path};
use crate::secret::Secret;

/// `[shippo]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShippo {
    /// Base URL of the REST API.
    pub api_base: String,
    /// Base URL of the OAuth pages and token endpoint.
    pub oauth_base: String,
    /// Value of the `Shippo-API-Version` header.
    pub api_version: String,
    /// Per-request timeout for the API and the OAuth token endpoint.
    pub timeout: String,
    /// The platform's OAuth client id.
    pub client_id: String,
    /// File holding the OAuth client secret.
    pub client_secret_file: String,
    /// The registered callback URL.
    pub redirect_uri: String,
    /// Where the OAuth callback listener binds.
    pub callback_listen: String,
    /// Sustained API calls per minute, all accounts together.
    pub max_requests_per_minute: i64,
    /// Calls that may start back to back after a quiet spell.
    pub burst: i64,
    /// Shippo calls in flight at once; absent: `rotation.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i64>,
}

impl Default for RawShippo {
    fn default() -> Self {
        RawShippo {
            api_base: "https://api.goshippo.com".into(),
            oauth_base: "https://goshippo.com".into(),
            api_version: "2018-02-08".into(),
            timeout: "30s".into(),
            client_id: String::new(),
            client_secret_file: String::new(),
            redirect_uri: String::new(),
            callback_listen: "127.0.0.1:8847".into(),
            // Shippo allows 50 list calls a minute on live tokens; the probe is one.
            max_requests_per_minute: 40,
            burst: 5,
            concurrency: None,
        }
    }
}

/// The validated `[shippo]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ShippoConfig {
    /// API base URL without a trailing slash.
    pub api_base: String,
    /// OAuth base URL without a trailing slash.
    pub oauth_base: String,
    /// `Shippo-API-Version` header value.
    pub api_version: String,
    /// Per-request timeout for Shippo calls.
    pub timeout: Duration,
    /// OAuth client id; empty when OAuth is not configured.
    pub client_id: String,
    /// File with the client secret, if configured.
    pub client_secret_file: Option<PathBuf>,
    /// Registered callback URL, if configured.
    pub redirect_uri: Option<String>,
    /// Where the callback listener binds; `None` turns it off.
    pub callback_listen: Option<SocketAddr>,
    /// How fast API calls may start, all accounts together.
    pub pace: crate::pacing::Rate,
    /// How many Shippo calls may be in flight at once.
    pub concurrency: usize,
}

impl ShippoConfig {
    /// Whether the OAuth flow is configured (a client id is set).
    pub fn oauth_enabled(&self) -> bool {
        !self.client_id.is_empty()
    }

    /// Reads the client secret from `client_secret_file`, else the systemd credential
    /// `shippo.client_secret`. `Ok(None)` when neither is present.
    pub fn client_secret(&self) -> Result<Option<Secret>, String> {
        let path = match &self.client_secret_file {
            Some(p) => p.clone(),
            None => match credential_path("shippo.client_secret") {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read the Shippo client secret from {}: {e}",
                path.display()
            )
        })?;
        let secret = Secret::new(text.trim());
        if secret.is_empty() {
            return Err(format!(
                "the Shippo client secret file {} is empty",
                path.display()
            ));
        }
        Ok(Some(secret))
    }

    /// Types `[shippo]`; `concurrency` defaults to `default_concurrency`
    /// (`rotation.concurrency`).
    pub(crate) fn validate(
        v: &Validator,
        raw: &RawShippo,
        default_concurrency: usize,
    ) -> Result<ShippoConfig, ConfigError> {
        let config = ShippoConfig {
            api_base: v.api_base("shippo.api_base", &raw.api_base)?,
            oauth_base: v.base_url("shippo.oauth_base", &raw.oauth_base)?,
            api_version: api_version(v, "shippo.api_version", &raw.api_version)?,
            timeout: v.duration("shippo.timeout", &raw.timeout)?,
            client_id: raw.client_id.trim().to_string(),
            client_secret_file: v
                .optional_path("shippo.client_secret_file", &raw.client_secret_file)?,
            redirect_uri: redirect_uri(v, "shippo.redirect_uri", &raw.redirect_uri)?,
            callback_listen: v.listen("shippo.callback_listen", &raw.callback_listen)?,
            pace: crate::pacing::Rate {
                per_second: f64::from(v.count(
                    "shippo.max_requests_per_minute",
                    raw.max_requests_per_minute,
                )?) / 60.0,
                burst: v.count("shippo.burst", raw.burst)?,
            },
            concurrency: match raw.concurrency {
                Some(n) => v.concurrency("shippo.concurrency", n)?,
                None => default_concurrency,
            },
        };
        if config.client_secret_file.is_some() && !config.oauth_enabled() {
            return Err(v.invalid(
                "shippo.client_id",
                "\"\"",
                "is empty although shippo.client_secret_file is set; set both or neither".into(),
            ));
        }
        Ok(config)
    }

    /// How the engine bounds, paces and times Shippo's calls.
    pub fn upstream(&self) -> UpstreamSettings {
        UpstreamSettings {
            timeout: self.timeout,
            pace: self.pace,
            concurrency: self.concurrency,
            rotate_at: None,
        }
    }
}

/// `shippo.api_version`: a date, no earlier than the first version Shippo documents.
fn api_version(v: &Validator, key: &str, value: &str) -> Result<String, ConfigError> {
    let well_formed = value.len() == 10
        && value.chars().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !well_formed || value < "2018-02-08" {
        return Err(v.invalid(
            key,
            value,
            "must be a date YYYY-MM-DD, 2018-02-08 or later".into(),
        ));
    }
    Ok(value.to_string())
}

/// `shippo.redirect_uri`: empty for none, else an http(s) URL with Shippo's closing slash.
fn redirect_uri(v: &Validator, key: &str, value: &str) -> Result<Option<String>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    let url = reqwest::Url::parse(value)
        .map_err(|e| v.invalid(key, value, format!("must be an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(v.invalid(key, value, "must be an http:// or https:// URL".into()));
    }
    if !value.ends_with('/') {
        return Err(v.invalid(
            key,
            value,
            "must end in \"/\" (Shippo requires the closing slash)".into(),
        ));
    }
    Ok(Some(value.to_string()))
}
