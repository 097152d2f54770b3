//! The fleet the tests in `fleet.rs` run: three daemons on one PostgreSQL registry, their
//! fakes, and how to watch what each serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{ConfigText, Daemon, FakeShipHero, FakeShippo, free_port, wait_for};

/// How long a daemon may work on an account before another may take over.
pub(crate) const LEASE: &str = "2s";
/// Far enough that every token the fake issued before is past `rotate_at` (0.5 of 28 days
/// plus at most 10% spread), not so far that it expired.
pub(crate) const DUE: &str = "17d";
pub(crate) const DUE_SECS: u64 = 17 * 86_400;
pub(crate) const SHIPPO_CLIENT: &str = "platform-test";
pub(crate) const SHIPPO_SECRET: &str = "client-secret-0123456789abcdef";

/// Three daemons on one registry, their fakes and the files they share.
pub(crate) struct Fleet {
    /// The one ShipHero every daemon calls; it counts refreshes fleet-wide.
    pub(crate) fake: FakeShipHero,
    /// The one Shippo, its OAuth client registered with [`Fleet::redirect_uri`].
    pub(crate) shippo: FakeShippo,
    /// A, B, C.
    pub(crate) d: Vec<Daemon>,
    /// Each daemon's metrics listener ([`Setup::listeners`]).
    pub(crate) metrics: Vec<u16>,
    /// Each daemon's Shippo callback listener ([`Setup::listeners`]).
    pub(crate) callbacks: Vec<SocketAddr>,
    /// The one redirect URI all daemons give Shippo, as behind a load balancer; no one
    /// listens on it, a test delivers the callback to the daemon it chooses.
    pub(crate) redirect_uri: String,
    /// Holds the daemons' folders and the shared key until the fleet is dropped.
    _dir: tempfile::TempDir,
}

/// What differs between fleets.
#[derive(Default)]
pub(crate) struct Setup<'a> {
    /// Environment for every daemon (e.g. a longer upstream timeout).
    pub(crate) env: &'a [(&'a str, &'a str)],
    /// Sections appended to every daemon's config.
    pub(crate) extra: &'a str,
    /// Daemon A's `registry.lease`, when not [`LEASE`].
    pub(crate) lease_a: Option<&'a str>,
    /// Whether the daemons open their metrics and Shippo callback listeners. Only the tests
    /// that use them do: fewer listeners, fewer ports to find.
    pub(crate) listeners: bool,
    /// Whether each daemon has its own copy of the key (`<its folder>/fleet.key`), as hosts
    /// do, instead of all reading one file.
    pub(crate) own_keys: bool,
}

/// A new key file in `dir`, mode 0600, as `keys.rs` expects one.
pub(crate) fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("fleet.key");
    shiptoken::keys::write_key(&path, &shiptoken::keys::MasterKey::generate()).unwrap();
    path
}

/// The `[registry]` section of a daemon called `host` on `url`.
pub(crate) fn registry_section(url: &str, host: &str, lease: &str) -> String {
    format!("[registry]\nurl = \"{url}\"\nhost_name = \"{host}\"\nlease = \"{lease}\"\n")
}

impl Fleet {
    /// Starts three daemons on the registry at `url`.
    pub(crate) async fn start(url: &str, setup: Setup<'_>) -> Fleet {
        let fake = FakeShipHero::start().await.unwrap();
        let shippo = FakeShippo::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let secret = dir.path().join("shippo.secret");
        std::fs::write(&secret, format!("{SHIPPO_SECRET}\n")).unwrap();
        let redirect_uri = format!("http://127.0.0.1:{}/shippo-oauth-redirect/", free_port());
        shippo.new_client(SHIPPO_CLIENT, SHIPPO_SECRET, &[&redirect_uri]);
        let mut configs = Vec::new();
        let (mut metrics, mut callbacks) = (Vec::new(), Vec::new());
        for host in ["daemon-a", "daemon-b", "daemon-c"] {
            let lease = match setup.lease_a {
                Some(lease) if host == "daemon-a" => lease,
                _ => LEASE,
            };
            let home = dir.path().join(host);
            std::fs::create_dir(&home).unwrap();
            let key = match setup.own_keys {
                true => {
                    let own = home.join("fleet.key");
                    std::fs::copy(&key, &own).unwrap();
                    own
                }
                false => key.clone(),
            };
            let base = shippo.base_url();
            // Shippo OAuth needs the callback listener; without listeners, only the API.
            let (metrics_listen, shippo_section) = match setup.listeners {
                true => {
                    let (m, c) = (free_port(), free_port());
                    metrics.push(m);
                    callbacks.push(SocketAddr::from(([127, 0, 0, 1], c)));
                    let oauth = format!(
                        "api_base = \"{base}\"\noauth_base = \"{base}\"\nclient_id = \"{SHIPPO_CLIENT}\"\n\
                         client_secret_file = \"{}\"\nredirect_uri = \"{redirect_uri}\"\n\
                         callback_listen = \"127.0.0.1:{c}\"",
                        secret.display()
                    );
                    (format!("127.0.0.1:{m}"), oauth)
                }
                false => (
                    String::new(),
                    format!("api_base = \"{base}\"\ncallback_listen = \"\""),
                ),
            };
            let config = ConfigText {
                shiphero_base: &fake.base_url(),
                metrics_listen: &metrics_listen,
                top: &format!("key_file = \"{}\"", key.display()),
                shippo: &shippo_section,
                extra: &format!("{}{}", registry_section(url, host, lease), setup.extra),
                ..ConfigText::default()
            }
            .render(&home);
            let path = home.join("shiptoken.toml");
            std::fs::write(&path, config).unwrap();
            configs.push((home, path));
        }
        // The first daemon creates the schema alone, so a failure to start on a fresh
        // database is told apart from a race between daemons migrating at once.
        let (home, path) = &configs[0];
        let mut d = vec![Daemon::start_with(home, path, setup.env).await];
        let rest = futures_util::future::join_all(
            configs[1..]
                .iter()
                .map(|(home, path)| Daemon::start_with(home, path, setup.env)),
        )
        .await;
        d.extend(rest);
        Fleet {
            fake,
            shippo,
            d,
            metrics,
            callbacks,
            redirect_uri,
            _dir: dir,
        }
    }

