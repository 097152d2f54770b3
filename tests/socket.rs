//! The socket seen by applications: per-account access rules decided from SO_PEERCRED (with
//! clients really running as other uids), the audit of every read, and waiting for a new token.
//!
//! Tests that need other uids run only as root (CI runs as root); elsewhere they print
//! "skipped (needs root)" and pass. What those uids touch (the socket's folder, a copy of the
//! binary, token files) lives in a temporary folder they can enter, never under the checkout,
//! which may sit in a private home folder (.ci/checks/private-clone.sh runs them from one).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! needs_root {
    () => {
        if !is_root() {
            eprintln!("skipped (needs root)");
            return;
        }
    };
}

/// The rules every access test runs with. uid 1001: order-sync (shiphero/acme only);
/// gid 1002: reporting (every ShipHero account); uid 1003: an admin; uid 1004: nobody.
const RULES: &str = r#"
[[socket.clients]]
name = "order-sync"
uids = [1001]
accounts = ["shiphero/acme"]

[[socket.clients]]
name = "reporting"
gids = [1002]
accounts = ["shiphero/*"]
"#;

/// A config whose socket other uids can open, with `rules` appended.
fn open_config(dir: &std::path::Path, fake: &FakeShipHero, rules: &str) -> String {
    config_text(dir, &fake.base_url(), rules).replace(
        "[socket]\n",
        "[socket]\nmode = \"0666\"\nadmin_uids = [0, 1003]\n",
    )
}

