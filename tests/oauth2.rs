//! The oauth2 provider end to end (issue 31): the real binary against the simulated carrier,
//! a UPS-style client-credentials account and a refresh-token account rotate from the answer's
//! `expires_in`, are proven by their probe, are flagged on a confirmed `invalid_client` or
//! `invalid_grant`, survive noise, and are read through `get`, a sink and `exec`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use shiptoken::providers::oauth2::sim::{
    CarrierMode, FEDEX_TOKEN_PATH, FakeCarrier, PROBE_PATH, UPS_TOKEN_PATH,
};

/// A daemon with presets for the fake's UPS and FedEx paths (an operator's presets), checking
/// every second and flagging evidence seen again 2 seconds after it was first seen.
async fn daemon(dir: &std::path::Path, fake: &FakeCarrier, extra: &str) -> Daemon {
    daemon_checking_every(dir, fake, "1s", extra).await
}

/// [`daemon`], with scheduled probes `interval` apart.
async fn daemon_checking_every(
    dir: &std::path::Path,
    fake: &FakeCarrier,
    interval: &str,
    extra: &str,
) -> Daemon {
    let base = fake.base_url();
    let extra = format!(
        r#"[verify]
interval = "{interval}"
suspended_interval = "2s"
confirm_after = "2s"

[oauth2.presets.fake-ups]
token_url = "{base}{UPS_TOKEN_PATH}"
api_base = "{base}"
auth = "basic"
probe_url = "{base}{PROBE_PATH}"

[oauth2.presets.fake-fedex]
token_url = "{base}{FEDEX_TOKEN_PATH}"
auth = "body"
probe_url = "{base}{PROBE_PATH}"
{extra}"#
    );
    Daemon::start(dir, &config_text(dir, "http://127.0.0.1:9", &extra)).await
}

