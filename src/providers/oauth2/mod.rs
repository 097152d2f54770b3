//! Carrier APIs over OAuth 2.0 (UPS, FedEx, any RFC 6749 token endpoint), a provider as one
//! unit: the token call for both grants and the optional probe (here), what their answers
//! prove ([`evidence`]), the carriers as data ([`presets`]), the `[oauth2]` section
//! ([`config`]), how an account is registered ([`account`]), and its simulator (`sim`, with
//! the `dev` feature).
//!
//! Each account carries its own settings (its [`account::Credential`], stored as its refresh
//! credential). A token is renewed from the answer's `expires_in` like ShipHero's, at
//! `oauth2.rotate_at` of its life (default 2/3: an hour leaves less room than 28 days). Without a probe, a token the endpoint just issued counts
//! as proven by its issue: the endpoint authenticated the client to issue it.

pub mod account;
pub mod config;
pub mod evidence;
pub mod presets;
#[cfg(feature = "dev")]
pub mod sim;

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::evidence::{Body, Judged, judge, shape};
use super::{Answer, Issued, Rules, Upstream, Verdict, excerpt, retry_after, send, summary};
use crate::metrics::Metrics;
use crate::names::{AccountKey, Provider};
use crate::secret::Secret;
use account::Credential;
use presets::{ClientAuth, Preset};

/// The longest lifetime believed: carriers issue 1 to 4 hours (UPSTREAM.md); a day leaves
/// room for a generic endpoint, and anything longer is a misreading (milliseconds for
/// seconds) that would leave a token unrenewed past its real end.
pub const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// How long to wait when a carrier throttles without saying for how long.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(30);

/// The longest a throttled account waits: the carriers publish no window, and a token
/// lives an hour, so a longer wait would let it expire.
const LONGEST_THROTTLE: Duration = Duration::from_secs(300);

/// What the oauth2 provider states once.
pub static RULES: Rules = Rules {
    calls: evidence::CALLS,
    read_add: account::new_account,
    served_headers: |_| Vec::new(),
    no_token_hint: |key: &AccountKey| format!("{key} has no token yet"),
    proxy: Some(&PROXY),
    reads_credential: true,
    stranded: Some(account::stranded),
};

/// How the proxy forwards an application's carrier calls: to the account's API host (its own
/// `api_base`, else its preset's), judged on the probe's RFC 6750 rows with any 2xx a pass;
/// only reads may be sent twice.
static PROXY: super::ProxyRules = super::ProxyRules {
    api_base: |config, credential| {
        let c = Credential::decode(credential.ok_or("the account has no stored credential")?)?;
        let preset = config.oauth2.presets.get(&c.preset);
        c.api_base
            .or_else(|| preset.and_then(|p| p.api_base.clone()))
            .ok_or_else(|| {
                format!(
                    "the account has no API host: preset \"{}\" names none; add the account again with --api-base",
                    c.preset
                )
            })
    },
    judged: |_, _| true,
    judge: |answer| judge_api(answer, None),
    reads_body: false,
    repeatable: |method, _| matches!(*method, reqwest::Method::GET | reqwest::Method::HEAD),
};

/// The probe of one account, as resolved from its credential and preset.
#[derive(Clone, Debug, PartialEq)]
struct Probe {
    method: reqwest::Method,
    url: String,
    status: u16,
}

/// A token request resolved from an account's credential and its preset.
struct TokenRequest {
    url: String,
    auth: ClientAuth,
    form: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    probe: Option<Probe>,
}

/// The client of every oauth2 account: one pool and the presets. Everything else about an
/// account (its grant, endpoint, probe) is in its stored credential, which each call gets.
pub struct OAuth2 {
    http: reqwest::Client,
    metrics: Metrics,
    presets: std::collections::BTreeMap<String, Preset>,
}

