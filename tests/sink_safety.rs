//! Sinks that cannot be turned against the host (#28 items 1, 2, 3, 7, 10; #29 item 3): a
//! sink may not name the daemon's own files, its folder must be one only root and the
//! daemon's user can change, reached through no symlink, and it must exist unless systemd
//! creates it; a sink removes only what the daemon wrote; risky settings are refused. Each is
//! checked the way an operator meets it: `config check`'s exit and message, `serve` refusing
//! to start, the file left on disk, the metric.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A folder for a test, in cargo's temporary folder (not /tmp, which every user can write).
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn sink(account: &str, path: &Path, more: &str) -> String {
    format!(
        "[[sink]]\naccount = \"{account}\"\npath = \"{}\"\n{more}\n",
        path.display()
    )
}

/// The config text of a daemon in `dir` with `top` lines and `extra` sections.
fn text(dir: &Path, top: &str, extra: &str) -> String {
    ConfigText {
        top,
        extra,
        ..ConfigText::default()
    }
    .render(dir)
}

/// Writes `text` as the config file in `dir` and runs `config check` on it.
async fn check(dir: &Path, text: &str) -> (PathBuf, Cli) {
    let config = dir.join("shiptoken.toml");
    std::fs::write(&config, text).unwrap();
    let out = cli(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    )
    .await;
    (config, out)
}

/// `config check` refuses `text`, naming `key`, the config file and `reason`; `serve`
/// refuses to start with the same message.
async fn refused(dir: &Path, text: &str, key: &str, reason: &str) {
    let (config, out) = check(dir, text).await;
    assert_eq!(out.code, 1, "accepted: {text}\n{out:?}");
    assert!(
        out.stderr.contains(key) && out.stderr.contains(reason),
        "{key} / {reason}: {}",
        out.stderr
    );
    // The origin is the file, not "(built-in default)" (#28 item 10).
    assert!(
        out.stderr.contains(&format!("(in {})", config.display())),
        "{}",
        out.stderr
    );
    let served = serve_command(&config).output().await.unwrap();
    assert!(!served.status.success(), "serve started with {text}");
    let stderr = String::from_utf8_lossy(&served.stderr);
    assert!(stderr.contains(key) && stderr.contains(reason), "{stderr}");
}

