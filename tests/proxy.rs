//! The authenticating proxy (issue 30), end to end: the real daemon, its real Unix socket,
//! and the simulated ShipHero and Shippo. An application calls the provider through
//! `/v1/proxy/<provider>/<account>/<path>` and never holds a token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use shiptoken::sim::{AuthFailureShape, ShipHeroMode};

/// An answer through the socket: status, headers, body.
struct Reply {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one request over the daemon's socket, with `headers`, as an application would.
async fn send(
    d: &Daemon,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("host", "localhost");
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("the proxy did not answer in time:\n{}", d.logs()))
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

const QUERY: &str = r#"{"query": "query { user_quota { credits_remaining } }"}"#;
const JSON: (&str, &str) = ("content-type", "application/json");

/// An application's GraphQL query through the proxy.
async fn query(d: &Daemon, account: &str) -> Reply {
    send(
        d,
        "POST",
        &format!("/v1/proxy/shiphero/{account}/graphql"),
        &[JSON],
        QUERY,
    )
    .await
}

/// A daemon against a fresh ShipHero fake, with `extra` config and account `acme` active.
async fn shiphero_daemon(extra: &str) -> (tempfile::TempDir, FakeShipHero, Daemon) {
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &config_text(dir.path(), &fake.base_url(), extra),
    )
    .await;
    d.register(&fake, "acme", "ops@acme.test").await;
    (dir, fake, d)
}

#[tokio::test]
async fn an_application_calls_through_rotations_and_never_sees_a_refused_token() {
    let (_dir, fake, d) = shiphero_daemon("").await;
    // Each refresh invalidates the previous token, and tokens live 4 s: a rotation every 2 s
    // (rotate_at 0.5), each of which kills the token an in-flight call may carry.
    fake.set_refresh_invalidates_previous(true);
    fake.set_token_lifetime(Duration::from_secs(4));
    d.cli(&["rotate", "shiphero/acme"]).await;
    let before = fake.refresh_count("ops@acme.test");
    let mut calls = 0;
    while fake.refresh_count("ops@acme.test") < before + 3 {
        let r = query(&d, "acme").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert!(v.get("errors").is_none(), "call {calls} was refused: {v}");
        assert_eq!(v["data"]["user_quota"]["credits_remaining"], 4004, "{v}");
        calls += 1;
    }
    assert!(calls > 0);
    // Every call is audited with what was called, never a body or a token.
    let (_, audit) = d.call("GET", "/v1/audit?account=shiphero/acme", None).await;
    let proxied: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["request"].is_null())
        .collect();
    assert!(!proxied.is_empty(), "{audit}");
    let e = proxied[0];
    assert_eq!(e["request"]["method"], "POST", "{e}");
    assert_eq!(e["request"]["path"], "graphql", "{e}");
    assert_eq!(e["request"]["status"], 200, "{e}");
    assert!(e["request"]["bytes_in"].as_u64().unwrap() > 0, "{e}");
    let text = audit.to_string();
    for token in fake.issued_tokens("ops@acme.test") {
        assert!(!text.contains(&token), "the audit holds a token");
    }
    assert!(!text.contains("user_quota"), "the audit holds a body");
}

#[tokio::test]
async fn a_suspension_is_flagged_from_proxied_traffic_alone() {
    // No scheduled probe for an hour: only the application's own calls can show it.
    let (_dir, fake, d) =
        shiphero_daemon("[verify]\ninterval = \"1h\"\nconfirm_after = \"1s\"\n").await;
    fake.set_auth_failure_shape("ops@acme.test", AuthFailureShape::Http401);
    fake.set_mode("ops@acme.test", ShipHeroMode::Suspended);
    let r = query(&d, "acme").await;
    assert_eq!(
        r.status, 401,
        "the application gets ShipHero's own answer: {}",
        r.body
    );
    let account = d.wait_for_status("shiphero/acme", "suspended").await;
    assert!(
        account["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("refused"),
        "{account}"
    );
    // Flagged: the proxy answers 409 like a token read, and nothing reaches ShipHero.
    let calls = fake.graphql_count("ops@acme.test");
    let r = query(&d, "acme").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["error"], "account_suspended", "{}", r.body);
    assert_eq!(fake.graphql_count("ops@acme.test"), calls);
    // Back to work: the flag clears at the next check, and calls go through again.
    fake.set_mode("ops@acme.test", ShipHeroMode::Active);
    d.cli(&["verify", "shiphero/acme"]).await;
    d.wait_for_status("shiphero/acme", "active").await;
    assert_eq!(query(&d, "acme").await.status, 200);
}

#[tokio::test]
async fn a_throttled_account_waits_instead_of_being_throttled_again() {
    let (_dir, fake, d) = shiphero_daemon("").await;
    fake.set_mode("ops@acme.test", ShipHeroMode::Throttled { seconds: 2 });
    let r = query(&d, "acme").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["errors"][0]["code"], 30, "{}", r.body);
    fake.set_mode("ops@acme.test", ShipHeroMode::Active);
    let calls = fake.graphql_count("ops@acme.test");
    // A caller that cannot wait is told when to come back, and nothing is sent.
    let r = send(
        &d,
        "POST",
        "/v1/proxy/shiphero/acme/graphql",
        &[JSON, ("Shiptoken-Max-Wait", "0")],
        QUERY,
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"], "throttled");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(fake.graphql_count("ops@acme.test"), calls);
    // A caller that can wait is queued until the budget is back, then forwarded.
    let r = query(&d, "acme").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().get("errors").is_none(), "{}", r.body);
    assert_eq!(fake.graphql_count("ops@acme.test"), calls + 1);
}