    /// Registers ShipHero user `name@fleet.test` as `shiphero/NAME` through daemon `via`,
    /// with the access token the fake issued at creation (so registering calls no refresh).
    pub(crate) async fn register(&self, via: usize, name: &str) -> String {
        let email = format!("{name}@fleet.test");
        let user = self.fake.add_user(&email);
        let (status, body) = self.d[via]
            .call(
                "POST",
                "/v1/accounts",
                Some(&json!({
                    "provider": "shiphero",
                    "account": name,
                    "email": email,
                    "refresh_token": user.refresh_token,
                    "access_token": user.access_token,
                })),
            )
            .await;
        assert_eq!(status, 201, "registering shiphero/{name}: {body}");
        email
    }

    /// Moves daemon `i`'s clock and the fakes' by [`DUE`]: every token issued before is due
    /// there, and the tokens the fake issues from now on are fresh on that daemon's clock.
    pub(crate) async fn make_due_on(&self, i: usize) {
        self.d[i].advance(DUE).await;
        self.fake.advance_clock(Duration::from_secs(DUE_SECS));
    }

    /// Waits until every daemon serves `token` for `key`.
    pub(crate) async fn wait_all_serve(&self, key: &str, token: &str) {
        for d in &self.d {
            wait_served(d, key, token).await;
        }
    }
}

/// The token `d` serves for `key`, if any.
pub(crate) async fn served(d: &Daemon, key: &str) -> Option<String> {
    let (status, body) = d.call("GET", &format!("/v1/tokens/{key}"), None).await;
    (status == 200).then(|| body["access_token"].as_str().unwrap().to_string())
}

/// Waits until `d` serves `token` for `key`.
pub(crate) async fn wait_served(d: &Daemon, key: &str, token: &str) {
    wait_for(
        &format!("{} to serve the newest {key}", d.dir.display()),
        || async { (served(d, key).await.as_deref() == Some(token)).then_some(()) },
    )
    .await;
}

/// Waits until `d` has logged a warning that mentions its lease.
pub(crate) async fn wait_for_lease_warning(d: &Daemon) {
    wait_for("a warning about the lost lease", || async {
        d.logs()
            .lines()
            .any(|l| l.contains("WARN") && l.to_lowercase().contains("lease"))
            .then_some(())
    })
    .await;
}

/// The value of the first sample of `name` on the metrics listener at `port`.
pub(crate) async fn metric(port: u16, name: &str) -> Option<f64> {
    let text = shiptoken::providers::http_get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether `/v1/health` says the shared registry is written and followed: its `registry`
/// field is `{"shared": true, "host_name", "problem": null or what keeps it from that}`.
pub(crate) fn registry_connected(health: &Value) -> Option<bool> {
    let registry = &health["registry"];
    (registry["shared"] == true).then(|| registry["problem"].is_null())
}

/// Waits until daemon `i` reports the registry (un)reachable in its health and metrics.
pub(crate) async fn wait_registry_connected(f: &Fleet, i: usize, connected: bool) {
    let d = &f.d[i];
    wait_for(
        &format!("health of daemon {i}: registry connected = {connected}"),
        || async {
            let (_, h) = d.call("GET", "/v1/health", None).await;
            (registry_connected(&h) == Some(connected)).then_some(())
        },
    )
    .await;
    let want = if connected { 1.0 } else { 0.0 };
    wait_for("shiptoken_registry_connected", || async {
        (metric(f.metrics[i], "shiptoken_registry_connected").await == Some(want)).then_some(())
    })
    .await;
}

/// Moves the clocks of the daemons that survive a lease holder, `last` last, to the
/// holder's time.
///
/// Both move, not only the one meant to take over: a daemon whose clock runs behind sees a
/// token stored by one ahead as issued in its future, and refreshes it at once
/// (`rotation::plan`: a clock before the issue time is not trusted to judge the age); with
/// days between their clocks, two such daemons would refresh each other's tokens forever.
pub(crate) async fn survivors_catch_up(first: &Daemon, last: &Daemon) {
    first.advance(DUE).await;
    last.advance(DUE).await;
}

/// Tokens and history of `keys` as `d` serves them; history as (at, kind, detail).
pub(crate) async fn snapshot(
    d: &Daemon,
    keys: &[&str],
) -> Vec<(String, Vec<(Value, Value, Value)>)> {
    let mut out = Vec::new();
    for key in keys {
        let token = served(d, key)
            .await
            .unwrap_or_else(|| panic!("{key} not served"));
        let (status, events) = d
            .call("GET", &format!("/v1/accounts/{key}/events"), None)
            .await;
        assert_eq!(status, 200, "{events}");
        let events = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["at"].clone(), e["kind"].clone(), e["detail"].clone()))
            .collect();
        out.push((token, events));
    }
    out
}