/// Registers `oauth2/NAME` with the preset and the fake client's secret (and a refresh token).
async fn add(
    d: &Daemon,
    dir: &std::path::Path,
    name: &str,
    preset: &str,
    client: &str,
    secret: &str,
    refresh: Option<&str>,
) {
    let secret_file = dir.join(format!("{name}.secret"));
    std::fs::write(&secret_file, secret).unwrap();
    let mut args = vec![
        "accounts",
        "add",
        "oauth2",
        name,
        "--preset",
        preset,
        "--client-id",
        client,
        "--client-secret-file",
        secret_file.to_str().unwrap(),
    ];
    let refresh_file = dir.join(format!("{name}.refresh"));
    if let Some(r) = refresh {
        std::fs::write(&refresh_file, r).unwrap();
        args.extend(["--refresh-token-file", refresh_file.to_str().unwrap()]);
    }
    let out = d.cli(&args).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// Waits until `key` is flagged `revoked`, its last error naming the carrier's
/// `invalid_client`.
async fn revoked_for_invalid_client(d: &Daemon, key: &str) {
    let account = d.wait_for_status(key, "revoked").await;
    assert!(
        account["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_client"),
        "{account}"
    );
}

async fn served(d: &Daemon, key: &str) -> String {
    let out = d.cli(&["get", key]).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ups_client_credentials_account_rotates_and_is_read_through_get_a_sink_and_exec() {
    let fake = FakeCarrier::start().await.unwrap();
    // UPS's answer, with a short life: `expires_in` "6" as a string, renewed at
    // oauth2.rotate_at (2/3 plus the spread: 4 to 4.5 s).
    fake.set_lifetime(6);
    let secret = fake.add_client("ups-app");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sink = dir.path().join("ups.token");
    let d = daemon(
        dir.path(),
        &fake,
        &format!(
            "\n[[sink]]\naccount = \"oauth2/ups\"\npath = \"{}\"\n",
            sink.display()
        ),
    )
    .await;
    add(&d, dir.path(), "ups", "fake-ups", "ups-app", &secret, None).await;
    d.wait_for_status("oauth2/ups", "active").await;
    let first = served(&d, "oauth2/ups").await;
    assert!(fake.token_works(&first));

    // Rotated from the answer's lifetime, not by a guess: a new token within a few seconds.
    fake.wait_for_token_calls("ups-app", 3).await;
    let later = wait_for("a rotated token to be served", || async {
        let t = served(&d, "oauth2/ups").await;
        (t != first && fake.token_works(&t)).then_some(t)
    })
    .await;
    wait_for("the sink to hold a served token", || async {
        let held = std::fs::read_to_string(&sink).ok()?;
        fake.token_works(held.trim()).then_some(())
    })
    .await;
    let seen = dir.path().join("seen");
    let script = format!("printf '%s' \"$OAUTH2_ACCESS_TOKEN\" > {}", seen.display());
    let out = d
        .cli(&[
            "exec",
            "--token",
            "oauth2/ups",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(fake.token_works(std::fs::read_to_string(&seen).unwrap().trim()));
    assert!(
        !d.logs().contains(&secret),
        "the client secret reached a log"
    );
    assert!(!d.logs().contains(&later), "a token reached a log");

    // The client is revoked: invalid_client, confirmed, flags the account.
    fake.set_mode("ups-app", CarrierMode::Revoked);
    revoked_for_invalid_client(&d, "oauth2/ups").await;
    let out = d.cli(&["get", "oauth2/ups"]).await;
    assert_ne!(out.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fedex_account_survives_noise_and_a_bad_scope_is_misconfigured_not_revoked() {
    let fake = FakeCarrier::start().await.unwrap();
    fake.set_lifetime(6);
    let secret = fake.add_client("fedex-app");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = daemon(dir.path(), &fake, "").await;
    add(
        &d,
        dir.path(),
        "fx",
        "fake-fedex",
        "fedex-app",
        &secret,
        None,
    )
    .await;
    d.wait_for_status("oauth2/fx", "active").await;

    for mode in [
        CarrierMode::Down,
        CarrierMode::ProxyPage,
        CarrierMode::Throttled,
    ] {
        fake.set_mode("fedex-app", mode);
        let calls = fake.token_calls("fedex-app");
        fake.wait_for_token_calls("fedex-app", calls + 2).await;
        let a = d.account("oauth2/fx").await;
        assert!(
            !["revoked", "suspended", "misconfigured"].contains(&a["status"].as_str().unwrap()),
            "{mode:?} flagged the account: {a}"
        );
        fake.set_mode("fedex-app", CarrierMode::Active);
        d.wait_for_status("oauth2/fx", "active").await;
    }

    fake.set_mode("fedex-app", CarrierMode::BadScope);
    let calls = fake.token_calls("fedex-app");
    fake.wait_for_token_calls("fedex-app", calls + 3).await;
    let a = d.account("oauth2/fx").await;
    assert_ne!(a["status"], "revoked", "{a}");
    let error = a["last_error"].as_str().unwrap_or("");
    assert!(
        error.contains("misconfigured:") && error.contains("invalid_scope"),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_is_stored_durably_and_invalid_grant_revokes() {
    let fake = FakeCarrier::start().await.unwrap();
    fake.set_lifetime(6);
    fake.set_rotate_refresh(true);
    let secret = fake.add_client("rt-app");
    let first_refresh = fake.issue_refresh_token("rt-app").unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut d = daemon(dir.path(), &fake, "").await;
    add(
        &d,
        dir.path(),
        "rt",
        "fake-ups",
        "rt-app",
        &secret,
        Some(&first_refresh),
    )
    .await;
    d.wait_for_status("oauth2/rt", "active").await;
    // Each renewal rotates the refresh token and invalidates the old one: only a daemon that
    // stores each new one keeps renewing.
    fake.wait_for_token_calls("rt-app", 3).await;
    assert_ne!(fake.refresh_token("rt-app").unwrap(), first_refresh);

    // A restart reads the stored refresh token: the rotated one, or the next call fails.
    d.stop().await;
    let calls = fake.token_calls("rt-app");
    let d2 = daemon(dir.path(), &fake, "").await;
    fake.wait_for_token_calls("rt-app", calls + 2).await;
    let a = d2.wait_for_status("oauth2/rt", "active").await;
    assert!(
        a["last_error"].is_null() || !a["last_error"].as_str().unwrap().contains("invalid_grant"),
        "{a}"
    );
    assert!(fake.token_works(&served(&d2, "oauth2/rt").await));

    // An answer without a refresh token keeps the stored one.
    fake.set_rotate_refresh(false);
    let calls = fake.token_calls("rt-app");
    fake.wait_for_token_calls("rt-app", calls + 2).await;
    d2.wait_for_status("oauth2/rt", "active").await;

    let logs = d2.logs();
    assert!(!logs.contains(&secret), "the client secret reached a log");
    assert!(
        !logs.contains(&fake.refresh_token("rt-app").unwrap()),
        "a refresh token reached a log"
    );

    // The grant is revoked elsewhere (a new authorization replaced it): invalid_grant.
    fake.issue_refresh_token("rt-app");
    let a = d2.wait_for_status("oauth2/rt", "revoked").await;
    assert!(
        a["last_error"].as_str().unwrap().contains("invalid_grant"),
        "{a}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_has_a_ups_demo_account_that_works() {
    let dev = start_dev().await;
    assert!(
        dev.printed.contains("get oauth2/demo-ups"),
        "{}",
        dev.printed
    );
    let socket = dev.socket.clone();
    wait_for("oauth2/demo-ups to be active", || {
        let socket = socket.clone();
        async move {
            let a = shiptoken::client::call(&socket, "GET", "/v1/accounts/oauth2/demo-ups", None)
                .await
                .ok()?
                .body;
            (a["status"] == "active").then_some(())
        }
    })
    .await;
    let out = cli(
        &[
            "--socket",
            socket.to_str().unwrap(),
            "get",
            "oauth2/demo-ups",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_carrier_token_is_still_probed_and_a_lost_preset_is_told() {
    let fake = FakeCarrier::start().await.unwrap();
    // UPS's own 4-hour lifetime: nothing is renewed during the test, only probed.
    let secret = fake.add_client("ups-app");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut d = daemon(dir.path(), &fake, "").await;
    add(&d, dir.path(), "ups", "fake-ups", "ups-app", &secret, None).await;
    d.wait_for_status("oauth2/ups", "active").await;
    let token = served(&d, "oauth2/ups").await;
    d.stop().await;

    let mut d = Daemon::start_with(dir.path(), &d.config, &[]).await;
    assert_eq!(served(&d, "oauth2/ups").await, token);
    // Revoked at the carrier while the daemon was down: the probe of the token it issued
    // before the restart says so, and a confirmed invalid_client flags the account.
    fake.set_mode("ups-app", CarrierMode::Revoked);
    revoked_for_invalid_client(&d, "oauth2/ups").await;

    // The operator drops the preset the account names: the next start says so at once.
    d.stop().await;
    let text = std::fs::read_to_string(&d.config).unwrap();
    let (before, after) = text.split_once("[oauth2.presets.fake-ups]").unwrap();
    let after = after.split_once("[oauth2.presets.fake-fedex]").unwrap().1;
    std::fs::write(
        &d.config,
        format!("{before}[oauth2.presets.fake-fedex]{after}"),
    )
    .unwrap();
    let d = Daemon::start_with(dir.path(), &d.config, &[]).await;
    d.wait_for_log("oauth2/ups names the preset \"fake-ups\", which is neither built in nor in [oauth2.presets]")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_api_is_called_through_the_proxy_and_its_refusal_is_evidence() {
    let fake = FakeCarrier::start().await.unwrap();
    let secret = fake.add_client("ups-app");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // Scheduled probes out of the way: the application's call is the first to see trouble
    // (the probe then confirms it, as it would a probe's own evidence).
    let d = daemon_checking_every(dir.path(), &fake, "1h", "").await;
    add(&d, dir.path(), "ups", "fake-ups", "ups-app", &secret, None).await;
    // A generic account without an API host cannot be proxied, and says how to give one.
    let other = fake.add_client("other-app");
    let token_url = format!("{}{UPS_TOKEN_PATH}", fake.base_url());
    let secret_file = dir.path().join("other.secret");
    std::fs::write(&secret_file, &other).unwrap();
    let out = d
        .cli(&[
            "accounts",
            "add",
            "oauth2",
            "other",
            "--preset",
            "generic",
            "--client-id",
            "other-app",
            "--client-secret-file",
            secret_file.to_str().unwrap(),
            "--token-url",
            &token_url,
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    d.wait_for_status("oauth2/ups", "active").await;

    // The application never holds the token: the proxy adds it, the carrier accepts it.
    let (status, body) = d
        .call("GET", &format!("/v1/proxy/oauth2/ups{PROBE_PATH}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    let (status, body) = d
        .call("GET", &format!("/v1/proxy/oauth2/other{PROBE_PATH}"), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("--api-base"), "{body}");

    // Revoked at the carrier: the application's own call is the first to see it, and the
    // confirmed refusal flags the account long before the next scheduled probe.
    fake.set_mode("ups-app", CarrierMode::Revoked);
    let (status, _) = d
        .call("GET", &format!("/v1/proxy/oauth2/ups{PROBE_PATH}"), None)
        .await;
    assert_eq!(status, 401);
    revoked_for_invalid_client(&d, "oauth2/ups").await;
    let before = fake.total_requests();
    let (status, body) = d
        .call("GET", &format!("/v1/proxy/oauth2/ups{PROBE_PATH}"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        fake.total_requests(),
        before,
        "a flagged account's call reached the carrier"
    );
}
