//! Shippo, a provider as one unit: the OAuth authorize URL and code exchange, and the probe
//! that proves an OAuth token still works (here), what its answers prove ([`evidence`]), its
//! `[shippo]` section ([`config`]), the OAuth flow ([`oauth`]), how an account is registered
//! with a token obtained elsewhere ([`account`]), and its simulator (`sim`, with the `dev`
//! feature). Shippo tokens never expire, so there is no refresh.

pub mod account;
pub mod config;
pub mod evidence;
pub mod oauth;
#[cfg(feature = "dev")]
pub mod sim;

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::evidence::{Body, Judged, judge, shape};
use super::{
    Answer, Issued, ProxyRules, Rules, Upstream, Verdict, oauth_error_code, retry_after, send,
    summary,
};
use crate::metrics::Metrics;
use crate::names::AccountKey;
use crate::names::Provider;
use crate::secret::Secret;

/// The default wait when Shippo throttles without telling when the window resets.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// The longest a throttled account waits, whatever an answer says: Shippo's documented limits
/// are per minute (UPSTREAM.md: "list calls only 50/min live"), so a minute always frees one.
const LONGEST_THROTTLE: Duration = Duration::from_secs(60);

/// What Shippo states once: its calls, its add rules, the API version a client must send
/// with a served token, and how an account without a token gets one.
pub static RULES: Rules = Rules {
    calls: evidence::CALLS,
    read_add: account::new_account,
    served_headers: |config| vec![("Shippo-API-Version", config.shippo.api_version.as_str())],
    no_token_hint: |key: &AccountKey| {
        format!(
            "{key} has no token yet: connect it with `shiptoken shippo connect {}`",
            key.name
        )
    },
    proxy: Some(&PROXY),
    reads_credential: false,
    stranded: None,
};

/// How the proxy forwards an application's Shippo calls: to `shippo.api_base` with the
/// configured `Shippo-API-Version` (from [`RULES`]' served headers), judged on
/// [`evidence::PROXIED`]; only reads may be sent twice (a label bought twice costs money).
static PROXY: ProxyRules = ProxyRules {
    api_base: |config, _| Ok(config.shippo.api_base.clone()),
    // Shippo's OAuth endpoints live on another host: everything under api_base is its API.
    judged: |_, _| true,
    judge: |answer| match judge_call(&evidence::PROXIED, answer, server_now(answer)) {
        // A 409 without a rate limit's headers is "too many concurrent calls": a moment's
        // pause, not the default minute that would refuse every caller of the account.
        Verdict::Throttled { message, .. }
            if answer.status == reqwest::StatusCode::CONFLICT
                && retry_after(&answer.headers).is_none()
                && !answer.headers.contains_key("x-ratelimit-reset") =>
        {
            Verdict::Throttled {
                wait: Duration::from_secs(1),
                message,
            }
        }
        other => other,
    },
    reads_body: false,
    repeatable: |method, _| method == reqwest::Method::GET || method == reqwest::Method::HEAD,
};

/// A client for Shippo's API and OAuth hosts.
#[derive(Clone)]
pub struct Shippo {
    http: reqwest::Client,
    api_base: String,
    oauth_base: String,
    api_version: String,
    metrics: Metrics,
}

/// The platform's OAuth client registration.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    /// The partner id.
    pub client_id: String,
    /// The partner secret.
    pub client_secret: Secret,
    /// The registered callback, sent when configured.
    pub redirect_uri: Option<String>,
}

impl Shippo {
    /// A client for the given bases and API version.
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        oauth_base: &str,
        api_version: &str,
        metrics: Metrics,
    ) -> Shippo {
        Shippo {
            http,
            api_base: api_base.trim_end_matches('/').to_string(),
            oauth_base: oauth_base.trim_end_matches('/').to_string(),
            api_version: api_version.to_string(),
            metrics,
        }
    }

    /// A client for `[shippo]`, with its own connection pool and timeout.
    pub fn from_config(config: &config::ShippoConfig, metrics: &Metrics) -> Shippo {
        Shippo::new(
            super::http_client(config.timeout),
            &config.api_base,
            &config.oauth_base,
            &config.api_version,
            metrics.clone(),
        )
    }

    /// The `Shippo-API-Version` this client sends.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The URL to send a user to: `response_type=code`, `scope=*`, the state, and the
    /// redirect URI when one is configured.
    pub fn authorize_url(&self, client: &OAuthClient, state: &str) -> String {
        let mut url = match reqwest::Url::parse(&format!("{}/oauth/authorize", self.oauth_base)) {
            Ok(u) => u,
            Err(_) => return format!("{}/oauth/authorize", self.oauth_base),
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code");
            q.append_pair("client_id", &client.client_id);
            q.append_pair("scope", "*");
            q.append_pair("state", state);
            if let Some(r) = &client.redirect_uri {
                q.append_pair("redirect_uri", r);
            }
        }
        url.to_string()
    }

    /// Exchanges an authorization code for an access token (form-encoded, as most
    /// integrators send it; the answer may be JSON or form-encoded).
    pub async fn exchange_code(
        &self,
        client: &OAuthClient,
        code: &Secret,
    ) -> Result<Secret, Verdict> {
        let mut form = vec![
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.expose()),
            ("code", code.expose()),
            ("grant_type", "authorization_code"),
        ];
        if let Some(r) = &client.redirect_uri {
            form.push(("redirect_uri", r.as_str()));
        }
        let request = self
            .http
            .post(format!("{}/oauth/access_token", self.oauth_base))
            .form(&form);
        let answer = send(
            &self.metrics,
            Provider::Shippo,
            "oauth_token",
            request,
            &[&client.client_secret, code],
        )
        .await?;
        judge_exchange(&answer)
    }

    /// A cheap authenticated list call that proves the token works for its account.
    pub async fn probe(&self, access_token: &Secret) -> Verdict {
        let request = self
            .http
            .get(format!("{}/carrier_accounts", self.api_base))
            .query(&[("results", "1")])
            .bearer_auth(access_token.expose())
            .header("Shippo-API-Version", &self.api_version);
        match send(
            &self.metrics,
            Provider::Shippo,
            "api",
            request,
            &[access_token],
        )
        .await
        {
            Ok(answer) => judge_probe(&answer, server_now(&answer)),
            Err(verdict) => verdict,
        }
    }
}

