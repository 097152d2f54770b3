//! `serve --dev`: the real daemon against simulated ShipHero, Shippo and carrier servers on
//! 127.0.0.1, with state in a temporary folder and short token lifetimes, so a newcomer sees
//! a rotation and a suspension within a minute. Only where state lives and where upstream is
//! differ from production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::clock::Clock;
use crate::config::{Config, RawConfig};
use crate::names::AccountKey;
use crate::providers::oauth2::account::Credential;
use crate::providers::oauth2::sim::{FakeCarrier, PROBE_PATH, UPS_TOKEN_PATH};
use crate::registry::{NewAccount, Registry};
use crate::secret::Secret;
use crate::sim::{FakeShipHero, FakeShippo, ShipHeroMode};

/// Token lifetime in dev mode: rotation at half of it, i.e. every 30 seconds.
pub const DEV_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// The OAuth client id dev mode registers with its simulated Shippo.
const DEV_SHIPPO_CLIENT_ID: &str = "shiptoken-dev";

/// What dev mode keeps alive while the daemon runs; dropping it removes the temporary state
/// folder unless asked to keep it.
pub struct DevEnvironment {
    /// The simulated ShipHero.
    pub shiphero: FakeShipHero,
    /// The simulated Shippo.
    pub shippo: FakeShippo,
    /// The simulated carrier (UPS's answers).
    pub carrier: FakeCarrier,
    /// The configuration the daemon runs with.
    pub config: Config,
    state: Option<tempfile::TempDir>,
    kept: Option<PathBuf>,
}

impl DevEnvironment {
    /// Where state lives.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Stops the simulators and, unless kept, removes the state folder.
    pub fn finish(mut self) {
        self.shiphero.shutdown();
        self.shippo.shutdown();
        self.carrier.shutdown();
        if let Some(path) = self.kept.take() {
            eprintln!("dev state kept in {}", path.display());
        }
        drop(self.state.take());
    }
}