async fn accepted(dir: &Path, text: &str) {
    let (_, out) = check(dir, text).await;
    assert_eq!(out.code, 0, "refused: {text}\n{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_may_not_be_the_daemons_own_files_or_another_sink() {
    let dir = tempdir();
    let d = dir.path();
    let state = d.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("secret.key"), "k").unwrap();
    let key = d.join("keys").join("shiptoken.key");
    std::fs::create_dir(d.join("keys")).unwrap();
    std::fs::create_dir(d.join("out")).unwrap();
    // A name for the state folder through a symlink, and one through `..`.
    std::os::unix::fs::symlink(&state, d.join("link")).unwrap();
    let key_top = format!("key_file = \"{}\"", key.display());
    let a = "shiphero/acme";
    for (path, top, reason) in [
        (state.join("secret.key"), "", "the key file"),
        (state.join("registry.db"), "", "is inside the state folder"),
        (state.clone().join("x"), "", "is inside the state folder"),
        (key.clone(), key_top.as_str(), "is the key file"),
        (d.join("shiptoken.sock"), "", "is the socket"),
        (d.join("shiptoken.toml"), "", "is the config file"),
        (d.join("out/../state/registry.db"), "", "state folder"),
        (d.join("link/registry.db"), "", "is inside the state folder"),
    ] {
        refused(
            d,
            &text(d, top, &sink(a, &path, "")),
            "sink[0].path",
            reason,
        )
        .await;
    }
    // Another sink's file, or a path inside it.
    let token = d.join("out").join("token");
    for other in [token.clone(), token.join("x")] {
        let two = format!("{}{}", sink(a, &token, ""), sink(a, &other, ""));
        refused(d, &text(d, "", &two), "sink[1].path", "is").await;
    }
    accepted(d, &text(d, "", &sink(a, &token, ""))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_folder_others_could_change_is_refused() {
    let dir = tempdir();
    let d = dir.path();
    let a = "shiphero/acme";
    let folder = |name: &str, mode: u32| -> PathBuf {
        let p = d.join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let safe = folder("safe", 0o750);
    // A symlink anywhere on the way, to a folder that is itself fine.
    std::os::unix::fs::symlink(&safe, d.join("via")).unwrap();
    let path = d.join("via").join("token");
    refused(
        d,
        &text(d, "", &sink(a, &path, "")),
        "sink[0].path",
        "is a symlink",
    )
    .await;
    let path = folder("open", 0o777).join("token");
    refused(
        d,
        &text(d, "", &sink(a, &path, "")),
        "sink[0].path",
        "writable by every user",
    )
    .await;
    let path = folder("sticky", 0o1777).join("token");
    refused(
        d,
        &text(d, "", &sink(a, &path, "")),
        "sink[0].path",
        "sticky or not",
    )
    .await;
    // An ancestor, not only the folder itself.
    let inner = folder("open2", 0o777).join("inner");
    std::fs::create_dir(&inner).unwrap();
    refused(
        d,
        &text(d, "", &sink(a, &inner.join("t"), "")),
        "sink[0].path",
        "open2 is writable",
    )
    .await;
    // Owned by another user (uid 65534 stands for one).
    let theirs = folder("theirs", 0o755);
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let path = theirs.join("token");
    refused(
        d,
        &text(d, "", &sink(a, &path, "")),
        "sink[0].path",
        "owned by uid 65534",
    )
    .await;
    // Writable by the daemon's own group: only when the config says so.
    let group = folder("group", 0o770).join("token");
    refused(
        d,
        &text(d, "", &sink(a, &group, "")),
        "sink[0].path",
        "allow_group_writable_dir",
    )
    .await;
    accepted(
        d,
        &text(d, "", &sink(a, &group, "allow_group_writable_dir = true")),
    )
    .await;
    accepted(d, &text(d, "", &sink(a, &safe.join("token"), ""))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sink_folder_is_refused_unless_systemd_creates_it() {
    let dir = tempdir();
    let d = dir.path();
    let path = d.join("nowhere").join("token");
    let a = "shiphero/acme";
    refused(
        d,
        &text(d, "", &sink(a, &path, "")),
        "sink[0].path",
        "does not exist",
    )
    .await;
    accepted(
        d,
        &text(d, "", &sink(a, &path, "dir_created_by_systemd = true")),
    )
    .await;
    // The daemon starts; once the folder appears the file is written there.
    let fake = FakeShipHero::start().await.unwrap();
    let text = config_text(
        d,
        &fake.base_url(),
        &sink(a, &path, "dir_created_by_systemd = true"),
    );
    let daemon = Daemon::start(d, &text).await;
    daemon.register(&fake, "acme", "ops@acme.test").await;
    std::fs::create_dir(d.join("nowhere")).unwrap();
    // A rotation wakes the sinks now rather than at the next 30-second look.
    assert_eq!(daemon.cli(&["rotate", a]).await.code, 0);
    let token = daemon.cli(&["get", a]).await.stdout.trim().to_string();
    wait_for("the sink to be written once its folder exists", || async {
        (std::fs::read_to_string(&path).ok()? == token).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risky_socket_sink_and_api_base_settings_are_refused() {
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    let token = d.join("out").join("token");
    let a = "shiphero/acme";
    // A socket every local user can open, with no rules: every user reads every token.
    let open = |more: &str, extra: &str| {
        text(d, "", extra).replace("[socket]\n", &format!("[socket]\nmode = \"0666\"\n{more}"))
    };
    refused(
        d,
        &open("", ""),
        "socket.mode",
        "every user could read every token",
    )
    .await;
    accepted(d, &open("allow_other_users = true\n", "")).await;
    let rules = "[[socket.clients]]\nname = \"app\"\nuids = [1001]\naccounts = [\"shiphero/*\"]\n";
    accepted(d, &open("", rules)).await;
    // A group-readable sink with no group takes the daemon's own group.
    refused(
        d,
        &text(d, "", &sink(a, &token, "mode = \"0640\"")),
        "sink[0].mode",
        "allow_daemon_group",
    )
    .await;
    accepted(
        d,
        &text(
            d,
            "",
            &sink(a, &token, "mode = \"0640\"\nallow_daemon_group = true"),
        ),
    )
    .await;
    accepted(
        d,
        &text(d, "", &sink(a, &token, "mode = \"0640\"\ngroup = \"0\"")),
    )
    .await;
    // Tokens in clear to a host other than this one.
    let config = d.join("shiptoken.toml");
    for (base, ok) in [
        ("http://api.example.com", false),
        ("http://10.0.0.7:8080", false),
        ("http://127.0.0.1:9", true),
        ("http://[::1]:9", true),
        ("http://localhost:9", true),
        ("https://api.example.com", true),
    ] {
        let text = ConfigText {
            shiphero_base: base,
            shippo: &format!("callback_listen = \"\"\napi_base = \"{base}\""),
            ..ConfigText::default()
        }
        .render(d);
        std::fs::write(&config, text).unwrap();
        let out = cli(
            &["config", "check", "--config", config.to_str().unwrap()],
            None,
        )
        .await;
        if ok {
            assert_eq!(out.code, 0, "{base}: {out:?}");
        } else {
            assert_eq!(out.code, 1, "{base}: {out:?}");
            assert!(out.stderr.contains("shiphero.api_base"), "{out:?}");
            assert!(out.stderr.contains("loopback"), "{out:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_removes_only_a_file_the_daemon_wrote() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempdir();
    let d = dir.path();
    std::fs::create_dir(d.join("out")).unwrap();
    let path = |name: &str| d.join("out").join(name);
    // Someone else's files at the paths of a sink whose account is not registered, even with
    // on_flag = "remove", and of one whose account will be.
    std::fs::write(path("ghost"), "not the daemon's").unwrap();
    let extra = format!(
        "{}{}{}",
        sink("shiphero/ghost", &path("ghost"), "on_flag = \"remove\""),
        sink("shiphero/acme", &path("acme"), "on_flag = \"remove\""),
        sink("shiphero/beta", &path("beta"), ""),
    );
    let text = config_text(d, &fake.base_url(), &extra);
    let mut daemon = Daemon::start(d, &text).await;
    daemon
        .wait_for_log(
            "no token is served, but the file at the sink's path is not one the daemon wrote",
        )
        .await;
    daemon.wait_for_sweep().await;
    assert_eq!(
        std::fs::read_to_string(path("ghost")).unwrap(),
        "not the daemon's"
    );

    for name in ["acme", "beta"] {
        daemon
            .register(&fake, name, &format!("ops@{name}.test"))
            .await;
        let token = daemon
            .cli(&["get", &format!("shiphero/{name}")])
            .await
            .stdout;
        let token = token.trim().to_string();
        wait_for("the sink to be written", || async {
            (std::fs::read_to_string(path(name)).ok()? == token).then_some(())
        })
        .await;
    }
    // What the daemon wrote is remembered across a restart: acme's file is still its own.
    daemon.stop().await;
    let daemon = Daemon::start_with(d, &daemon.config, &[]).await;
    wait_for("both sinks to be written at start", || async {
        (daemon.logs().matches("sink written").count() >= 2).then_some(())
    })
    .await;
    // beta's file is replaced by someone else's.
    std::fs::write(path("beta.new"), "replaced").unwrap();
    std::fs::rename(path("beta.new"), path("beta")).unwrap();
    for name in ["acme", "beta"] {
        let out = daemon
            .cli(&["accounts", "remove", &format!("shiphero/{name}")])
            .await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    wait_for("the daemon's own file to be removed", || async {
        (!path("acme").exists()).then_some(())
    })
    .await;
    daemon.wait_for_sweep().await;
    daemon.wait_for_sweep().await;
    assert_eq!(std::fs::read_to_string(path("beta")).unwrap(), "replaced");
    assert_eq!(
        std::fs::read_to_string(path("ghost")).unwrap(),
        "not the daemon's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_after_start_keeps_the_last_file_and_is_counted() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempdir();
    let d = dir.path();
    let out = d.join("out");
    std::fs::create_dir(&out).unwrap();
    let path = out.join("acme");
    let metrics = format!("127.0.0.1:{}", free_port());
    let text = ConfigText {
        shiphero_base: &fake.base_url(),
        metrics_listen: &metrics,
        extra: &sink("shiphero/acme", &path, ""),
        ..ConfigText::default()
    }
    .render(d);
    let daemon = Daemon::start(d, &text).await;
    daemon.register(&fake, "acme", "ops@acme.test").await;
    let first = daemon
        .cli(&["get", "shiphero/acme"])
        .await
        .stdout
        .trim()
        .to_string();
    wait_for("the sink to be written", || async {
        (std::fs::read_to_string(&path).ok()? == first).then_some(())
    })
    .await;
    // The folder becomes one every user can write: the daemon no longer writes into it.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rotated = daemon.cli(&["rotate", "shiphero/acme"]).await;
    assert_eq!(rotated.code, 0, "{rotated:?}");
    daemon.wait_for_log("writable by every user").await;
    let url = format!("http://{metrics}/metrics");
    wait_for(
        "shiptoken_sink_failures_total to count the failed write",
        || async {
            let body = shiptoken::providers::http_get(&url)
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            body.lines()
                .find_map(|l| l.strip_prefix("shiptoken_sink_failures_total{what=\"write\"} "))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v >= 1.0)
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        first,
        "the last good file must stay"
    );
    // Safe again: the next write goes through.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(daemon.cli(&["rotate", "shiphero/acme"]).await.code, 0);
    let now = daemon
        .cli(&["get", "shiphero/acme"])
        .await
        .stdout
        .trim()
        .to_string();
    assert_ne!(now, first);
    wait_for("the sink to catch up", || async {
        (std::fs::read_to_string(&path).ok()? == now).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_command_reads_the_socket_path_without_the_daemons_sink_checks() {
    // An application's user runs `shiptoken --config FILE get ...`: the sink checks are the
    // daemon's (its folders may be closed to that user), so they never stop a client.
    let dir = tempdir();
    let missing = dir.path().join("no-such-folder").join("acme.env");
    let text = text(dir.path(), "", &sink("shiphero/acme", &missing, ""));
    let (config, out) = check(dir.path(), &text).await;
    assert_eq!(out.code, 1, "the daemon refuses it: {out:?}");
    let out = cli(
        &["--config", config.to_str().unwrap(), "get", "shiphero/acme"],
        None,
    )
    .await;
    assert!(
        !out.stderr.contains("sink") && out.stderr.contains("shiptoken.sock"),
        "the client got as far as the socket: {out:?}"
    );
}
