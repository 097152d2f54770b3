//! File sinks end to end: the real daemon keeps files holding the served token, replaces them
//! atomically on rotation, gives them the configured group and mode, and never writes a
//! token the socket would withhold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use serde_json::Value;

/// A group the sink can be given: another group than our own when we may (root), else ours
/// (an unprivileged process may only give a group it is a member of).
fn sink_group() -> u32 {
    if rustix::process::geteuid().is_root() {
        65534
    } else {
        rustix::process::getegid().as_raw()
    }
}

/// A temporary folder a sink may write into: not under /tmp, which every user can write (the
/// daemon refuses such a folder, #28 item 2), but in cargo's own temporary folder.
fn sink_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn served(d: &Daemon, account: &str) -> String {
    let out = d.cli(&["get", account]).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_string()
}

/// Waits until `path` holds exactly `contents`.
async fn wait_for_file(path: &Path, contents: &str) {
    wait_for(
        &format!("{} to hold the served token", path.display()),
        || async { (std::fs::read_to_string(path).ok()? == contents).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_is_replaced_atomically_on_rotation_with_its_group_and_mode() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = sink_tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let log = dir.path().join("command.log");
    let gid = sink_group();
    let extra = format!(
        r#"
[[sink]]
account = "shiphero/acme"
path = "{token}"
mode = "0640"
group = "{gid}"
command = ["/bin/sh", "-c", "echo \"$SHIPTOKEN_ACCOUNT $SHIPTOKEN_SINK_REASON $SHIPTOKEN_SINK_STATUS\" >> {log}"]

[[sink]]
account = "shiphero/acme"
path = "{json}"
format = "json"

[[sink]]
account = "shiphero/acme"
path = "{env}"
format = "env"
env_names = {{ access_token = "ACME_TOKEN" }}

[[sink]]
account = "shiphero/acme"
path = "{headers}"
format = "headers"
"#,
        token = out.join("acme.token").display(),
        json = out.join("acme.json").display(),
        env = out.join("acme.env").display(),
        headers = out.join("acme.headers").display(),
        log = log.display(),
    );
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), &extra),
    )
    .await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let first = served(&d, "shiphero/acme").await;
    let token_file = out.join("acme.token");
    wait_for_file(&token_file, &first).await;

    // A reader looping on the file while the token rotates: every read is a whole token.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), token_file.clone());
        std::thread::spawn(move || {
            let (mut reads, mut seen, mut bad) = (0u64, BTreeSet::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if shiptoken::sim::jwt::claims(&text).is_none() {
                    bad.push(text.clone());
                }
                seen.insert(text);
                reads += 1;
            }
            (reads, seen, bad)
        })
    };
    let mut tokens = vec![first];
    for _ in 0..5 {
        let out = d.cli(&["rotate", "shiphero/acme"]).await;
        assert_eq!(out.code, 0, "{out:?}");
        let now = served(&d, "shiphero/acme").await;
        assert_ne!(Some(&now), tokens.last(), "rotate gave no new token");
        wait_for_file(&token_file, &now).await;
        tokens.push(now);
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen, bad) = reader.join().unwrap();
    assert!(
        bad.is_empty(),
        "a reader saw a partial or empty file: {bad:?}"
    );
    assert!(reads > 100, "the reader hardly ran ({reads} reads)");
    assert!(seen.len() >= 2, "the reader never saw a rotation");
    assert!(
        seen.iter().all(|t| tokens.contains(t)),
        "a token never served was in the file"
    );

    let meta = std::fs::metadata(&token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.gid(), gid);
    let default_mode = std::fs::metadata(out.join("acme.json")).unwrap();
    assert_eq!(default_mode.permissions().mode() & 0o7777, 0o600);

    let last = tokens.last().unwrap();
    wait_for_file(&out.join("acme.env"), &format!("ACME_TOKEN={last}\n")).await;
    wait_for_file(
        &out.join("acme.headers"),
        &format!("Authorization: Bearer {last}\n"),
    )
    .await;
    let json = wait_for("the json sink to hold the last token", || async {
        let json: Value = serde_json::from_str(&read(&out.join("acme.json"))).ok()?;
        (json["access_token"] == last.as_str()).then_some(json)
    })
    .await;
    // Four sinks, four files: no temporary file left behind once every write is done.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(json["access_token"], last.as_str());
    assert_eq!(json["status"], "active");
    assert_eq!(json["provider"], "shiphero");

    // The command ran after the first write and after each rotation, told why.
    let lines = wait_for("the sink command to run after every write", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() == tokens.len()).then_some(text)
    })
    .await;
    assert!(
        lines.starts_with("shiphero/acme created active\n"),
        "{lines}"
    );
    assert!(lines.contains("shiphero/acme rotated active\n"), "{lines}");
    assert!(!d.logs().contains(last.as_str()), "a token reached the log");

    // Written at start too: a file changed while the daemon was down is put right.
    let mut d = d;
    d.stop().await;
    std::fs::write(&token_file, "stale").unwrap();
    let d = Daemon::start_with(dir.path(), &d.config, &[]).await;
    wait_for_file(&token_file, &served(&d, "shiphero/acme").await).await;
    wait_for("the command to report the start", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("shiphero/acme start active\n").then_some(())
    })
    .await;
}