impl OAuth2 {
    /// A client over `http` knowing `presets`.
    pub fn new(
        http: reqwest::Client,
        presets: std::collections::BTreeMap<String, Preset>,
        metrics: Metrics,
    ) -> OAuth2 {
        OAuth2 {
            http,
            metrics,
            presets,
        }
    }

    /// A client for `[oauth2]`, with its own connection pool and timeout.
    pub fn from_config(config: &config::OAuth2Config, metrics: &Metrics) -> OAuth2 {
        OAuth2::new(
            super::http_client(config.timeout),
            config.presets.clone(),
            metrics.clone(),
        )
    }

    fn resolve(&self, c: &Credential) -> Result<TokenRequest, Verdict> {
        let preset = self.presets.get(&c.preset).ok_or_else(|| {
            Verdict::Misconfigured(format!(
                "preset \"{}\" is not built in and not in [oauth2.presets]",
                c.preset
            ))
        })?;
        let url = c
            .token_url
            .clone()
            .or_else(|| preset.token_url.clone())
            .ok_or_else(|| {
                Verdict::Misconfigured(format!(
                    "preset \"{}\" has no token_url and the account gives none",
                    c.preset
                ))
            })?;
        let auth = c.auth.unwrap_or(preset.auth);
        let mut form = vec![match &c.refresh_token {
            Some(_) => ("grant_type".to_string(), "refresh_token".to_string()),
            None => ("grant_type".to_string(), "client_credentials".to_string()),
        }];
        if let Some(r) = &c.refresh_token {
            form.push(("refresh_token".into(), r.clone()));
        }
        let scope = c.scope.as_ref().or(preset.scope.as_ref());
        if let Some(scope) = scope.filter(|s| !s.trim().is_empty()) {
            form.push(("scope".into(), scope.clone()));
        }
        if auth == ClientAuth::Body {
            form.push(("client_id".into(), c.client_id.clone()));
            form.push(("client_secret".into(), c.client_secret.clone()));
        }
        let mut extra = preset.form.clone();
        extra.extend(c.form.clone());
        form.extend(extra);
        let mut headers = preset.headers.clone();
        headers.extend(c.headers.clone());
        Ok(TokenRequest {
            url,
            auth,
            form,
            headers: headers.into_iter().collect(),
            probe: probe_of(c, preset)?,
        })
    }

    /// `POST {token_url}`: a new access token by the account's grant.
    pub async fn token(&self, credential: &Secret) -> Result<Issued, Verdict> {
        let c = Credential::decode(credential).map_err(Verdict::Misconfigured)?;
        let t = self.resolve(&c)?;
        let mut request = self.http.post(&t.url).form(&t.form);
        if t.auth == ClientAuth::Basic {
            request = request.basic_auth(&c.client_id, Some(&c.client_secret));
        }
        for (name, value) in &t.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let secret = Secret::new(c.client_secret.clone());
        let refresh = c.refresh_token.clone().map(Secret::new);
        let mut sent = vec![&secret, credential];
        sent.extend(refresh.as_ref());
        let answer = send(&self.metrics, Provider::OAuth2, "token", request, &sent).await?;
        judge_token(&answer, &c)
    }

    /// The account's probe with `token`, or a pass when it has none: the endpoint issued it.
    /// The probe is the one `credential` (the account's stored settings) and its preset name
    /// today, so a token issued before a restart or a reload is probed like any other.
    pub async fn probe(&self, token: &Secret, credential: Option<&Secret>) -> Verdict {
        let Some(credential) = credential else {
            return Verdict::Misconfigured("the account has no stored credential to probe with; add it again with `accounts add oauth2`".into());
        };
        let c = match Credential::decode(credential) {
            Ok(c) => c,
            Err(e) => return Verdict::Misconfigured(e),
        };
        let probe = match self.resolve(&c) {
            Ok(t) => t.probe,
            Err(verdict) => return verdict,
        };
        let Some(p) = probe else {
            return Verdict::Pass {
                identity: None,
                note: Some("no probe configured: proven by its issue".into()),
            };
        };
        let request = self
            .http
            .request(p.method.clone(), &p.url)
            .bearer_auth(token.expose());
        match send(&self.metrics, Provider::OAuth2, "probe", request, &[token]).await {
            Ok(answer) => judge_api(&answer, Some(p.status)),
            Err(verdict) => verdict,
        }
    }
}

