//! What an upstream answer proves about an account: one table, each row an answer shape with
//! its verdict and the document it comes from.
//!
//! A status that withholds a token needs evidence about that account. Proxies, load balancers,
//! WAFs and CDNs sit between the daemon and the providers, and their answers say nothing about
//! any account, so an answer that matches no row is [`Judged::Inconclusive`]. No row matches
//! words in free-text messages: only HTTP statuses, body shapes, error codes and exact
//! messages documented by the providers.

use serde_json::Value;

/// The upstream call an answer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// ShipHero `POST /auth/refresh`.
    ShipHeroRefresh,
    /// ShipHero `POST /graphql` with the probe query.
    ShipHeroProbe,
    /// Shippo `GET /carrier_accounts?results=1`.
    ShippoProbe,
    /// Shippo `POST /oauth/access_token`.
    ShippoExchange,
}

/// What a body is, as far as judging it goes. Parsed once per answer by [`shape`].
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// HTML, plain text, empty, or broken JSON: not something either provider's API sends.
    NotJson,
    /// JSON, but none of the provider's fields: another service answered.
    Foreign,
    /// An `access_token` (the refresh or code-exchange answer).
    Token,
    /// An OAuth error, `{"error": CODE, ...}`.
    OAuthError(String),
    /// ShipHero's plain error object `{"message": ...}`.
    Message,
    /// A GraphQL `errors` array; the first error's `code` and `message`.
    GraphqlError {
        /// The numeric code, at the error's top level or under `extensions`.
        code: Option<i64>,
        /// The message, as sent.
        message: String,
    },
    /// `data.account.data` is present; ShipHero's id of the account, when it sent one.
    AccountData {
        /// `data.account.data.id`.
        id: Option<String>,
    },
    /// `data.account` or `data.account.data` is null, without errors.
    NullAccount,
    /// Shippo's error object `{"detail": ...}`.
    Detail,
    /// Shippo's paginated list `{"results": [...]}`.
    List,
}

/// The kind of a [`Body`], for matching rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// [`Body::NotJson`].
    NotJson,
    /// [`Body::Foreign`].
    Foreign,
    /// [`Body::Token`].
    Token,
    /// [`Body::OAuthError`] with one of these codes.
    OAuthError(&'static [&'static str]),
    /// [`Body::Message`].
    Message,
    /// [`Body::GraphqlError`] with one of these codes.
    GraphqlCode(&'static [i64]),
    /// [`Body::GraphqlError`] whose message starts with this text.
    GraphqlMessage(&'static str),
    /// [`Body::GraphqlError`] without a code.
    GraphqlUncoded,
    /// [`Body::GraphqlError`] with a code no other row names.
    GraphqlOtherCode,
    /// [`Body::AccountData`].
    AccountData,
    /// [`Body::NullAccount`].
    NullAccount,
    /// [`Body::Detail`].
    Detail,
    /// [`Body::List`].
    List,
    /// Any body at all.
    Any,
}

/// What a row concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// The token works for its account (a probe), or a token was issued (refresh, exchange).
    Pass,
    /// The provider refused the credential: evidence about this account.
    Refused,
    /// The provider answered in its own format in a way no document covers: evidence only
    /// when this account alone keeps getting it (see the rotation engine).
    Undocumented,
    /// The probe is wrong for this token (a missing scope, a query the schema rejects).
    Misconfigured,
    /// The provider asked us to slow down.
    Throttled,
    /// Says nothing about the account.
    Inconclusive,
}

/// One answer shape and what it proves.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// The call.
    pub call: Call,
    /// The HTTP statuses, inclusive.
    pub status: (u16, u16),
    /// The body.
    pub shape: Shape,
    /// The verdict.
    pub judged: Judged,
    /// Where this comes from (UPSTREAM.md names the provider documents).
    pub source: &'static str,
}

