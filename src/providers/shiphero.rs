//! ShipHero's token refresh and the GraphQL probe that proves a token works.
//!
//! A 200 from `/auth/refresh` proves nothing for a suspended account (UPSTREAM.md): only
//! the `account` query does. Both calls are classified here into [`Failure`] classes.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::{Answer, Failure, excerpt, retry_after, send};
use crate::metrics::Metrics;
use crate::names::Provider;
use crate::secret::Secret;

/// The probe query: cheap, and it reads the account's state.
pub const PROBE_QUERY: &str =
    "query { account { request_id complexity data { id email status } } }";

/// How long to wait when ShipHero throttles without saying for how long.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(30);

/// A token ShipHero issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access token.
    pub access_token: Secret,
    /// Its lifetime, from `expires_in` (or, failing that, the JWT's `exp`).
    pub lifetime: Duration,
}

/// What a passing probe learnt.
#[derive(Debug, Clone, Default)]
pub struct ProbeOk {
    /// ShipHero's request id, for support tickets.
    pub request_id: Option<String>,
}

/// A client for one ShipHero API base.
#[derive(Clone)]
pub struct ShipHero {
    http: reqwest::Client,
    base: String,
    metrics: Metrics,
}

impl ShipHero {
    /// A client for `base` (e.g. `https://public-api.shiphero.com`).
    pub fn new(http: reqwest::Client, base: &str, metrics: Metrics) -> ShipHero {
        ShipHero {
            http,
            base: base.trim_end_matches('/').to_string(),
            metrics,
        }
    }

    /// `POST /auth/refresh`: a new access token from the static refresh token. The answer has
    /// no refresh token; the caller keeps the one it has.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Issued, Failure> {
        let request = self
            .http
            .post(format!("{}/auth/refresh", self.base))
            .json(&serde_json::json!({ "refresh_token": refresh_token.expose() }));
        let answer = send(
            &self.metrics,
            Provider::ShipHero,
            "refresh",
            request,
            &[refresh_token],
        )
        .await?;
        classify_refresh(&answer)
    }

    /// `POST /graphql` with the account query; passes only with no errors and account data.
    pub async fn probe(&self, access_token: &Secret) -> Result<ProbeOk, Failure> {
        let request = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(access_token.expose())
            .json(&serde_json::json!({ "query": PROBE_QUERY }));
        let answer = send(
            &self.metrics,
            Provider::ShipHero,
            "graphql",
            request,
            &[access_token],
        )
        .await?;
        classify_probe(&answer)
    }
}

fn error_text(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => {
            let parts: Vec<&str> = ["error", "error_description", "message", "detail"]
                .iter()
                .filter_map(|k| v.get(*k).and_then(Value::as_str))
                .collect();
            if parts.is_empty() {
                excerpt(body)
            } else {
                parts.join(": ")
            }
        }
        Err(_) => excerpt(body),
    }
}

fn classify_refresh(a: &Answer) -> Result<Issued, Failure> {
    let status = a.status.as_u16();
    match status {
        200..=299 => {
            let v: Value = serde_json::from_str(&a.body).map_err(|_| {
                Failure::Transient(format!(
                    "ShipHero refresh answered {status} with a body that is not JSON: {}",
                    excerpt(&a.body)
                ))
            })?;
            let token = v
                .get("access_token")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Failure::Transient("ShipHero refresh answer has no access_token".into())
                })?;
            let access_token = Secret::new(token);
            let lifetime = v
                .get("expires_in")
                .and_then(|e| {
                    e.as_u64()
                        .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
                })
                .map(Duration::from_secs)
                .or_else(|| {
                    jwt_times(&access_token)
                        .and_then(|(iat, exp)| exp.checked_sub(iat?).map(Duration::from_secs))
                })
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Failure::Transient(
                        "ShipHero refresh answer has no expires_in and the token has no exp claim"
                            .into(),
                    )
                })?;
            Ok(Issued {
                access_token,
                lifetime,
            })
        }
        429 => Err(Failure::Throttled {
            wait: retry_after(&a.headers).unwrap_or(DEFAULT_THROTTLE_WAIT),
            message: format!("ShipHero refresh throttled (429): {}", error_text(&a.body)),
        }),
        400 | 401 | 403 => Err(Failure::Rejected(format!(
            "ShipHero rejected the refresh token ({status}): {}",
            error_text(&a.body)
        ))),
        _ => Err(Failure::Transient(format!(
            "ShipHero refresh answered {status}: {}",
            error_text(&a.body)
        ))),
    }
}

