//! A fake carrier token endpoint and API on a loopback port, answering as UPSTREAM.md says UPS
//! and FedEx do: UPS's `POST /security/v1/oauth/token` (client id and secret as HTTP Basic,
//! `expires_in` as a string, `issued_at` in milliseconds as a string, `status: "approved"`),
//! FedEx's `POST /oauth/token` (credentials in the form body, a JSON body refused with 400),
//! both grants (RFC 6749 4.4 and 6, optionally rotating refresh tokens), and `GET /api/ping`,
//! a probe refusing bad tokens the RFC 6750 way. Tests put each client in a mode.

mod routes;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::sim::{Lifecycle, lock, random_hex, spawn_server, wait_until};

/// UPS's token path.
pub const UPS_TOKEN_PATH: &str = "/security/v1/oauth/token";
/// FedEx's token path.
pub const FEDEX_TOKEN_PATH: &str = "/oauth/token";
/// The probe path.
pub const PROBE_PATH: &str = "/api/ping";

/// How a client's requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CarrierMode {
    /// Everything works.
    #[default]
    Active,
    /// The client is revoked: `invalid_client` at the token endpoint (and `invalid_grant` for
    /// its refresh tokens), `invalid_token` at the probe.
    Revoked,
    /// The requested scope is not the client's: `invalid_scope`.
    BadScope,
    /// An outage: 503 with an HTML page everywhere.
    Down,
    /// 429 with `Retry-After: 1`.
    Throttled,
    /// A proxy's login page: 401 with HTML.
    ProxyPage,
}

/// One registered application.
struct Client {
    secret: String,
    mode: CarrierMode,
    token_calls: u64,
    /// The refresh token currently valid for this client, if it has one.
    refresh: Option<String>,
}

/// Everything mutable; never held across an `.await`.
struct State {
    clients: HashMap<String, Client>,
    /// Access token to client id.
    tokens: HashMap<String, String>,
    /// Seconds each token lives, as the carrier says.
    lifetime: u64,
    /// Whether a refresh grant answers a new refresh token (and invalidates the old one).
    rotate_refresh: bool,
    /// How long every answer waits (benchmarks set a carrier's round trip).
    latency: std::time::Duration,
    /// Every request, answered or not.
    total_requests: u64,
}

/// What handlers and handles share.
struct Shared {
    state: Mutex<State>,
    events: Notify,
}

/// A running fake carrier. Clones share one server, which stops with the last handle.
#[derive(Clone)]
pub struct FakeCarrier {
    shared: Arc<Shared>,
    lifecycle: Arc<Lifecycle>,
    addr: SocketAddr,
}

impl FakeCarrier {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> io::Result<FakeCarrier> {
        let (lifecycle, shutdown) = Lifecycle::new();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                clients: HashMap::new(),
                tokens: HashMap::new(),
                lifetime: 14_399,
                rotate_refresh: false,
                latency: std::time::Duration::ZERO,
                total_requests: 0,
            }),
            events: Notify::new(),
        });
        let router = routes::router(shared.clone(), shutdown.clone());
        let addr = spawn_server((Ipv4Addr::LOCALHOST, 0).into(), router, shutdown).await?;
        Ok(FakeCarrier {
            shared,
            lifecycle: Arc::new(lifecycle),
            addr,
        })
    }

    /// The base URL, like `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server for every clone.
    pub fn shutdown(&self) {
        self.lifecycle.shutdown();
    }

    /// Registers an active client and returns its secret.
    pub fn add_client(&self, client_id: &str) -> String {
        let secret = random_hex(16);
        lock(&self.shared.state).clients.insert(
            client_id.to_string(),
            Client {
                secret: secret.clone(),
                mode: CarrierMode::Active,
                token_calls: 0,
                refresh: None,
            },
        );
        secret
    }

    /// Gives the client a refresh token (as an auth-code flow would) and returns it.
    pub fn issue_refresh_token(&self, client_id: &str) -> Option<String> {
        let mut st = lock(&self.shared.state);
        let client = st.clients.get_mut(client_id)?;
        let token = format!("rt-{}", random_hex(16));
        client.refresh = Some(token.clone());
        Some(token)
    }

    /// The refresh token the client currently holds.
    pub fn refresh_token(&self, client_id: &str) -> Option<String> {
        lock(&self.shared.state)
            .clients
            .get(client_id)
            .and_then(|c| c.refresh.clone())
    }

    /// Puts the client in `mode`.
    pub fn set_mode(&self, client_id: &str, mode: CarrierMode) {
        if let Some(c) = lock(&self.shared.state).clients.get_mut(client_id) {
            c.mode = mode;
        }
    }

    /// Sets the lifetime of the tokens issued from now on, in seconds.
    pub fn set_lifetime(&self, seconds: u64) {
        lock(&self.shared.state).lifetime = seconds;
    }

    /// Delays every answer by `d`, as a carrier's round trip would.
    pub fn set_latency(&self, d: std::time::Duration) {
        lock(&self.shared.state).latency = d;
    }

    /// Every request so far, answered or not.
    pub fn total_requests(&self) -> u64 {
        lock(&self.shared.state).total_requests
    }

    /// Makes refresh grants rotate the refresh token.
    pub fn set_rotate_refresh(&self, rotate: bool) {
        lock(&self.shared.state).rotate_refresh = rotate;
    }

    /// How many token requests the client made, answered or not.
    pub fn token_calls(&self, client_id: &str) -> u64 {
        lock(&self.shared.state)
            .clients
            .get(client_id)
            .map_or(0, |c| c.token_calls)
    }

    /// Waits until the client made at least `n` token requests.
    pub async fn wait_for_token_calls(&self, client_id: &str, n: u64) {
        wait_until(&self.shared.events, || self.token_calls(client_id) >= n).await;
    }

    /// Whether `token` is a live token of an active client.
    pub fn token_works(&self, token: &str) -> bool {
        let st = lock(&self.shared.state);
        st.tokens
            .get(token)
            .and_then(|id| st.clients.get(id))
            .is_some_and(|c| c.mode != CarrierMode::Revoked)
    }
}

/// A fresh access token for `client_id`, remembered until the fake stops.
fn issue(st: &mut State, client_id: &str) -> String {
    let token = format!("at-{}", random_hex(24));
    st.tokens.insert(token.clone(), client_id.to_string());
    token
}

/// The shutdown flag handlers watch.
type Shutdown = watch::Receiver<bool>;
