//! Registering a carrier account: the `accounts add oauth2` arguments and the rules the socket
//! API applies to its add body. An account's settings (preset, token URL, client id and
//! secret, scope, extra fields, probe, and for refresh-token accounts the refresh token) travel
//! and are stored as one [`Credential`], sealed in the account's refresh credential, so the
//! registry and the socket API need no field of their own for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::check_url;
use super::presets::ClientAuth;
use crate::clock::Timestamp;
use crate::providers::account::{AddFields, Read};
use crate::registry::NewAccount;
use crate::secret::Secret;

/// Marks an encoded [`Credential`], so a plain token sent by mistake is named as such.
const PREFIX: &str = "oauth2v1.";

/// One account's settings; every key but the client id and secret may come from its preset.
/// No `Debug`: it holds the client secret and the refresh token.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The preset the other keys default from.
    pub preset: String,
    /// The token endpoint, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// How the client authenticates, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ClientAuth>,
    /// The scope, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Extra form fields, added to the preset's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub form: BTreeMap<String, String>,
    /// Extra headers, added to the preset's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A refresh token: the account renews with the refresh grant (RFC 6749 6) instead of
    /// client credentials (4.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The API host the proxy forwards to, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// The probe's method, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_method: Option<String>,
    /// The probe's URL, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_url: Option<String>,
    /// The probe's expected status, overriding the preset's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_status: Option<u16>,
}

impl Credential {
    /// The form stored as the account's refresh credential: printable, without whitespace.
    pub fn encode(&self) -> Secret {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Secret::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
    }

    /// Reads a stored or sent credential; the error never echoes it.
    pub fn decode(secret: &Secret) -> Result<Credential, String> {
        let encoded = secret.expose().strip_prefix(PREFIX).ok_or(
            "refresh_token is not an oauth2 account credential (use `accounts add oauth2`)",
        )?;
        let json = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| "the oauth2 account credential is not base64url".to_string())?;
        serde_json::from_slice(&json).map_err(|e| {
            // serde's message names the field, never its value.
            format!(
                "the oauth2 account credential is malformed: {}",
                e.classify_name()
            )
        })
    }

    /// The same settings with the refresh token the server rotated to.
    pub fn with_refresh_token(&self, token: &str) -> Credential {
        Credential {
            refresh_token: Some(token.to_string()),
            ..self.clone()
        }
    }
}

trait ClassifyName {
    fn classify_name(&self) -> String;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> String {
        let text = self.to_string();
        // "missing field `client_id`" and "unknown field `x`" name fields only; anything
        // else could quote a value.
        if text.starts_with("missing field") || text.starts_with("unknown field") {
            text.split(" at line").next().unwrap_or("").to_string()
        } else {
            "not the expected JSON object".into()
        }
    }
}

/// `shiptoken accounts add oauth2`: secrets are read from files, never arguments.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Account name: 1-64 characters of a-z 0-9 . _ -
    pub name: String,
    /// The carrier: ups, ups-sandbox, fedex, fedex-sandbox, generic, or one from [oauth2.presets].
    #[arg(long)]
    pub preset: String,
    /// The client id (UPS and FedEx: the app's API key).
    #[arg(long)]
    pub client_id: String,
    /// File holding the client secret ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: PathBuf,
    /// File holding a refresh token: renew with the refresh grant instead of client credentials.
    #[arg(long, value_name = "FILE")]
    pub refresh_token_file: Option<PathBuf>,
    /// The token endpoint, instead of the preset's (required with `generic`).
    #[arg(long)]
    pub token_url: Option<String>,
    /// How the client authenticates: basic (HTTP Basic) or body (form fields).
    #[arg(long, value_parser = ["basic", "body"])]
    pub auth: Option<String>,
    /// The scope to request.
    #[arg(long)]
    pub scope: Option<String>,
    /// An extra form field of the token request, NAME=VALUE (repeatable).
    #[arg(long = "form", value_name = "NAME=VALUE", value_parser = pair)]
    pub form: Vec<(String, String)>,
    /// An extra header of the token request, NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = pair)]
    pub header: Vec<(String, String)>,
    /// The API host applications' calls through the proxy go to, instead of the preset's
    /// (required with `generic` to use the proxy).
    #[arg(long)]
    pub api_base: Option<String>,
    /// A cheap API call proving a token, e.g. https://api.example.com/v1/ping.
    #[arg(long)]
    pub probe_url: Option<String>,
    /// The probe's method (default GET).
    #[arg(long)]
    pub probe_method: Option<String>,
    /// The status a working token gets from the probe (default 200).
    #[arg(long)]
    pub probe_status: Option<u16>,
}