impl Upstream for Shippo {
    fn provider(&self) -> Provider {
        Provider::Shippo
    }

    fn renews(&self) -> bool {
        false
    }

    fn renew<'a>(&'a self, _refresh: &'a Secret) -> BoxFuture<'a, Result<Issued, Verdict>> {
        Box::pin(async {
            Err(Verdict::Inconclusive(
                "Shippo OAuth tokens are not renewed: connect the account again".into(),
            ))
        })
    }

    fn probe<'a>(
        &'a self,
        token: &'a Secret,
        _credential: Option<&'a Secret>,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(Shippo::probe(self, token))
    }

    fn rules(&self) -> &'static Rules {
        &RULES
    }
}

/// The server's idea of now (its `Date` header), so `X-RateLimit-Reset` (a Unix time) turns
/// into a wait without reading our clock here.
fn server_now(a: &Answer) -> Option<u64> {
    let date = a.headers.get(reqwest::header::DATE)?.to_str().ok()?;
    httpdate::parse_http_date(date)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// What an API answer's error said: its message fields, as a scrubbed excerpt.
fn detail(a: &Answer) -> String {
    match serde_json::from_str::<Value>(&a.body) {
        Ok(v) => a.excerpt(
            &["detail", "error", "error_description", "message"]
                .iter()
                .filter_map(|k| v.get(*k).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(": "),
        ),
        Err(_) => a.excerpt(&a.body),
    }
}

/// Says when a body is not Shippo's, so `last_error` shows why it proved nothing.
fn not_shippo(body: &Body) -> &'static str {
    match body {
        Body::NotJson => " with a body that is not Shippo's JSON",
        Body::Foreign => " with JSON that is not Shippo's",
        _ => "",
    }
}

fn judge_probe(a: &Answer, server_now: Option<u64>) -> Verdict {
    judge_call(&evidence::PROBE, a, server_now)
}

/// What an answer to `call` (the probe, or an application's call through the proxy) proves
/// about the account.
fn judge_call(call: &super::evidence::Call, a: &Answer, server_now: Option<u64>) -> Verdict {
    let status = a.status.as_u16();
    let body = shape(call, &a.body);
    match judge(call, status, &body) {
        Judged::Pass => Verdict::Pass {
            identity: None,
            note: None,
        },
        Judged::Refused => Verdict::Refused(format!(
            "Shippo refused the token ({status}): {}",
            detail(a)
        )),
        Judged::Throttled => Verdict::Throttled {
            wait: throttle_wait(a, server_now),
            message: format!("Shippo asked to slow down ({status}): {}", detail(a)),
        },
        Judged::Undocumented | Judged::Misconfigured | Judged::Inconclusive => {
            Verdict::Inconclusive(format!(
                "Shippo answered {status}{}: {}",
                not_shippo(&body),
                detail(a)
            ))
        }
    }
}

/// `X-RateLimit-Reset` (a Unix time, read against the server's `Date`), else `Retry-After`.
fn throttle_wait(a: &Answer, server_now: Option<u64>) -> Duration {
    let reset = a
        .headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let wait = match (reset, server_now) {
        (Some(r), Some(now)) if r > now => Some(Duration::from_secs(r - now)),
        // Without a Date header, a small reset value is read as seconds to wait.
        (Some(r), None) if r < 86_400 => Some(Duration::from_secs(r.max(1))),
        _ => None,
    };
    wait.or_else(|| retry_after(&a.headers))
        .unwrap_or(DEFAULT_THROTTLE_WAIT)
        .min(LONGEST_THROTTLE)
}

fn judge_exchange(a: &Answer) -> Result<Secret, Verdict> {
    let status = a.status.as_u16();
    let body = shape(&evidence::EXCHANGE, &a.body);
    let fields: Vec<(String, String)> = match serde_json::from_str::<Value>(&a.body) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
        _ => url::form_urlencoded::parse(a.body.as_bytes())
            .into_owned()
            .collect(),
    };
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    match judge(&evidence::EXCHANGE, status, &body) {
        Judged::Pass => get("access_token")
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| {
                Verdict::Inconclusive("Shippo's token answer has no access_token".into())
            }),
        Judged::Refused => {
            // Only a code of RFC 6749's list, never the answer's own words (issue 28 item 5):
            // an exchange answer may carry the token.
            let error = match get("error") {
                Some(code) => oauth_error_code(&code)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}, an error code not shown")),
                None => format!("HTTP {status}"),
            };
            Err(Verdict::Refused(format!(
                "Shippo refused the code exchange ({error})"
            )))
        }
        Judged::Throttled => Err(Verdict::Throttled {
            wait: retry_after(&a.headers)
                .unwrap_or(DEFAULT_THROTTLE_WAIT)
                .min(LONGEST_THROTTLE),
            message: format!("Shippo token endpoint asked to slow down ({status})"),
        }),
        Judged::Undocumented | Judged::Misconfigured | Judged::Inconclusive => {
            Err(Verdict::Inconclusive(format!(
                "Shippo token endpoint answered {status}{}: {}",
                not_shippo(&body),
                summary(&body)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.into(),
            sent: Vec::new(),
        }
    }

    #[test]
    fn exchange_accepts_json_and_form() {
        let j = answer(
            200,
            r#"{"access_token":"oauth.abc","scope":"*","token_type":"bearer"}"#,
        );
        assert_eq!(judge_exchange(&j).unwrap().expose(), "oauth.abc");
        let f = answer(200, "access_token=oauth.def&scope=*&token_type=bearer");
        assert_eq!(judge_exchange(&f).unwrap().expose(), "oauth.def");
        let bad = answer(
            400,
            r#"{"error":"invalid_grant","error_description":"code reused"}"#,
        );
        assert!(
            matches!(judge_exchange(&bad), Err(Verdict::Refused(m)) if m.contains("invalid_grant"))
        );
        for (status, body) in [(503, "down"), (429, r#"{"detail":"slow down"}"#)] {
            assert!(
                matches!(
                    judge_exchange(&answer(status, body)),
                    Err(Verdict::Inconclusive(_))
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn probe_shapes() {
        assert!(matches!(
            judge_probe(&answer(200, r#"{"results":[]}"#), None),
            Verdict::Pass { .. }
        ));
        assert!(matches!(
            judge_probe(&answer(200, "<html>portal</html>"), None),
            Verdict::Inconclusive(_)
        ));
        assert!(
            matches!(judge_probe(&answer(401, r#"{"detail":"Token does not exist"}"#), None), Verdict::Refused(m) if m.contains("Token does not exist"))
        );
        assert!(matches!(
            judge_probe(
                &answer(
                    403,
                    r#"{"detail":"You do not have permission to perform this action."}"#
                ),
                None
            ),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            judge_probe(&answer(403, "{}"), None),
            Verdict::Inconclusive(_)
        ));
        for status in [400, 404] {
            assert!(matches!(
                judge_probe(&answer(status, r#"{"detail":"x"}"#), None),
                Verdict::Inconclusive(_)
            ));
        }
        assert!(matches!(
            judge_probe(&answer(409, r#"{"detail":"x"}"#), None),
            Verdict::Throttled { .. }
        ));
        let mut a = answer(429, "{}");
        a.headers
            .insert("x-ratelimit-reset", "1800000042".parse().unwrap());
        assert!(
            matches!(judge_probe(&a, Some(1_800_000_000)), Verdict::Throttled { wait, .. } if wait == Duration::from_secs(42))
        );
    }

    #[test]
    fn http_dates_parse() {
        let mut a = answer(200, "{}");
        a.headers
            .insert("date", "Thu, 01 Jan 1970 00:01:00 GMT".parse().unwrap());
        assert_eq!(server_now(&a), Some(60));
    }

    #[test]
    fn authorize_url_has_every_parameter() {
        let s = Shippo::new(
            crate::providers::plain_client(),
            "http://127.0.0.1:1",
            "http://127.0.0.1:2/",
            "2018-02-08",
            Metrics::new(),
        );
        let c = OAuthClient {
            client_id: "cid".into(),
            client_secret: Secret::new("x"),
            redirect_uri: Some("https://a.example/shippo-oauth-redirect/".into()),
        };
        let u = s.authorize_url(&c, "st4te");
        assert!(u.starts_with("http://127.0.0.1:2/oauth/authorize?response_type=code&client_id=cid&scope=*&state=st4te&redirect_uri="), "{u}");
    }
}
