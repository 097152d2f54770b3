//! No lost audit (issue 28 item 4): token reads served while the registry cannot be written
//! (a PostgreSQL registry whose connections are cut, as a restart or a network fault would)
//! are all audited, in order, once it is back; with `socket.audit_required` such reads are
//! refused instead. Real binary, real PostgreSQL behind the cutting proxy of tests/common.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::postgres::{Proxy, fresh_database};
use common::*;
use serde_json::Value;

/// A daemon on the PostgreSQL database `direct`, reached through a proxy the test can cut;
/// `socket` is added to its `[socket]` section.
async fn start(
    direct: &str,
    socket: &str,
) -> (tempfile::TempDir, Daemon, FakeShipHero, Arc<Proxy>) {
    let proxy = Proxy::start(direct).await;
    let fake = FakeShipHero::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("shiptoken.key");
    shiptoken::keys::write_key(&key, &shiptoken::keys::MasterKey::generate()).unwrap();
    let text = ConfigText {
        shiphero_base: &fake.base_url(),
        top: &format!("key_file = \"{}\"", key.display()),
        extra: &format!(
            "[registry]\nurl = \"{}\"\nhost_name = \"audit-test\"\n",
            proxy.url_for(direct)
        ),
        ..ConfigText::default()
    }
    .render(dir.path())
    .replacen("[socket]\n", &format!("[socket]\n{socket}\n"), 1);
    let d = Daemon::start(dir.path(), &text).await;
    (dir, d, fake, proxy)
}

async fn read(d: &Daemon, account: &str) -> (u16, Value) {
    d.call("GET", &format!("/v1/tokens/shiphero/{account}"), None)
        .await
}

/// The audit's entries, oldest first (the daemon writes what it queued before answering),
/// once the registry answers again.
async fn audit(d: &Daemon) -> Vec<Value> {
    wait_for("the audit to be readable", || async {
        let (status, body) = d.call("GET", "/v1/audit?limit=100000", None).await;
        (status == 200).then(|| body["entries"].as_array().unwrap().clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_served_while_the_registry_is_cut_are_all_audited_in_order_when_it_is_back() {
    let Some(direct) = fresh_database().await else {
        return;
    };
    let (_dir, d, fake, proxy) = start(&direct, "").await;
    for name in ["a", "b", "c", "d"] {
        d.register(&fake, name, &format!("ops@{name}.test")).await;
        assert_eq!(read(&d, name).await.0, 200);
    }
    let before = audit(&d).await.len();
    assert_eq!(before, 4);

    proxy.cut();
    let mut reads = 0;
    for name in ["a", "b", "c"] {
        assert_eq!(read(&d, name).await.0, 200);
        reads += 1;
    }
    d.wait_for_log("cannot write audit entries").await;
    // More reads while the held entries wait: repeats, and an account not read since the cut.
    for name in ["b", "a", "d", "c", "d"] {
        assert_eq!(read(&d, name).await.0, 200, "{name}");
        reads += 1;
    }
    proxy.restore().await;
    let entries = audit(&d).await;
    let after: Vec<&Value> = entries[before..].iter().collect();
    let counted: u64 = after.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, reads, "every read audited: {after:#?}");
    let order: Vec<&str> = after
        .iter()
        .map(|e| e["account"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["shiphero/a", "shiphero/b", "shiphero/c", "shiphero/d"],
        "in the order of first reads: {after:#?}"
    );
    let times: Vec<&str> = after.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_required_refuses_reads_the_registry_cannot_take_and_serves_again_after() {
    let Some(direct) = fresh_database().await else {
        return;
    };
    let (_dir, d, fake, proxy) = start(&direct, "audit_required = true").await;
    d.register(&fake, "a", "ops@a.test").await;
    assert_eq!(read(&d, "a").await.0, 200);

    proxy.cut();
    // Queued before any write failed: served, and held until the registry is back.
    assert_eq!(read(&d, "a").await.0, 200);
    d.wait_for_log("cannot write audit entries").await;
    let (status, body) = read(&d, "a").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "audit_unavailable", "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    let get = d.cli(&["get", "shiphero/a"]).await;
    assert_ne!(get.code, 0, "{get:?}");

    proxy.restore().await;
    let held = audit(&d).await;
    assert!(!held.is_empty());
    d.wait_for_log("the registry takes audit entries again")
        .await;
    assert_eq!(read(&d, "a").await.0, 200);
    let counted: u64 = audit(&d)
        .await
        .iter()
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3, "the served reads, none of the refused ones");
}
