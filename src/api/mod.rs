//! The socket API: routes, who may call them, and the JSON they answer.
//!
//! Tokens are served from the registry's in-memory copy, so the hot path touches neither
//! SQLite nor the network. Access is decided from the peer's credentials ([`Peer`]) and the
//! `[socket]` rules, re-read on every request so a reload applies at once.
//!
//! This file holds the shared state and the fast path ([`Handler`]); `access` decides who may
//! do what, `tokens` serves tokens, `routes` has the router and the other handlers,
//! `accounts` checks registrations, `error` maps errors to answers.

mod access;
mod accounts;
pub mod answer;
pub mod audit;
mod detail;
mod error;
pub mod proxy;
mod routes;
pub mod served;
pub mod server;
mod tokens;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use answer::Answers;
pub use audit::AuditLog;
pub use error::ApiError;
pub use routes::router;
pub use server::{Caller, Limits, Peer, Standing, serve};
pub use tokens::MAX_WAIT_SECS;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rotation::Engine;
use routes::key_from;
use tokens::{Servable, token_answer};

/// What every handler shares.
pub struct ApiState {
    /// The source of truth.
    pub registry: Registry,
    /// Runs rotate and verify on request.
    pub engine: Arc<Engine>,
    /// The live configuration (replaced on reload).
    pub config: watch::Receiver<Arc<Config>>,
    /// The daemon's clock.
    pub clock: Clock,
    /// Request counters.
    pub metrics: Metrics,
    /// The daemon's own uid, always an admin.
    pub daemon_uid: u32,
    /// Whether `POST /v1/debug/clock` may move the clock (tests and dev mode only).
    pub movable_clock: bool,
    /// When the last sweep finished, shown by `/v1/health`.
    pub last_sweep: Arc<crate::scheduler::LastSweep>,
    /// The Shippo OAuth flow; `None` when OAuth is not configured, which disables connect.
    pub oauth: Option<Arc<crate::providers::shippo::oauth::OAuthFlow>>,
    /// Where every token handed out is queued for the audit (written in batches).
    pub audit: AuditLog,
    /// Token answers serialized once per stored token (`Answers::default()` to start).
    pub answers: Answers,
    /// Fires on shutdown, so clients waiting for a new token get their answer at once.
    pub shutdown: CancellationToken,
    /// The proxy's HTTP clients, one per provider (`ProxyClients::default()` to start).
    pub proxy: proxy::ProxyClients,
}
type Shared = State<Arc<ApiState>>;

/// The route template of the token route, as the metrics label it.
const TOKEN_ROUTE: &str = "/v1/tokens/{provider}/{account}";

/// Everything the socket answers. The token route carries nearly all traffic, so its common
/// form (`GET`, plain path segments) is matched here by hand and answered by the same
/// function the router calls for it; every other request, including any token request this
/// match leaves alone, goes through the router. Skipping the router's layers for the hot
/// route took about a sixth of the daemon's CPU per token request off (docs/socket.md).
#[derive(Clone)]
pub struct Handler {
    state: Arc<ApiState>,
    router: Router,
}

impl Handler {
    /// The socket's handler over `state`.
    pub fn new(state: Arc<ApiState>) -> Handler {
        Handler {
            router: router(state.clone()),
            state,
        }
    }

    /// How the accept loop should count a connection from `peer` (see [`Standing`]).
    pub fn standing(&self, peer: &Peer) -> Standing {
        self.state.standing(peer)
    }

    /// The daemon's metrics, where the accept loop counts refused connections.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// Answers one request. The caller attaches a [`Caller`] extension (the accept loop does,
    /// from `SO_PEERCRED`); without one, every route that needs it answers 403.
    pub async fn handle<B>(&self, request: axum::http::Request<B>) -> Response
    where
        B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let Some((provider, account)) = plain_token_path(&request) else {
            let routed = self
                .router
                .clone()
                .oneshot(request.map(axum::body::Body::new));
            return match routed.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        };
        let started = Instant::now();
        let answer = match key_from(provider, account) {
            Ok(key) => {
                let query = Query::try_from_uri(request.uri());
                token_answer(
                    &self.state,
                    key,
                    query,
                    request.extensions(),
                    request.headers(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let response = answer.unwrap_or_else(IntoResponse::into_response);
        self.state.metrics.socket_request(
            TOKEN_ROUTE,
            response.status().as_str(),
            started.elapsed(),
        );
        response
    }
}

/// `(provider, account)` when the request is `GET /v1/tokens/{provider}/{account}` with
/// segments the router would pass through unchanged: no percent-encoding (which it decodes),
/// none empty, no further `/`.
fn plain_token_path<B>(request: &axum::http::Request<B>) -> Option<(&str, &str)> {
    if request.method() != axum::http::Method::GET {
        return None;
    }
    let rest = request.uri().path().strip_prefix("/v1/tokens/")?;
    let (provider, account) = rest.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    (plain(provider) && plain(account)).then_some((provider, account))
}
