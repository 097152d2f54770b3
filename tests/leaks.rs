//! No secret in error text (issue 28 item 5): hostile answers of ShipHero's refresh endpoint
//! and API that carry the refresh token (raw, URL-encoded, base64, JSON-escaped) or a token
//! nobody sent leave nothing of either in `last_error`, the log, CLI output or the accounts
//! API. Real binary, fake ShipHero; the Shippo OAuth side is in tests/oauth.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use serde_json::json;
use shiptoken::sim::{Canned, Route};

/// A JWT-shaped access token the hostile answers carry, which nobody sent.
const PLANTED: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlLXBsYW50ZWQ";

/// The forms in which `secret` must not show: raw and each encoding.
fn forms(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    vec![
        secret.to_string(),
        form,
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
    ]
}

/// A 12-character piece of any form of `secret` found in `text`, if any: a cut excerpt must
/// not keep part of a token either.
fn leaked(text: &str, secret: &str) -> Option<String> {
    forms(secret).into_iter().find_map(|f| {
        let chars: Vec<char> = f.chars().collect();
        chars
            .windows(12)
            .map(|w| w.iter().collect::<String>())
            .find(|piece| text.contains(piece.as_str()))
    })
}

fn text_answer(status: u16, content_type: &'static str, body: String) -> Canned {
    Canned {
        status,
        content_type,
        body,
        headers: Vec::new(),
    }
}

/// Every hostile answer of the refresh endpoint, by name; the last ones refuse and throttle.
fn hostile_refresh_answers(refresh: &str) -> Vec<(&'static str, Canned)> {
    let escaped: String = refresh
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    let form: String = url::form_urlencoded::byte_serialize(refresh.as_bytes()).collect();
    let every_byte: String = refresh.bytes().map(|b| format!("%{b:02X}")).collect();
    vec![
        (
            "500 with the token",
            Canned::json(
                500,
                json!({"error": "server_error", "error_description": format!("cannot refresh {refresh}"),
                       "access_token": PLANTED}),
            ),
        ),
        (
            "truncated JSON",
            text_answer(
                200,
                "application/json",
                format!(r#"{{"access_token":"{PLANTED}","refresh_token":"{refresh}"#),
            ),
        ),
        (
            "HTML 200",
            text_answer(
                200,
                "text/html",
                format!("<html><body>token {PLANTED} for {refresh}</body></html>"),
            ),
        ),
        (
            "URL-encoded echo",
            text_answer(
                500,
                "text/plain",
                format!("bad request: refresh_token={form}&again={every_byte}"),
            ),
        ),
        (
            "base64 echo",
            text_answer(
                500,
                "text/plain",
                format!(
                    "echo {} {}",
                    STANDARD.encode(refresh),
                    URL_SAFE_NO_PAD.encode(format!("refresh_token={refresh}"))
                ),
            ),
        ),
        (
            "JSON-escaped echo",
            text_answer(
                502,
                "application/json",
                format!(r#"{{"message":"no such token {escaped}"}}"#),
            ),
        ),
        (
            "refusal with the token",
            Canned::json(
                400,
                json!({"error": "invalid_grant", "error_description": format!("{refresh} is not valid")}),
            ),
        ),
        (
            "429 with the token",
            Canned::json(
                429,
                json!({"message": format!("slow down, {refresh}"), "access_token": PLANTED}),
            ),
        ),
    ]
}

/// Everything an operator can read about the account: its API entries, the CLI's account
/// list and status, and the log.
async fn everything_said(d: &Daemon, rotate: &Cli) -> String {
    let (_, all) = d.call("GET", "/v1/accounts", None).await;
    let (_, one) = d.call("GET", "/v1/accounts/shiphero/acme", None).await;
    let list = d.cli(&["accounts", "list"]).await;
    format!(
        "{all}\n{one}\n{}\n{}\n{}\n{}\n{}",
        rotate.stdout,
        rotate.stderr,
        list.stdout,
        list.stderr,
        d.logs()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_refresh_answers_leave_nothing_of_a_token_in_any_text() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[verify]\ninterval = \"1s\"\nconfirm_after = \"1h\"\n";
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), extra),
    )
    .await;
    let user = d.register(&fake, "acme", "ops@acme.test").await;
    for (name, answer) in hostile_refresh_answers(&user.refresh_token) {
        fake.set_canned(Some(&user.email), Route::Refresh, Some(answer));
        let rotate = d.cli(&["rotate", "shiphero/acme"]).await;
        let account = d.account("shiphero/acme").await;
        assert!(account["last_error"].is_string(), "{name}: {account}");
        let said = everything_said(&d, &rotate).await;
        for secret in [user.refresh_token.as_str(), PLANTED] {
            if let Some(piece) = leaked(&said, secret) {
                panic!("{name}: {piece:?} of a token reached an operator's text:\n{said}");
            }
        }
    }
    // The refusal's code, from RFC 6749's list, still says what happened.
    assert!(d.logs().contains("invalid_grant"), "{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_api_answers_keep_a_short_excerpt_without_any_token() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[verify]\ninterval = \"1s\"\nconfirm_after = \"1h\"\n";
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), extra),
    )
    .await;
    let user = d.register(&fake, "acme", "ops@acme.test").await;
    let served = d
        .cli(&["get", "shiphero/acme"])
        .await
        .stdout
        .trim()
        .to_string();
    let form: String = url::form_urlencoded::byte_serialize(served.as_bytes()).collect();
    let answer = Canned::json(
        500,
        json!({"message": format!("backend hiccup: bearer {form} / {} / {PLANTED}", STANDARD.encode(&served))}),
    );
    fake.set_canned(Some(&user.email), Route::Graphql, Some(answer));
    let account = wait_for("the probe's error to be recorded", || async {
        let a = d.account("shiphero/acme").await;
        a["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("backend hiccup"))
            .then_some(a)
    })
    .await;
    let rotate = d.cli(&["verify", "shiphero/acme"]).await;
    let said = everything_said(&d, &rotate).await;
    for secret in [served.as_str(), PLANTED, user.refresh_token.as_str()] {
        assert!(leaked(&said, secret).is_none(), "{account}\n{said}");
    }
}