fn probe_of(c: &Credential, preset: &Preset) -> Result<Option<Probe>, Verdict> {
    let Some(url) = c.probe_url.clone().or_else(|| preset.probe_url.clone()) else {
        return Ok(None);
    };
    let method = c
        .probe_method
        .as_deref()
        .or(preset.probe_method.as_deref())
        .unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Verdict::Misconfigured(format!("probe method \"{method}\" is not one")))?;
    Ok(Some(Probe {
        method,
        url,
        status: c.probe_status.or(preset.probe_status).unwrap_or(200),
    }))
}

impl Upstream for OAuth2 {
    fn provider(&self) -> Provider {
        Provider::OAuth2
    }

    fn renews(&self) -> bool {
        true
    }

    fn renew<'a>(&'a self, refresh: &'a Secret) -> BoxFuture<'a, Result<Issued, Verdict>> {
        Box::pin(self.token(refresh))
    }

    fn probe<'a>(
        &'a self,
        token: &'a Secret,
        credential: Option<&'a Secret>,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(OAuth2::probe(self, token, credential))
    }

    fn rules(&self) -> &'static Rules {
        &RULES
    }
}

/// `error: error_description`, or an excerpt of a body that is not the RFC's.
fn error_text(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return excerpt(body);
    };
    let parts: Vec<&str> = ["error", "error_description"]
        .iter()
        .filter_map(|k| v.get(*k).and_then(Value::as_str))
        .collect();
    if parts.is_empty() {
        excerpt(body)
    } else {
        parts.join(": ")
    }
}

fn judge_token(a: &Answer, c: &Credential) -> Result<Issued, Verdict> {
    let status = a.status.as_u16();
    let grant = if c.refresh_token.is_some() {
        "refresh token"
    } else {
        "client"
    };
    match judge(&evidence::TOKEN, status, &shape(&evidence::TOKEN, &a.body)) {
        Judged::Pass => issued(&a.body, c),
        Judged::Throttled => Err(Verdict::Throttled {
            wait: retry_after(&a.headers)
                .unwrap_or(DEFAULT_THROTTLE_WAIT)
                .min(LONGEST_THROTTLE),
            message: format!("the token endpoint throttled ({status})"),
        }),
        // A token endpoint's body may carry a token in any form: only our own words about
        // it (its RFC 6749 error code, its shape) reach any text, never the body.
        Judged::Refused => Err(Verdict::Refused(format!(
            "the token endpoint refused the {grant} ({status}): {}",
            summary(&shape(&evidence::TOKEN, &a.body))
        ))),
        Judged::Misconfigured => Err(Verdict::Misconfigured(format!(
            "the token request is wrong for this endpoint, not the account ({status}): {}; check the preset, scope and client authentication",
            summary(&shape(&evidence::TOKEN, &a.body))
        ))),
        Judged::Undocumented | Judged::Inconclusive => Err(Verdict::Inconclusive(format!(
            "the token endpoint answered {status}: {}",
            summary(&shape(&evidence::TOKEN, &a.body))
        ))),
    }
}

/// Reads the token, its lifetime, and a rotated refresh token from a 5.1 answer.
fn issued(body: &str, c: &Credential) -> Result<Issued, Verdict> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Verdict::Inconclusive("the token answer has no access_token".into()))?;
    let lifetime = lifetime(v.get("expires_in"))?;
    let rotated = v
        .get("refresh_token")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty() && c.refresh_token.is_some());
    Ok(Issued {
        access_token: Secret::new(token),
        lifetime: Some(lifetime),
        refresh: rotated
            .filter(|r| Some(*r) != c.refresh_token.as_deref())
            .map(|r| c.with_refresh_token(r).encode()),
    })
}

