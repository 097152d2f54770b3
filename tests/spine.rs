//! The spine end to end: an operator registers a ShipHero developer user, the daemon keeps
//! its token fresh, and an application reads the newest stored token over the socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn daemon_with(fake: &FakeShipHero, extra: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), extra),
    )
    .await;
    (dir, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_user_without_access_token_is_refreshed_probed_and_served() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@acme.test");
    let (_dir, d) = daemon_with(&fake, "").await;

    let out = d
        .add_shiphero("acme", "ops@acme.test", &user.refresh_token, None)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("added shiphero/acme: active"),
        "{out:?}"
    );
    assert_eq!(fake.refresh_count("ops@acme.test"), 1);
    assert!(
        fake.graphql_count("ops@acme.test") >= 1,
        "the new token was never probed"
    );

    let out = d.cli(&["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let served = out.stdout.trim();
    assert_eq!(Some(served.to_string()), fake.latest_token("ops@acme.test"));
    assert!(fake.token_is_valid(served));

    let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["access_token"], served);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["status"], "active");
    assert_eq!(body["headers"]["Authorization"], format!("Bearer {served}"));
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["refresh_after"].as_str().unwrap() < body["expires_at"].as_str().unwrap());

    // The secret never reaches the logs, even at debug level.
    let logs = d.logs();
    assert!(!logs.contains(served), "access token logged");
    assert!(!logs.contains(&user.refresh_token), "refresh token logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_registered_access_token_keeps_its_jwt_expiry_and_is_served_without_refresh() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@beta.test");
    let (_dir, d) = daemon_with(&fake, "").await;

    let out = d
        .add_shiphero(
            "beta",
            "ops@beta.test",
            &user.refresh_token,
            Some(&user.access_token),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        fake.refresh_count("ops@beta.test"),
        0,
        "a fresh 28-day token needs no refresh"
    );

    let exp = shiptoken::sim::jwt::claims(&user.access_token).unwrap()["exp"]
        .as_i64()
        .unwrap();
    let body = d.account("shiphero/beta").await;
    assert_eq!(body["status"], "active");
    assert_eq!(
        body["expires_at"],
        shiptoken::clock::Timestamp::from_secs(exp).to_rfc3339()
    );
    let out = d.cli(&["get", "shiphero/beta"]).await;
    assert_eq!(out.stdout.trim(), user.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_28_day_token_is_rotated_at_half_its_life_on_a_moved_clock() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@gamma.test");
    let (_dir, d) = daemon_with(&fake, "[verify]\ninterval = \"30d\"\n").await;
    d.add_shiphero("gamma", "ops@gamma.test", &user.refresh_token, None)
        .await;
    let first = d.cli(&["get", "shiphero/gamma"]).await.stdout;
    assert_eq!(fake.refresh_count("ops@gamma.test"), 1);

    // Day 13: not yet due.
    d.advance("13d").await;
    fake.advance_clock(Duration::from_secs(13 * 86_400));
    d.wait_for_sweep().await;
    d.wait_for_sweep().await;
    assert_eq!(
        fake.refresh_count("ops@gamma.test"),
        1,
        "refreshed before rotate_at"
    );
    assert_eq!(d.cli(&["get", "shiphero/gamma"]).await.stdout, first);

    // Day 17: past 0.5 of 28 days plus this account's share of the spread (at most 10% of
    // the lifetime, day 16.8): the sweep refreshes, probes and serves the new token.
    d.advance("4d").await;
    fake.advance_clock(Duration::from_secs(4 * 86_400));
    tokio::time::timeout(DEADLINE, fake.wait_for_refreshes("ops@gamma.test", 2))
        .await
        .unwrap();
    let second = wait_for("the new token to be served", || async {
        let out = d.cli(&["get", "shiphero/gamma"]).await.stdout;
        (out != first).then_some(out)
    })
    .await;
    assert_eq!(
        Some(second.trim().to_string()),
        fake.latest_token("ops@gamma.test")
    );
    let events = d
        .call("GET", "/v1/accounts/shiphero/gamma/events", None)
        .await
        .1;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(&kinds[..3], ["added", "rotated", "checked"]);
    assert_eq!(
        kinds.iter().filter(|k| **k == "rotated").count(),
        2,
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_second_token_is_refreshed_at_about_10_seconds_and_probed() {
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(20));
    let user = fake.add_user("ops@twenty.test");
    let (_dir, d) = daemon_with(&fake, "").await;
    d.add_shiphero("twenty", "ops@twenty.test", &user.refresh_token, None)
        .await;
    let first = d.cli(&["get", "shiphero/twenty"]).await.stdout;
    let registered = std::time::Instant::now();
    let probes = fake.graphql_count("ops@twenty.test");

    tokio::time::timeout(
        Duration::from_secs(30),
        fake.wait_for_refreshes("ops@twenty.test", 2),
    )
    .await
    .unwrap();
    // rotate_at 0.5 of 20 s, plus this account's spread (at most 10% of the lifetime): the
    // refresh comes between 10 and 12 s. Only the lower bound is asserted; it is correctness.
    assert!(
        registered.elapsed() >= Duration::from_millis(9_900),
        "refreshed after {:?}",
        registered.elapsed()
    );
    let second = wait_for("the new token to be served", || async {
        let out = d.cli(&["get", "shiphero/twenty"]).await.stdout;
        (out != first).then_some(out)
    })
    .await;
    assert_eq!(
        Some(second.trim().to_string()),
        fake.latest_token("ops@twenty.test")
    );
    assert!(
        fake.graphql_count("ops@twenty.test") > probes,
        "the new token was served unprobed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_get_the_newest_token_while_short_tokens_rotate() {
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(4));
    // Whether a refresh invalidates the old token is unconfirmed: assume it does.
    fake.set_refresh_invalidates_previous(true);
    let user = fake.add_user("ops@delta.test");
    let (_dir, d) = daemon_with(&fake, "").await;
    d.add_shiphero("delta", "ops@delta.test", &user.refresh_token, None)
        .await;
    let issued = std::time::Instant::now();

    tokio::time::timeout(DEADLINE, fake.wait_for_refreshes("ops@delta.test", 2))
        .await
        .unwrap();
    // Not before rotate_at (0.5 x 4 s); this bounds correctness, not speed.
    assert!(
        issued.elapsed() >= Duration::from_millis(1900),
        "refreshed after {:?}",
        issued.elapsed()
    );
    // Whatever moment a reader asks, it gets the newest stored token: never one older than
    // the token before ShipHero's latest (which may still be on its way to the registry at
    // that instant), and never an older one than a previous answer.
    let mut last_seen = 0;
    for _ in 0..20 {
        let newest_before = fake.issued_tokens("ops@delta.test").len() - 1;
        let out = d.cli(&["get", "shiphero/delta"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        let issued = fake.issued_tokens("ops@delta.test");
        let served = issued
            .iter()
            .position(|t| t == out.stdout.trim())
            .expect("served a token ShipHero never issued");
        assert!(
            served + 1 >= newest_before,
            "served token #{served} while #{newest_before} was issued"
        );
        assert!(
            served >= last_seen,
            "went back from token #{last_seen} to #{served}"
        );
        last_seen = served;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_lose_nothing() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@eps.test");
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &fake.base_url(), "");
    let mut d = Daemon::start(dir.path(), &config).await;
    d.add_shiphero("eps", "ops@eps.test", &user.refresh_token, None)
        .await;
    let token = d.cli(&["get", "shiphero/eps"]).await.stdout;

    let status = d.stop().await;
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket.exists(), "socket file left behind");
    assert!(d.logs().contains("stopped"));

    let d = Daemon::start(dir.path(), &config).await;
    let out = d.cli(&["get", "shiphero/eps"]).await;
    assert_eq!(out.stdout, token, "a restart must serve the stored token");
    assert_eq!(
        fake.refresh_count("ops@eps.test"),
        1,
        "a restart must not need a refresh"
    );
    let mode = std::fs::metadata(dir.path().join("state/registry.db")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_backs_off_and_keeps_serving_the_old_token() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@zeta.test");
    let (_dir, d) = daemon_with(&fake, "").await;
    d.add_shiphero("zeta", "ops@zeta.test", &user.refresh_token, None)
        .await;
    let token = d.cli(&["get", "shiphero/zeta"]).await.stdout;

    // A manual rotation during an outage fails loudly and changes nothing else.
    fake.set_mode("ops@zeta.test", ShipHeroMode::Down);
    let out = d.cli(&["rotate", "shiphero/zeta"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("503") || out.stderr.contains("502"),
        "{out:?}"
    );
    let account = d.account("shiphero/zeta").await;
    assert_eq!(account["status"], "active", "an outage is not a suspension");
    assert!(
        account["last_error"]
            .as_str()
            .unwrap()
            .contains("ShipHero refresh answered")
    );
    assert!(
        account["next_attempt_at"].is_string(),
        "no backoff scheduled: {account}"
    );
    assert_eq!(
        d.cli(&["get", "shiphero/zeta"]).await.stdout,
        token,
        "the old token must still be served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_refresh_during_an_outage_is_retried_with_backoff() {
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(8));
    let user = fake.add_user("ops@zeta2.test");
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &fake.base_url(), "")
        .replace("retry_max = \"4s\"", "retry_max = \"2s\"");
    let d = Daemon::start(dir.path(), &config).await;
    d.add_shiphero("zeta2", "ops@zeta2.test", &user.refresh_token, None)
        .await;
    let token = d.cli(&["get", "shiphero/zeta2"]).await.stdout;
    fake.set_mode("ops@zeta2.test", ShipHeroMode::Down);

    // Due at 4 s (0.5 x 8 s); fails; retried after ~1 s, then ~2 s.
    let a = wait_for("the failed refresh to be recorded", || async {
        let a = d.account("shiphero/zeta2").await;
        a["last_error"].is_string().then_some(a)
    })
    .await;
    assert_eq!(
        fake.refresh_count("ops@zeta2.test"),
        2,
        "one refresh at registration, one failed"
    );
    assert_eq!(a["status"], "active");
    assert_eq!(
        d.cli(&["get", "shiphero/zeta2"]).await.stdout,
        token,
        "the old token is served while valid"
    );
    tokio::time::timeout(DEADLINE, fake.wait_for_refreshes("ops@zeta2.test", 4))
        .await
        .unwrap();

    fake.set_mode("ops@zeta2.test", ShipHeroMode::Active);
    wait_for("the error to clear", || async {
        let a = d.account("shiphero/zeta2").await;
        a["last_error"].is_null().then_some(())
    })
    .await;
    let out = d.cli(&["get", "shiphero/zeta2"]).await;
    assert_eq!(
        Some(out.stdout.trim().to_string()),
        fake.latest_token("ops@zeta2.test")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@eta.test");
    let (_dir, d) = daemon_with(&fake, "").await;
    assert_eq!(
        d.add_shiphero("eta", "ops@eta.test", &user.refresh_token, None)
            .await
            .code,
        0
    );

    let out = d.cli(&["get", "shiphero/nobody"]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no account shiphero/nobody"), "{out:?}");

    let out = d.cli(&["get", "shiphero/Not_Valid!"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("invalid account name"), "{out:?}");
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/..", None).await;
    assert!(status == 400 || status == 404, "{status} {body}");
    let (status, body) = d.call("GET", "/v1/tokens/ups/acme", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_provider"))
    );

    let out = d
        .cli(&[
            "accounts",
            "add",
            "shiphero",
            "theta",
            "--email",
            "t@x.test",
            "--refresh-token-file",
            "/nonexistent/file",
        ])
        .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/nonexistent/file"), "{out:?}");

    // The same developer user twice: refused by email and by refresh token.
    let out = d
        .add_shiphero("eta2", "OPS@eta.test", "another-refresh-token", None)
        .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("already registered as shiphero/eta"),
        "{out:?}"
    );
    let out = d
        .add_shiphero("eta3", "other@eta.test", &user.refresh_token, None)
        .await;
    assert!(
        out.stderr.contains("already registered as shiphero/eta"),
        "{out:?}"
    );

    // Malformed bodies name the field.
    let (status, body) = d
        .call(
            "POST",
            "/v1/accounts",
            Some(&json!({"provider": "shiphero", "account": "x", "emial": "a@b"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("emial"),
        "{body}"
    );
    let (status, body) = d
        .call(
            "POST",
            "/v1/accounts",
            Some(&json!({"provider": "shiphero", "account": "x", "email": "a@b.test"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("refresh_token"),
        "{body}"
    );
    let (status, body) = d.call("DELETE", "/v1/tokens/shiphero/eta", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );

    // Nothing was lost along the way.
    let (_, list) = d.call("GET", "/v1/accounts", None).await;
    assert_eq!(list["accounts"].as_array().unwrap().len(), 1);
    assert_eq!(d.cli(&["get", "shiphero/eta"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_stdin_too_and_removal_forgets_the_account() {
    let fake = FakeShipHero::start().await.unwrap();
    let user = fake.add_user("ops@iota.test");
    let (_dir, d) = daemon_with(&fake, "").await;
    let out = d
        .cli_stdin(
            &[
                "accounts",
                "add",
                "shiphero",
                "iota",
                "--email",
                "ops@iota.test",
                "--refresh-token-file",
                "-",
            ],
            &user.refresh_token,
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let list = d.cli(&["accounts", "list"]).await;
    assert!(
        list.stdout.contains("shiphero/iota") && list.stdout.contains("active"),
        "{list:?}"
    );
    assert!(list.stdout.contains("in 27 days"), "{list:?}");
    let json: Value =
        serde_json::from_str(&d.cli(&["accounts", "list", "--json"]).await.stdout).unwrap();
    assert_eq!(json["accounts"][0]["email"], "ops@iota.test");
    assert!(!list.stdout.contains(&user.refresh_token));

    assert_eq!(
        d.cli(&["accounts", "remove", "shiphero/iota"]).await.code,
        0
    );
    assert_eq!(d.cli(&["get", "shiphero/iota"]).await.code, 1);
    assert_eq!(
        d.cli(&["accounts", "remove", "shiphero/iota"]).await.code,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_path_is_guarded() {
    let fake = FakeShipHero::start().await.unwrap();
    let (dir, d) = daemon_with(&fake, "").await;

    // A second daemon on the same socket is refused, and the first keeps serving.
    let other = tempfile::tempdir().unwrap();
    let config = config_text(other.path(), &fake.base_url(), "").replace(
        &format!(
            "path = \"{}\"",
            other.path().join("shiptoken.sock").display()
        ),
        &format!("path = \"{}\"", d.socket.display()),
    );
    std::fs::write(other.path().join("c.toml"), config).unwrap();
    let out = cli(
        &[
            "serve",
            "--config",
            other.path().join("c.toml").to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already listening"), "{out:?}");
    assert_eq!(d.call("GET", "/v1/health", None).await.0, 200);
    drop(d);

    // A stale socket file (left by a crash) is replaced.
    let stale = tempfile::tempdir().unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.path().join("shiptoken.sock")).unwrap());
    assert!(stale.path().join("shiptoken.sock").exists());
    let d2 = Daemon::start(
        stale.path(),
        &config_text(stale.path(), &fake.base_url(), ""),
    )
    .await;
    assert_eq!(d2.call("GET", "/v1/health", None).await.0, 200);
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_stops_the_daemon_with_key_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[rotation]\nrotate_at = 1.5\n").unwrap();
    let out = cli(&["serve", "--config", path.to_str().unwrap()], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("rotation.rotate_at")
            && out.stderr.contains("bad.toml")
            && out.stderr.contains("between 0 and 1"),
        "{out:?}"
    );

    std::fs::write(&path, "[rotation\n").unwrap();
    let out = cli(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bad.toml"), "{out:?}");

    let out = cli(&["config", "check", "--config", "/nonexistent.toml"], None).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("/nonexistent.toml does not exist"),
        "{out:?}"
    );

    // An unreadable Shippo client secret fails the check, as it would fail serve.
    let missing = dir.path().join("no-such-secret");
    std::fs::write(
        &path,
        format!(
            "[shippo]\nclient_id = \"app\"\nclient_secret_file = \"{}\"\n",
            missing.display()
        ),
    )
    .unwrap();
    let out = cli(
        &["config", "check", "--config", path.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot read the Shippo client secret")
            && out.stderr.contains("no-such-secret")
            && !out.stderr.contains("configuration is valid"),
        "{out:?}"
    );

    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/config/shiptoken.toml");
    let out = cli(&["config", "check", "--config", good], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("rotate_at = 0.5"));
}

/// `shiptoken get --json | grep -q ...` closes the pipe early: the CLI ends quietly with
/// success instead of panicking on the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_goes_away_ends_the_cli_quietly() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    for args in [
        &["get", "shiphero/acme", "--json"][..],
        &["accounts", "list"],
        &["audit"],
    ] {
        let mut child = tokio::process::Command::new(BIN)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the CLI writes anything.
        drop(child.stdout.take());
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_daemon_is_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = cli(
        &["--socket", sock.to_str().unwrap(), "get", "shiphero/acme"],
        None,
    )
    .await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("not reachable"), "{out:?}");
    let out = cli(
        &["accounts", "list", "--socket", sock.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 4, "--socket after the subcommand: {out:?}");
}
