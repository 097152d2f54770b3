//! The README cannot rot: every shell command in it runs here, the dev-mode lines against a
//! real `shiptoken serve --dev`, the rest against a daemon with simulated upstreams, and the
//! Python client example too. A `# exits N` comment on a line states its expected exit code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use common::*;

/// Placeholders the README uses for socket paths, replaced by the test's.
const DEV_SOCKET: &str = "/tmp/shiptoken-dev-XXXX/shiptoken.sock";
const SYSTEM_SOCKET: &str = "/run/shiptoken/shiptoken.sock";

/// Commands shown but not run here, each with the reason.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "cargo run --release -- serve --dev",
        "tests/dev_mode.rs runs `serve --dev` itself",
    ),
    ("cargo test --locked", "this is the test suite"),
    (
        "cargo build --release",
        "a release build with fat LTO takes minutes; CI builds and tests the debug binary",
    ),
    (
        "target/release/examples/",
        "benchmarks are measured by hand, never timed in tests",
    ),
    (
        "cargo run --release --example",
        "benchmarks are measured by hand, never timed in tests",
    ),
];

/// The code blocks of `lang` in a Markdown text, with backslash continuations joined.
fn blocks(markdown: &str, lang: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == format!("```{lang}") => current = Some(Vec::new()),
            None => {}
            Some(block) if line.trim_start().starts_with("```") => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => match block.last_mut() {
                Some(prev) if prev.ends_with('\\') => {
                    prev.pop();
                    prev.push_str(line.trim_start());
                }
                _ => block.push(line.to_string()),
            },
        }
    }
    out
}

/// The exit code a line's `# exits N` comment promises, else 0.
fn expected_exit(line: &str) -> i32 {
    line.split("# exits ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Rewrites a README line to run here: our binary, our sockets, the repo's config.
fn localize(line: &str, dev_socket: &Path, socket: &Path) -> String {
    let mut cmd = line
        .replace(DEV_SOCKET, dev_socket.to_str().unwrap())
        .replace(SYSTEM_SOCKET, socket.to_str().unwrap());
    cmd = cmd.replace(
        "config/shiptoken.toml",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/shiptoken.toml"),
    );
    if let Some(rest) = cmd.strip_prefix("shiptoken ") {
        let socket_arg = if rest.contains("--socket") {
            String::new()
        } else {
            format!("--socket {} ", socket.display())
        };
        cmd = format!("{BIN} {socket_arg}{rest}");
    }
    if cmd.contains("--watch") {
        // The live view runs until interrupted: give it two frames, then Ctrl-C.
        cmd = format!("timeout --preserve-status -s INT 2.5 {cmd}");
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_command_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();

    // The daemon an operator installed: simulated ShipHero and Shippo, OAuth configured.
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let user = shiphero.add_user("integrations+acme@example.com");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/shippo-oauth-redirect/");
    shippo.new_client("readme-client", "readme-secret", &[&redirect]);
    std::fs::write(dir.path().join("client_secret"), "readme-secret").unwrap();
    let oauth = format!(
        "api_base = \"{b}\"\noauth_base = \"{b}\"\nclient_id = \"readme-client\"\nclient_secret_file = \"{f}\"\nredirect_uri = \"{redirect}\"\ncallback_listen = \"127.0.0.1:{port}\"\n",
        b = shippo.base_url(),
        f = dir.path().join("client_secret").display(),
    );
    let config = config_text(dir.path(), &shiphero.base_url(), "")
        .replace("callback_listen = \"\"\n", &oauth);
    let daemon = Daemon::start(dir.path(), &config).await;
    let dev = start_dev().await;
    let dev_socket = dev.socket.clone();
    // Dev mode flags its suspended demo account within seconds; the README promises exit 3.
    wait_for("dev mode to flag demo-suspended", || {
        let socket = dev_socket.clone();
        async move {
            let reply = shiptoken::client::call(
                &socket,
                "GET",
                "/v1/accounts/shiphero/demo-suspended",
                None,
            )
            .await
            .ok()?;
            (reply.body["status"] == "suspended").then_some(())
        }
    })
    .await;

    // The files an operator saved from ShipHero's Developer Users page.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("refresh.txt"), &user.refresh_token).unwrap();
    std::fs::write(cwd.path().join("access.txt"), &user.access_token).unwrap();

    let mut ran = 0;
    for block in blocks(&readme, "sh") {
        for line in block
            .iter()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            if let Some((_, why)) = NOT_RUN.iter().find(|(cmd, _)| line.starts_with(cmd)) {
                eprintln!("not run: {line}  ({why})");
                continue;
            }
            let cmd = localize(line, &dev_socket, &daemon.socket);
            let out = tokio::time::timeout(
                DEADLINE,
                tokio::process::Command::new("bash")
                    .args(["-c", &cmd])
                    .current_dir(cwd.path())
                    .stdin(Stdio::null())
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("README command hung: {line}"))
            .unwrap();
            let code = out.status.code().unwrap_or(-1);
            assert_eq!(
                code,
                expected_exit(line),
                "README command failed: {line}\nran: {cmd}\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                daemon.logs()
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 15,
        "only {ran} README commands ran: did the README lose its examples?"
    );
    // What the commands did is visible: the account is active and serves ShipHero's token.
    assert_eq!(daemon.account("shiphero/acme").await["status"], "active");
    assert!(
        !cwd.path().join("refresh.txt").exists(),
        "the README says to shred the token files"
    );
    assert!(
        std::fs::read_to_string(cwd.path().join("shiptoken.1"))
            .unwrap()
            .contains(".TH shiptoken")
    );

    // The Python clients, standard library only: the token read, then the proxied call
    // (which reuses the first one's connection class).
    let python = blocks(&readme, "python");
    assert_eq!(python.len(), 2, "two Python examples expected");
    let script = [python[0].join("\n"), python[1].join("\n")]
        .join("\n")
        .replace(SYSTEM_SOCKET, daemon.socket.to_str().unwrap());
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("active until 20")),
        "the token read: {stdout}"
    );
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("200 {'data': {'user_quota'")),
        "the proxied call: {stdout}"
    );
}
