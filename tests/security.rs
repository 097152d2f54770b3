//! Nothing lost, nothing leaked: tokens sealed at rest and out of every log, a key that is
//! checked (its rotation: `key_rotation.rs`), private permissions, backups that restore, SIGKILLs that lose
//! nothing, and a full disk that degrades loudly and recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rand::Rng;

/// A config for a daemon in `dir`; `shippo` is added to the `[shippo]` section (whose
/// callback listener is off).
fn config(
    dir: &Path,
    shiphero_base: &str,
    level: &str,
    metrics_listen: &str,
    top: &str,
    shippo: &str,
) -> String {
    ConfigText {
        shiphero_base,
        level,
        metrics_listen,
        top,
        shippo: &format!("callback_listen = \"\"\n{shippo}"),
        ..ConfigText::default()
    }
    .render(dir)
}

/// Every file in `dir` (registry.db, -wal, -shm, ...), raw.
fn state_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The token served for `key`, once the daemon serves one.
async fn served(d: &Daemon, key: &str) -> String {
    wait_for(&format!("a token for {key}"), || async {
        let (status, body) = d.call("GET", &format!("/v1/tokens/{key}"), None).await;
        (status == 200).then(|| body["access_token"].as_str().unwrap().to_string())
    })
    .await
}

/// Starts a daemon expected to refuse to start; returns what it printed.
async fn refused(dir: &Path, config: &Path) -> String {
    let mut d = Daemon::spawn(dir, config, &[]);
    let status = d.wait().await;
    assert!(!status.success(), "the daemon started:\n{}", d.logs());
    // The output readers may lag the exit by a moment.
    wait_for("the refusal to be printed", || {
        let logs = d.logs();
        async move { logs.contains("shiptoken:").then_some(()) }
    })
    .await;
    d.logs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_the_state_folder() {
    const CLIENT_SECRET: &str = "client-secret-redaction-0123456789";
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/shippo-oauth-redirect/");
    shippo.new_client("platform-redaction", CLIENT_SECRET, &[&redirect]);
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let shippo_section = format!(
        r#"api_base = "{b}"
oauth_base = "{b}"
client_id = "platform-redaction"
client_secret_file = "{f}"
redirect_uri = "{redirect}""#,
        b = shippo.base_url(),
        f = secret_file.display(),
    );
    let mut text = config(
        dir.path(),
        &shiphero.base_url(),
        "trace",
        "",
        "",
        &shippo_section,
    );
    text = text.replace(
        "callback_listen = \"\"",
        &format!("callback_listen = \"127.0.0.1:{port}\""),
    );
    // Evidence is confirmed a second after it is first seen, so the flags below show quickly.
    text.push_str("\n[verify]\nconfirm_after = \"1s\"\n");
    let mut d = Daemon::start(dir.path(), &text).await;
    shiphero.set_echo_credentials(true);

    // Registration (refresh, probe), socket and CLI reads, a manual rotation.
    let acme = shiphero.add_user("ops@acme.test");
    let out = d
        .add_shiphero("acme", "ops@acme.test", &acme.refresh_token, None)
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    served(&d, "shiphero/acme").await;
    assert_eq!(d.cli(&["get", "shiphero/acme"]).await.code, 0);
    assert_eq!(d.cli(&["get", "shiphero/acme", "--json"]).await.code, 0);
    assert_eq!(d.cli(&["rotate", "shiphero/acme"]).await.code, 0);
    assert_eq!(d.cli(&["verify", "shiphero/acme"]).await.code, 0);

    // Upstream errors that quote the credential: a suspended user's probe echoes the access
    // token, a revoked user's refresh echoes the refresh token.
    let suspended = shiphero.add_user("ops@suspended.test");
    shiphero.set_mode("ops@suspended.test", ShipHeroMode::Suspended);
    let out = d
        .add_shiphero("susp", "ops@suspended.test", &suspended.refresh_token, None)
        .await;
    assert!(out.stdout.contains("suspended"), "{out:?}");
    assert!(
        out.stdout.contains("(access token [redacted])"),
        "the echo was not scrubbed: {out:?}"
    );
    let revoked = shiphero.add_user("ops@revoked.test");
    let out = d
        .add_shiphero(
            "rev",
            "ops@revoked.test",
            &revoked.refresh_token,
            Some(&revoked.access_token),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    shiphero.set_mode("ops@revoked.test", ShipHeroMode::Revoked);
    assert_ne!(d.cli(&["rotate", "shiphero/rev"]).await.code, 0);
    d.wait_for_status("shiphero/rev", "revoked").await;

    // A Shippo OAuth exchange, which sends the client secret.
    shippo.set_next_grant_account("gamma");
    let out = d.cli(&["shippo", "connect", "gamma"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let url = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let http = shiptoken::providers::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.get(&url).send().await.unwrap();
    let location = r.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let page = http.get(&location).send().await.unwrap();
    assert_eq!(page.status(), 200, "{}", page.text().await.unwrap());
    let gamma = served(&d, "shippo/gamma").await;

    let mut secrets: Vec<String> = vec![
        CLIENT_SECRET.into(),
        acme.refresh_token.clone(),
        suspended.refresh_token.clone(),
        revoked.refresh_token.clone(),
        gamma,
    ];
    for email in ["ops@acme.test", "ops@suspended.test", "ops@revoked.test"] {
        secrets.extend(shiphero.issued_tokens(email));
    }
    secrets.extend(shippo.tokens_of("gamma"));
    assert!(secrets.len() >= 8, "{}", secrets.len());

    let state = dir.path().join("state");
    let check_state = |when: &str| {
        for (path, bytes) in state_bytes(&state) {
            for s in &secrets {
                assert!(
                    !contains(&bytes, s),
                    "a secret is readable in {} ({when})",
                    path.display()
                );
            }
        }
    };
    check_state("while running");
    d.stop().await;
    check_state("after a clean stop");

    let logs = d.logs();
    assert!(logs.contains(" TRACE "), "not at trace level?");
    assert!(
        logs.contains("access token [redacted]") || logs.contains("[redacted]"),
        "the echo was not seen:\n{logs}"
    );
    for line in logs.lines() {
        for s in &secrets {
            assert!(
                !line.contains(s.as_str()),
                "a secret reached the log: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_and_the_state_folder_are_private_and_checked() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &fake.base_url(), "info", "", "", "");
    let mut d = Daemon::start(dir.path(), &text).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let token = served(&d, "shiphero/acme").await;
    d.stop().await;
    assert!(d.logs().contains("created a new key"), "{}", d.logs());

    let state = dir.path().join("state");
    let key = state.join("secret.key");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&key), 0o600);
    for (path, _) in state_bytes(&state) {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let good = std::fs::read(&key).unwrap();
    let config_path = dir.path().join("shiptoken.toml");

    // Another key: refused, and the message says what to do.
    std::fs::write(&key, shiptoken::keys::MasterKey::generate().encode()).unwrap();
    let out = refused(dir.path(), &config_path).await;
    assert!(out.contains("was sealed with a different key"), "{out}");
    assert!(out.contains("restore the right key"), "{out}");

    // No key at all: never silently replaced by a new one.
    std::fs::remove_file(&key).unwrap();
    let out = refused(dir.path(), &config_path).await;
    assert!(out.contains("is missing"), "{out}");
    assert!(!key.exists());

    // The right key, but readable by others; then a state folder others can read.
    std::fs::write(&key, &good).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = refused(dir.path(), &config_path).await;
    assert!(
        out.contains(&format!("chmod 600 {}", key.display())),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = refused(dir.path(), &config_path).await;
    assert!(
        out.contains(&format!("chmod 700 {}", state.display())),
        "{out}"
    );
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    let d = Daemon::start_with(dir.path(), &config_path, &[]).await;
    let again = served(&d, "shiphero/acme").await;
    assert!(fake.issued_tokens("ops@acme.test").contains(&again));
    assert!(
        fake.issued_tokens("ops@acme.test")
            .iter()
            .position(|t| *t == again)
            >= fake
                .issued_tokens("ops@acme.test")
                .iter()
                .position(|t| *t == token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_running_restores_and_serves() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &fake.base_url(), "info", "", "", "");
    let mut d = Daemon::start(dir.path(), &text).await;
    let user = d.register(&fake, "acme", "ops@acme.test").await;
    let token = served(&d, "shiphero/acme").await;

    let backup = dir.path().join("registry.backup");
    let config_arg = d.config.to_str().unwrap().to_string();
    let out = cli(
        &["--config", &config_arg, "backup", backup.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("1 accounts"), "{out:?}");
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never over an existing file.
    let again = cli(
        &["--config", &config_arg, "backup", backup.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(!contains(&std::fs::read(&backup).unwrap(), &token));
    assert!(!contains(
        &std::fs::read(&backup).unwrap(),
        &user.refresh_token
    ));
    d.stop().await;

    // Restore as the README says: the backup as registry.db in a new state folder, same key.
    let other = tempfile::tempdir().unwrap();
    let state = other.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(&backup, state.join("registry.db")).unwrap();
    std::fs::copy(
        dir.path().join("state/secret.key"),
        state.join("secret.key"),
    )
    .unwrap();
    let text = config(other.path(), &fake.base_url(), "info", "", "", "");
    let restored = Daemon::start(other.path(), &text).await;
    let now = served(&restored, "shiphero/acme").await;
    let issued = fake.issued_tokens("ops@acme.test");
    assert!(issued.iter().position(|t| *t == now) >= issued.iter().position(|t| *t == token));
    assert_eq!(restored.cli(&["rotate", "shiphero/acme"]).await.code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotation_sweeps_loses_nothing() {
    const ITERATIONS: usize = 20;
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(2));
    fake.set_latency(Duration::from_millis(30));
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        dir.path(),
        &fake.base_url(),
        "info,tokio_cron_scheduler=warn",
        "",
        "",
        "",
    );
    let mut d = Daemon::start(dir.path(), &text).await;
    let names = ["a", "b", "c", "d"];
    for name in names {
        let email = format!("ops@{name}.test");
        let user = fake.add_user(&email);
        d.add_shiphero(name, &email, &user.refresh_token, None)
            .await;
    }
    let config_path = d.config.clone();
    let db = dir.path().join("state/registry.db");
    let mut last: Vec<String> = Vec::new();
    for name in names {
        last.push(served(&d, &format!("shiphero/{name}")).await);
    }
    let mut rng = rand::rng();
    for i in 0..ITERATIONS {
        // Let the sweeps run, reading tokens meanwhile, then kill at a random moment.
        let until =
            tokio::time::Instant::now() + Duration::from_millis(rng.random_range(100..1500));
        while tokio::time::Instant::now() < until {
            for (n, name) in names.iter().enumerate() {
                let (status, body) = d
                    .call("GET", &format!("/v1/tokens/shiphero/{name}"), None)
                    .await;
                if status == 200 {
                    last[n] = body["access_token"].as_str().unwrap().to_string();
                }
            }
        }
        let refreshes_before: usize = names
            .iter()
            .map(|n| fake.refresh_count(&format!("ops@{n}.test")))
            .sum();
        d.signal(libc::SIGKILL);
        d.wait().await;

        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "iteration {i}");
        let refresh_tokens: i64 = conn
            .query_row(
                "SELECT count(*) FROM tokens WHERE refresh_token IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(refresh_tokens, 4, "iteration {i}: a refresh token was lost");
        drop(conn);

        d = Daemon::start_with(dir.path(), &config_path, &[]).await;
        for (n, name) in names.iter().enumerate() {
            let email = format!("ops@{name}.test");
            let now = served(&d, &format!("shiphero/{name}")).await;
            let issued = fake.issued_tokens(&email);
            let at = issued.iter().position(|t| *t == now);
            assert!(
                at.is_some(),
                "iteration {i}: {name} serves a token its upstream never issued"
            );
            assert!(
                at >= issued.iter().position(|t| *t == last[n]),
                "iteration {i}: {name} serves a token older than before the crash"
            );
            last[n] = now;
        }
        assert!(refreshes_before > 0);
    }
    for name in names {
        assert_eq!(
            d.cli(&["rotate", &format!("shiphero/{name}")]).await.code,
            0
        );
    }
}

/// Runs `args` inside the daemon's mount namespace.
fn in_namespace(pid: i32, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_degrades_loudly_keeps_new_tokens_and_recovers() {
    let fake = FakeShipHero::start().await.unwrap();
    fake.set_token_lifetime(Duration::from_secs(4));
    let user = fake.add_user("ops@acme.test");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("shiptoken.key");
    std::fs::write(&key_file, shiptoken::keys::MasterKey::generate().encode()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let metrics_port = free_port();
    let text = config(
        dir.path(),
        &fake.base_url(),
        "info,tokio_cron_scheduler=warn",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("key_file = \"{}\"", key_file.display()),
        "",
    );
    let config_path = dir.path().join("shiptoken.toml");
    std::fs::write(&config_path, &text).unwrap();
    // The state folder is a small tmpfs in a private mount namespace: a real ENOSPC.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=1m,mode=0700 shiptoken-test {} && exec {} serve --movable-clock --config {}",
        state.display(),
        BIN,
        config_path.display()
    );
    let probe = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipping: cannot create a mount namespace here (needs root)");
        return;
    }
    let d = {
        let wrapper = dir.path().join("serve-in-namespace");
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec unshare -m --propagation private sh -c '{script}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        start_wrapped(dir.path(), &wrapper).await
    };
    d.add_shiphero("acme", "ops@acme.test", &user.refresh_token, None)
        .await;
    served(&d, "shiphero/acme").await;
    let healthz = format!("http://127.0.0.1:{metrics_port}/healthz");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = shiptoken::providers::plain_client();

    // Fill the disk.
    let fill = state.join("fill");
    in_namespace(
        d.pid(),
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", fill.display()),
            "bs=4k",
        ],
    );
    d.wait_for_log("cannot write the registry").await;
    let body = wait_for("healthz to fail", || async {
        let r = http.get(&healthz).send().await.ok()?;
        (r.status() == 503).then_some(())?;
        r.text().await.ok()
    })
    .await;
    assert!(body.contains("registry write failed"), "{body}");
    let m = http
        .get(&metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("shiptoken_registry_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(errors >= 1.0, "{m}");
    // Rotation goes on, and the newest token is served from memory.
    let issued_before = fake.issued_tokens("ops@acme.test").len();
    let fresh = wait_for(
        "a token issued while the disk is full to be served",
        || async {
            let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
            let t = body["access_token"].as_str().map(str::to_string)?;
            let issued = fake.issued_tokens("ops@acme.test");
            (status == 200 && issued.iter().position(|x| *x == t)? >= issued_before).then_some(t)
        },
    )
    .await;
    assert!(d.logs().contains("in memory"), "{}", d.logs());

    // Space comes back: what was kept in memory is stored, health recovers.
    in_namespace(d.pid(), &["rm", "-f", fill.to_str().unwrap()]);
    d.wait_for_log("the registry is writable again").await;
    wait_for("healthz to recover", || async {
        let r = http.get(&healthz).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    // Prove it is on disk: back it up from inside the namespace and serve from the copy.
    let backup = dir.path().join("after-disk-full.db");
    let out = in_namespace(
        d.pid(),
        &[
            BIN,
            "--config",
            config_path.to_str().unwrap(),
            "backup",
            backup.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = tempfile::tempdir().unwrap();
    let other_state = other.path().join("state");
    std::fs::create_dir(&other_state).unwrap();
    std::fs::set_permissions(&other_state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(&backup, other_state.join("registry.db")).unwrap();
    let text = config(
        other.path(),
        &fake.base_url(),
        "info",
        "",
        &format!("key_file = \"{}\"", key_file.display()),
        "",
    );
    let restored = Daemon::start(other.path(), &text).await;
    let now = served(&restored, "shiphero/acme").await;
    let issued = fake.issued_tokens("ops@acme.test");
    assert!(issued.iter().position(|t| *t == now) >= issued.iter().position(|t| *t == fresh));
}

/// Like `Daemon::start`, with `program` (which execs the daemon) in place of the binary.
async fn start_wrapped(dir: &Path, program: &Path) -> Daemon {
    let d = Daemon::spawn_program(dir, program);
    let socket = d.socket.clone();
    wait_for("the daemon in its namespace to answer", || {
        let socket = socket.clone();
        async move {
            shiptoken::client::call(&socket, "GET", "/v1/health", None)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_tokens_without_their_key_check_are_never_sealed_twice() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), &fake.base_url(), "info", "", "", "");
    let mut d = Daemon::start(dir.path(), &text).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let token = served(&d, "shiphero/acme").await;
    d.stop().await;

    let state = dir.path().join("state");
    let key = state.join("secret.key");
    let good = std::fs::read(&key).unwrap();
    let db = state.join("registry.db");
    let sealed_columns = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT refresh_token, access_token FROM tokens", [], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap()
    };
    let before = sealed_columns();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let deleted = conn
        .execute("DELETE FROM meta WHERE key = 'key_check'", [])
        .unwrap();
    assert_eq!(deleted, 1);
    drop(conn);
    std::fs::remove_file(&key).unwrap();

    // No key check, no key: refused with how to recover; no new key, nothing re-sealed.
    let config_path = dir.path().join("shiptoken.toml");
    let out = refused(dir.path(), &config_path).await;
    assert!(
        out.contains("holds sealed tokens but its key check is missing"),
        "{out}"
    );
    assert!(out.contains("Restore the key that sealed them"), "{out}");
    assert!(out.contains("restore a backup"), "{out}");
    assert!(!key.exists(), "a new key was made");
    assert_eq!(sealed_columns(), before);

    // Another key in its place: refused the same way.
    std::fs::write(&key, shiptoken::keys::MasterKey::generate().encode()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = refused(dir.path(), &config_path).await;
    assert!(out.contains("key check is missing"), "{out}");
    assert_eq!(sealed_columns(), before);

    // The right key restored: the check is written again and the real token is served.
    std::fs::write(&key, &good).unwrap();
    let d = Daemon::start_with(dir.path(), &config_path, &[]).await;
    assert!(
        d.logs().contains("the check was written again"),
        "{}",
        d.logs()
    );
    let (status, body) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], token.as_str());
    assert_eq!(sealed_columns(), before);
}
