//! Shippo: the OAuth authorize URL and code exchange, and the probe that proves an OAuth
//! token still works. Shippo tokens never expire, so there is no refresh.

use std::time::Duration;

use serde_json::Value;

use super::{Answer, Failure, excerpt, retry_after, send};
use crate::metrics::Metrics;
use crate::names::Provider;
use crate::secret::Secret;

/// The default wait when Shippo throttles without telling when the window resets.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(60);

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
    ) -> Result<Secret, Failure> {
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
        classify_exchange(&answer)
    }

    /// A cheap authenticated GET that proves the token works for this account.
    pub async fn probe(&self, access_token: &Secret) -> Result<(), Failure> {
        let request = self
            .http
            .get(format!("{}/carrier_accounts", self.api_base))
            .query(&[("results", "1")])
            .bearer_auth(access_token.expose())
            .header("Shippo-API-Version", &self.api_version);
        let answer = send(
            &self.metrics,
            Provider::Shippo,
            "api",
            request,
            &[access_token],
        )
        .await?;
        classify_probe(&answer, unix_now_hint(&answer))
    }
}

/// The server's idea of now (its `Date` header) so `X-RateLimit-Reset` (a Unix time) turns
/// into a wait without reading our clock here.
fn unix_now_hint(a: &Answer) -> Option<u64> {
    let date = a.headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let t = httpdate_parse(date)?;
    Some(t)
}

fn httpdate_parse(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok().or_else(|| {
        // "Mon, 23 Nov 2026 10:00:00 GMT" -> "2026-11-23 10:00:00"
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() < 5 {
            return None;
        }
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == parts[2])? + 1;
        humantime::parse_rfc3339_weak(&format!(
            "{}-{month:02}-{:0>2} {}",
            parts[3], parts[1], parts[4]
        ))
        .ok()
    })?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn detail(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => ["detail", "error", "error_description", "message"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(": "),
        Err(_) => excerpt(body),
    }
}

fn classify_probe(a: &Answer, server_now: Option<u64>) -> Result<(), Failure> {
    let status = a.status.as_u16();
    match status {
        200..=299 => Ok(()),
        401 | 403 => Err(Failure::Rejected(format!(
            "Shippo rejected the token ({status}): {}",
            detail(&a.body)
        ))),
        429 => {
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
            Err(Failure::Throttled {
                wait: wait
                    .or_else(|| retry_after(&a.headers))
                    .unwrap_or(DEFAULT_THROTTLE_WAIT),
                message: format!("Shippo rate limit (429): {}", detail(&a.body)),
            })
        }
        400..=499 => Err(Failure::Ambiguous(format!(
            "Shippo answered {status}: {}",
            detail(&a.body)
        ))),
        _ => Err(Failure::Transient(format!(
            "Shippo answered {status}: {}",
            detail(&a.body)
        ))),
    }
}

fn classify_exchange(a: &Answer) -> Result<Secret, Failure> {
    let status = a.status.as_u16();
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
    match status {
        200..=299 => get("access_token")
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| {
                Failure::Ambiguous(format!(
                    "Shippo's token answer has no access_token: {}",
                    excerpt(&a.body)
                ))
            }),
        400..=499 => {
            let error = get("error").unwrap_or_else(|| format!("HTTP {status}"));
            let desc = get("error_description")
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            Err(Failure::Rejected(format!(
                "Shippo refused the code exchange ({error}{desc})"
            )))
        }
        _ => Err(Failure::Transient(format!(
            "Shippo token endpoint answered {status}: {}",
            excerpt(&a.body)
        ))),
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
        }
    }

    #[test]
    fn exchange_accepts_json_and_form() {
        let j = answer(
            200,
            r#"{"access_token":"oauth.abc","scope":"*","token_type":"bearer"}"#,
        );
        assert_eq!(classify_exchange(&j).unwrap().expose(), "oauth.abc");
        let f = answer(200, "access_token=oauth.def&scope=*&token_type=bearer");
        assert_eq!(classify_exchange(&f).unwrap().expose(), "oauth.def");
        let bad = answer(
            400,
            r#"{"error":"invalid_grant","error_description":"code reused"}"#,
        );
        assert!(
            matches!(classify_exchange(&bad), Err(Failure::Rejected(m)) if m.contains("invalid_grant"))
        );
        assert!(matches!(
            classify_exchange(&answer(503, "down")),
            Err(Failure::Transient(_))
        ));
    }

    #[test]
    fn probe_shapes() {
        assert!(classify_probe(&answer(200, "{}"), None).is_ok());
        assert!(
            matches!(classify_probe(&answer(401, r#"{"detail":"Token does not exist"}"#), None), Err(Failure::Rejected(m)) if m.contains("Token does not exist"))
        );
        assert!(matches!(
            classify_probe(&answer(403, "{}"), None),
            Err(Failure::Rejected(_))
        ));
        let mut a = answer(429, "{}");
        a.headers
            .insert("x-ratelimit-reset", "1800000042".parse().unwrap());
        assert!(
            matches!(classify_probe(&a, Some(1_800_000_000)), Err(Failure::Throttled { wait, .. }) if wait == Duration::from_secs(42))
        );
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(httpdate_parse("Thu, 01 Jan 1970 00:01:00 GMT"), Some(60));
    }

    #[test]
    fn authorize_url_has_every_parameter() {
        let s = Shippo::new(
            reqwest::Client::new(),
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
