//! Judging on evidence, tried as an operator would: answers that say nothing about an account
//! (proxy pages, middlebox statuses, server-side GraphQL errors, scope and schema errors,
//! throttling) never flag a healthy account or withhold its working token; real suspensions
//! and revocations are still flagged once confirmed; an incident is not a thousand
//! suspensions; a token of another account is never served. Real binary, fake upstreams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use shiptoken::sim::{AuthFailureShape, Canned, Route};

/// A daemon checking every second, retrying after at most 4 s, that flags evidence confirmed
/// after `confirm_after` (on its own clock, which the tests move).
async fn daemon(
    fake: &FakeShipHero,
    confirm_after: &str,
    extra: &str,
) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[verify]\ninterval = \"1s\"\nsuspended_interval = \"2s\"\nconfirm_after = \"{confirm_after}\"\n{extra}"
    );
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), &extra),
    )
    .await;
    (dir, d)
}

async fn get(d: &Daemon, key: &str) -> Cli {
    d.cli(&["get", key]).await
}

fn kinds(d: &Value) -> Vec<String> {
    d["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// What ShipHero's edge and API answer that proves nothing about the account.
fn non_evidence_graphql() -> Vec<(&'static str, Canned)> {
    vec![
        ("HTML 200", Canned::html(200)),
        ("HTML 403", Canned::html(403)),
        ("HTML 404", Canned::html(404)),
        ("407 from a proxy", Canned::html(407)),
        ("408 from a middlebox", Canned::html(408)),
        (
            "400 with a foreign body",
            Canned::json(400, json!({"status": "bad request", "path": "/graphql"})),
        ),
        ("401 with an HTML body", Canned::html(401)),
        (
            "statement timeout",
            Canned::graphql_error(None, "canceling statement due to statement timeout"),
        ),
        (
            "scope error",
            Canned::graphql_error(Some(7), "Missing required scope(s): view:orders"),
        ),
        (
            "schema error",
            Canned::json(
                200,
                json!({"errors": [{"message": "Cannot query field \"id\" on type \"AccountData\"."}]}),
            ),
        ),
        (
            "throttled",
            Canned::graphql_error(
                Some(30),
                "not enough credits. In 2 seconds you will have enough credits",
            ),
        ),
        (
            "429",
            Canned::json(429, json!({"message": "Too Many Requests"}))
                .with_header("retry-after", "1"),
        ),
        ("502", Canned::html(502)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shiphero_answer_that_proves_nothing_flags_a_healthy_account_or_withholds_its_token() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "30s", "").await;
    let user = d.register(&fake, "acme", "ops@acme.test").await;
    d.wait_for_status("shiphero/acme", "active").await;

    for (what, answer) in non_evidence_graphql() {
        fake.set_canned(Some(&user.email), Route::Graphql, Some(answer));
        // Tried now, and again past the confirmation span: nothing to confirm.
        let first = d.cli(&["verify", "shiphero/acme"]).await;
        assert_ne!(first.code, 3, "{what}: {first:?}");
        d.advance("31s").await;
        let again = d.cli(&["rotate", "shiphero/acme"]).await;
        assert_ne!(again.code, 3, "{what}: {again:?}");
        let a = d.account("shiphero/acme").await;
        assert_eq!(a["status"], "active", "{what}: {a}");
        assert!(
            a["last_error"].is_string(),
            "{what}: the trouble is recorded: {a}"
        );
        let out = get(&d, "shiphero/acme").await;
        assert_eq!(out.code, 0, "{what}: {out:?}");
        assert!(
            fake.token_is_valid(out.stdout.trim()),
            "{what}: served a token that does not work"
        );
        fake.set_canned(Some(&user.email), Route::Graphql, None);
        assert_eq!(d.cli(&["verify", "shiphero/acme"]).await.code, 0, "{what}");
    }
    let misconfigured = d
        .call("GET", "/v1/accounts/shiphero/acme/events", None)
        .await
        .1;
    assert!(
        kinds(&misconfigured).contains(&"misconfigured".to_string()),
        "{misconfigured}"
    );
    assert!(
        !kinds(&misconfigured).contains(&"flagged".to_string()),
        "{misconfigured}"
    );

    // The refresh endpoint behind a WAF: a refusal page is not ShipHero refusing the token.
    for status in [403, 400] {
        fake.set_canned(
            Some(&user.email),
            Route::Refresh,
            Some(Canned::html(status)),
        );
        let out = d.cli(&["rotate", "shiphero/acme"]).await;
        assert_ne!(out.code, 3, "HTML {status} on refresh: {out:?}");
        d.advance("31s").await;
        assert_ne!(d.cli(&["rotate", "shiphero/acme"]).await.code, 3);
        assert_eq!(
            d.account("shiphero/acme").await["status"],
            "active",
            "HTML {status}"
        );
        let out = get(&d, "shiphero/acme").await;
        assert_eq!(out.code, 0);
        assert!(fake.token_is_valid(out.stdout.trim()));
    }
    fake.set_canned(Some(&user.email), Route::Refresh, None);
    assert_eq!(d.cli(&["rotate", "shiphero/acme"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_whose_probe_proves_nothing_is_the_one_served() {
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_refresh_invalidates_previous(true);
    let (_dir, d) = daemon(&fake, "30s", "").await;
    let user = d.register(&fake, "acme", "ops@acme.test").await;
    fake.set_canned(Some(&user.email), Route::Graphql, Some(Canned::html(503)));
    let out = d.cli(&["rotate", "shiphero/acme"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    // ShipHero invalidated the previous token: only the fresh one works, and it is served.
    let served = get(&d, "shiphero/acme").await;
    assert_eq!(served.code, 0, "{served:?}");
    assert_eq!(
        Some(served.stdout.trim().to_string()),
        fake.latest_token(&user.email)
    );
    assert!(fake.token_is_valid(served.stdout.trim()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_suspensions_and_revocations_are_flagged_once_confirmed() {
    let fake = FakeShipHero::start().await.unwrap();
    // The default span: 15 minutes on the daemon's clock.
    let (_dir, d) = daemon(&fake, "15m", "").await;
    let suspended = d.register(&fake, "susp", "ops@susp.test").await;
    let revoked = d.register(&fake, "rev", "ops@rev.test").await;
    let _healthy = d.register(&fake, "ok", "ops@ok.test").await;
    fake.set_mode(&suspended.email, ShipHeroMode::Suspended);
    fake.set_mode(&revoked.email, ShipHeroMode::Revoked);
    // First seen within a check interval: suspected, still active and served.
    for key in ["shiphero/susp", "shiphero/rev"] {
        let a = wait_for("evidence to be recorded", || async {
            let a = d.account(key).await;
            a["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("evidence first seen"))
                .then_some(a)
        })
        .await;
        assert_eq!(a["status"], "active", "{a}");
    }
    d.advance("15m").await;
    let s = d.wait_for_status("shiphero/susp", "suspended").await;
    assert!(
        s["last_error"].as_str().unwrap().contains("request_id"),
        "{s}"
    );
    d.wait_for_status("shiphero/rev", "revoked").await;
    assert_eq!(get(&d, "shiphero/susp").await.code, 3);
    assert_eq!(get(&d, "shiphero/rev").await.code, 3);
    assert_eq!(d.account("shiphero/ok").await["status"], "active");
    // And a flag clears on the first passing probe.
    fake.set_mode(&suspended.email, ShipHeroMode::Active);
    d.wait_for_status("shiphero/susp", "active").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undocumented_answer_only_this_account_gets_is_a_refusal_and_one_everyone_gets_is_not() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "30s", "").await;
    d.register(&fake, "ok1", "ops@ok1.test").await;
    d.register(&fake, "ok2", "ops@ok2.test").await;
    let odd = d.register(&fake, "odd", "ops@odd.test").await;

    // Everyone gets null account data at once: nobody is flagged.
    fake.set_canned(
        None,
        Route::Graphql,
        Some(Canned::json(
            200,
            json!({"data": {"account": {"request_id": "r", "complexity": 1, "data": null}}}),
        )),
    );
    for key in ["shiphero/ok1", "shiphero/odd"] {
        d.cli(&["verify", key]).await;
    }
    d.advance("31s").await;
    for key in ["shiphero/ok1", "shiphero/ok2", "shiphero/odd"] {
        d.cli(&["verify", key]).await;
        assert_eq!(d.account(key).await["status"], "active", "{key}");
    }
    fake.set_canned(None, Route::Graphql, None);

    // Only `odd` gets it, while the others pass: a refusal in an undocumented way.
    fake.set_auth_failure_shape(&odd.email, AuthFailureShape::NullData);
    fake.set_mode(&odd.email, ShipHeroMode::Suspended);
    wait_for("evidence about odd", || async {
        let a = d.account("shiphero/odd").await;
        a["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("evidence first seen"))
            .then_some(())
    })
    .await;
    d.advance("31s").await;
    let a = d.wait_for_status("shiphero/odd", "suspended").await;
    assert!(
        a["last_error"].as_str().unwrap().contains("undocumented"),
        "{a}"
    );
    assert_eq!(d.account("shiphero/ok1").await["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_accounts_with_evidence_at_once_are_an_incident_not_fifty_flags() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "30s", "incident_window = \"1m\"\n").await;
    let mut emails = Vec::new();
    for i in 0..50 {
        let email = format!("ops@m{i}.test");
        let user = fake.add_user(&email);
        let body = json!({"provider": "shiphero", "account": format!("m{i}"), "email": email,
                          "refresh_token": user.refresh_token, "access_token": user.access_token});
        let (status, b) = d.call("POST", "/v1/accounts", Some(&body)).await;
        assert_eq!(status, 201, "{b}");
        emails.push(email);
    }
    for i in 0..50 {
        d.wait_for_status(&format!("shiphero/m{i}"), "active").await;
    }
    // An incident at ShipHero: every API call refused in ShipHero's own format.
    for e in &emails {
        fake.set_mode(e, ShipHeroMode::Suspended);
    }
    let health = wait_for("the incident to show in /v1/health", || async {
        let (_, h) = d.call("GET", "/v1/health", None).await;
        (h["incidents"].as_array().is_some_and(|a| !a.is_empty())).then_some(h)
    })
    .await;
    assert_eq!(health["incidents"][0]["provider"], "shiphero", "{health}");
    d.wait_for_log("treating it as an incident").await;
    d.advance("31s").await;
    d.wait_for_sweep().await;
    d.wait_for_sweep().await;
    let (_, all) = d.call("GET", "/v1/accounts", None).await;
    let flagged: Vec<&Value> = all["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] != "active")
        .collect();
    assert!(
        flagged.is_empty(),
        "{} flagged during an incident: {flagged:?}",
        flagged.len()
    );
    assert_eq!(get(&d, "shiphero/m7").await.code, 0);

    // ShipHero recovers; a quiet window later the incident is over.
    for e in &emails {
        fake.set_mode(e, ShipHeroMode::Active);
    }
    d.wait_for_sweep().await;
    d.advance("61s").await;
    wait_for("the incident to end", || async {
        let (_, h) = d.call("GET", "/v1/health", None).await;
        (h["incidents"].as_array().is_some_and(Vec::is_empty)).then_some(())
    })
    .await;
    d.wait_for_log("is over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_shiphero_account_is_never_served() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "30s", "").await;
    let acme = d.register(&fake, "acme", "ops@acme.test").await;
    let other = fake.add_user("ops@other.test");
    let before = get(&d, "shiphero/acme").await.stdout.trim().to_string();
    fake.set_issue_as(&acme.email, Some(&other.email));
    let out = d.cli(&["rotate", "shiphero/acme"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    let a = d.account("shiphero/acme").await;
    assert_eq!(a["status"], "revoked");
    assert!(
        a["last_error"]
            .as_str()
            .unwrap()
            .contains("token belongs to another account"),
        "{a}"
    );
    let served = get(&d, "shiphero/acme").await;
    assert_eq!(served.code, 3, "{served:?}");
    let foreign = fake.latest_token(&other.email).unwrap();
    assert_ne!(served.stdout.trim(), foreign);
    assert!(!d.logs().contains(&foreign) && !d.logs().contains(&before));
    let events = d
        .call("GET", "/v1/accounts/shiphero/acme/events", None)
        .await
        .1;
    assert!(
        events
            .to_string()
            .contains("token belongs to another account"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_shippo_answer_that_proves_nothing_flags_a_healthy_account() {
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shippo_section = format!(
        "callback_listen = \"\"\napi_base = \"{0}\"\noauth_base = \"{0}\"",
        shippo.base_url()
    );
    let text = ConfigText {
        shiphero_base: &shiphero.base_url(),
        shippo: &shippo_section,
        extra: "[verify]\ninterval = \"1s\"\nconfirm_after = \"30s\"\n",
        ..ConfigText::default()
    }
    .render(dir.path());
    let d = Daemon::start(dir.path(), &text).await;
    let token = shippo.add_token("shop");
    d.add_shippo("shop", &token).await;
    d.wait_for_status("shippo/shop", "active").await;

    for (what, answer) in [
        (
            "409 too many concurrent calls",
            Canned::json(409, json!({"detail": "Too many concurrent calls."})),
        ),
        ("404", Canned::json(404, json!({"detail": "Not found."}))),
        ("400", Canned::json(400, json!({"detail": "Bad request."}))),
        ("HTML 200 from a proxy", Canned::html(200)),
        ("HTML 401 from a proxy", Canned::html(401)),
        ("403 without Shippo's JSON", Canned::html(403)),
    ] {
        shippo.set_canned(None, Route::ShippoApi, Some(answer));
        let first = d.cli(&["verify", "shippo/shop"]).await;
        assert_ne!(first.code, 3, "{what}: {first:?}");
        d.advance("31s").await;
        let again = d.cli(&["verify", "shippo/shop"]).await;
        assert_ne!(again.code, 3, "{what}: {again:?}");
        assert_eq!(d.account("shippo/shop").await["status"], "active", "{what}");
        let served = get(&d, "shippo/shop").await;
        assert_eq!(
            (served.code, served.stdout.trim()),
            (0, token.as_str()),
            "{what}"
        );
        shippo.set_canned(None, Route::ShippoApi, None);
        assert_eq!(d.cli(&["verify", "shippo/shop"]).await.code, 0, "{what}");
    }
}