const fn row(
    call: Call,
    status: (u16, u16),
    shape: Shape,
    judged: Judged,
    source: &'static str,
) -> Row {
    Row {
        call,
        status,
        shape,
        judged,
        source,
    }
}

/// OAuth error codes that refuse the credential itself (RFC 6749 section 5.2); others, such
/// as `server_error` or `temporarily_unavailable`, are the server's trouble.
const REFUSING_OAUTH_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_token",
    "unauthorized_client",
    "access_denied",
];

/// GraphQL error codes that mean the token is not authorized. ShipHero's documents give no
/// number for this; UPSTREAM.md says an invalid token may come as an `errors` entry, and
/// ShipHero reuses HTTP numbers in `code`, so 401 and 403 are the authorization codes.
const AUTH_CODES: &[i64] = &[401, 403];

use Call::*;
use Judged::*;
use Shape::*;

/// Every answer shape with a verdict other than inconclusive, first match wins. An answer
/// that matches no row is inconclusive.
pub static EVIDENCE: &[Row] = &[
    // --- ShipHero /auth/refresh ---
    row(
        ShipHeroRefresh,
        (200, 299),
        Token,
        Pass,
        "UPSTREAM.md, ShipHero endpoints: refresh answers access_token and expires_in, no refresh_token",
    ),
    row(
        ShipHeroRefresh,
        (429, 429),
        Any,
        Throttled,
        "UPSTREAM.md, ShipHero throttling (UNCONFIRMED): HTTP 429 with Retry-After",
    ),
    row(
        ShipHeroRefresh,
        (400, 403),
        OAuthError(REFUSING_OAUTH_ERRORS),
        Refused,
        "UPSTREAM.md (UNCONFIRMED): a bad or revoked refresh token answers 401 or 403, maybe {\"error\": \"invalid_grant\"}",
    ),
    row(
        ShipHeroRefresh,
        (401, 403),
        Message,
        Refused,
        "UPSTREAM.md (UNCONFIRMED): a bad or revoked refresh token answers 401 or 403 with {\"message\": ...}",
    ),
    // --- ShipHero /graphql, the probe ---
    row(
        ShipHeroProbe,
        (200, 299),
        AccountData,
        Pass,
        "UPSTREAM.md, the probe: the token works when there are no errors and data.account.data is not null",
    ),
    row(
        ShipHeroProbe,
        (200, 299),
        GraphqlCode(&[30]),
        Throttled,
        "ShipHero error glossary: code 30, not enough credits, with time_remaining",
    ),
    row(
        ShipHeroProbe,
        (429, 429),
        Any,
        Throttled,
        "UPSTREAM.md (UNCONFIRMED): throttling may come as HTTP 429 with Retry-After",
    ),
    row(
        ShipHeroProbe,
        (200, 400),
        GraphqlCode(&[7]),
        Misconfigured,
        "ShipHero error glossary: code 7, \"Missing required scope(s)\": the token works, the probe needs a scope it lacks",
    ),
    row(
        ShipHeroProbe,
        (200, 400),
        GraphqlMessage("Missing required scope"),
        Misconfigured,
        "ShipHero error glossary: the scope error's exact message",
    ),
    row(
        ShipHeroProbe,
        (200, 400),
        GraphqlMessage("Cannot query field"),
        Misconfigured,
        "GraphQL specification, validation: the schema rejects the probe query, not the token",
    ),
    row(
        ShipHeroProbe,
        (200, 299),
        GraphqlCode(AUTH_CODES),
        Refused,
        "UPSTREAM.md (UNCONFIRMED): an invalid access token may answer 200 with an errors entry",
    ),
    row(
        ShipHeroProbe,
        (401, 403),
        GraphqlCode(AUTH_CODES),
        Refused,
        "UPSTREAM.md (UNCONFIRMED): an invalid access token answers 401/403",
    ),
    row(
        ShipHeroProbe,
        (401, 403),
        Message,
        Refused,
        "UPSTREAM.md (UNCONFIRMED): an invalid access token answers 401/403 (ShipHero's {\"message\": ...})",
    ),
    row(
        ShipHeroProbe,
        (401, 403),
        OAuthError(REFUSING_OAUTH_ERRORS),
        Refused,
        "UPSTREAM.md (UNCONFIRMED): an invalid access token answers 401/403",
    ),
    row(
        ShipHeroProbe,
        (200, 299),
        GraphqlUncoded,
        Inconclusive,
        "ShipHero error glossary: GraphQL answers 200 for server failures too (e.g. a statement timeout), without an account code",
    ),
    row(
        ShipHeroProbe,
        (200, 299),
        GraphqlOtherCode,
        Undocumented,
        "UPSTREAM.md, what is evidence: an error code no document explains is judged by repetition",
    ),
    row(
        ShipHeroProbe,
        (200, 299),
        NullAccount,
        Undocumented,
        "UPSTREAM.md, the probe: null account data without errors is not a pass, and no document says it is a refusal",
    ),
    // --- Shippo API, the probe ---
    row(
        ShippoProbe,
        (200, 299),
        List,
        Pass,
        "Shippo API reference: list endpoints answer {\"results\": [...]}; a 2xx proves the token only with Shippo's JSON",
    ),
    row(
        ShippoProbe,
        (401, 401),
        Detail,
        Refused,
        "Shippo status codes: 401, the token provided does not exist",
    ),
    row(
        ShippoProbe,
        (403, 403),
        Detail,
        Refused,
        "Shippo status codes: 403 on a list of the account's own objects: the token cannot act for its account",
    ),
    row(
        ShippoProbe,
        (409, 409),
        Any,
        Throttled,
        "Shippo status codes: 409 could be caused by too many concurrent calls",
    ),
    row(
        ShippoProbe,
        (429, 429),
        Any,
        Throttled,
        "Shippo rate limits: 429, maybe with X-RateLimit-Reset",
    ),
    // --- Shippo /oauth/access_token ---
    row(
        ShippoExchange,
        (200, 299),
        Token,
        Pass,
        "Shippo OAuth guide, step 3: {\"access_token\": \"oauth...\", ...}, JSON or form-encoded",
    ),
    row(
        ShippoExchange,
        (400, 401),
        OAuthError(&[
            "invalid_grant",
            "invalid_client",
            "unauthorized_client",
            "invalid_request",
        ]),
        Refused,
        "Shippo OAuth guide, step 3: failure {\"error\": \"invalid_grant\", ...}",
    ),
];

