//! ShipHero, a provider as one unit: its token refresh and the GraphQL probe that proves a
//! token works (here), what its answers prove ([`evidence`]), its `[shiphero]` section
//! ([`config`]), how a developer user is registered ([`account`]), and its simulator
//! (`sim`, with the `dev` feature).
//!
//! A 200 from `/auth/refresh` proves nothing for a suspended account (UPSTREAM.md): only
//! the `account` query does.

pub mod account;
pub mod config;
pub mod evidence;
#[cfg(feature = "dev")]
pub mod sim;

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::evidence::{Body, Judged, judge, shape};
use super::{Answer, Issued, ProxyRules, Rules, Upstream, Verdict, retry_after, send, summary};
use crate::jwt;
use crate::metrics::Metrics;
use crate::names::AccountKey;
use crate::names::Provider;
use crate::secret::Secret;

/// The probe query: as little as proves the token and names its account (UPSTREAM.md, what
/// is evidence: `status` is undocumented, and fields behind `view:pii` may come back null).
pub const PROBE_QUERY: &str = "query { account { request_id complexity data { id } } }";

/// How long to wait when ShipHero throttles without saying for how long.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(30);

/// The longest a throttled account waits, whatever an answer says: ShipHero's limits are per
/// account and the longer one is 7,000 requests per 5 minutes (UPSTREAM.md, "ShipHero rate
/// limits"), so no wait past 5 minutes can be what the limit needs.
const LONGEST_THROTTLE: Duration = Duration::from_secs(300);

/// The longest token lifetime believed: ShipHero's are 28 days, and a larger number would
/// put the next refresh past any useful horizon (or past what a timestamp can hold).
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 366 * 86_400);

/// What ShipHero states once: its calls, its add rules, no extra served header, and no hint
/// for an account without a token (one always comes from the refresh token).
pub static RULES: Rules = Rules {
    calls: evidence::CALLS,
    read_add: account::new_account,
    served_headers: |_| Vec::new(),
    no_token_hint: |key: &AccountKey| format!("{key} has no token yet"),
    proxy: Some(&PROXY),
    reads_credential: false,
    stranded: None,
};

/// How the proxy forwards an application's ShipHero calls: to `shiphero.api_base`, judged on
/// [`evidence::PROXIED`]; a GraphQL query may be sent twice, a mutation never.
static PROXY: ProxyRules = ProxyRules {
    api_base: |config, _| Ok(config.shiphero.api_base.clone()),
    judged: |method, path| {
        method == reqwest::Method::POST && path.trim_end_matches('/') == "graphql"
    },
    judge: |answer| judge_call(&evidence::PROXIED, answer),
    reads_body: true,
    repeatable: |method, body| {
        method == reqwest::Method::GET || (method == reqwest::Method::POST && is_query(body))
    },
};

/// Whether a GraphQL request body asks only queries (`{"query": "query ..."}` or the
/// shorthand `{ ... }`), which change nothing and may be repeated. Anything that cannot be
/// read as such (a mutation, a batch, not JSON) is not.
fn is_query(body: &[u8]) -> bool {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Some(document) = request.get("query").and_then(Value::as_str) else {
        return false;
    };
    // Comments (`# ...` to the end of a line) may come before the operation.
    let first = document
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let operations =
        document.matches("mutation").count() + document.matches("subscription").count();
    (first.starts_with('{') || first.starts_with("query")) && operations == 0
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

    /// A client for `[shiphero]`, with its own connection pool and timeout.
    pub fn from_config(config: &config::ShipHeroConfig, metrics: &Metrics) -> ShipHero {
        ShipHero::new(
            super::http_client(config.timeout),
            &config.api_base,
            metrics.clone(),
        )
    }

    /// `POST /auth/refresh`: a new access token from the static refresh token. The answer has
    /// no refresh token; the caller keeps the one it has.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Issued, Verdict> {
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
        judge_refresh(&answer)
    }

    /// `POST /graphql` with the account query.
    pub async fn probe(&self, access_token: &Secret) -> Verdict {
        let request = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(access_token.expose())
            .json(&serde_json::json!({ "query": PROBE_QUERY }));
        match send(
            &self.metrics,
            Provider::ShipHero,
            "graphql",
            request,
            &[access_token],
        )
        .await
        {
            Ok(answer) => judge_probe(&answer),
            Err(verdict) => verdict,
        }
    }
}

