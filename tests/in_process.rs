//! The daemon as a library value: started inside the test process, reloaded through its
//! handle, and stopped by the shutdown future the test passes in (no signals involved).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{ConfigText, FakeShipHero};
use shiptoken::config::Config;
use shiptoken::daemon::{self, ServeOptions};
use tokio::sync::oneshot;

#[tokio::test]
async fn a_daemon_runs_in_process_reloads_and_stops_when_its_future_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeShipHero::start().await.unwrap();
    let file = dir.path().join("shiptoken.toml");
    let text = ConfigText {
        shiphero_base: &fake.base_url(),
        ..ConfigText::default()
    }
    .render(dir.path());
    std::fs::write(&file, &text).unwrap();

    let running = daemon::start(Config::load(Some(&file)).unwrap(), ServeOptions::default())
        .await
        .unwrap();
    let socket = running.ready().socket.clone();
    assert_eq!(socket, dir.path().join("shiptoken.sock"));
    let reloader = running.reloader();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(running.run(async {
        let _ = stopped.await;
    }));

    let health = shiptoken::client::call(&socket, "GET", "/v1/health", None)
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "ok");

    // A second daemon on the same state folder is refused while this one runs.
    let second = daemon::start(Config::load(Some(&file)).unwrap(), ServeOptions::default()).await;
    let message = format!("{:#}", second.err().unwrap());
    assert!(message.contains("another shiptoken process"), "{message}");

    // A file gone is refused and the running configuration stays; the file back applies.
    std::fs::remove_file(&file).unwrap();
    assert!(!reloader.reload().await, "a missing file must be refused");
    std::fs::write(
        &file,
        text.replace("retry_max = \"4s\"", "retry_max = \"8s\""),
    )
    .unwrap();
    assert!(reloader.reload().await, "a valid file must be applied");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("the daemon stops once its shutdown future resolves")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket file is removed on stop");

    // Everything was released: the same folder starts again.
    let again = daemon::start(Config::load(Some(&file)).unwrap(), ServeOptions::default())
        .await
        .unwrap();
    again.run(async {}).await.unwrap();
}