/// Finds the row an answer matches; `None` means inconclusive.
pub fn find(call: Call, status: u16, body: &Body) -> Option<&'static Row> {
    EVIDENCE.iter().find(|r| {
        r.call == call && (r.status.0..=r.status.1).contains(&status) && matches(r.shape, body)
    })
}

/// The verdict for an answer: its row's, or inconclusive.
pub fn judge(call: Call, status: u16, body: &Body) -> Judged {
    find(call, status, body).map_or(Inconclusive, |r| r.judged)
}

fn matches(shape: Shape, body: &Body) -> bool {
    match (shape, body) {
        (Any, _) => true,
        (Shape::NotJson, Body::NotJson)
        | (Shape::Foreign, Body::Foreign)
        | (Shape::Token, Body::Token)
        | (Shape::Message, Body::Message)
        | (Shape::AccountData, Body::AccountData { .. })
        | (Shape::NullAccount, Body::NullAccount)
        | (Shape::Detail, Body::Detail)
        | (Shape::List, Body::List) => true,
        (Shape::OAuthError(codes), Body::OAuthError(c)) => codes.contains(&c.as_str()),
        (GraphqlCode(codes), Body::GraphqlError { code: Some(c), .. }) => codes.contains(c),
        (GraphqlMessage(prefix), Body::GraphqlError { message, .. }) => message.starts_with(prefix),
        (GraphqlUncoded, Body::GraphqlError { code: None, .. }) => true,
        (GraphqlOtherCode, Body::GraphqlError { code: Some(_), .. }) => true,
        _ => false,
    }
}

