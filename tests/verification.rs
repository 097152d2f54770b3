//! Catching the silent failure: every token is proved with a real API call, suspended and
//! revoked accounts are flagged, outages and throttling never are, and flags clear by
//! themselves. Runs the real binary against the simulated ShipHero and Shippo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use shiptoken::sim::{AuthFailureShape, RefreshRejectShape};

/// A daemon that checks every second, re-checks flagged accounts every 2 seconds, and flags
/// evidence seen again 2 seconds after it was first seen.
async fn daemon(fake: &FakeShipHero, extra: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[verify]\ninterval = \"1s\"\nsuspended_interval = \"2s\"\nconfirm_after = \"2s\"\n{extra}"
    );
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), &extra),
    )
    .await;
    (dir, d)
}

async fn registered(fake: &FakeShipHero, d: &Daemon, name: &str) -> String {
    let email = format!("{name}@verify.test");
    let user = fake.add_user(&email);
    let out = d
        .add_shiphero(name, &email, &user.refresh_token, None)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    d.wait_for_status(&format!("shiphero/{name}"), "active")
        .await;
    email
}

fn event_kinds(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_account_is_flagged_within_a_cycle_and_cleared_when_it_works_again() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "").await;
    let email = registered(&fake, &d, "acme").await;

    // The silent failure: refreshes still answer 200, the API rejects every token.
    fake.set_mode(&email, ShipHeroMode::Suspended);
    let account = d.wait_for_status("shiphero/acme", "suspended").await;
    assert!(
        account["last_error"]
            .as_str()
            .unwrap()
            .contains("request_id"),
        "{account}"
    );
    assert!(
        fake.refresh_count(&email) >= 2,
        "a refresh must decide between suspended and revoked"
    );

    // Everything a user looks at says the same thing.
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"], "account_suspended");
    assert_eq!(body["status"], "suspended");
    assert_eq!(body["status_since"], account["status_since"]);
    assert!(body["last_error"].as_str().unwrap().contains("request_id"));
    let out = d.cli(&["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("suspended"));
    let list = d.cli(&["accounts", "list"]).await.stdout;
    assert!(list.contains("suspended ("), "{list}");
    d.wait_for_log("account flagged suspended").await;
    assert!(
        d.logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("flagged") && l.contains("acme"))
    );
    let kinds = event_kinds(
        &d.call("GET", "/v1/accounts/shiphero/acme/events", None)
            .await
            .1,
    );
    assert!(kinds.contains(&"flagged".to_string()), "{kinds:?}");

    // Reactivated upstream: the flag clears by itself within one suspended_interval.
    fake.set_mode(&email, ShipHeroMode::Active);
    d.wait_for_status("shiphero/acme", "active").await;
    d.wait_for_log("account reactivated").await;
    let out = d.cli(&["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 0);
    assert!(fake.token_is_valid(out.stdout.trim()));
    let kinds = event_kinds(
        &d.call("GET", "/v1/accounts/shiphero/acme/events", None)
            .await
            .1,
    );
    assert!(kinds.contains(&"cleared".to_string()), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_shape_of_the_api_flags_a_suspended_account() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "").await;
    // Passes throughout, so that null account data for one account alone is a refusal.
    registered(&fake, &d, "control").await;
    let shapes = [
        ("gql", AuthFailureShape::GraphqlError),
        ("h401", AuthFailureShape::Http401),
        ("h403", AuthFailureShape::Http403),
        ("nulldata", AuthFailureShape::NullData),
    ];
    for (name, shape) in shapes {
        let email = registered(&fake, &d, name).await;
        fake.set_auth_failure_shape(&email, shape);
        fake.set_mode(&email, ShipHeroMode::Suspended);
        // Seen once: evidence, not yet a flag.
        let out = d.cli(&["verify", &format!("shiphero/{name}")]).await;
        assert_eq!(out.code, 1, "{name}: {out:?}");
        // Seen again after confirm_after by the routine checks: suspended.
        d.wait_for_status(&format!("shiphero/{name}"), "suspended")
            .await;
        let out = d.cli(&["verify", &format!("shiphero/{name}")]).await;
        assert_eq!(out.code, 3, "{name}: {out:?}");
    }
    assert_eq!(d.account("shiphero/control").await["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_that_goes_away_before_it_is_confirmed_flags_nothing() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "").await;
    let email = registered(&fake, &d, "glitch").await;
    fake.set_mode(&email, ShipHeroMode::Suspended);
    let out = d.cli(&["verify", "shiphero/glitch"]).await;
    assert_eq!(out.code, 1, "evidence seen once is not a flag: {out:?}");
    let a = d.account("shiphero/glitch").await;
    assert_eq!(a["status"], "active");
    assert!(
        a["last_error"]
            .as_str()
            .unwrap()
            .contains("evidence first seen"),
        "{a}"
    );
    // Recovered before the span is over: the doubt clears, nothing was flagged.
    fake.set_mode(&email, ShipHeroMode::Active);
    assert_eq!(d.cli(&["verify", "shiphero/glitch"]).await.code, 0);
    let a = d.account("shiphero/glitch").await;
    assert_eq!(a["status"], "active");
    assert!(a["last_error"].is_null(), "{a}");
    let kinds = event_kinds(
        &d.call("GET", "/v1/accounts/shiphero/glitch/events", None)
            .await
            .1,
    );
    assert!(kinds.contains(&"suspected".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"flagged".to_string()), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refresh_token_is_revoked_in_every_shape() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "").await;
    for (name, shape) in [
        ("r401", RefreshRejectShape::InvalidGrant401),
        ("r403", RefreshRejectShape::Message403),
        ("r400", RefreshRejectShape::InvalidGrant400),
    ] {
        let email = registered(&fake, &d, name).await;
        fake.set_refresh_reject_shape(&email, shape);
        fake.set_mode(&email, ShipHeroMode::Revoked);
        // Found by the routine check (interval 1 s): the token fails, the refresh is refused.
        let account = d
            .wait_for_status(&format!("shiphero/{name}"), "revoked")
            .await;
        assert!(
            account["last_error"]
                .as_str()
                .unwrap()
                .contains("refused the refresh token"),
            "{account}"
        );
        let (status, body) = d
            .call("GET", &format!("/v1/tokens/shiphero/{name}"), None)
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("account_revoked"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_any_length_flags_nothing_while_the_token_is_valid() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "").await;
    let email = registered(&fake, &d, "steady").await;
    let token = d.cli(&["get", "shiphero/steady"]).await.stdout;
    fake.set_mode(&email, ShipHeroMode::Down);
    let calls = fake.graphql_count(&email);
    // Many failed check cycles (1 s interval, backoff capped at 4 s).
    tokio::time::timeout(DEADLINE, fake.wait_for_graphql(&email, calls + 4))
        .await
        .unwrap();
    let account = d.account("shiphero/steady").await;
    assert_eq!(
        account["status"], "active",
        "an outage is not a suspension: {account}"
    );
    assert!(
        account["last_error"].as_str().unwrap().contains("503")
            || account["last_error"].as_str().unwrap().contains("502")
    );
    assert_eq!(d.cli(&["get", "shiphero/steady"]).await.stdout, token);
    let kinds = event_kinds(
        &d.call("GET", "/v1/accounts/shiphero/steady/events", None)
            .await
            .1,
    );
    assert!(!kinds.contains(&"flagged".to_string()), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "failed").count(),
        1,
        "one history entry per failure streak: {kinds:?}"
    );

    // A hanging upstream times out the same way.
    fake.set_mode(&email, ShipHeroMode::Hang);
    let out = d.cli(&["verify", "shiphero/steady"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("timed out"), "{out:?}");
    assert_eq!(d.account("shiphero/steady").await["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_waits_as_told_without_flagging() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, "").await;
    let email = registered(&fake, &d, "busy").await;
    for (in_extensions, mode) in [
        (false, ShipHeroMode::Throttled { seconds: 7 }),
        (true, ShipHeroMode::Throttled { seconds: 7 }),
        (false, ShipHeroMode::Throttled429 { seconds: 7 }),
    ] {
        fake.set_throttle_in_extensions(in_extensions);
        fake.set_mode(&email, mode);
        let (_, health) = d.call("GET", "/v1/health", None).await;
        let now =
            shiptoken::clock::Timestamp::parse_rfc3339(health["now"].as_str().unwrap()).unwrap();
        let out = d.cli(&["verify", "shiphero/busy"]).await;
        assert_eq!(out.code, 1, "{mode:?}: {out:?}");
        let account = d.account("shiphero/busy").await;
        assert_eq!(account["status"], "active", "{mode:?}");
        assert!(
            account["last_error"]
                .as_str()
                .unwrap()
                .contains("throttled"),
            "{account}"
        );
        let retry = shiptoken::clock::Timestamp::parse_rfc3339(
            account["next_attempt_at"].as_str().unwrap(),
        )
        .unwrap();
        let wait = retry.since(now);
        assert!(
            wait >= Duration::from_secs(6) && wait <= Duration::from_secs(9),
            "{mode:?}: waits {wait:?}, told 7 s"
        );
        fake.set_mode(&email, ShipHeroMode::Active);
        assert_eq!(d.cli(&["verify", "shiphero/busy"]).await.code, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_could_not_be_refreshed_expires_and_recovers() {
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(3));
    let (_dir, d) = daemon(&fake, "").await;
    let email = registered(&fake, &d, "late").await;
    fake.set_mode(&email, ShipHeroMode::Down);
    let account = d.wait_for_status("shiphero/late", "expired").await;
    assert!(
        account["last_error"].as_str().unwrap().contains("expired"),
        "{account}"
    );
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/late", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("token_expired"))
    );
    assert_eq!(d.cli(&["get", "shiphero/late"]).await.code, 3);

    fake.set_mode(&email, ShipHeroMode::Active);
    d.wait_for_status("shiphero/late", "active").await;
    assert_eq!(d.cli(&["get", "shiphero/late"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_shippo_token_is_flagged() {
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let extra = format!(
        "api_base = \"{0}\"\noauth_base = \"{0}\"\n",
        shippo.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(
        dir.path(),
        &shiphero.base_url(),
        "[verify]\nconfirm_after = \"2s\"\n",
    )
    .replace("[shippo]\n", &format!("[shippo]\n{extra}"));
    let d = Daemon::start(dir.path(), &config).await;
    let token = shippo.add_token("merchant");
    d.add_shippo("merchant", &token).await;
    let (_, body) = d.call("GET", "/v1/tokens/shippo/merchant", None).await;
    assert_eq!(body["headers"]["Authorization"], format!("Bearer {token}"));
    assert_eq!(body["headers"]["Shippo-API-Version"], "2018-02-08");
    assert!(body["expires_at"].is_null());

    shippo.revoke(&token);
    let out = d.cli(&["verify", "shippo/merchant"]).await;
    assert_eq!(out.code, 1, "seen once, not yet confirmed: {out:?}");
    d.wait_for_status("shippo/merchant", "revoked").await;
    let out = d.cli(&["verify", "shippo/merchant"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("Token does not exist"), "{out:?}");
    // A proxy's HTML 200 never clears the flag; only Shippo's own answer does.
    shippo.set_canned(
        None,
        shiptoken::sim::Route::ShippoApi,
        Some(shiptoken::sim::Canned::html(200)),
    );
    assert_eq!(d.cli(&["verify", "shippo/merchant"]).await.code, 3);
    assert_eq!(d.account("shippo/merchant").await["status"], "revoked");
    let (status, body) = d.call("GET", "/v1/tokens/shippo/merchant", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("account_revoked"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_reach_a_signed_webhook_and_a_command() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use tokio::sync::mpsc;

    let (tx, mut rx) = mpsc::unbounded_channel::<(HeaderMap, Bytes)>();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook.secret");
    std::fs::write(&secret_file, "webhook-signing-key\n").unwrap();
    let out_file = dir.path().join("events.jsonl");
    let script = dir.path().join("on-event.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            out_file.display(),
            out_file.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!(
        "[notify]\ncommand = [\"{}\"]\n[[notify.webhooks]]\nurl = \"{hook_url}\"\nsecret_file = \"{}\"\n",
        script.display(),
        secret_file.display()
    );
    let (_dir2, d) = daemon(&fake, &extra).await;
    let email = registered(&fake, &d, "hooked").await;
    // pending -> active is the first change.
    let (headers, body) = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (event["previous_status"].as_str(), event["status"].as_str()),
        (Some("pending"), Some("active"))
    );

    fake.set_mode(&email, ShipHeroMode::Suspended);
    let (headers2, body2) = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_slice(&body2).unwrap();
    assert_eq!(event["event"], "account.status_changed");
    assert_eq!(event["account"], "hooked");
    assert_eq!(event["provider"], "shiphero");
    assert_eq!(
        (event["previous_status"].as_str(), event["status"].as_str()),
        (Some("active"), Some("suspended"))
    );
    assert!(event["reason"].as_str().unwrap().contains("request_id"));
    let expected = shiptoken::notify::signature(
        &shiptoken::secret::Secret::new("webhook-signing-key"),
        &body2,
    );
    assert_eq!(
        headers2[shiptoken::notify::SIGNATURE_HEADER],
        expected.as_str()
    );
    assert_ne!(
        headers[shiptoken::notify::SIGNATURE_HEADER],
        headers2[shiptoken::notify::SIGNATURE_HEADER]
    );

    let lines = wait_for("the command to record two events", || async {
        let text = std::fs::read_to_string(&out_file).unwrap_or_default();
        (text.lines().filter(|l| !l.is_empty()).count() >= 2).then_some(text)
    })
    .await;
    assert!(lines.contains("\"status\":\"suspended\""), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_logged_by_scheme_and_host_only() {
    // One receiver answers 500; on the other port nothing listens.
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let failing = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let refusing = format!("127.0.0.1:{}", free_port());
    let hooks = [
        format!("http://{failing}/services/T0/B0/path-secret-5f2c9e?token=query-secret-81ad"),
        format!("http://{refusing}/hooks/path-secret-77b1/x?sig=query-secret-c0de#frag-secret"),
    ];
    let extra = hooks
        .iter()
        .map(|url| format!("[[notify.webhooks]]\nurl = \"{url}\"\n"))
        .collect::<String>();
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, &format!("[notify]\ntimeout = \"2s\"\n{extra}")).await;
    registered(&fake, &d, "hooked").await;

    // Three attempts each (1 s, then 4 s apart), then the give-up line.
    wait_for("both webhooks to be given up", || async {
        let logs = d.logs();
        (logs.matches("gave up delivering").count() >= 2).then_some(())
    })
    .await;
    let logs = d.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("webhook")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("refused the event")
                && l.contains(&format!("webhook=http://{failing}"))),
        "{logs}"
    );
    assert!(
        lines.iter().any(|l| l.contains("webhook delivery failed")
            && l.contains(&format!("webhook=http://{refusing}"))),
        "{logs}"
    );
    for part in [
        "path-secret",
        "query-secret",
        "frag-secret",
        "/services",
        "/hooks",
        "token=",
        "sig=",
    ] {
        assert!(!logs.contains(part), "{part:?} reached the log:\n{logs}");
    }
}