impl AddArgs {
    /// The `POST /v1/accounts` body, reading each secret with `read(file, what)`.
    pub fn body<E>(
        &self,
        mut read: impl FnMut(&Path, &str) -> Result<String, E>,
    ) -> Result<Value, E> {
        let client_secret = read(&self.client_secret_file, "client secret")?;
        let refresh_token = match &self.refresh_token_file {
            Some(f) => Some(read(f, "refresh token")?),
            None => None,
        };
        let credential = Credential {
            preset: self.preset.clone(),
            token_url: self.token_url.clone(),
            client_id: self.client_id.clone(),
            client_secret,
            auth: self.auth.as_deref().map(|a| match a {
                "body" => ClientAuth::Body,
                _ => ClientAuth::Basic,
            }),
            scope: self.scope.clone(),
            form: self.form.iter().cloned().collect(),
            headers: self.header.iter().cloned().collect(),
            refresh_token,
            api_base: self.api_base.clone(),
            probe_method: self.probe_method.clone(),
            probe_url: self.probe_url.clone(),
            probe_status: self.probe_status,
        };
        Ok(json!({
            "provider": "oauth2", "account": self.name,
            "refresh_token": credential.encode().expose(),
        }))
    }
}

fn pair(given: &str) -> Result<(String, String), String> {
    match given.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err("takes NAME=VALUE".into()),
    }
}

/// A carrier account: its [`Credential`] as the refresh credential, nothing else.
pub fn new_account(fields: AddFields, _now: Timestamp) -> Read {
    if fields.email.is_some() || fields.first_name.is_some() || fields.last_name.is_some() {
        return Err("an oauth2 account takes no email or names".into());
    }
    if fields.access_token.is_some() {
        return Err(
            "an oauth2 account takes no access_token: the daemon gets one from the token endpoint"
                .into(),
        );
    }
    let secret = fields
        .refresh_token
        .ok_or("refresh_token (the account credential `accounts add oauth2` builds) is required")?;
    let credential = Credential::decode(&secret)?;
    check(&credential)?;
    Ok(NewAccount {
        key: fields.key,
        email: None,
        first_name: None,
        last_name: None,
        refresh_token: Some(secret),
        access_token: None,
    })
}

/// Why `config` cannot serve the account whose stored credential this is: a preset that is
/// neither built in nor in `[oauth2.presets]` any more.
pub fn stranded(config: &crate::config::Config, credential: &Secret) -> Option<String> {
    let c = Credential::decode(credential).ok()?;
    (!config.oauth2.presets.contains_key(&c.preset)).then(|| {
        format!(
            "names the preset \"{}\", which is neither built in nor in [oauth2.presets]: put it back in the configuration and restart, or add the account again with another preset",
            c.preset
        )
    })
}

fn check(c: &Credential) -> Result<(), String> {
    crate::names::validate_account_name(&c.preset)
        .map_err(|_| format!("preset \"{}\" is not a preset name", c.preset))?;
    if c.client_id.trim().is_empty() {
        return Err("client_id is empty".into());
    }
    if c.client_secret.trim().is_empty() {
        return Err("the client secret is empty".into());
    }
    if c.refresh_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err("the refresh token is empty".into());
    }
    for (name, value) in &c.headers {
        let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(value).is_ok();
        if !valid {
            return Err(format!("header \"{name}\" is not a valid HTTP header"));
        }
    }
    for (what, url) in [
        ("token_url", &c.token_url),
        ("probe_url", &c.probe_url),
        ("api_base", &c.api_base),
    ] {
        if let Some(u) = url {
            check_url(u).map_err(|e| format!("{what}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> Credential {
        Credential {
            preset: "ups".into(),
            token_url: None,
            client_id: "id".into(),
            client_secret: "s3cret value".into(),
            auth: None,
            scope: Some("a b".into()),
            form: BTreeMap::new(),
            headers: BTreeMap::new(),
            refresh_token: None,
            api_base: None,
            probe_method: None,
            probe_url: None,
            probe_status: None,
        }
    }

    fn fields(secret: Option<Secret>) -> AddFields {
        AddFields {
            key: crate::names::AccountKey::parse("oauth2/acme").unwrap(),
            email: None,
            first_name: None,
            last_name: None,
            refresh_token: secret,
            access_token: None,
        }
    }

    #[test]
    fn a_credential_round_trips_without_whitespace() {
        let c = credential();
        let s = c.encode();
        assert!(!s.expose().contains(' ') && !s.expose().contains("s3cret"));
        assert!(Credential::decode(&s).unwrap() == c);
        assert!(new_account(fields(Some(s)), Timestamp::from_secs(0)).is_ok());
    }

    #[test]
    fn bad_credentials_are_refused_without_echoing() {
        let plain = new_account(fields(Some(Secret::new("tok"))), Timestamp::from_secs(0));
        assert!(
            plain
                .unwrap_err()
                .contains("not an oauth2 account credential")
        );
        let mut c = credential();
        c.token_url = Some("ftp://x".into());
        let e = new_account(fields(Some(c.encode())), Timestamp::from_secs(0)).unwrap_err();
        assert!(e.contains("token_url") && !e.contains("s3cret"), "{e}");
        let mut c = credential();
        c.headers.insert("bad header".into(), "x".into());
        let e = new_account(fields(Some(c.encode())), Timestamp::from_secs(0)).unwrap_err();
        assert!(e.contains("bad header"), "{e}");
        assert!(new_account(fields(None), Timestamp::from_secs(0)).is_err());
    }
}
