//! Each provider is a bulkhead: its pacing, throttling and hung calls never delay another
//! provider's work. Runs the real binary against the simulated ShipHero and Shippo, with
//! short token lifetimes so several rotations fit in seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use shiptoken::sim::ShippoMode;

/// A daemon on both fakes that checks every second and confirms evidence after 2 seconds,
/// with `shippo` lines added to `[shippo]` and `extra` sections appended.
async fn daemon(
    shiphero: &FakeShipHero,
    shippo: &FakeShippo,
    shippo_lines: &str,
    extra: &str,
) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let lines = format!(
        "api_base = \"{0}\"\noauth_base = \"{0}\"\n{shippo_lines}\n",
        shippo.base_url()
    );
    let extra = format!(
        "[verify]\ninterval = \"1s\"\nsuspended_interval = \"2s\"\nconfirm_after = \"2s\"\n{extra}"
    );
    // One call of a provider at a time (per provider; before lanes, for both together).
    let config = config_text(dir.path(), &shiphero.base_url(), &extra)
        .replace("[shippo]\n", &format!("[shippo]\n{lines}"))
        .replace("[rotation]\n", "[rotation]\nconcurrency = 1\n");
    let d = Daemon::start(dir.path(), &config).await;
    (dir, d)
}

/// Reads the account's token every 100 ms for `span`; returns how many reads failed and the
/// first failure's answer.
async fn read_for(d: &Daemon, key: &str, span: Duration) -> (usize, usize, Option<Value>) {
    let end = tokio::time::Instant::now() + span;
    let (mut reads, mut misses, mut first) = (0, 0, None);
    while tokio::time::Instant::now() < end {
        let (status, body) = d.call("GET", &format!("/v1/tokens/{key}"), None).await;
        reads += 1;
        if status != 200 {
            misses += 1;
            first.get_or_insert(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (reads, misses, first)
}

/// The time of the account's first event of `kind`, on the daemon's clock.
async fn event_at(d: &Daemon, key: &str, kind: &str) -> Option<String> {
    let (_, body) = d
        .call("GET", &format!("/v1/accounts/{key}/events"), None)
        .await;
    let events = body["events"].as_array()?;
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["at"].as_str().map(str::to_string))
        .min()
}

fn millis(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shippo_paced_to_two_calls_a_minute_never_starves_shiphero() {
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let (_dir, d) = daemon(
        &shiphero,
        &shippo,
        "max_requests_per_minute = 2\nburst = 1",
        "",
    )
    .await;
    shiphero.set_token_lifetime(Duration::from_secs(4));
    let user = d.register(&shiphero, "h", "h@bulkhead.test").await;
    d.wait_for_status("shiphero/h", "active").await;

    // Four Shippo accounts: the first is checked at once (Shippo's one free slot), the others
    // wait for their slots in Shippo's lane, and their adds answer at once, pending.
    let mut tokens = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let token = shippo.add_token(name);
        d.add_shippo(name, &token).await;
        tokens.push(token);
    }
    let token = shippo.add_token("s4");
    let file = d.dir.join("s4.token");
    std::fs::write(&file, &token).unwrap();
    let out = d
        .cli(&[
            "accounts",
            "add",
            "shippo",
            "s4",
            "--access-token-file",
            file.to_str().unwrap(),
        ])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("added shippo/s4: pending")
            && out
                .stdout
                .contains("first check queued behind shippo's pacing"),
        "{out:?}"
    );
    tokens.push(token);
    let unchecked: Vec<&String> = tokens.iter().filter(|t| shippo.api_count(t) == 0).collect();
    assert_eq!(
        unchecked.len(),
        3,
        "three adds answered without waiting for their check"
    );
    assert_eq!(d.account("shippo/s4").await["status"], "pending");

    // Three ShipHero token lifetimes while Shippo's queue waits: every read is served, and
    // ShipHero keeps rotating.
    let refreshes_before = shiphero.refresh_count(&user.email);
    let (reads, misses, first) = read_for(&d, "shiphero/h", Duration::from_secs(12)).await;
    assert_eq!(
        misses, 0,
        "{misses} of {reads} reads of shiphero/h failed while Shippo was paced; first: {first:?}"
    );
    let refreshes = shiphero.refresh_count(&user.email) - refreshes_before;
    assert!(
        refreshes >= 3,
        "shiphero/h was refreshed {refreshes} times in three lifetimes"
    );
    // Shippo's pace held: one slot at start, the next 30 s later.
    assert!(
        shippo.total_requests() <= 2,
        "Shippo got {} calls at two a minute",
        shippo.total_requests()
    );
    let (_, health) = d.call("GET", "/v1/health", None).await;
    let lane = &health["lanes"]["shippo"];
    assert!(
        lane["queued"].as_u64().unwrap() + lane["running"].as_u64().unwrap() >= 3,
        "Shippo's lane shows its waiting work: {health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shippo_never_delays_shiphero_rotations_or_confirmations() {
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let (_dir, d) = daemon(&shiphero, &shippo, "timeout = \"3s\"", "").await;
    for name in ["s1", "s2", "s3"] {
        let token = shippo.add_token(name);
        d.add_shippo(name, &token).await;
        d.wait_for_status(&format!("shippo/{name}"), "active").await;
        // Every call from now on hangs past the daemon's timeout.
        shippo.set_mode(name, ShippoMode::Slow(Duration::from_secs(3600)));
    }
    shiphero.set_token_lifetime(Duration::from_secs(4));
    let rotating = d.register(&shiphero, "rotating", "r@bulkhead.test").await;
    let doomed = d.register(&shiphero, "doomed", "d@bulkhead.test").await;
    d.wait_for_status("shiphero/doomed", "active").await;

    shiphero.set_mode(&doomed.email, shiptoken::sim::ShipHeroMode::Suspended);
    let refreshes_before = shiphero.refresh_count(&rotating.email);
    let (reads, misses, first) = read_for(&d, "shiphero/rotating", Duration::from_secs(9)).await;
    assert_eq!(
        misses, 0,
        "{misses} of {reads} reads failed while Shippo hung; first: {first:?}"
    );
    assert!(shiphero.refresh_count(&rotating.email) - refreshes_before >= 2);

    // The suspension was confirmed as the README promises: seen again confirm_after (2 s)
    // after it was first seen, on the next check (every second), not after Shippo's hangs.
    d.wait_for_status("shiphero/doomed", "suspended").await;
    let suspected = event_at(&d, "shiphero/doomed", "suspected").await.unwrap();
    let flagged = event_at(&d, "shiphero/doomed", "flagged").await.unwrap();
    let gap = millis(&flagged) - millis(&suspected);
    assert!(
        (2_000..=4_500).contains(&gap),
        "flagged {gap} ms after the evidence was first seen (confirm_after 2 s, checks every 1 s)"
    );
    // Shippo was being waited on the whole time.
    let (_, health) = d.call("GET", "/v1/health", None).await;
    assert!(
        health["lanes"]["shippo"]["running"].as_u64().unwrap() >= 1,
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_shippo_account_waits_alone() {
    let shiphero = FakeShipHero::start().await.unwrap();
    let shippo = FakeShippo::start().await.unwrap();
    let (_dir, d) = daemon(&shiphero, &shippo, "", "").await;
    let mut tokens = Vec::new();
    for name in ["s1", "s2", "s3"] {
        let token = shippo.add_token(name);
        d.add_shippo(name, &token).await;
        d.wait_for_status(&format!("shippo/{name}"), "active").await;
        tokens.push(token);
    }
    // s1 is over its rate limit for the next 30 s; its next probe gets the 429.
    shippo.set_mode("s1", ShippoMode::RateLimited { reset_in_secs: 30 });
    let throttled = wait_for("s1 to be throttled", || async {
        let a = d.account("shippo/s1").await;
        a["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("slow down") || e.contains("429"))
            .then_some(a)
    })
    .await;
    assert_eq!(throttled["status"], "active", "throttling is no evidence");
    let (s1, s2, s3) = (
        shippo.api_count(&tokens[0]),
        shippo.api_count(&tokens[1]),
        shippo.api_count(&tokens[2]),
    );
    // The others are checked every second meanwhile; s1 waits as told.
    wait_for("s2 and s3 to be checked three more times", || async {
        (shippo.api_count(&tokens[1]) >= s2 + 3 && shippo.api_count(&tokens[2]) >= s3 + 3)
            .then_some(())
    })
    .await;
    assert_eq!(
        shippo.api_count(&tokens[0]),
        s1,
        "the throttled account was called again before its reset"
    );
}