/// Reads a body into its [`Body`] shape for `call`. Form-encoded token answers (which some
/// Shippo integrators see) count as [`Body::Token`] for the code exchange.
pub fn shape(call: Call, body: &str) -> Body {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        if call == ShippoExchange {
            return form_shape(body);
        }
        return Body::NotJson;
    };
    let Some(object) = v.as_object() else {
        return Body::Foreign;
    };
    let text = |k: &str| object.get(k).and_then(Value::as_str);
    if text("access_token").is_some_and(|t| !t.is_empty())
        && matches!(call, ShipHeroRefresh | ShippoExchange)
    {
        return Body::Token;
    }
    if let Some(errors) = object
        .get("errors")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    {
        return graphql_error(&errors[0]);
    }
    if let Some(code) = text("error") {
        return Body::OAuthError(code.to_string());
    }
    if call == ShipHeroProbe {
        if let Some(account) = v.pointer("/data/account") {
            return match account.get("data") {
                Some(d) if !d.is_null() => Body::AccountData {
                    id: d.get("id").and_then(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .or_else(|| i.as_i64().map(|n| n.to_string()))
                    }),
                },
                _ => Body::NullAccount,
            };
        }
        if object.get("data").is_some_and(Value::is_object) {
            return Body::NullAccount;
        }
    }
    if matches!(call, ShippoProbe | ShippoExchange) {
        if object.get("results").is_some_and(Value::is_array) {
            return Body::List;
        }
        if text("detail").is_some() {
            return Body::Detail;
        }
    }
    if matches!(call, ShipHeroRefresh | ShipHeroProbe) && text("message").is_some() {
        return Body::Message;
    }
    Body::Foreign
}