impl Upstream for ShipHero {
    fn provider(&self) -> Provider {
        Provider::ShipHero
    }

    fn renews(&self) -> bool {
        true
    }

    fn renew<'a>(&'a self, refresh: &'a Secret) -> BoxFuture<'a, Result<Issued, Verdict>> {
        Box::pin(self.refresh(refresh))
    }

    fn probe<'a>(
        &'a self,
        token: &'a Secret,
        _credential: Option<&'a Secret>,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(ShipHero::probe(self, token))
    }

    fn rules(&self) -> &'static Rules {
        &RULES
    }
}

/// What a GraphQL answer's error said: its message fields, as a scrubbed excerpt.
fn error_text(a: &Answer) -> String {
    match serde_json::from_str::<Value>(&a.body) {
        Ok(v) => {
            let parts: Vec<&str> = ["error", "error_description", "message", "detail"]
                .iter()
                .filter_map(|k| v.get(*k).and_then(Value::as_str))
                .collect();
            if parts.is_empty() {
                a.excerpt(&a.body)
            } else {
                a.excerpt(&parts.join(": "))
            }
        }
        Err(_) => a.excerpt(&a.body),
    }
}

fn judge_refresh(a: &Answer) -> Result<Issued, Verdict> {
    let status = a.status.as_u16();
    let body = shape(&evidence::REFRESH, &a.body);
    match judge(&evidence::REFRESH, status, &body) {
        Judged::Pass => issued(&a.body),
        Judged::Throttled => Err(Verdict::Throttled {
            wait: retry_after(&a.headers)
                .unwrap_or(DEFAULT_THROTTLE_WAIT)
                .min(LONGEST_THROTTLE),
            message: format!("ShipHero refresh throttled ({status}): {}", summary(&body)),
        }),
        Judged::Refused => Err(Verdict::Refused(format!(
            "ShipHero refused the refresh token ({status}): {}",
            summary(&body)
        ))),
        Judged::Undocumented | Judged::Misconfigured | Judged::Inconclusive => {
            Err(Verdict::Inconclusive(format!(
                "ShipHero refresh answered {status}{}: {}",
                not_shiphero(&body),
                summary(&body)
            )))
        }
    }
}

/// Says when a body is not ShipHero's, so `last_error` shows why it proved nothing.
fn not_shiphero(body: &Body) -> &'static str {
    match body {
        Body::NotJson => " with a body that is not ShipHero's JSON",
        Body::Foreign => " with JSON that is not ShipHero's",
        _ => "",
    }
}

/// Reads the token and its lifetime from a refresh answer the table judged a pass.
fn issued(body: &str) -> Result<Issued, Verdict> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let token = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Verdict::Inconclusive("ShipHero refresh answer has no access_token".into())
        })?;
    let access_token = Secret::new(token);
    let declared = v.get("expires_in").and_then(|e| {
        e.as_u64()
            .or_else(|| e.as_str().and_then(|s| s.trim().parse().ok()))
    });
    let from_jwt =
        || jwt::times(access_token.expose()).and_then(|(iat, exp)| exp.checked_sub(iat?));
    let lifetime = declared
        .filter(|&s| s > 0 && Duration::from_secs(s) <= MAX_LIFETIME)
        .or_else(|| from_jwt().filter(|&s| s > 0 && Duration::from_secs(s) <= MAX_LIFETIME))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            Verdict::Inconclusive(match declared {
                Some(s) => format!(
                    "ShipHero refresh answered expires_in {s} s, which is not a believable lifetime (at most {} days), and the token has no usable exp claim; the token was not stored",
                    MAX_LIFETIME.as_secs() / 86_400
                ),
                None => "ShipHero refresh answer has no expires_in and the token has no usable exp claim".into(),
            })
        })?;
    Ok(Issued {
        access_token,
        lifetime: Some(lifetime),
        refresh: None,
    })
}

fn judge_probe(a: &Answer) -> Verdict {
    judge_call(&evidence::PROBE, a)
}