/// Words in a GraphQL error message that mean the token or account is refused, not that the
/// server had a bad moment.
const AUTH_WORDS: &[&str] = &[
    "unauthor",
    "not author",
    "authenticat",
    "expired",
    "invalid token",
    "token is invalid",
    "suspend",
    "inactive",
    "cancel",
    "forbidden",
    "permission",
    "access denied",
    "credentials",
];

fn classify_probe(a: &Answer) -> Result<ProbeOk, Failure> {
    let status = a.status.as_u16();
    match status {
        200..=299 => {}
        401 | 403 => {
            return Err(Failure::Rejected(format!(
                "ShipHero API rejected the token ({status}): {}",
                error_text(&a.body)
            )));
        }
        429 => {
            return Err(Failure::Throttled {
                wait: retry_after(&a.headers).unwrap_or(DEFAULT_THROTTLE_WAIT),
                message: format!("ShipHero API throttled (429): {}", error_text(&a.body)),
            });
        }
        400..=499 => {
            return Err(Failure::Ambiguous(format!(
                "ShipHero API answered {status}: {}",
                error_text(&a.body)
            )));
        }
        _ => {
            return Err(Failure::Transient(format!(
                "ShipHero API answered {status}: {}",
                error_text(&a.body)
            )));
        }
    }
    let Ok(v) = serde_json::from_str::<Value>(&a.body) else {
        return Err(Failure::Ambiguous(format!(
            "ShipHero API answered {status} with a body that is not JSON: {}",
            excerpt(&a.body)
        )));
    };
    if let Some(errors) = v
        .get("errors")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    {
        return Err(classify_graphql_errors(errors));
    }
    let account = v.pointer("/data/account");
    let request_id = account
        .and_then(|a| a.get("request_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let with_id = |m: String| match &request_id {
        Some(id) => format!("{m} (request_id {id})"),
        None => m,
    };
    match account.and_then(|a| a.get("data")).filter(|d| !d.is_null()) {
        Some(data) => {
            let state = data
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("active")
                .to_ascii_lowercase();
            if ["suspended", "canceled", "cancelled", "inactive", "disabled"]
                .contains(&state.as_str())
            {
                Err(Failure::Rejected(with_id(format!(
                    "ShipHero reports the account as {state}"
                ))))
            } else {
                Ok(ProbeOk { request_id })
            }
        }
        None => Err(Failure::Ambiguous(with_id(
            "ShipHero API answered without account data".into(),
        ))),
    }
}

fn classify_graphql_errors(errors: &[Value]) -> Failure {
    let field = |e: &Value, k: &str| {
        e.get(k)
            .or_else(|| e.pointer(&format!("/extensions/{k}")))
            .cloned()
    };
    for e in errors {
        let code = field(e, "code").and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        });
        if code == Some(30) {
            let message = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("not enough credits");
            let wait = field(e, "time_remaining")
                .and_then(|t| {
                    t.as_str()
                        .and_then(parse_time_remaining)
                        .or_else(|| t.as_u64().map(Duration::from_secs))
                })
                .or_else(|| parse_in_seconds(message))
                .unwrap_or(DEFAULT_THROTTLE_WAIT);
            return Failure::Throttled {
                wait,
                message: format!("ShipHero throttled (code 30): {}", excerpt(message)),
            };
        }
    }
    let first = &errors[0];
    let message = first
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("unknown error");
    let request_id = field(first, "request_id").and_then(|r| r.as_str().map(str::to_string));
    let text = match &request_id {
        Some(id) => format!("ShipHero API error: {} (request_id {id})", excerpt(message)),
        None => format!("ShipHero API error: {}", excerpt(message)),
    };
    let lower = message.to_ascii_lowercase();
    if AUTH_WORDS.iter().any(|w| lower.contains(w)) {
        Failure::Rejected(text)
    } else {
        Failure::Ambiguous(text)
    }
}

/// Parses ShipHero's `time_remaining`, e.g. `"10 seconds"`, `"1 minute"`, `"2.5 seconds"`.
fn parse_time_remaining(s: &str) -> Option<Duration> {
    let mut words = s.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    let unit = words.next().unwrap_or("seconds");
    let secs = if unit.starts_with("min") {
        n * 60.0
    } else if unit.starts_with("hour") {
        n * 3600.0
    } else {
        n
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.ceil().max(1.0)))
}

