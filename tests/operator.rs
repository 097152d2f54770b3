//! The operator's day (issue 29) end to end, as an operator sees it: hooks that call
//! `shiptoken`, exit codes scripts can rely on, `accounts show` and `status`, and what a slow
//! command says on a terminal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A sink's command runs `shiptoken get` and `shiptoken verify` with the variables the daemon
/// hands it (`SHIPTOKEN_ACCOUNT`, `SHIPTOKEN_SINK_*`) in its environment, and a stray
/// `SHIPTOKEN_X` beside them: both work, and the stray name only warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_command_can_call_shiptoken() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let config = dir.path().join("shiptoken.toml");
    let script = format!(
        "{bin} --config {config} get \"$SHIPTOKEN_ACCOUNT\" > {out}/get 2>&1; echo $? > {out}/get.code; \
         {bin} --config {config} verify \"$SHIPTOKEN_ACCOUNT\" > {out}/verify 2>&1; echo $? > {out}/verify.code",
        bin = BIN,
        config = config.display(),
        out = out.display(),
    );
    let extra = format!(
        r#"
[[sink]]
account = "shiphero/acme"
path = "{token}"
command = ["/bin/sh", "-c", '''{script}''']
"#,
        token = out.join("acme.token").display(),
    );
    std::fs::write(&config, config_text(dir.path(), &fake.base_url(), &extra)).unwrap();
    let d = Daemon::start_with(dir.path(), &config, &[("SHIPTOKEN_X", "1")]).await;
    d.wait_for_log("SHIPTOKEN_X").await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let verify_code = out.join("verify.code");
    wait_for("the sink command to finish", || async {
        std::fs::read_to_string(&verify_code)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .await;
    assert_eq!(
        read(&out.join("get.code")).trim(),
        "0",
        "{}",
        read(&out.join("get"))
    );
    assert_eq!(
        read(&out.join("get")).trim(),
        read(&out.join("acme.token")).trim()
    );
    assert_eq!(
        read(&verify_code).trim(),
        "0",
        "{}",
        read(&out.join("verify"))
    );
    assert!(
        read(&out.join("verify")).starts_with("shiphero/acme: active"),
        "{}",
        read(&out.join("verify"))
    );
}

/// Registering a refresh token ShipHero refuses keeps the account but exits 3, as `get`
/// would, with the status and the provider's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_refused_credentials_exits_3_with_the_reason() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    fake.add_user("ops@acme.test");
    let out = d
        .add_shiphero("acme", "ops@acme.test", "not-a-refresh-token", None)
        .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stdout.contains("added shiphero/acme: pending"),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("shiphero/acme was registered but has no usable token: pending, "),
        "{out:?}"
    );
    assert!(out.stderr.contains("invalid_grant"), "{out:?}");
    // Nothing was ever served, so the log does not say a served token is kept.
    d.wait_for_log("the account has no token to serve").await;
    assert!(
        !d.logs().contains("the served token is kept while it works"),
        "{}",
        d.logs()
    );

    let user = fake.add_user("ops@good.test");
    let good = d
        .add_shiphero("good", "ops@good.test", &user.refresh_token, None)
        .await;
    assert_eq!(good.code, 0, "{good:?}");

    // `rotate --all` names each account once on its line.
    let all = d.cli(&["rotate", "--all"]).await;
    assert_ne!(all.code, 0, "{all:?}");
    let text = format!("{}{}", all.stdout, all.stderr);
    assert!(text.contains("shiphero/acme: "), "{all:?}");
    assert!(!text.contains("shiphero/acme: shiphero/acme"), "{all:?}");
}