/// Starts the simulators, writes a dev configuration and registers the demo accounts.
pub async fn prepare(keep: bool) -> anyhow::Result<DevEnvironment> {
    let dir = tempfile::Builder::new()
        .prefix("shiptoken-dev-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let shiphero = FakeShipHero::start()
        .await
        .context("cannot start the simulated ShipHero")?;
    let shippo = FakeShippo::start()
        .await
        .context("cannot start the simulated Shippo")?;
    let carrier = FakeCarrier::start()
        .await
        .context("cannot start the simulated carrier")?;
    shiphero.set_token_lifetime(DEV_TOKEN_LIFETIME);
    carrier.set_lifetime(DEV_TOKEN_LIFETIME.as_secs());
    let oauth = OAuthClient::register(&shippo, dir.path())?;
    let config = dev_config(dir.path(), &shiphero, &shippo, oauth)?;
    register_demo_accounts(&config, &shiphero, &shippo, &carrier).await?;
    let kept = keep.then(|| dir.path().to_path_buf());
    let state = if keep {
        let _ = dir.keep();
        None
    } else {
        Some(dir)
    };
    Ok(DevEnvironment {
        shiphero,
        shippo,
        carrier,
        config,
        state,
        kept,
    })
}

/// The OAuth client dev mode registers with its simulated Shippo, which is also the OAuth
/// host, so `shippo connect` works end to end.
struct OAuthClient {
    /// The callback URL registered with Shippo.
    redirect_uri: String,
    /// Where the callback listener binds: chosen now, because the redirect URI names it.
    callback_listen: String,
    /// The client secret's file.
    secret_file: PathBuf,
}

impl OAuthClient {
    fn register(shippo: &FakeShippo, dir: &Path) -> anyhow::Result<OAuthClient> {
        let callback_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free port for the Shippo OAuth callback")?
            .port();
        let redirect_uri = format!("http://127.0.0.1:{callback_port}/shippo-oauth-redirect/");
        let client_secret = crate::sim::random_hex(16);
        let secret_file = dir.join("shippo-client-secret");
        std::fs::write(&secret_file, &client_secret)
            .context("cannot write the dev Shippo client secret")?;
        shippo.new_client(DEV_SHIPPO_CLIENT_ID, &client_secret, &[&redirect_uri]);
        Ok(OAuthClient {
            redirect_uri,
            callback_listen: format!("127.0.0.1:{callback_port}"),
            secret_file,
        })
    }
}

/// The dev configuration: state and socket in `dir`, the simulators as upstreams, short
/// intervals so rotation and a suspension show within a minute.
fn dev_config(
    dir: &Path,
    shiphero: &FakeShipHero,
    shippo: &FakeShippo,
    oauth: OAuthClient,
) -> anyhow::Result<Config> {
    let defaults = RawConfig::default();
    let raw = RawConfig {
        state_dir: dir.join("state").display().to_string(),
        socket: crate::config::RawSocket {
            path: dir.join("shiptoken.sock").display().to_string(),
            ..defaults.socket
        },
        metrics: crate::config::RawMetrics {
            listen: "127.0.0.1:0".into(),
        },
        log: crate::config::RawLog {
            format: "text".into(),
            ..defaults.log
        },
        rotation: crate::config::RawRotation {
            schedule: "* * * * * *".into(),
            retry_initial: "2s".into(),
            retry_max: "20s".into(),
            ..defaults.rotation
        },
        verify: crate::config::RawVerify {
            interval: "20s".into(),
            suspended_interval: "15s".into(),
            // Short, so the demo's suspension is flagged seconds after it is first seen.
            confirm_after: "5s".into(),
            ..defaults.verify
        },
        shiphero: crate::config::RawShipHero {
            api_base: shiphero.base_url(),
            timeout: "5s".into(),
            ..defaults.shiphero
        },
        shippo: crate::config::RawShippo {
            api_base: shippo.base_url(),
            oauth_base: shippo.base_url(),
            client_id: DEV_SHIPPO_CLIENT_ID.into(),
            client_secret_file: oauth.secret_file.display().to_string(),
            redirect_uri: oauth.redirect_uri,
            callback_listen: oauth.callback_listen,
            ..defaults.shippo
        },
        ..defaults
    };
    let figment = figment::Figment::from(figment::providers::Serialized::defaults(raw));
    Config::from_figment(&figment, None).context("the built-in dev configuration is invalid")
}

/// Registers the demo accounts: an active and a suspended ShipHero user, a Shippo token, and
/// a carrier account answered as UPS answers.
async fn register_demo_accounts(
    config: &Config,
    shiphero: &FakeShipHero,
    shippo: &FakeShippo,
    carrier: &FakeCarrier,
) -> anyhow::Result<()> {
    let registry = Registry::open(&config.state_dir).await?;
    let now = Clock::system().now();
    let active = shiphero.add_user("demo-active@example.com");
    let suspended = shiphero.add_user("demo-suspended@example.com");
    shiphero.set_mode("demo-suspended@example.com", ShipHeroMode::Suspended);
    for (name, user) in [("demo-active", &active), ("demo-suspended", &suspended)] {
        registry
            .add(
                NewAccount {
                    key: AccountKey::new("shiphero", name)?,
                    email: Some(user.email.clone()),
                    first_name: Some("Demo".into()),
                    last_name: Some(name.into()),
                    refresh_token: Some(Secret::new(user.refresh_token.clone())),
                    access_token: None,
                },
                now,
            )
            .await?;
    }
    let shippo_token = shippo.add_token("demo-shippo");
    registry
        .add(
            NewAccount::shippo(
                AccountKey::new("shippo", "demo-shippo")?,
                Secret::new(shippo_token),
                now,
            ),
            now,
        )
        .await?;
    register_demo_carrier(&registry, carrier, now).await
}

/// Registers `oauth2/demo-ups`: the `ups` preset pointed at the simulated carrier, which
/// answers as UPS does (`expires_in` as a string), with its probe.
async fn register_demo_carrier(
    registry: &Registry,
    carrier: &FakeCarrier,
    now: crate::clock::Timestamp,
) -> anyhow::Result<()> {
    let client_secret = carrier.add_client("demo-ups-app");
    let base = carrier.base_url();
    let credential = Credential {
        preset: "ups".into(),
        token_url: Some(format!("{base}{UPS_TOKEN_PATH}")),
        client_id: "demo-ups-app".into(),
        client_secret,
        auth: None,
        scope: None,
        form: Default::default(),
        headers: Default::default(),
        refresh_token: None,
        // The demo's API is the simulator: `/v1/proxy/oauth2/demo-ups/api/ping` works.
        api_base: Some(base.clone()),
        probe_method: None,
        probe_url: Some(format!("{base}{PROBE_PATH}")),
        probe_status: None,
    };
    registry
        .add(
            NewAccount {
                key: AccountKey::new("oauth2", "demo-ups")?,
                email: None,
                first_name: None,
                last_name: None,
                refresh_token: Some(credential.encode()),
                access_token: None,
            },
            now,
        )
        .await?;
    Ok(())
}

/// The few lines dev mode prints once the daemon is ready.
pub fn instructions(socket: &Path, metrics: Option<std::net::SocketAddr>) -> String {
    let s = socket.display();
    let bin = command_name();
    let mut out = format!(
        "\nshiptoken dev mode is running (simulated ShipHero, Shippo and UPS; tokens live 60 s, rotate every 30 s).\n\n\
         \x20 {bin} --socket {s} accounts list\n\
         \x20 {bin} --socket {s} accounts list --watch   # live view; Ctrl-C stops it\n\
         \x20 {bin} --socket {s} get shiphero/demo-active\n\
         \x20 {bin} --socket {s} get shiphero/demo-suspended   # exits 3: flagged suspended\n\
         \x20 {bin} --socket {s} get oauth2/demo-ups   # a carrier token, UPS's answers\n\
         \x20 curl --unix-socket {s} http://localhost/v1/tokens/shippo/demo-shippo\n\
         \x20 {bin} --socket {s} shippo connect demo-oauth   # then open the link it prints\n"
    );
    if let Some(m) = metrics {
        out.push_str(&format!("  curl http://{m}/metrics\n"));
    }
    out.push_str("\nCtrl-C stops it and removes the temporary state (--keep keeps it).\n");
    out
}

/// How to call this binary in a pasted command: `shiptoken` when that is what `PATH` finds,
/// else the full path (e.g. `target/release/shiptoken` under `cargo run`).
fn command_name() -> String {
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            dir.join("shiptoken")
                .canonicalize()
                .ok()
                .is_some_and(|found| Some(found) == me)
        })
    });
    match (on_path, me) {
        (false, Some(path)) => path.display().to_string(),
        _ => "shiptoken".to_string(),
    }
}