/// Finds "In 18 seconds" in a throttling message.
fn parse_in_seconds(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let at = lower.find("in ")?;
    parse_time_remaining(&lower[at + 3..])
}

/// Reads `iat` and `exp` (seconds) from a JWT's payload without verifying it: ShipHero signs
/// its tokens, and only ShipHero needs to check the signature.
pub fn jwt_times(token: &Secret) -> Option<(Option<u64>, u64)> {
    let payload = token.expose().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let num = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f as u64)))
    };
    Some((num("iat"), num("exp")?))
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
    fn refresh_without_refresh_token_field_is_fine() {
        let a = answer(
            200,
            r#"{"access_token":"abc","expires_in":2419200,"scope":"x","token_type":"Bearer"}"#,
        );
        let issued = classify_refresh(&a).unwrap();
        assert_eq!(issued.lifetime, Duration::from_secs(2_419_200));
    }

    #[test]
    fn refresh_rejections_and_outages() {
        for (code, body) in [
            (401, r#"{"error":"invalid_grant"}"#),
            (403, r#"{"message":"nope"}"#),
            (400, r#"{"error":"invalid_grant"}"#),
        ] {
            assert!(
                matches!(
                    classify_refresh(&answer(code, body)),
                    Err(Failure::Rejected(_))
                ),
                "{code}"
            );
        }
        assert!(matches!(
            classify_refresh(&answer(503, "<html>down</html>")),
            Err(Failure::Transient(_))
        ));
        let mut a = answer(429, "{}");
        a.headers.insert("retry-after", "7".parse().unwrap());
        assert!(
            matches!(classify_refresh(&a), Err(Failure::Throttled { wait, .. }) if wait == Duration::from_secs(7))
        );
    }

    #[test]
    fn probe_shapes() {
        let ok = r#"{"data":{"account":{"request_id":"r1","complexity":1,"data":{"id":"1","email":"a@b","status":"active"}}}}"#;
        assert_eq!(
            classify_probe(&answer(200, ok))
                .unwrap()
                .request_id
                .as_deref(),
            Some("r1")
        );
        let auth = r#"{"errors":[{"message":"You are not authorized","code":6,"request_id":"r2"}],"data":{"account":null}}"#;
        assert!(
            matches!(classify_probe(&answer(200, auth)), Err(Failure::Rejected(m)) if m.contains("r2"))
        );
        let null = r#"{"data":{"account":{"request_id":"r3","complexity":1,"data":null}}}"#;
        assert!(matches!(
            classify_probe(&answer(200, null)),
            Err(Failure::Ambiguous(_))
        ));
        assert!(matches!(
            classify_probe(&answer(401, "{}")),
            Err(Failure::Rejected(_))
        ));
        assert!(matches!(
            classify_probe(&answer(403, "{}")),
            Err(Failure::Rejected(_))
        ));
        assert!(matches!(
            classify_probe(&answer(502, "bad gateway")),
            Err(Failure::Transient(_))
        ));
        let weird = r#"{"errors":[{"message":"Internal error","code":1}],"data":null}"#;
        assert!(matches!(
            classify_probe(&answer(200, weird)),
            Err(Failure::Ambiguous(_))
        ));
    }

    #[test]
    fn throttling_in_both_places() {
        let top = r#"{"errors":[{"code":30,"message":"not enough credits","time_remaining":"10 seconds"}]}"#;
        assert!(
            matches!(classify_probe(&answer(200, top)), Err(Failure::Throttled { wait, .. }) if wait == Duration::from_secs(10))
        );
        let ext = r#"{"errors":[{"message":"not enough credits. In 18 seconds you will have enough credits","extensions":{"code":30,"time_remaining":"18 seconds"}}]}"#;
        assert!(
            matches!(classify_probe(&answer(200, ext)), Err(Failure::Throttled { wait, .. }) if wait == Duration::from_secs(18))
        );
        let msg_only = r#"{"errors":[{"code":"30","message":"not enough credits. In 5 seconds you will have enough credits"}]}"#;
        assert!(
            matches!(classify_probe(&answer(200, msg_only)), Err(Failure::Throttled { wait, .. }) if wait == Duration::from_secs(5))
        );
    }

    #[test]
    fn jwt_exp_is_read() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"exp":1900000000,"iat":1800000000}"#);
        let t = Secret::new(format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig"));
        assert_eq!(jwt_times(&t), Some((Some(1_800_000_000), 1_900_000_000)));
        assert_eq!(jwt_times(&Secret::new("not-a-jwt")), None);
    }
}