fn form_shape(body: &str) -> Body {
    let fields: Vec<(String, String)> = url::form_urlencoded::parse(body.trim().as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    if get("access_token").is_some_and(|t| !t.is_empty()) {
        Body::Token
    } else if let Some(e) = get("error") {
        Body::OAuthError(e.to_string())
    } else {
        Body::NotJson
    }
}

fn graphql_error(e: &Value) -> Body {
    let code = e
        .get("code")
        .or_else(|| e.pointer("/extensions/code"))
        .and_then(|c| {
            c.as_i64()
                .or_else(|| c.as_str().and_then(|s| s.trim().parse().ok()))
        });
    Body::GraphqlError {
        code,
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(call: Call, status: u16, body: &str) -> Judged {
        judge(call, status, &shape(call, body))
    }

    const HTML: &str = "<html><body><h1>Request blocked</h1></body></html>";

    #[test]
    fn html_and_proxy_answers_are_never_evidence() {
        for call in [ShipHeroRefresh, ShipHeroProbe, ShippoProbe, ShippoExchange] {
            for status in [200, 400, 401, 403, 404, 407, 408, 500, 502, 503, 504] {
                assert_eq!(j(call, status, HTML), Inconclusive, "{call:?} {status}");
            }
            for status in [407, 408, 502, 503, 504] {
                assert_ne!(
                    j(call, status, r#"{"message":"x","detail":"y"}"#),
                    Refused,
                    "{call:?} {status}"
                );
            }
        }
    }

    #[test]
    fn shiphero_refusals() {
        assert_eq!(
            j(
                ShipHeroRefresh,
                401,
                r#"{"error":"invalid_grant","error_description":"x"}"#
            ),
            Refused
        );
        assert_eq!(
            j(ShipHeroRefresh, 400, r#"{"error":"invalid_grant"}"#),
            Refused
        );
        assert_eq!(
            j(
                ShipHeroRefresh,
                403,
                r#"{"message":"Refresh token is revoked"}"#
            ),
            Refused
        );
        assert_eq!(
            j(ShipHeroRefresh, 400, r#"{"error":"server_error"}"#),
            Inconclusive
        );
        assert_eq!(
            j(ShipHeroRefresh, 400, r#"{"message":"bad"}"#),
            Inconclusive
        );
        assert_eq!(
            j(ShipHeroProbe, 401, r#"{"message":"Unauthorized"}"#),
            Refused
        );
        assert_eq!(
            j(
                ShipHeroProbe,
                200,
                r#"{"errors":[{"message":"Not authorized","code":401}],"data":{"account":null}}"#
            ),
            Refused
        );
    }

    #[test]
    fn shiphero_non_evidence() {
        let timeout = r#"{"errors":[{"message":"canceling statement due to statement timeout"}],"data":{"account":null}}"#;
        assert_eq!(j(ShipHeroProbe, 200, timeout), Inconclusive);
        let scope = r#"{"errors":[{"message":"Missing required scope(s): view:orders","code":7}]}"#;
        assert_eq!(j(ShipHeroProbe, 200, scope), Misconfigured);
        let schema =
            r#"{"errors":[{"message":"Cannot query field \"status\" on type \"Account\"."}]}"#;
        assert_eq!(j(ShipHeroProbe, 200, schema), Misconfigured);
        assert_eq!(j(ShipHeroProbe, 400, schema), Misconfigured);
        assert_eq!(j(ShipHeroProbe, 400, r#"{"foo":1}"#), Inconclusive);
        assert_eq!(
            j(
                ShipHeroProbe,
                200,
                r#"{"errors":[{"message":"x","code":30}]}"#
            ),
            Throttled
        );
        assert_eq!(
            j(ShipHeroProbe, 200, r#"{"data":{"account":{"data":null}}}"#),
            Undocumented
        );
        assert_eq!(
            j(
                ShipHeroProbe,
                200,
                r#"{"errors":[{"message":"odd","code":12}]}"#
            ),
            Undocumented
        );
        assert_eq!(
            j(
                ShipHeroProbe,
                200,
                r#"{"data":{"account":{"data":{"id":"QWNjb3VudDox"}}}}"#
            ),
            Pass
        );
        assert_eq!(j(ShipHeroProbe, 200, r#"{"ok":true}"#), Inconclusive);
    }

    #[test]
    fn shippo_shapes() {
        assert_eq!(j(ShippoProbe, 200, r#"{"results":[],"next":null}"#), Pass);
        assert_eq!(j(ShippoProbe, 200, HTML), Inconclusive);
        assert_eq!(j(ShippoProbe, 200, r#"{"hello":1}"#), Inconclusive);
        assert_eq!(
            j(ShippoProbe, 401, r#"{"detail":"Token does not exist"}"#),
            Refused
        );
        assert_eq!(
            j(
                ShippoProbe,
                403,
                r#"{"detail":"You do not have permission to perform this action."}"#
            ),
            Refused
        );
        assert_eq!(
            j(
                ShippoProbe,
                409,
                r#"{"detail":"too many concurrent calls"}"#
            ),
            Throttled
        );
        assert_eq!(
            j(ShippoProbe, 404, r#"{"detail":"Not found."}"#),
            Inconclusive
        );
        assert_eq!(
            j(ShippoProbe, 400, r#"{"detail":"Bad request"}"#),
            Inconclusive
        );
        assert_eq!(j(ShippoExchange, 200, "access_token=oauth.x&scope=*"), Pass);
        assert_eq!(
            j(ShippoExchange, 400, r#"{"error":"invalid_grant"}"#),
            Refused
        );
        assert_eq!(
            j(ShippoExchange, 429, r#"{"detail":"slow down"}"#),
            Inconclusive
        );
        assert_eq!(j(ShippoExchange, 503, HTML), Inconclusive);
    }

    #[test]
    fn every_row_names_its_source() {
        assert!(
            EVIDENCE
                .iter()
                .all(|r| !r.source.is_empty() && r.status.0 <= r.status.1)
        );
    }
}