/// `accounts show` says why an account is not active: the whole error, the evidence held and
/// when it is confirmed, its sinks and recent events; `status` counts accounts by status and
/// provider and shows each provider's queue of due work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_show_and_status_explain_a_doubted_account() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sink = dir.path().join("late.token");
    let extra = format!(
        "[[sink]]\naccount = \"shiphero/late\"\npath = \"{}\"\n",
        sink.display()
    );
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), &extra),
    )
    .await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let user = fake.add_user("ops@late.test");
    fake.set_mode("ops@late.test", ShipHeroMode::Suspended);
    d.add_shiphero("late", "ops@late.test", &user.refresh_token, None)
        .await;

    let show = d.cli(&["accounts", "show", "shiphero/late"]).await;
    assert_eq!(show.code, 0, "{show:?}");
    let page = show.stdout;
    assert!(
        page.starts_with("shiphero/late\n  status            pending since "),
        "{page}"
    );
    assert!(
        page.contains("  email             ops@late.test\n"),
        "{page}"
    );
    assert!(
        page.contains("  token evidence    ShipHero API refused the token"),
        "{page}"
    );
    assert!(page.contains("flagged if seen again at or after"), "{page}");
    assert!(
        page.contains(&format!("  sinks             {}\n", sink.display())),
        "{page}"
    );
    assert!(page.contains("recent events (newest first):\n"), "{page}");
    assert!(page.contains(" added "), "{page}");

    let active = d.cli(&["accounts", "show", "shiphero/acme"]).await;
    assert!(
        active.stdout.contains("  status            active since "),
        "{active:?}"
    );
    assert!(active.stdout.contains("  pinned identity   "), "{active:?}");
    assert!(
        !active.stdout.contains("  pinned identity   -\n"),
        "{active:?}"
    );
    assert!(
        active.stdout.contains("  next check        20"),
        "{active:?}"
    );

    let missing = d.cli(&["accounts", "show", "shiphero/nobody"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");

    let status = d.cli(&["status"]).await;
    assert_eq!(status.code, 0, "{status:?}");
    let page = status.stdout;
    assert!(page.contains(", 2 accounts\n"), "{page}");
    assert!(
        page.contains("  shiphero   active 1, pending 1, suspended 0, revoked 0, expired 0\n"),
        "{page}"
    );
    assert!(page.contains("incidents: none\n"), "{page}");
    assert!(
        page.contains("registry: SQLite in the state folder: ok\n"),
        "{page}"
    );
    // One line per provider under "due work:" (oauth2, shiphero, shippo).
    let due = page.split("due work:\n").nth(1).unwrap_or_default();
    assert!(due.contains("  shiphero   queued "), "{page}");
    assert!(due.contains("  shippo     queued "), "{page}");
}

/// Runs `args` under `script(1)`, in a pseudo-terminal, and returns its exit code and what
/// the terminal showed.
async fn in_terminal(args: &[&str]) -> (i32, String) {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("COLUMNS")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `accounts add` and `rotate` against a ShipHero that does not answer: on a terminal they
/// say what they wait on and for how long at most; a script's output is what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_work_says_what_it_waits_on_only_on_a_terminal() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    let user = fake.add_user("ops@slow.test");
    fake.set_mode("ops@slow.test", ShipHeroMode::Hang);
    let user2 = fake.add_user("ops@slow2.test");
    fake.set_mode("ops@slow2.test", ShipHeroMode::Hang);
    let (socket, config) = (
        d.socket.to_str().unwrap().to_string(),
        d.config.to_str().unwrap().to_string(),
    );
    let add = |name: &str, refresh_token: &str| {
        let refresh = dir.path().join(format!("{name}.refresh"));
        std::fs::write(&refresh, refresh_token).unwrap();
        [
            "--socket",
            &socket,
            "--config",
            &config,
            "accounts",
            "add",
            "shiphero",
            name,
            "--email",
            &format!("ops@{name}.test"),
            "--refresh-token-file",
            refresh.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let args = add("slow", &user.refresh_token);
    let (code, screen) = in_terminal(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    // A timeout proves nothing against the credentials: the add worked, the check is retried.
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("waiting for ShipHero (timeout 3s)... 1s"),
        "{screen:?}"
    );
    assert!(
        screen.contains("added shiphero/slow: pending"),
        "{screen:?}"
    );

    let (code, screen) = in_terminal(&[
        "--socket",
        &socket,
        "--config",
        &config,
        "rotate",
        "shiphero/slow",
    ])
    .await;
    assert_ne!(code, 0, "{screen}");
    assert!(
        screen.contains("waiting for ShipHero (timeout 3s)... 1s"),
        "{screen:?}"
    );

    // A script: the same add, its output as before, no word of waiting.
    let args = add("slow2", &user2.refresh_token);
    let out = cli(&args.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("added shiphero/slow2: pending\n"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("waiting"), "{out:?}");
    assert!(!out.stdout.contains("waiting"), "{out:?}");
}

/// `log.level = "verbose"` would make the daemon log nothing: `config check` refuses it,
/// naming the key and saying what a level is; a real filter passes.
#[tokio::test]
async fn config_check_refuses_a_log_level_that_is_no_level() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = dir.path().join("shiptoken.toml");
    let text = ConfigText {
        level: "verbose",
        ..ConfigText::default()
    };
    std::fs::write(&config, text.render(dir.path())).unwrap();
    let out = cli(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("log.level = verbose (in ")
            && out
                .stderr
                .contains("is no level: use one of trace, debug, info, warn, error, off"),
        "{out:?}"
    );
    let text = ConfigText {
        level: "info,shiptoken::registry=debug",
        ..ConfigText::default()
    };
    std::fs::write(&config, text.render(dir.path())).unwrap();
    let out = cli(
        &["config", "check", "--config", config.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// `key generate FILE` writes a new key, mode 0600, and never over a file; a daemon on an
/// empty PostgreSQL registry without its key says to make one that way, and starts with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_generate_makes_the_shared_key_a_postgres_registry_asks_for() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let key = dir.path().join("shared.key");
    let out = cli(&["key", "generate", key.to_str().unwrap()], None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with(&format!("wrote a new key to {} (mode 0600)", key.display()))
    );
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = read(&key);
    assert_eq!(text.trim().len(), 44, "32 bytes in base64");
    assert!(!out.stdout.contains(text.trim()), "the key was printed");
    let again = cli(&["key", "generate", key.to_str().unwrap()], None).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(
        again
            .stderr
            .contains("already exists; `key generate` never replaces a key")
    );
    assert_eq!(read(&key), text, "the key was replaced");

    let Some(url) = common::postgres::fresh_database().await else {
        return;
    };
    let missing = dir.path().join("host.key");
    let config = dir.path().join("shiptoken.toml");
    let write_config = |key_file: &Path| {
        let text = ConfigText {
            top: &format!("key_file = \"{}\"", key_file.display()),
            extra: &format!("[registry]\nurl = \"{url}\"\nhost_name = \"a\"\n"),
            ..ConfigText::default()
        };
        std::fs::write(&config, text.render(dir.path())).unwrap();
    };
    write_config(&missing);
    let mut d = Daemon::spawn(dir.path(), &config, &[]);
    let status = d.wait().await;
    assert_eq!(status.code(), Some(1), "{}", d.logs());
    let logs = d.logs();
    assert!(
        logs.contains(&format!("`shiptoken key generate {}`", missing.display())),
        "{logs}"
    );
    assert!(!logs.contains("cannot be opened without it"), "{logs}");
    // Printed once: the log line is on stderr already.
    assert_eq!(
        logs.matches("is missing, and a shared").count(),
        1,
        "{logs}"
    );
    write_config(&key);
    let _d = Daemon::start_with(dir.path(), &config, &[]).await;
}

/// The small things of item 6: `rotate` alone says `--all` exists, `serve --socket` is refused
/// instead of ignored, the man page is one page with the exit codes, and the scheduler crate's
/// start-up lines are not logged at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_things_an_operator_trips_on() {
    let rotate = cli(&["rotate"], None).await;
    assert_eq!(rotate.code, 2, "{rotate:?}");
    assert!(
        rotate.stderr.contains("<PROVIDER/ACCOUNT|--all>"),
        "{rotate:?}"
    );

    let man = cli(&["man"], None).await;
    assert_eq!(man.code, 0, "{man:?}");
    assert!(man.stdout.contains(".SH \"EXIT STATUS\""), "{man:?}");
    assert!(!man.stdout.contains("serve(1)"), "{man:?}");

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = dir.path().join("shiptoken.toml");
    let text = ConfigText {
        level: "info",
        ..ConfigText::default()
    };
    std::fs::write(&config, text.render(dir.path())).unwrap();
    let other = dir.path().join("other.sock");
    let serve = cli(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            other.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(serve.code, 2, "{serve:?}");
    assert!(serve.stderr.contains("socket.path"), "{serve:?}");
    assert!(!other.exists());

    let mut d = Daemon::start_with(dir.path(), &config, &[]).await;
    d.wait_for_log("shiptoken ready").await;
    d.stop().await;
    let logs = d.logs();
    assert!(!logs.contains("Uninited"), "{logs}");
    assert!(!logs.contains("Job creator created"), "{logs}");
}