/// A daemon with two active ShipHero accounts, acme and beta, reachable by every uid.
async fn two_accounts(rules: &str) -> (tempfile::TempDir, FakeShipHero, Daemon) {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = reachable_tempdir();
    let d = Daemon::start(dir.path(), &open_config(dir.path(), &fake, rules)).await;
    install_reachable_bin(&d.dir);
    for name in ["acme", "beta"] {
        let email = format!("ops@{name}.test");
        let user = fake.add_user(&email);
        let out = d
            .add_shiphero(name, &email, &user.refresh_token, None)
            .await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    (dir, fake, d)
}

/// Runs the CLI against `d` as `uid`/`gid`.
async fn cli_as(d: &Daemon, uid: u32, gid: u32, args: &[&str]) -> Cli {
    let out = tokio::process::Command::new(reachable_bin(&d.dir))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(DEADLINE, out)
        .await
        .expect("CLI hung")
        .unwrap();
    Cli::from(out)
}

fn listed(out: &Cli) -> Vec<String> {
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}/{}",
                a["provider"].as_str().unwrap(),
                a["account"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_client_reads_its_accounts_and_nothing_else() {
    needs_root!();
    let (_dir, _fake, d) = two_accounts(RULES).await;

    // order-sync: acme only.
    let out = cli_as(&d, 1001, 1001, &["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli_as(&d, 1001, 1001, &["get", "shiphero/beta"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("may not read shiphero/beta"), "{out:?}");
    let out = cli_as(&d, 1001, 1001, &["accounts", "list", "--json"]).await;
    assert_eq!(listed(&out), ["shiphero/acme"]);

    // reporting: matched by its gid, granted by the wildcard.
    for name in ["shiphero/acme", "shiphero/beta"] {
        let out = cli_as(&d, 1005, 1002, &["get", name]).await;
        assert_eq!(out.code, 0, "{name}: {out:?}");
    }
    let out = cli_as(&d, 1005, 1002, &["accounts", "list", "--json"]).await;
    assert_eq!(listed(&out), ["shiphero/acme", "shiphero/beta"]);

    // An unlisted uid reads nothing, not even the account list.
    let out = cli_as(&d, 1004, 1004, &["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    let out = cli_as(&d, 1004, 1004, &["accounts", "list", "--json"]).await;
    assert!(listed(&out).is_empty(), "{out:?}");
    let out = cli_as(&d, 1004, 1004, &["accounts", "list"]).await;
    assert!(!out.stdout.contains("acme"), "{out:?}");

    // Every refusal is logged with who asked and for what.
    d.wait_for_log("refused: no socket.clients rule").await;
    let logs = d.logs();
    let refusals: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("refused: no socket.clients rule"))
        .collect();
    assert_eq!(refusals.len(), 2, "{logs}");
    for (line, uid, account) in [
        (refusals[0], 1001, "shiphero/beta"),
        (refusals[1], 1004, "shiphero/acme"),
    ] {
        assert!(line.contains(&format!("uid={uid}")), "{line}");
        assert!(line.contains(&format!("gid={uid}")), "{line}");
        assert!(line.contains("pid="), "{line}");
        assert!(line.contains(&format!("account={account}")), "{line}");
    }

    // The audit names the rule, the uid and the program; refused reads are not in it.
    let out = d.cli(&["audit", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let entries: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let of = |uid: u64| entries.iter().filter(move |e| e["uid"] == uid);
    assert_eq!(of(1001).count(), 1, "{entries:?}");
    assert_eq!(of(1004).count(), 0, "{entries:?}");
    let e = of(1001).next().unwrap();
    assert_eq!(e["client"], "order-sync");
    assert_eq!(e["account"], "shiphero/acme");
    assert_eq!(e["gid"], 1001);
    assert!(e["pid"].as_i64().unwrap() > 0);
    assert!(e["exe"].as_str().unwrap().ends_with("shiptoken"), "{e}");
    assert_eq!(of(1005).filter(|e| e["client"] == "reporting").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_administer() {
    needs_root!();
    let (dir, fake, d) = two_accounts(RULES).await;
    let user = fake.add_user("ops@gamma.test");
    let refresh = dir.path().join("gamma.refresh");
    std::fs::write(&refresh, &user.refresh_token).unwrap();
    std::fs::set_permissions(&refresh, std::fs::Permissions::from_mode(0o644)).unwrap();
    let add = [
        "accounts",
        "add",
        "shiphero",
        "gamma",
        "--email",
        "ops@gamma.test",
        "--refresh-token-file",
        refresh.to_str().unwrap(),
    ];
    // A reader, even of the account concerned, is not an admin.
    for args in [
        &["rotate", "shiphero/acme"][..],
        &["verify", "shiphero/acme"],
        &["accounts", "remove", "shiphero/acme"],
        &["shippo", "connect", "newco"],
        &["audit"],
        &add,
    ] {
        let out = cli_as(&d, 1001, 1001, args).await;
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains("uid 1001 may not"), "{args:?}: {out:?}");
    }
    let logs = d.logs();
    assert!(
        logs.lines().any(|l| l.contains("refused: not an admin")
            && l.contains("uid=1001")
            && l.contains("pid=")
            && l.contains("account=shiphero/acme")
            && l.contains("action=\"rotate tokens\"")),
        "{logs}"
    );
    assert_eq!(d.account("shiphero/acme").await["status"], "active");

    // socket.admin_uids may.
    let before = fake.refresh_count("ops@acme.test");
    let out = cli_as(&d, 1003, 1003, &["rotate", "shiphero/acme"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(fake.refresh_count("ops@acme.test"), before + 1);
    let out = cli_as(&d, 1003, 1003, &["verify", "shiphero/beta"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli_as(&d, 1003, 1003, &add).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli_as(&d, 1003, 1003, &["audit"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    // So may the daemon's own uid (root here), which is not the point of admin_uids.
    let out = d.cli(&["accounts", "remove", "shiphero/gamma"]).await;
    assert_eq!(out.code, 0, "{out:?}");
}

/// Runs a Python client `script` as uid and gid 1001 (order-sync) with the socket and `path`
/// as its arguments: stdin piped, stdout read line by line.
fn python_as_order_sync(
    script: &str,
    d: &Daemon,
    path: Option<&str>,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut client = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&d.socket)
        .args(path)
        .uid(1001)
        .gid(1001)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(client.stdout.take().unwrap()).lines();
    (client, lines)
}

/// Rewrites the daemon's config with `rules` and reloads it, returning once it is applied.
async fn reload_rules(d: &Daemon, dir: &std::path::Path, fake: &FakeShipHero, rules: &str) {
    std::fs::write(&d.config, open_config(dir, fake, rules)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded").await;
}

/// A client on one keep-alive connection (Python, as uid 1001): asks for beta, waits for a
/// line on stdin, asks again on the same connection, and reports how often it connected.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, socket, sys
class Conn(http.client.HTTPConnection):
    connects = 0
    def connect(self):
        Conn.connects += 1
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = Conn("localhost", timeout=20)
for i in range(2):
    if i:
        sys.stdin.readline()
    c.request("GET", "/v1/tokens/shiphero/beta")
    r = c.getresponse()
    r.read()
    print(r.status, Conn.connects, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_on_sighup_without_dropping_an_open_connection() {
    needs_root!();
    let (dir, fake, d) = two_accounts(RULES).await;
    let (mut client, mut lines) = python_as_order_sync(KEEPALIVE_CLIENT, &d, None);
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "403 1");

    let granted = RULES.replace(
        "accounts = [\"shiphero/acme\"]",
        "accounts = [\"shiphero/acme\", \"shiphero/beta\"]",
    );
    reload_rules(&d, dir.path(), &fake, &granted).await;

    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    // 200 on the same connection: the new rule applies at once, nothing was dropped.
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "200 1");
    assert!(client.wait().await.unwrap().success());
}

/// A long poll as uid 1001 (Python): sends `GET argv[2]`, says "sent", then prints the status.
const WAITING_CLIENT: &str = r#"
import http.client, socket, sys
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = Conn("localhost", timeout=30)
c.request("GET", sys.argv[2])
print("sent", flush=True)
r = c.getresponse()
r.read()
print(r.status, flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_withdraws_access_refuses_a_waiting_client() {
    needs_root!();
    let (dir, fake, d) = two_accounts(RULES).await;
    let (_, first) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    let known = first["fingerprint"].as_str().unwrap().to_string();
    let path = format!("/v1/tokens/shiphero/acme?wait=30&known={known}");
    let (mut client, mut lines) = python_as_order_sync(WAITING_CLIENT, &d, Some(&path));
    assert_eq!(lines.next_line().await.unwrap().unwrap(), "sent");

    // order-sync loses shiphero/acme while its client waits; then acme gets a new token.
    let withdrawn = RULES.replace(
        "accounts = [\"shiphero/acme\"]",
        "accounts = [\"shiphero/beta\"]",
    );
    reload_rules(&d, dir.path(), &fake, &withdrawn).await;
    let (status, body) = d
        .call("POST", "/v1/accounts/shiphero/acme/rotate", None)
        .await;
    assert_eq!(status, 200, "{body}");

    // The waiter wakes to the rules of now: refused, not handed the new token.
    let answer = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the waiting client got no answer")
        .unwrap()
        .unwrap();
    assert_eq!(answer, "403", "{}", d.logs());
    assert!(client.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_handed_out_is_audited_by_fingerprint_never_by_value() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    d.register(&fake, "acme", "ops@acme.test").await;

    let (status, first) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    assert_eq!(status, 200, "{first}");
    for _ in 0..4 {
        let (status, _) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
        assert_eq!(status, 200);
    }
    let out = d.cli(&["get", "shiphero/acme"]).await;
    assert_eq!(out.code, 0);
    let token = out.stdout.trim().to_string();
    let (status, _) = d.call("GET", "/v1/tokens/shiphero/nope", None).await;
    assert_eq!(status, 404);

    let out = d
        .cli(&[
            "audit",
            "--json",
            "--account",
            "shiphero/acme",
            "--since",
            "1h",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(&token), "a token reached the audit");
    let entries: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    // Six reads from two processes: identical reads within a flush share an entry with a count.
    let reads: u64 = entries.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(reads, 6, "{entries:?}");
    let pids: std::collections::BTreeSet<i64> =
        entries.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{entries:?}");
    for e in &entries {
        assert_eq!(e["account"], "shiphero/acme");
        assert_eq!(e["fingerprint"], first["fingerprint"]);
        assert_eq!(e["fingerprint"].as_str().unwrap().len(), 12);
        assert_eq!(e["client"], Value::Null);
        assert_eq!(e["uid"], 0);
    }
    // The table form, and filters that match nothing.
    let out = d.cli(&["audit"]).await;
    assert!(
        out.stdout.starts_with("AT\tLAST\tCOUNT\tACCOUNT"),
        "{out:?}"
    );
    assert_eq!(out.stdout.lines().count(), entries.len() + 1, "{out:?}");
    let future = "2999-01-01T00:00:00Z";
    let (status, body) = d
        .call("GET", &format!("/v1/audit?since={future}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["entries"], json!([]));
    let (status, body) = d.call("GET", "/v1/audit?since=someday", None).await;
    assert_eq!(status, 400, "{body}");

    // Entries past socket.audit_retention (90 days by default) are pruned on the hourly pass,
    // the first of which runs at start: restart after moving the clock is not possible (the
    // clock lives in the daemon), so the pruning itself is unit-tested in registry::audit.
    let logs = d.logs();
    assert!(!logs.contains(&token), "token logged");
}

/// `GET ...?wait=` with `known`: answers the moment a new token is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_gets_the_new_token_the_moment_it_is_stored() {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let (_, first) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    let fp1 = first["fingerprint"].as_str().unwrap().to_string();

    // Nothing changes: the wait ends after its time with the same token.
    let started = Instant::now();
    let (status, same) = d
        .call(
            "GET",
            &format!("/v1/tokens/shiphero/acme?wait=1&known={fp1}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(same["fingerprint"], fp1.as_str());
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A client that is behind is answered at once.
    let started = Instant::now();
    let (status, now) = d
        .call(
            "GET",
            "/v1/tokens/shiphero/acme?wait=30&known=000000000000",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(now["fingerprint"], fp1.as_str());
    assert!(started.elapsed() < Duration::from_secs(5));

    let socket = d.socket.clone();
    let known = fp1.clone();
    let waiter = tokio::spawn(async move {
        let r = shiptoken::client::call(
            &socket,
            "GET",
            &format!("/v1/tokens/shiphero/acme?wait=60&known={known}"),
            None,
        )
        .await
        .unwrap();
        (r.status, r.body, Instant::now())
    });
    // Whether the waiter is parked before the rotation or not, `known` makes it answer with
    // the new token: no race to lose.
    let (status, rotated) = d
        .call("POST", "/v1/accounts/shiphero/acme/rotate", None)
        .await;
    let rotated_at = Instant::now();
    assert_eq!(status, 200, "{rotated}");
    let (status, body, answered_at) = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["fingerprint"], fp1.as_str());
    assert_eq!(
        Some(body["access_token"].as_str().unwrap().to_string()),
        fake.latest_token("ops@acme.test")
    );
    // Answered when the token was stored, i.e. no later than the rotate answer (plus slack).
    assert!(
        answered_at <= rotated_at + Duration::from_millis(500),
        "the waiter answered {:?} after the rotation",
        answered_at.saturating_duration_since(rotated_at)
    );

    // A status change wakes a waiter too: the token is rejected, the account is flagged.
    let fp2 = body["fingerprint"].as_str().unwrap().to_string();
    let socket = d.socket.clone();
    let waiter = tokio::spawn(async move {
        shiptoken::client::call(
            &socket,
            "GET",
            &format!("/v1/tokens/shiphero/acme?wait=60&known={fp2}"),
            None,
        )
        .await
        .unwrap()
    });
    fake.set_mode("ops@acme.test", ShipHeroMode::Suspended);
    // Evidence seen once, then again past verify.confirm_after (15 minutes): suspended.
    let (_, _) = d
        .call("POST", "/v1/accounts/shiphero/acme/verify", None)
        .await;
    d.advance("16m").await;
    let (_, _) = d
        .call("POST", "/v1/accounts/shiphero/acme/verify", None)
        .await;
    let r = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(r.code(), "account_suspended");

    // Bounds and validation.
    for (query, code) in [
        ("wait=301", 400),
        ("wait=-1", 400),
        ("wait=abc", 400),
        ("color=blue", 400),
    ] {
        let (status, body) = d
            .call("GET", &format!("/v1/tokens/shiphero/acme?{query}"), None)
            .await;
        assert_eq!(status, code, "{query}: {body}");
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
    }
}

/// The client examples in docs/socket.md (kept as files in examples/clients/ and included in
/// the document verbatim) read a token and get the next one the moment it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_clients_get_the_new_token() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/socket.md")).unwrap();
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &config_text(dir.path(), &fake.base_url(), "")).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    let (_, first) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    let fp1 = first["fingerprint"].as_str().unwrap().to_string();

    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let socket = d.socket.to_str().unwrap();
    let mut clients = Vec::new();
    for (program, file, first_line) in [
        ("python3", "watch_token.py", format!("token {fp1}")),
        ("node", "watch_token.mjs", format!("token {fp1}")),
        ("sh", "watch_token.sh", format!("have {fp1}")),
    ] {
        let file = format!("{root}/examples/clients/{file}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            doc.contains(text.trim()),
            "docs/socket.md does not show {file} as it is"
        );
        let mut child = tokio::process::Command::new(program)
            .args([file.as_str(), socket, "shiphero/acme", "1"])
            .env("PATH", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = loop {
            let line = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .unwrap()
                .unwrap();
            let line = line.unwrap_or_else(|| panic!("{program} ended early"));
            if line.starts_with("got a token") {
                continue;
            }
            break line;
        };
        assert!(line.starts_with(&first_line), "{program}: {line}");
        clients.push((program, child, lines));
    }
    let (status, _) = d
        .call("POST", "/v1/accounts/shiphero/acme/rotate", None)
        .await;
    assert_eq!(status, 200);
    let (_, now) = d.call("GET", "/v1/tokens/shiphero/acme", None).await;
    let fp2 = now["fingerprint"].as_str().unwrap();
    assert_ne!(fp1, fp2);
    for (program, child, mut lines) in clients {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .unwrap()
            .unwrap();
        let line = line.unwrap_or_else(|| panic!("{program} printed nothing new"));
        assert!(line.contains(fp2), "{program}: {line}");
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Sends SIGHUP and waits for the reload's verdict; true when it was applied.
async fn sighup_applied(d: &Daemon) -> bool {
    let seen = |logs: &str| {
        (
            logs.matches("configuration reloaded").count(),
            logs.matches("reload refused").count(),
        )
    };
    let before = seen(&d.logs());
    d.signal(libc::SIGHUP);
    wait_for("the reload's verdict", || {
        let now = seen(&d.logs());
        async move { (now != before).then_some(now.0 > before.0) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_drop_every_rule_is_refused_and_access_is_unchanged() {
    needs_root!();
    let (dir, fake, d) = two_accounts(RULES).await;
    let refused_as_before = || async {
        let out = cli_as(&d, 1001, 1001, &["get", "shiphero/beta"]).await;
        assert_eq!(out.code, 1, "order-sync read beta: {out:?}");
        assert!(out.stderr.contains("may not read shiphero/beta"), "{out:?}");
        let out = cli_as(&d, 1004, 1004, &["get", "shiphero/acme"]).await;
        assert_eq!(out.code, 1, "an unlisted uid read acme: {out:?}");
        let out = cli_as(&d, 1001, 1001, &["get", "shiphero/acme"]).await;
        assert_eq!(out.code, 0, "{out:?}");
    };

    // An empty file (an editor's truncation, a failed deploy), then one with comments only.
    for text in ["", "# shiptoken\n\n"] {
        std::fs::write(&d.config, text).unwrap();
        assert!(!sighup_applied(&d).await, "{}", d.logs());
        refused_as_before().await;
    }
    let logs = d.logs();
    let line = logs.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("is empty"), "{line}");

    // A file that parses but lists no clients while the running one has two.
    // (`allow_other_users`: a socket open to others with no rules is refused at load anyway.)
    let no_rules = open_config(dir.path(), &fake, "")
        .replace("[socket]\n", "[socket]\nallow_other_users = true\n");
    std::fs::write(&d.config, no_rules).unwrap();
    assert!(!sighup_applied(&d).await, "{}", d.logs());
    refused_as_before().await;
    let logs = d.logs();
    assert!(
        logs.contains("has no [[socket.clients]] while the running one has 2"),
        "{logs}"
    );
    assert!(logs.contains("restart the daemon"), "{logs}");

    // A reload that grants more is applied, and says what it grants.
    let granted = RULES.replace(
        "accounts = [\"shiphero/acme\"]",
        "accounts = [\"shiphero/acme\", \"shiphero/beta\"]",
    );
    std::fs::write(&d.config, open_config(dir.path(), &fake, &granted)).unwrap();
    assert!(sighup_applied(&d).await, "{}", d.logs());
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("reload widens access"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("uid 1001 may now read shiphero/beta"),
        "{line}"
    );
    let out = cli_as(&d, 1001, 1001, &["get", "shiphero/beta"]).await;
    assert_eq!(out.code, 0, "{out:?}");
}