/// What an answer to `call` (the probe, or an application's query through the proxy)
/// proves about the account.
fn judge_call(call: &super::evidence::Call, a: &Answer) -> Verdict {
    let status = a.status.as_u16();
    let body = shape(call, &a.body);
    let request_id = serde_json::from_str::<Value>(&a.body).ok().and_then(|v| {
        v.pointer("/data/account/request_id")
            .or_else(|| v.pointer("/errors/0/request_id"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let with_id = |m: String| match &request_id {
        Some(id) => format!("{m} (request_id {id})"),
        None => m,
    };
    // Built only for an answer that is not a pass: scrubbing every encoding of the token
    // sent from the text costs more than judging the answer (the proxy judges every call).
    let said = || match &body {
        Body::GraphqlError { code, message } => match code {
            Some(c) => format!("GraphQL error code {c}: {}", a.excerpt(message)),
            None => format!("GraphQL error: {}", a.excerpt(message)),
        },
        _ => error_text(a),
    };
    match judge(call, status, &body) {
        Judged::Pass => Verdict::Pass {
            identity: match body {
                Body::AccountData { id } => id,
                _ => None,
            },
            note: request_id.map(|id| format!("request_id {id}")),
        },
        Judged::Refused => Verdict::Refused(with_id(format!(
            "ShipHero API refused the token ({status}): {}",
            said()
        ))),
        Judged::Misconfigured => Verdict::Misconfigured(with_id(format!(
            "the probe query is wrong for this token, not the account ({status}): {}; check the developer user's scopes",
            said()
        ))),
        Judged::Throttled => Verdict::Throttled {
            wait: throttle_wait(a, &a.body),
            message: with_id(format!("ShipHero throttled ({status}): {}", said())),
        },
        Judged::Undocumented => {
            let signature = match &body {
                Body::NullAccount => "null account data".to_string(),
                Body::GraphqlError { code, .. } => format!("GraphQL code {}", code.unwrap_or(0)),
                _ => format!("HTTP {status}"),
            };
            Verdict::Undocumented {
                message: with_id(format!(
                    "ShipHero API answered {status} with {signature}, which no document explains: {}",
                    said()
                )),
                signature,
            }
        }
        Judged::Inconclusive => Verdict::Inconclusive(with_id(format!(
            "ShipHero API answered {status}{}: {}",
            not_shiphero(&body),
            said()
        ))),
    }
}

/// How long a throttled probe must wait: `Retry-After`, the error's `time_remaining`, or
/// "In N seconds" in its message; at most [`LONGEST_THROTTLE`].
fn throttle_wait(a: &Answer, body: &str) -> Duration {
    throttle_told(a, body).min(LONGEST_THROTTLE)
}

fn throttle_told(a: &Answer, body: &str) -> Duration {
    if let Some(d) = retry_after(&a.headers) {
        return d;
    }
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let Some(e) = v.pointer("/errors/0") else {
        return DEFAULT_THROTTLE_WAIT;
    };
    let field = |k: &str| e.get(k).or_else(|| e.pointer(&format!("/extensions/{k}")));
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    field("time_remaining")
        .and_then(|t| {
            t.as_str()
                .and_then(parse_time_remaining)
                .or_else(|| t.as_u64().map(Duration::from_secs))
        })
        .or_else(|| parse_in_seconds(message))
        .unwrap_or(DEFAULT_THROTTLE_WAIT)
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
    fn refresh_without_refresh_token_field_is_fine() {
        let a = answer(
            200,
            r#"{"access_token":"abc","expires_in":2419200,"scope":"x","token_type":"Bearer"}"#,
        );
        let issued = judge_refresh(&a).unwrap();
        assert_eq!(issued.lifetime, Some(Duration::from_secs(2_419_200)));
    }

    #[test]
    fn a_far_future_expiry_is_refused_with_a_clear_error() {
        let a = answer(200, r#"{"access_token":"abc","expires_in":300000000000}"#);
        let Err(Verdict::Inconclusive(m)) = judge_refresh(&a) else {
            panic!("accepted an absurd lifetime")
        };
        assert!(
            m.contains("300000000000") && m.contains("not a believable lifetime"),
            "{m}"
        );
    }

    #[test]
    fn refresh_refusals_and_outages() {
        for (code, body) in [
            (401, r#"{"error":"invalid_grant"}"#),
            (403, r#"{"message":"nope"}"#),
            (400, r#"{"error":"invalid_grant"}"#),
        ] {
            assert!(
                matches!(judge_refresh(&answer(code, body)), Err(Verdict::Refused(_))),
                "{code}"
            );
        }
        for (code, body) in [
            (503, "<html>down</html>"),
            (403, "<html>WAF</html>"),
            (400, "<html>bad</html>"),
        ] {
            assert!(
                matches!(
                    judge_refresh(&answer(code, body)),
                    Err(Verdict::Inconclusive(_))
                ),
                "{code}"
            );
        }
        let mut a = answer(429, "{}");
        a.headers.insert("retry-after", "7".parse().unwrap());
        assert!(
            matches!(judge_refresh(&a), Err(Verdict::Throttled { wait, .. }) if wait == Duration::from_secs(7))
        );
    }

    #[test]
    fn probe_shapes() {
        let ok = r#"{"data":{"account":{"request_id":"r1","complexity":1,"data":{"id":"QWNjb3VudDox"}}}}"#;
        assert_eq!(
            judge_probe(&answer(200, ok)),
            Verdict::Pass {
                identity: Some("QWNjb3VudDox".into()),
                note: Some("request_id r1".into())
            }
        );
        let auth = r#"{"errors":[{"message":"Not authorized","code":401,"request_id":"r2"}],"data":{"account":null}}"#;
        assert!(matches!(judge_probe(&answer(200, auth)), Verdict::Refused(m) if m.contains("r2")));
        let null = r#"{"data":{"account":{"request_id":"r3","complexity":1,"data":null}}}"#;
        assert!(matches!(
            judge_probe(&answer(200, null)),
            Verdict::Undocumented { signature, .. } if signature == "null account data"
        ));
        assert!(matches!(
            judge_probe(&answer(401, r#"{"message":"Unauthorized"}"#)),
            Verdict::Refused(_)
        ));
        assert!(matches!(
            judge_probe(&answer(401, "{}")),
            Verdict::Inconclusive(_)
        ));
        assert!(matches!(
            judge_probe(&answer(502, "bad gateway")),
            Verdict::Inconclusive(_)
        ));
        let words = r#"{"errors":[{"message":"canceling statement due to statement timeout"}],"data":null}"#;
        assert!(matches!(
            judge_probe(&answer(200, words)),
            Verdict::Inconclusive(_)
        ));
        let scope = r#"{"errors":[{"message":"Missing required scope(s): view:orders","code":7}]}"#;
        assert!(matches!(
            judge_probe(&answer(200, scope)),
            Verdict::Misconfigured(_)
        ));
    }

    #[test]
    fn throttling_in_both_places() {
        let top = r#"{"errors":[{"code":30,"message":"not enough credits","time_remaining":"10 seconds"}]}"#;
        assert!(
            matches!(judge_probe(&answer(200, top)), Verdict::Throttled { wait, .. } if wait == Duration::from_secs(10))
        );
        let ext = r#"{"errors":[{"message":"not enough credits. In 18 seconds you will have enough credits","extensions":{"code":30,"time_remaining":"18 seconds"}}]}"#;
        assert!(
            matches!(judge_probe(&answer(200, ext)), Verdict::Throttled { wait, .. } if wait == Duration::from_secs(18))
        );
        let msg_only = r#"{"errors":[{"code":"30","message":"not enough credits. In 5 seconds you will have enough credits"}]}"#;
        assert!(
            matches!(judge_probe(&answer(200, msg_only)), Verdict::Throttled { wait, .. } if wait == Duration::from_secs(5))
        );
    }

    #[test]
    fn only_graphql_queries_may_be_sent_twice() {
        let post = reqwest::Method::POST;
        assert!(is_query(
            br#"{"query": "query { orders { data { id } } }"}"#
        ));
        assert!(is_query(br#"{"query": "{ account { data { id } } }"}"#));
        assert!(is_query(b"{\"query\": \"# comment\\nquery Q { a }\"}"));
        assert!(!is_query(
            br#"{"query": "mutation { order_create(data: {}) { request_id } }"}"#
        ));
        assert!(!is_query(br#"{"query": "query { a } mutation M { b }"}"#));
        assert!(!is_query(br#"[{"query": "{ a }"}]"#));
        assert!(!is_query(b"not json"));
        assert!((PROXY.repeatable)(&reqwest::Method::GET, b""));
        assert!(!(PROXY.repeatable)(
            &post,
            br#"{"query": "mutation { x }"}"#
        ));
    }
}
