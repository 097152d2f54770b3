//! `shiptoken key rotate` (#29 item 11): a running daemon moves every token to a new key
//! while it serves, the old key is kept beside the new one for the backups that need it, and
//! a stopped daemon's registry is rotated offline the same way. A shared PostgreSQL registry
//! is rotated only once every daemon sharing it holds the next key (`fleet.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;

/// A daemon in `dir` whose key is `dir/shiptoken.key`, with ShipHero at `base`.
fn config_with_key(dir: &Path, base: &str) -> (String, PathBuf) {
    let key_file = dir.join("shiptoken.key");
    if !key_file.exists() {
        shiptoken::keys::write_key(&key_file, &shiptoken::keys::MasterKey::generate()).unwrap();
    }
    let text = ConfigText {
        shiphero_base: base,
        top: &format!("key_file = \"{}\"", key_file.display()),
        ..ConfigText::default()
    }
    .render(dir);
    (text, key_file)
}

/// A daemon in `dir` with its own key file, serving `shiphero/a`, `b` and `c`; their tokens.
async fn three_accounts(fake: &FakeShipHero, dir: &Path) -> (Daemon, PathBuf, Vec<String>) {
    let (text, key_file) = config_with_key(dir, &fake.base_url());
    let d = Daemon::start(dir, &text).await;
    let mut tokens = Vec::new();
    for name in ["a", "b", "c"] {
        let email = format!("ops@{name}.test");
        let user = fake.add_user(&email);
        d.add_shiphero(name, &email, &user.refresh_token, None)
            .await;
        tokens.push(served(&d, &format!("shiphero/{name}")).await);
    }
    (d, key_file, tokens)
}

/// Checks that `d` serves `tokens` for `shiphero/a`, `b` and `c`, then refreshes all three:
/// their refresh tokens open with the key the daemon has now.
async fn serves_and_refreshes(d: &Daemon, tokens: &[String]) {
    for (name, before) in ["a", "b", "c"].iter().zip(tokens) {
        assert_eq!(&served(d, &format!("shiphero/{name}")).await, before);
    }
    let out = d
        .cli(&["rotate", "shiphero/a", "shiphero/b", "shiphero/c"])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// The token served for `key`, once the daemon serves one.
async fn served(d: &Daemon, key: &str) -> String {
    wait_for(&format!("a token for {key}"), || async {
        let (status, body) = d.call("GET", &format!("/v1/tokens/{key}"), None).await;
        (status == 200).then(|| body["access_token"].as_str().unwrap().to_string())
    })
    .await
}

/// The files beside `key_file` whose names start with its name and `.before-`.
fn old_keys(key_file: &Path) -> Vec<PathBuf> {
    let prefix = format!(
        "{}.before-",
        key_file.file_name().unwrap().to_str().unwrap()
    );
    let mut found: Vec<PathBuf> = std::fs::read_dir(key_file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .collect();
    found.sort();
    found
}

/// Checks what a rotation leaves: a new key in `key_file`, the old one (`old_key`) kept
/// beside it, both private, and the old one's place told in `said`; returns that place.
fn new_key_and_old_kept(key_file: &Path, old_key: &[u8], said: &str) -> PathBuf {
    assert_ne!(std::fs::read(key_file).unwrap(), old_key);
    assert_eq!(mode(key_file), 0o600);
    let kept = old_keys(key_file);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), old_key);
    assert_eq!(mode(&kept[0]), 0o600);
    assert!(said.contains(kept[0].to_str().unwrap()), "{said}");
    kept.into_iter().next().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_rotates_while_the_daemon_serves_and_old_backups_keep_their_key() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut d, key_file, tokens) = three_accounts(&fake, dir.path()).await;
    let config_arg = d.config.to_str().unwrap().to_string();
    let backup = dir.path().join("before.backup");
    let out = cli(
        &["--config", &config_arg, "backup", backup.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let old_key = std::fs::read(&key_file).unwrap();

    // Applications keep reading through the rotation: not one read fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, reads, failures) = (stop.clone(), reads.clone(), failures.clone());
        let socket = d.socket.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply =
                    shiptoken::client::call(&socket, "GET", "/v1/tokens/shiphero/b", None).await;
                reads.fetch_add(1, Ordering::Relaxed);
                if reply.map(|r| r.status).ok() != Some(200) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let out = cli(&["--config", &config_arg, "key", "rotate"], None).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("re-sealed 3 account(s)")
            && out.stdout.contains("while the daemon served"),
        "{out:?}"
    );
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "reads failed during the rotation"
    );

    // The new key is in place; the old one is kept beside it, private, and named.
    let kept = new_key_and_old_kept(&key_file, &old_key, &out.stdout);
    assert!(
        out.stdout
            .contains("backups taken before this rotation open only with it"),
        "{out:?}"
    );
    assert!(!PathBuf::from(format!("{}.new", key_file.display())).exists());
    // The same tokens are served, and the refresh tokens moved too: every account
    // refreshes with the running daemon...
    serves_and_refreshes(&d, &tokens).await;
    let rotated = served(&d, "shiphero/a").await;
    assert_ne!(rotated, tokens[0]);
    // ...and after a restart, which opens the registry with the new key alone.
    d.stop().await;
    let mut d = Daemon::start_with(dir.path(), &d.config, &[]).await;
    assert_eq!(served(&d, "shiphero/a").await, rotated);
    assert_eq!(d.cli(&["rotate", "shiphero/c"]).await.code, 0);
    d.stop().await;

    // The backup taken before opens with the old key, and only with it.
    let restore = dir.path().join("restore");
    std::fs::create_dir(&restore).unwrap();
    let state = restore.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(&backup, state.join("registry.db")).unwrap();
    let with_new_key = ConfigText {
        shiphero_base: &fake.base_url(),
        top: &format!("key_file = \"{}\"", key_file.display()),
        ..ConfigText::default()
    }
    .render(&restore);
    let path = restore.join("shiptoken.toml");
    std::fs::write(&path, with_new_key).unwrap();
    let mut refused = Daemon::spawn(&restore, &path, &[]);
    assert!(!refused.wait().await.success(), "{}", refused.logs());
    wait_for("the refusal", || {
        let logs = refused.logs();
        async move { logs.contains("sealed with a different key").then_some(()) }
    })
    .await;
    let with_old_key = ConfigText {
        shiphero_base: &fake.base_url(),
        top: &format!("key_file = \"{}\"", kept.display()),
        ..ConfigText::default()
    }
    .render(&restore);
    std::fs::write(&path, with_old_key).unwrap();
    let old = Daemon::start_with(&restore, &path, &[]).await;
    assert_eq!(served(&old, "shiphero/b").await, tokens[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_is_rotated_offline_and_serves_after() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut d, key_file, tokens) = three_accounts(&fake, dir.path()).await;
    d.stop().await;

    let config_arg = d.config.to_str().unwrap().to_string();
    let old_key = std::fs::read(&key_file).unwrap();
    let out = cli(&["--config", &config_arg, "key", "rotate"], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("re-sealed 3 account(s)"), "{out:?}");
    assert!(
        out.stderr.contains("re-sealing accounts: 3/3"),
        "plain progress lines: {out:?}"
    );
    new_key_and_old_kept(&key_file, &old_key, &out.stdout);

    let d = Daemon::start_with(dir.path(), &d.config, &[]).await;
    serves_and_refreshes(&d, &tokens).await;
}