/// `expires_in` as a number (RFC 6749) or a string (UPS's `"14399"`); none, zero or past
/// [`MAX_LIFETIME`] proves nothing, and the token is not stored.
fn lifetime(expires_in: Option<&Value>) -> Result<Duration, Verdict> {
    let Some(e) = expires_in else {
        return Err(Verdict::Inconclusive(
            "the token answer has no expires_in; the token was not stored, since its life would be a guess".into(),
        ));
    };
    let secs = e
        .as_u64()
        .or_else(|| e.as_str().and_then(|s| s.trim().parse().ok()));
    match secs {
        Some(s) if s > 0 && Duration::from_secs(s) <= MAX_LIFETIME => Ok(Duration::from_secs(s)),
        _ => Err(Verdict::Inconclusive(format!(
            "the token answer's expires_in {} is not a believable lifetime (1 s to {} h); the token was not stored",
            excerpt(&e.to_string()),
            MAX_LIFETIME.as_secs() / 3600
        ))),
    }
}

/// The probe's body as far as judging goes: the RFC 6750 error of its `WWW-Authenticate`
/// challenge, else the body's shape with any `error` field ignored (only the challenge is
/// the API's word on the token; a proxy may send any JSON).
fn probe_body(a: &Answer) -> Body {
    let challenge = a
        .headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(bearer_error);
    match challenge {
        Some(code) => Body::OAuthError(code),
        None => match shape(&evidence::PROBE, &a.body) {
            Body::OAuthError(_) => Body::Foreign,
            other => other,
        },
    }
}

/// The `error` of a `Bearer` challenge (RFC 6750 3).
fn bearer_error(header: &str) -> Option<String> {
    let rest = header.trim().strip_prefix("Bearer")?;
    rest.split(',').find_map(|param| {
        let (k, v) = param.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("error")).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// What an API answer proves: the probe's (`expected`: the status a working token gets) or a
/// proxied call's (`None`: any 2xx passes, and a scope the call needs is the caller's
/// business, not evidence about the account).
fn judge_api(a: &Answer, expected: Option<u16>) -> Verdict {
    let status = a.status.as_u16();
    let passes = expected.map_or(a.status.is_success(), |e| status == e);
    if passes {
        return Verdict::Pass {
            identity: None,
            note: None,
        };
    }
    let what = expected.map_or_else(
        || "a proxied call".to_string(),
        |e| format!("the probe (expected {e})"),
    );
    let body = probe_body(a);
    let said = match &body {
        Body::OAuthError(code) => format!("WWW-Authenticate error=\"{code}\""),
        _ => a.excerpt(&error_text(&a.body)),
    };
    match judge(&evidence::PROBE, status, &body) {
        Judged::Pass => Verdict::Pass {
            identity: None,
            note: None,
        },
        Judged::Refused => {
            Verdict::Refused(format!("the API refused the token ({status}): {said}"))
        }
        Judged::Misconfigured if expected.is_none() => Verdict::Inconclusive(format!(
            "{what} needs a scope the token lacks ({status}): {said}"
        )),
        Judged::Misconfigured => Verdict::Misconfigured(format!(
            "the probe needs a scope the token lacks, not the account ({status}): {said}"
        )),
        Judged::Throttled => Verdict::Throttled {
            wait: retry_after(&a.headers)
                .unwrap_or(DEFAULT_THROTTLE_WAIT)
                .min(LONGEST_THROTTLE),
            message: format!("the API throttled {what} ({status})"),
        },
        Judged::Undocumented | Judged::Inconclusive => {
            Verdict::Inconclusive(format!("{what} answered {status}: {said}"))
        }
    }
}

#[cfg(test)]
mod tests;
