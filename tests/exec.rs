//! `shiptoken exec` and `shiptoken get --watch` end to end: the real binary, run as a user
//! would, against a real daemon over its socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn daemon_with_acme(fake: &FakeShipHero) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    d.register(fake, "acme", "ops@acme.test").await;
    (dir, d)
}

async fn served(d: &Daemon) -> String {
    let out = d.cli(&["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.trim().to_string()
}

async fn rotate(d: &Daemon) -> String {
    let before = served(d).await;
    let out = d.cli(&["rotate", "shiphero/acme"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let after = served(d).await;
    assert_ne!(before, after, "rotate gave no new token");
    after
}

/// `shiptoken --socket S ARGS`, output piped, killed when dropped.
fn shiptoken(d: &Daemon, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id().unwrap() as i32, sig) };
}

async fn exit_code(mut child: Child) -> i32 {
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the command did not exit in time")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_passes_the_token_and_returns_the_programs_exit_code() {
    let fake = FakeShipHero::start().await.unwrap();
    let (dir, d) = daemon_with_acme(&fake).await;
    let seen = dir.path().join("seen");
    let script = format!(
        "printf '%s' \"$SHIPHERO_ACCESS_TOKEN\" > {}; exit 7",
        seen.display()
    );
    let out = d
        .cli(&[
            "exec",
            "--token",
            "shiphero/acme",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .await;
    assert_eq!(out.code, 7, "{out:?}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), served(&d).await);

    // A name of one's own.
    let script = format!("printf '%s' \"$ACME\" > {}", seen.display());
    let out = d
        .cli(&[
            "exec",
            "--token",
            "shiphero/acme=ACME",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), served(&d).await);

    // Two accounts of one provider in one default variable: a usage error, nothing run.
    let out = d
        .cli(&[
            "exec",
            "--token",
            "shiphero/acme",
            "--token",
            "shiphero/beta",
            "--",
            "/bin/true",
        ])
        .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("name them"), "{out:?}");
    // An unknown account: the program is not run without its token.
    let out = d
        .cli(&[
            "exec",
            "--token",
            "shiphero/nobody",
            "--",
            "/bin/sh",
            "-c",
            "exit 0",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("nobody"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_forwards_sigterm_and_exits_with_the_programs_status() {
    let fake = FakeShipHero::start().await.unwrap();
    let (dir, d) = daemon_with_acme(&fake).await;
    let ready = dir.path().join("ready");
    let got = dir.path().join("got-term");
    let script = format!(
        "trap 'echo term > {got}; exit 42' TERM; touch {ready}; while :; do sleep 0.05; done",
        got = got.display(),
        ready = ready.display()
    );
    let child = shiptoken(
        &d,
        &[
            "exec",
            "--token",
            "shiphero/acme",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    wait_for("the program to start", || async {
        ready.exists().then_some(())
    })
    .await;
    signal(&child, libc::SIGTERM);
    assert_eq!(exit_code(child).await, 42);
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "term\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_restarts_or_signals_the_program_when_the_token_rotates() {
    let fake = FakeShipHero::start().await.unwrap();
    let (dir, d) = daemon_with_acme(&fake).await;
    let starts = dir.path().join("starts");
    let script = format!(
        "printf '%s\\n' \"$SHIPHERO_ACCESS_TOKEN\" >> {}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
        starts.display()
    );
    let child = shiptoken(
        &d,
        &[
            "exec",
            "--token",
            "shiphero/acme",
            "--restart-on-rotate",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    let first = served(&d).await;
    wait_for("the program to start", || async {
        (lines(&starts) == [first.clone()]).then_some(())
    })
    .await;
    let second = rotate(&d).await;
    wait_for("the program to restart with the new token", || async {
        (lines(&starts) == [first.clone(), second.clone()]).then_some(())
    })
    .await;
    signal(&child, libc::SIGTERM);
    assert_eq!(exit_code(child).await, 0);
    assert_eq!(
        lines(&starts).len(),
        2,
        "restarted more than once per rotation"
    );

    // --signal-on-rotate: the same program, told rather than restarted.
    let (hups, ready) = (dir.path().join("hups"), dir.path().join("ready"));
    let script = format!(
        "trap 'echo hup >> {hups}' HUP; trap 'exit 3' TERM; touch {ready}; while :; do sleep 0.05; done",
        hups = hups.display(),
        ready = ready.display()
    );
    let child = shiptoken(
        &d,
        &[
            "exec",
            "--token",
            "shiphero/acme",
            "--signal-on-rotate",
            "HUP",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    wait_for("the program to start", || async {
        ready.exists().then_some(())
    })
    .await;
    rotate(&d).await;
    wait_for("the program to get SIGHUP", || async {
        (lines(&hups) == ["hup"]).then_some(())
    })
    .await;
    signal(&child, libc::SIGTERM);
    assert_eq!(exit_code(child).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_each_new_token_once() {
    let fake = FakeShipHero::start().await.unwrap();
    let (_dir, d) = daemon_with_acme(&fake).await;
    let mut child = shiptoken(&d, &["get", "shiphero/acme", "--watch"]);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(DEADLINE, out.next_line())
            .await
            .expect("get --watch printed nothing new")
            .unwrap()
            .expect("get --watch ended")
    };
    let mut tokens = vec![served(&d).await];
    assert_eq!(next().await, tokens[0]);
    for _ in 0..3 {
        tokens.push(rotate(&d).await);
        assert_eq!(&next().await, tokens.last().unwrap());
    }
    signal(&child, libc::SIGTERM);
    let rest = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.status.code(), Some(0), "{rest:?}");
    assert_eq!(
        String::from_utf8_lossy(&rest.stdout),
        "",
        "a token was printed twice"
    );

    // --json: one answer per line.
    let mut child = shiptoken(&d, &["get", "shiphero/acme", "--watch", "--json"]);
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(answer["access_token"], tokens.last().unwrap().as_str());
    // A reader that goes away ends the watch quietly at the next token.
    drop(out);
    rotate(&d).await;
    assert_eq!(exit_code(child).await, 0);
}
