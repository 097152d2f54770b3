//! No core dump of the daemon can be written (issue 28 item 6): a core holds every token and
//! client secret in clear. The running daemon's /proc entries show its core limit at 0 and
//! that it is not dumpable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;

/// The "Max core file size" line of /proc/<pid>/limits, as (soft, hard).
fn core_limit(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_string();
    let mut fields = line
        .trim_start_matches("Max core file size")
        .split_whitespace();
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

#[tokio::test]
async fn the_running_daemon_has_no_core_limit_left() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), "http://127.0.0.1:9", ""),
    )
    .await;
    assert_eq!(core_limit(d.pid()), ("0".into(), "0".into()));
}

/// `chown -R uid:gid path`.
fn chown_all(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_all(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// A process that is not dumpable has its /proc/<pid> entries owned by root, whatever user it
/// runs as (proc(5)), so the daemon runs here as an unprivileged user and the owner of its
/// /proc/<pid>/status tells whether PR_SET_DUMPABLE is 0.
#[tokio::test]
async fn the_running_daemon_is_not_dumpable() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipping: running the daemon as another user needs root");
        return;
    }
    const NOBODY: u32 = 65534;
    // Both the folder and the binary must be reachable by that user, which the checkout's
    // target folder is not when the checkout lives in a private home folder.
    let dir = reachable_tempdir();
    let bin = install_reachable_bin(dir.path());
    let config = dir.path().join("shiptoken.toml");
    std::fs::write(&config, config_text(dir.path(), "http://127.0.0.1:9", "")).unwrap();
    chown_all(dir.path(), NOBODY, NOBODY);
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.arg("serve").arg("--config").arg(&config);
    sanitize(&mut cmd);
    cmd.uid(NOBODY).gid(NOBODY);
    let d = Daemon::spawn_command(dir.path(), cmd);
    let socket = dir.path().join("shiptoken.sock");
    wait_for("the daemon to answer on its socket", || async {
        shiptoken::client::call(&socket, "GET", "/v1/health", None)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let status = std::fs::metadata(format!("/proc/{}/status", d.pid())).unwrap();
    assert_eq!(status.uid(), 0, "the daemon is dumpable:\n{}", d.logs());
    let text = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let uid_line = text.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uid_line.contains(&NOBODY.to_string()), "{uid_line}");
    assert_eq!(core_limit(d.pid()), ("0".into(), "0".into()));
}
