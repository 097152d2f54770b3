//! A backward step of the wall clock (NTP correcting a fast clock) must not stop the daemon's
//! work nor blind its health check. The daemon runs under libfaketime, whose offset the test
//! rewrites in a file, so the process's own wall clock steps back an hour while its monotonic
//! clock runs on, as after a real step.
//!
//! Needs libfaketime (`apt-get install libfaketime`); where it is missing the test says
//! "skipped" and passes, unless `REQUIRE_LIBFAKETIME` is set, as `.ci/checks/clock-step.sh`
//! does after installing it (not a `SHIPTOKEN_` name: the daemon would take it for a key).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use shiptoken::clock::Timestamp;

/// Where Debian and the upstream build install the library.
const LIBFAKETIME: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

fn libfaketime() -> Option<PathBuf> {
    LIBFAKETIME.iter().map(PathBuf::from).find(|p| p.exists())
}

/// `now` and `last_sweep_at` from `/v1/health`.
async fn health(d: &Daemon) -> (Timestamp, Timestamp) {
    let (status, h) = d.call("GET", "/v1/health", None).await;
    assert_eq!(status, 200, "{h}");
    let at = |field: &str| Timestamp::parse_rfc3339(h[field].as_str().unwrap()).unwrap();
    (at("now"), at("last_sweep_at"))
}

/// Waits for a sweep to finish after the one that finished at `after`, and returns its time.
async fn next_sweep(d: &Daemon, after: Timestamp) -> Timestamp {
    wait_for("a sweep to finish", || async move {
        let (_, last) = health(d).await;
        (last != after).then_some(last)
    })
    .await
}

/// Sets the daemon's wall-clock offset, in seconds (libfaketime's relative form).
/// libfaketime, or `None` after saying the test is skipped; CI sets REQUIRE_LIBFAKETIME so
/// the test cannot skip there.
fn libfaketime_or_skip() -> Option<PathBuf> {
    let lib = libfaketime();
    if lib.is_none() {
        assert!(
            std::env::var_os("REQUIRE_LIBFAKETIME").is_none(),
            "libfaketime is required here but missing: apt-get install libfaketime"
        );
        eprintln!("skipped: libfaketime is missing (apt-get install libfaketime)");
    }
    lib
}

/// Starts the daemon with its wall clock read from `offset` (libfaketime); an NTP step
/// moves the wall clock only, so the monotonic clock is left alone.
async fn start_faked(dir: &Path, config: &Path, lib: &Path, offset: &Path) -> Daemon {
    Daemon::start_with(
        dir,
        config,
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await
}

fn step_to(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_go_on_and_healthz_tells_the_truth_after_the_clock_steps_back_an_hour() {
    let Some(lib) = libfaketime_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime");
    step_to(&offset, "+0");
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let config = dir.path().join("shiptoken.toml");
    let text = ConfigText {
        metrics_listen: &metrics,
        ..ConfigText::default()
    }
    .render(dir.path());
    std::fs::write(&config, text).unwrap();
    let d = start_faked(dir.path(), &config, &lib, &offset).await;
    let (before, last) = health(&d).await;
    next_sweep(&d, last).await;

    step_to(&offset, "-3600");
    let stepped = wait_for("the daemon's clock to step back", || async {
        let (now, last) = health(&d).await;
        (now.plus(std::time::Duration::from_secs(3500)) < before).then_some(last)
    })
    .await;

    // The cron trigger waits for a tick an hour away; sweeps go on regardless, on the
    // stepped clock.
    let first = next_sweep(&d, stepped).await;
    let second = next_sweep(&d, first).await;
    assert!(second.plus(std::time::Duration::from_secs(3500)) < before);
    d.wait_for_log("the cron trigger missed its tick").await;
    let logs = d.logs();
    assert_eq!(
        logs.matches("the cron trigger missed its tick").count(),
        1,
        "one line per silent spell, not per sweep:\n{logs}"
    );

    // /healthz measures the sweeps' silence on the monotonic clock: an hour of wall-clock
    // difference neither hides nor fakes a stall.
    let healthz = shiptoken::providers::http_get(format!("http://{metrics}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.text().await.unwrap(), "ok\n");

    // The wall clock back where it was: the trigger ticks again.
    step_to(&offset, "+0");
    d.wait_for_log("the cron trigger ticks again").await;
    let (_, last) = health(&d).await;
    next_sweep(&d, last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_on_after_the_clock_steps_back_an_hour() {
    let Some(lib) = libfaketime_or_skip() else {
        return;
    };
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime");
    step_to(&offset, "+0");
    let config = dir.path().join("shiptoken.toml");
    // Checked every second, so the outage below is noticed at once.
    let extra = "[verify]\ninterval = \"1s\"\n";
    std::fs::write(&config, config_text(dir.path(), &fake.base_url(), extra)).unwrap();
    let d = start_faked(dir.path(), &config, &lib, &offset).await;
    let user = d.register(&fake, "acme", "ops@acme.test").await;
    // An outage: the daemon retries with backoff (1 s doubling to at most 4 s here).
    fake.set_mode(&user.email, ShipHeroMode::Down);
    let calls = fake.graphql_count(&user.email);
    tokio::time::timeout(DEADLINE, fake.wait_for_graphql(&user.email, calls + 2))
        .await
        .unwrap();
    // NTP steps the wall clock back an hour: the retries scheduled on it must not wait an hour.
    step_to(&offset, "-3600");
    let calls = fake.graphql_count(&user.email);
    tokio::time::timeout(DEADLINE, fake.wait_for_graphql(&user.email, calls + 3))
        .await
        .expect("retries stopped after the clock stepped back");
    // And once upstream is back the account is proven again, still on the stepped clock.
    fake.set_mode(&user.email, ShipHeroMode::Active);
    wait_for("the account to be checked again", || async {
        let a = d.account("shiphero/acme").await;
        a["last_error"].is_null().then_some(())
    })
    .await;
    assert_eq!(d.cli(&["get", "shiphero/acme"]).await.code, 0);
}