#[tokio::test]
async fn tricks_with_paths_and_headers_never_reach_another_host_or_leak_the_caller_token() {
    let (_dir, fake, d) = shiphero_daemon("").await;
    let before = fake.total_requests();
    for target in [
        "/v1/proxy/shiphero/acme/../admin",
        "/v1/proxy/shiphero/acme/a%2F..%2Fadmin",
        "/v1/proxy/shiphero/acme/%2e%2e/graphql",
        "/v1/proxy/shiphero/acme//graphql",
        "/v1/proxy/shiphero/acme/http://127.0.0.1:9/graphql",
        "/v1/proxy/shiphero/acme/",
    ] {
        let r = send(&d, "GET", target, &[], "").await;
        assert!(
            r.status == 400 || r.status == 404,
            "{target}: {} {}",
            r.status,
            r.body
        );
    }
    assert_eq!(
        fake.total_requests(),
        before,
        "a refused request reached ShipHero"
    );
    // The caller's Authorization and Host are replaced, never passed on: a bogus token
    // still gets the account's data, through the configured API base.
    let r = send(
        &d,
        "POST",
        "/v1/proxy/shiphero/acme/graphql",
        &[
            JSON,
            ("authorization", "Bearer not-a-token"),
            ("connection", "close"),
        ],
        QUERY,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json().get("errors").is_none(), "{}", r.body);
    // A refusal from another endpoint is about that request's own credentials, not the
    // account's token: it starts no refresh and flags nothing.
    let refreshes = fake.refresh_count("ops@acme.test");
    let r = send(
        &d,
        "POST",
        "/v1/proxy/shiphero/acme/auth/refresh",
        &[JSON],
        r#"{"refresh_token": "not-a-refresh-token"}"#,
    )
    .await;
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    assert_eq!(query(&d, "acme").await.status, 200);
    assert_eq!(fake.refresh_count("ops@acme.test"), refreshes);
    assert_eq!(d.account("shiphero/acme").await["status"], "active");
    // Unknown accounts and providers the proxy does not serve are refused without a call.
    let r = query(&d, "nobody").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "unknown_account");
}

#[tokio::test]
async fn shippo_calls_carry_the_api_version_and_a_revoked_token_is_flagged() {
    let fake = FakeShippo::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shippo = format!("callback_listen = \"\"\napi_base = \"{}\"", fake.base_url());
    let text = ConfigText {
        shippo: &shippo,
        extra: "[verify]\ninterval = \"1h\"\nconfirm_after = \"1s\"\n",
        ..ConfigText::default()
    }
    .render(dir.path());
    let d = Daemon::start(dir.path(), &text).await;
    let token = fake.add_token("merchant");
    d.add_shippo("m", &token).await;
    let r = send(
        &d,
        "GET",
        "/v1/proxy/shippo/m/carrier_accounts?results=1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["results"].is_array(), "{}", r.body);
    fake.revoke(&token);
    let r = send(&d, "GET", "/v1/proxy/shippo/m/carrier_accounts", &[], "").await;
    assert_eq!(r.status, 401, "{}", r.body);
    d.wait_for_status("shippo/m", "revoked").await;
    let r = send(&d, "GET", "/v1/proxy/shippo/m/carrier_accounts", &[], "").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(json!(r.json()["error"]), json!("account_revoked"));
}

/// A caller without rights to an account gets 403 and nothing reaches the provider; the
/// account it may use works. Runs the application as uid 1001 (needs root, as socket.rs).
#[tokio::test]
async fn a_caller_without_rights_gets_403_and_nothing_reaches_upstream() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped (needs root): running a client as another uid");
        return;
    }
    let fake = FakeShipHero::start().await.unwrap();
    let dir = reachable_tempdir();
    let rules =
        "[[socket.clients]]\nname = \"app\"\nuids = [1001]\naccounts = [\"shiphero/acme\"]\n";
    let text = config_text(dir.path(), &fake.base_url(), rules)
        .replace("[socket]\n", "[socket]\nmode = \"0666\"\n");
    let d = Daemon::start(dir.path(), &text).await;
    d.register(&fake, "acme", "ops@acme.test").await;
    d.register(&fake, "beta", "ops@beta.test").await;
    let before = fake.graphql_count("ops@beta.test");
    let script = r#"
import http.client, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
for account in ("beta", "acme"):
    c = C("localhost")
    c.request("POST", "/v1/proxy/shiphero/%s/graphql" % account,
              '{"query": "query { user_quota { credits_remaining } }"}',
              {"Content-Type": "application/json"})
    r = c.getresponse()
    print(account, r.status, r.read().decode())
"#;
    let out = tokio::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&d.socket)
        .uid(1001)
        .gid(1001)
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("beta 403 "), "{stdout}");
    assert!(lines[1].starts_with("acme 200 "), "{stdout}");
    assert!(lines[1].contains("credits_remaining"), "{stdout}");
    assert_eq!(
        fake.graphql_count("ops@beta.test"),
        before,
        "a refused call reached ShipHero"
    );
}
