//! `shiptoken serve --dev` as a newcomer meets it: within a minute, over the socket it
//! printed, an active ShipHero account that has rotated, a flagged suspended one and an
//! active Shippo account; the live view shows the same; Ctrl-C removes the state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_shows_rotation_suspension_and_shippo_then_cleans_up() {
    let DevDaemon {
        mut child,
        socket,
        printed,
    } = start_dev().await;
    assert!(
        printed.contains("curl --unix-socket") && printed.contains("/metrics"),
        "{printed}"
    );
    let call = |path: &'static str| {
        let socket = socket.clone();
        async move {
            shiptoken::client::call(&socket, "GET", path, None)
                .await
                .unwrap()
                .body
        }
    };

    // Flagged within seconds; Shippo active.
    wait_for(
        "demo-suspended to be flagged and demo-shippo active",
        || async {
            let s = call("/v1/accounts/shiphero/demo-suspended").await;
            let p = call("/v1/accounts/shippo/demo-shippo").await;
            (s["status"] == "suspended" && p["status"] == "active").then_some(())
        },
    )
    .await;

    // Tokens live 60 s and rotate at 30 s; the dev daemon's clock can be moved, so the
    // test need not wait the 30 s a newcomer sees.
    let first = call("/v1/tokens/shiphero/demo-active").await["access_token"].clone();
    let reply = shiptoken::client::call(
        &socket,
        "POST",
        "/v1/debug/clock",
        Some(&serde_json::json!({"advance": "31s"})),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let second = wait_for("demo-active to rotate", || async {
        let t = call("/v1/tokens/shiphero/demo-active").await["access_token"].clone();
        (t.is_string() && t != first).then_some(t)
    })
    .await;
    assert_ne!(first, second);
    let events: Value = call("/v1/accounts/shiphero/demo-active/events").await;
    let rotations = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rotated")
        .count();
    assert!(rotations >= 2, "{events}");

    // The live view (no TTY: plain snapshots) shows the same three accounts.
    let out = tokio::process::Command::new("timeout")
        .args([
            "--preserve-status",
            "-s",
            "INT",
            "2.5",
            BIN,
            "--socket",
            socket.to_str().unwrap(),
            "accounts",
            "list",
            "--watch",
        ])
        .output()
        .await
        .unwrap();
    let view = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{view}");
    assert!(!view.contains('\x1b'), "no colour without a terminal");
    for (account, status) in [
        ("shiphero/demo-active", "active"),
        ("shiphero/demo-suspended", "suspended"),
        ("shippo/demo-shippo", "active"),
    ] {
        assert!(
            view.lines()
                .any(|l| l.starts_with(account) && l.contains(status)),
            "{account} {status} missing:\n{view}"
        );
    }
    assert!(
        view.contains('|'),
        "the lifetime bar marks the rotation point:\n{view}"
    );

    // Ctrl-C stops it and removes the temporary state.
    let state_root = socket.parent().unwrap().to_path_buf();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !state_root.exists(),
        "dev mode left {} behind",
        state_root.display()
    );
}
