//! Nothing crosses accounts and nothing is lost: work in flight for a removed account never
//! lands on the account registered again under its name; values no calendar can hold are
//! refused where they enter; a token issued while the daemon stops is stored. Real binary,
//! fake ShipHero, real signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

async fn daemon(fake: &FakeShipHero, env: &[(&str, &str)]) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shiptoken.toml");
    std::fs::write(&path, config_text(dir.path(), &fake.base_url(), "")).unwrap();
    let d = Daemon::start_with(dir.path(), &path, env).await;
    (dir, d)
}

/// Starts `rotate KEY` in the background and returns once ShipHero received its refresh.
async fn rotate_in_flight(
    d: &Daemon,
    fake: &FakeShipHero,
    key: &str,
    email: &str,
) -> tokio::task::JoinHandle<Cli> {
    let refreshes = fake.refresh_count(email);
    let socket = d.socket.clone();
    let key = key.to_string();
    let rotate = tokio::spawn(async move {
        cli(
            &["--socket", socket.to_str().unwrap(), "rotate", &key],
            None,
        )
        .await
    });
    tokio::time::timeout(DEADLINE, fake.wait_for_refreshes(email, refreshes + 1))
        .await
        .unwrap();
    rotate
}

fn kinds(events: &Value) -> Vec<String> {
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_removed_and_added_again_mid_refresh_gets_nothing_of_the_old_one() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, &[]).await;
    let old = d.register(&fake, "beta", "old@beta.test").await;
    fake.set_mode(&old.email, ShipHeroMode::Slow(Duration::from_secs(3)));
    let rotate = rotate_in_flight(&d, &fake, "shiphero/beta", &old.email).await;
    assert_eq!(
        d.cli(&["accounts", "remove", "shiphero/beta"]).await.code,
        0
    );
    let new = fake.add_user("new@beta.test");
    let out = d
        .add_shiphero("beta", &new.email, &new.refresh_token, None)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    let rotated = rotate.await.unwrap();
    assert_ne!(
        rotated.code, 0,
        "the old work must not report success: {rotated:?}"
    );

    d.wait_for_status("shiphero/beta", "active").await;
    let served = d
        .cli(&["get", "shiphero/beta"])
        .await
        .stdout
        .trim()
        .to_string();
    assert!(
        fake.issued_tokens(&new.email).contains(&served),
        "the new account serves a token issued for its own refresh token"
    );
    assert!(!fake.issued_tokens(&old.email).contains(&served));
    assert!(fake.graphql_count(&new.email) >= 1, "its first probe ran");
    let events = d
        .call("GET", "/v1/accounts/shiphero/beta/events", None)
        .await
        .1;
    let k = kinds(&events);
    assert_eq!(k.first().map(String::as_str), Some("added"), "{events}");
    assert!(!k.contains(&"failed".to_string()), "{events}");
    assert!(!k.contains(&"removed".to_string()), "{events}");
    assert!(
        d.logs()
            .contains("removed (or removed and added again) while work was in flight")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_expiry_is_refused_where_it_enters_and_nothing_else_stops() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon(&fake, &[]).await;
    let acme = d.register(&fake, "acme", "ops@acme.test").await;
    let before = d.cli(&["get", "shiphero/acme"]).await.stdout;

    // From upstream: expires_in 300000000000 (and a JWT exp to match).
    fake.set_user_token_lifetime(&acme.email, Duration::from_secs(300_000_000_000));
    let out = d.cli(&["rotate", "shiphero/acme"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not a believable lifetime"), "{out:?}");
    assert_eq!(
        d.cli(&["get", "shiphero/acme"]).await.stdout,
        before,
        "the proven token stays served"
    );

    // From an admin: a JWT whose exp lies past the year 9999.
    let far =
        shiptoken::sim::jwt::mint(&json!({"exp": 300_000_000_000u64, "iat": 1_800_000_000u64}));
    let other = fake.add_user("ops@far.test");
    let out = d
        .add_shiphero("far", &other.email, &other.refresh_token, Some(&far))
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("past the year 9999"), "{out:?}");

    // The registry thread is alive: listings work and other accounts register and serve.
    fake.set_user_token_lifetime(&acme.email, Duration::from_secs(28 * 86_400));
    assert_eq!(d.cli(&["accounts", "list"]).await.code, 0);
    d.register(&fake, "gamma", "ops@gamma.test").await;
    assert_eq!(d.cli(&["get", "shiphero/gamma"]).await.code, 0);
    assert_eq!(d.cli(&["rotate", "shiphero/acme"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_refresh_stores_the_token_shiphero_issued() {
    let fake = FakeShipHero::start().await.unwrap();
    let env = [("SHIPTOKEN_SHIPHERO__TIMEOUT", "20s")];
    let (dir, mut d) = daemon(&fake, &env).await;
    let acme = d.register(&fake, "acme", "ops@acme.test").await;
    fake.set_mode(&acme.email, ShipHeroMode::Slow(Duration::from_secs(15)));
    let _rotate = rotate_in_flight(&d, &fake, "shiphero/acme", &acme.email).await;
    fake.set_mode(&acme.email, ShipHeroMode::Active);
    let status = tokio::time::timeout(Duration::from_secs(40), async {
        d.signal(libc::SIGTERM);
        d.wait().await
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}\n{}", d.logs());
    let issued = fake.latest_token(&acme.email).unwrap();
    assert!(!d.logs().contains("abandon"), "{}", d.logs());

    // Started again: the token issued during shutdown is there, and no new refresh was needed.
    let refreshes = fake.refresh_count(&acme.email);
    let path = dir.path().join("shiptoken.toml");
    let d = Daemon::start_with(dir.path(), &path, &env).await;
    let served = wait_for("the stored token to be served", || async {
        let out = d.cli(&["get", "shiphero/acme"]).await;
        (out.code == 0).then_some(out.stdout.trim().to_string())
    })
    .await;
    assert_eq!(served, issued);
    assert_eq!(fake.refresh_count(&acme.email), refreshes);
}