async fn suspend(fake: &FakeShipHero, d: &Daemon, names: &[&str]) {
    for name in names {
        fake.set_mode(&format!("ops@{name}.test"), ShipHeroMode::Suspended);
        // Seen once now, seen again by the routine checks after confirm_after: flagged.
        d.cli(&["verify", &format!("shiphero/{name}")]).await;
    }
    for name in names {
        d.wait_for_status(&format!("shiphero/{name}"), "suspended")
            .await;
    }
}

fn sink(account: &str, path: &Path, on_flag: &str, log: &Path) -> String {
    format!(
        "[[sink]]\naccount = \"{account}\"\npath = \"{}\"\non_flag = \"{on_flag}\"\n\
         command = [\"/bin/sh\", \"-c\", \"echo \\\"$SHIPTOKEN_ACCOUNT $SHIPTOKEN_SINK_REASON $SHIPTOKEN_SINK_STATUS\\\" >> {}\"]\n",
        path.display(),
        log.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_token_is_never_written_and_flags_keep_or_remove_the_file() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = sink_tempdir();
    let log = dir.path().join("command.log");
    let path = |name: &str| -> PathBuf { dir.path().join(format!("{name}.token")) };
    let extra = format!(
        "[verify]\ninterval = \"1s\"\nsuspended_interval = \"2s\"\nconfirm_after = \"2s\"\n\n{}{}{}",
        sink("shiphero/keep", &path("keep"), "keep", &log),
        sink("shiphero/gone", &path("gone"), "remove", &log),
        sink("shiphero/never", &path("never"), "keep", &log),
    );
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), &extra),
    )
    .await;
    for name in ["keep", "gone"] {
        d.register(&fake, name, &format!("ops@{name}.test")).await;
        d.wait_for_status(&format!("shiphero/{name}"), "active")
            .await;
    }
    let kept = served(&d, "shiphero/keep").await;
    wait_for_file(&path("keep"), &kept).await;
    wait_for_file(&path("gone"), &served(&d, "shiphero/gone").await).await;

    suspend(&fake, &d, &["keep", "gone"]).await;
    wait_for("the on_flag = remove sink to be removed", || async {
        (!path("gone").exists()).then_some(())
    })
    .await;
    // ShipHero still issues tokens to a suspended user: a refresh now gets one that does
    // not work, which the socket withholds, and so must the file.
    d.cli(&["rotate", "shiphero/keep"]).await;
    let unproven = fake.latest_token("ops@keep.test").unwrap();
    assert_ne!(unproven, kept, "the rotation issued no new token");
    d.wait_for_sweep().await;
    d.wait_for_sweep().await;
    assert_eq!(
        read(&path("keep")),
        kept,
        "on_flag = keep must keep the last served token"
    );
    assert_eq!(d.cli(&["get", "shiphero/keep"]).await.code, 3);

    // A user whose tokens never worked: its file never appears.
    let user = fake.add_user("ops@never.test");
    fake.set_mode("ops@never.test", ShipHeroMode::Suspended);
    d.add_shiphero("never", "ops@never.test", &user.refresh_token, None)
        .await;
    d.wait_for_sweep().await;
    d.wait_for_sweep().await;
    assert!(!path("never").exists(), "a token never served was written");

    // Working again: the files come back with what the socket serves.
    for name in ["keep", "gone"] {
        fake.set_mode(&format!("ops@{name}.test"), ShipHeroMode::Active);
        d.wait_for_status(&format!("shiphero/{name}"), "active")
            .await;
        wait_for_file(&path(name), &served(&d, &format!("shiphero/{name}")).await).await;
    }

    // Removing the account removes its file, whatever on_flag says.
    let out = d.cli(&["accounts", "remove", "shiphero/keep"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    wait_for("the removed account's sink to be removed", || async {
        (!path("keep").exists()).then_some(())
    })
    .await;
    let text = wait_for("the command to report the removal", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("shiphero/keep removed unknown_account")
            .then_some(text)
    })
    .await;
    assert!(
        text.contains("shiphero/gone removed account_suspended\n"),
        "{text}"
    );
    assert!(!text.contains("shiphero/never"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_by_a_reload_is_written_and_reported_as_a_grant() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = sink_tempdir();
    let text = config_text(dir.path(), &fake.base_url(), "");
    let d = Daemon::start(dir.path(), &text).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let path = dir.path().join("acme.token");
    let gid = sink_group();
    let sink = format!(
        "[[sink]]\naccount = \"shiphero/acme\"\npath = \"{}\"\nmode = \"0640\"\ngroup = \"{gid}\"\n",
        path.display()
    );
    std::fs::write(&d.config, format!("{text}\n{sink}")).unwrap();
    d.signal(libc::SIGHUP);
    wait_for_file(&path, &served(&d, "shiphero/acme").await).await;
    d.wait_for_log(&format!(
        "gid {gid} may now read shiphero/acme from the sink file {}",
        path.display()
    ))
    .await;
}

/// A `template` sink renders the operator's own file with the token and follows rotations;
/// a template with a mistake is refused by `config check` with the key and the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_sink_renders_the_operators_file_and_a_bad_template_is_refused() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = sink_tempdir();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let template = dir.path().join("app.yaml.j2");
    std::fs::write(
        &template,
        "shiphero:\n  account: {{ account }}\n  token: \"{{ access_token }}\"\n  refresh_after: {{ refresh_after }}\n",
    )
    .unwrap();
    let file = out.join("app.yaml");
    let extra = format!(
        "[[sink]]\naccount = \"shiphero/acme\"\npath = \"{}\"\nformat = \"template\"\ntemplate = \"{}\"\n",
        file.display(),
        template.display()
    );
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), &extra),
    )
    .await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let expected = |token: &str, after: &str| {
        format!("shiphero:\n  account: acme\n  token: \"{token}\"\n  refresh_after: {after}\n")
    };
    let answer = d.call("GET", "/v1/tokens/shiphero/acme", None).await.1;
    let first = answer["access_token"].as_str().unwrap().to_string();
    wait_for_file(
        &file,
        &expected(&first, answer["refresh_after"].as_str().unwrap()),
    )
    .await;
    assert_eq!(d.cli(&["rotate", "shiphero/acme"]).await.code, 0);
    let answer = d.call("GET", "/v1/tokens/shiphero/acme", None).await.1;
    let second = answer["access_token"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    wait_for_file(
        &file,
        &expected(&second, answer["refresh_after"].as_str().unwrap()),
    )
    .await;

    // A misspelt name is found when the configuration is read, not at the next rotation.
    std::fs::write(&template, "token: {{ acces_token }}\n").unwrap();
    let check = cli(
        &["config", "check", "--config", d.config.to_str().unwrap()],
        None,
    )
    .await;
    assert_ne!(check.code, 0, "{check:?}");
    assert!(
        check.stderr.contains("sink[0].template")
            && check.stderr.contains("line 1: undefined value"),
        "{check:?}"
    );
}
