//! What an upstream answer proves about an account: the matching machinery. Each provider's
//! folder holds its calls' tables (`shiphero/evidence.rs`, `shippo/evidence.rs`), each row an
//! answer shape with its verdict and the document it comes from; here, the shapes a body can
//! have and how a row matches one.
//!
//! A status that withholds a token needs evidence about that account. Proxies, load balancers,
//! WAFs and CDNs sit between the daemon and the providers, and their answers say nothing about
//! any account, so an answer that matches no row is [`Judged::Inconclusive`]. No row matches
//! words in free-text messages: only HTTP statuses, body shapes, error codes and exact
//! messages documented by the providers.

use serde_json::Value;

/// One upstream call whose answers are judged: its name, which provider fields its answers
/// are read for, and its rows. Each provider defines its calls in its own `evidence` module;
/// nothing here names a provider.
#[derive(Debug)]
pub struct Call {
    /// What the call is, e.g. `ShipHero POST /auth/refresh`.
    pub name: &'static str,
    /// Which fields an answer is read for.
    pub reads: Reads,
    /// Every answer shape with a verdict other than inconclusive, first match wins. An answer
    /// that matches no row is inconclusive.
    pub rows: &'static [Row],
}

/// Which provider fields [`shape`] reads a call's answers for: a field that means something
/// in one provider's answers (ShipHero's `message`, Shippo's `detail`) is just foreign JSON
/// in another's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reads {
    /// A non-empty `access_token` is [`Body::Token`] (refreshes and code exchanges).
    pub token: bool,
    /// A body that is not JSON may be a form-encoded token answer.
    pub form: bool,
    /// `data.account.data` (ShipHero's account query).
    pub account: bool,
    /// `{"results": [...]}` lists and `{"detail": ...}` errors (Shippo's REST API).
    pub list_and_detail: bool,
    /// `{"message": ...}` errors (ShipHero's REST endpoints).
    pub message: bool,
    /// Any GraphQL `data` (an application's own query, forwarded by the proxy): some field
    /// not null is [`Body::Data`], all null is [`Body::NullAccount`].
    pub data: bool,
    /// A single object of Shippo's, `{"object_id": ...}` (an application's own call).
    pub object: bool,
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
    /// GraphQL `data` with at least one field not null, without errors.
    Data,
    /// One of Shippo's objects, `{"object_id": ...}`.
    Object,
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
    /// [`Body::Data`].
    Data,
    /// [`Body::Object`].
    Object,
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
    /// The HTTP statuses, inclusive.
    pub status: (u16, u16),
    /// The body.
    pub shape: Shape,
    /// The verdict.
    pub judged: Judged,
    /// Where this comes from (UPSTREAM.md names the provider documents).
    pub source: &'static str,
}

/// A row: `status` (inclusive range) and `shape` prove `judged`, according to `source`.
pub const fn row(status: (u16, u16), shape: Shape, judged: Judged, source: &'static str) -> Row {
    Row {
        status,
        shape,
        judged,
        source,
    }
}

/// OAuth error codes that refuse the credential itself (RFC 6749 section 5.2); others, such
/// as `server_error` or `temporarily_unavailable`, are the server's trouble.
pub const REFUSING_OAUTH_ERRORS: &[&str] = &[
    "invalid_grant",
    "invalid_token",
    "unauthorized_client",
    "access_denied",
];

use Judged::*;
use Shape::*;

/// Finds the row an answer matches; `None` means inconclusive.
pub fn find(call: &Call, status: u16, body: &Body) -> Option<&'static Row> {
    call.rows
        .iter()
        .find(|r| (r.status.0..=r.status.1).contains(&status) && matches(r.shape, body))
}

/// The verdict for an answer: its row's, or inconclusive.
pub fn judge(call: &Call, status: u16, body: &Body) -> Judged {
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
        | (Shape::List, Body::List)
        | (Shape::Data, Body::Data)
        | (Shape::Object, Body::Object) => true,
        (Shape::OAuthError(codes), Body::OAuthError(c)) => codes.contains(&c.as_str()),
        (GraphqlCode(codes), Body::GraphqlError { code: Some(c), .. }) => codes.contains(c),
        (GraphqlMessage(prefix), Body::GraphqlError { message, .. }) => message.starts_with(prefix),
        (GraphqlUncoded, Body::GraphqlError { code: None, .. }) => true,
        (GraphqlOtherCode, Body::GraphqlError { code: Some(_), .. }) => true,
        _ => false,
    }
}

/// Reads a body into its [`Body`] shape for `call`. Form-encoded token answers (which some
/// Shippo integrators see) count as [`Body::Token`] for a call that [`Reads::form`].
pub fn shape(call: &Call, body: &str) -> Body {
    let reads = call.reads;
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        if reads.form {
            return form_shape(body);
        }
        return Body::NotJson;
    };
    let Some(object) = v.as_object() else {
        return Body::Foreign;
    };
    let text = |k: &str| object.get(k).and_then(Value::as_str);
    if text("access_token").is_some_and(|t| !t.is_empty()) && reads.token {
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
    if reads.account {
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
    if reads.data
        && let Some(data) = object.get("data").and_then(Value::as_object)
        && !data.is_empty()
    {
        return if data.values().any(|v| !v.is_null()) {
            Body::Data
        } else {
            Body::NullAccount
        };
    }
    if reads.object && text("object_id").is_some() {
        return Body::Object;
    }
    if reads.list_and_detail {
        if object.get("results").is_some_and(Value::is_array) {
            return Body::List;
        }
        if text("detail").is_some() {
            return Body::Detail;
        }
    }
    if reads.message && text("message").is_some() {
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
    use crate::names::Provider;

    fn j(call: &Call, status: u16, body: &str) -> Judged {
        judge(call, status, &shape(call, body))
    }

    const HTML: &str = "<html><body><h1>Request blocked</h1></body></html>";

    fn every_call() -> impl Iterator<Item = &'static Call> {
        Provider::ALL
            .into_iter()
            .flat_map(|p| crate::providers::calls(p).iter().copied())
    }

    #[test]
    fn html_and_proxy_answers_are_never_evidence() {
        assert!(every_call().count() >= 4);
        for call in every_call() {
            for status in [200, 400, 401, 403, 404, 407, 408, 500, 502, 503, 504] {
                assert_eq!(
                    j(call, status, HTML),
                    Inconclusive,
                    "{} {status}",
                    call.name
                );
            }
            for status in [407, 408, 502, 503, 504] {
                assert_ne!(
                    j(call, status, r#"{"message":"x","detail":"y"}"#),
                    Refused,
                    "{} {status}",
                    call.name
                );
            }
        }
    }

    #[test]
    fn every_row_names_its_source() {
        for call in every_call() {
            assert!(!call.rows.is_empty(), "{}", call.name);
            assert!(
                call.rows
                    .iter()
                    .all(|r| !r.source.is_empty() && r.status.0 <= r.status.1),
                "{}",
                call.name
            );
        }
    }
}
