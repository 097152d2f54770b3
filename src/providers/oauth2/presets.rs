//! The carriers as data: `presets.toml`, compiled in, holds one row per carrier (UPS, FedEx,
//! their sandboxes, a generic RFC 6749 endpoint), each citing UPSTREAM.md; operators add rows
//! as `[oauth2.presets.NAME]`. Adding a carrier is a row, not a module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The built-in rows, as shipped.
pub const BUILT_IN: &str = include_str!("presets.toml");

/// How the client authenticates at the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Client id and secret as HTTP Basic (UPS).
    #[default]
    Basic,
    /// Client id and secret as `client_id` and `client_secret` form fields (FedEx).
    Body,
}

/// One carrier's token endpoint and how to call it; an account may override each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Preset {
    /// The token endpoint; the `generic` preset has none and each account gives its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// How the client authenticates.
    pub auth: ClientAuth,
    /// The scope requested, when not empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Extra form fields of the token request.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub form: BTreeMap<String, String>,
    /// Extra headers of the token request.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The host of the carrier's API, under which the proxy forwards an application's calls
    /// (`/v1/proxy/oauth2/<account>/<path>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// The probe's method (default GET).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_method: Option<String>,
    /// A cheap API call proving a token; without one a fresh token is proven by its issue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_url: Option<String>,
    /// The status a working token gets from the probe (default 200).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_status: Option<u16>,
    /// The pacing advised for this carrier (calls per second), shown in the docs; the
    /// provider's pace is `[oauth2] max_requests_per_second`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<u32>,
    /// Where the row comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The built-in presets, parsed.
pub fn built_in() -> Result<BTreeMap<String, Preset>, String> {
    toml::from_str(BUILT_IN).map_err(|e| format!("the built-in presets do not parse: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_row_parses_and_cites_upstream() {
        let presets = built_in().unwrap();
        let names: Vec<&str> = presets.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["fedex", "fedex-sandbox", "generic", "ups", "ups-sandbox"]
        );
        for (name, p) in &presets {
            assert!(
                p.source
                    .as_deref()
                    .is_some_and(|s| s.starts_with("UPSTREAM.md")),
                "{name}"
            );
        }
        assert_eq!(presets["ups"].auth, ClientAuth::Basic);
        assert_eq!(presets["fedex"].auth, ClientAuth::Body);
        assert!(presets["generic"].token_url.is_none());
    }
}
