//! The socket API: routes, who may call them, and the JSON they answer.
//!
//! Tokens are served from the registry's in-memory copy, so the hot path touches neither
//! SQLite nor the network. Access is decided from the peer's credentials ([`Peer`]) and the
//! `[socket]` rules, re-read on every request so a reload applies at once.

pub mod answer;
pub mod audit;
pub mod served;
pub mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use answer::Answers;
pub use audit::AuditLog;
pub use server::{Caller, Limits, Peer, Standing, serve};

use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::names::{AccountKey, NameError, Provider, Status, validate_account_name};
use crate::registry::{
    AccountRecord, AuditQuery, NewAccount, Registry, RegistryError, TokenRecord,
};
use crate::rotation::{Engine, EngineError, Policy, refresh_point, usable};
use crate::secret::Secret;

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
    pub oauth: Option<Arc<crate::oauth::OAuthFlow>>,
    /// Where every token handed out is queued for the audit (written in batches).
    pub audit: AuditLog,
    /// Token answers serialized once per stored token (`Answers::default()` to start).
    pub answers: Answers,
    /// Fires on shutdown, so clients waiting for a new token get their answer at once.
    pub shutdown: CancellationToken,
}

/// A JSON error answer: `{"error": CODE, "message": TEXT, ...extra}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.code, "message": self.message });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        match e {
            NameError::UnknownProvider(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_provider", e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_account", e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match &e {
            RegistryError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_account", e.to_string())
            }
            RegistryError::AccountExists(_)
            | RegistryError::EmailTaken { .. }
            | RegistryError::RefreshTokenTaken { .. } => {
                ApiError::new(StatusCode::CONFLICT, "account_exists", e.to_string())
            }
            RegistryError::TimeOutOfRange { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            }
            RegistryError::Stale(_) => {
                ApiError::new(StatusCode::CONFLICT, "account_changed", e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "registry failure while answering a request");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registry_unavailable",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Registry(r) => r.into(),
            EngineError::Flagged { status, .. } => {
                ApiError::new(StatusCode::CONFLICT, status.error_code(), e.to_string())
            }
            EngineError::Upstream { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_failed", e.to_string())
            }
            EngineError::Nothing(m) => ApiError::new(StatusCode::CONFLICT, "account_pending", m),
        }
    }
}

type Shared = State<Arc<ApiState>>;

/// How long a token request waits for the probe of a token issued a moment ago.
const CANDIDATE_WAIT: Duration = Duration::from_secs(3);

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

/// Builds the router for the socket.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route(TOKEN_ROUTE, get(get_token))
        .route("/v1/accounts", get(list_accounts).post(add_account))
        .route(
            "/v1/accounts/{provider}/{account}",
            get(get_account).delete(remove_account),
        )
        .route(
            "/v1/accounts/{provider}/{account}/rotate",
            post(rotate_account),
        )
        .route(
            "/v1/accounts/{provider}/{account}/verify",
            post(verify_account),
        )
        .route(
            "/v1/accounts/{provider}/{account}/events",
            get(account_events),
        )
        .route("/v1/shippo/connect", post(shippo_connect))
        .route("/v1/audit", get(read_audit))
        .merge(debug_routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see GET /v1/health and the README",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Counts every request by route template (never the raw path, so labels stay bounded).
async fn observe(State(state): Shared, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // MatchedPath is an Arc<str>: cloning it costs no allocation on the hot path.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    state.metrics.socket_request(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_str(),
        started.elapsed(),
    );
    response
}

fn peer_of(extensions: &axum::http::Extensions) -> Result<Peer, ApiError> {
    extensions.get::<Caller>().map(|c| c.peer).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "peer credentials unavailable",
        )
    })
}

impl ApiState {
    fn is_admin(&self, peer: &Peer) -> bool {
        self.is_admin_under(&self.config.borrow(), peer)
    }

    fn is_admin_under(&self, config: &Config, peer: &Peer) -> bool {
        peer.uid == self.daemon_uid || config.socket.admin_uids.contains(&peer.uid)
    }

    /// Whether `peer` administers, may read some token, or may read nothing, under the
    /// current rules: the accept loop gives each a different share of the connections.
    fn standing(&self, peer: &Peer) -> Standing {
        let config = self.config.borrow();
        let rules = &config.socket.clients;
        if self.is_admin_under(&config, peer) {
            Standing::Admin
        } else if rules.is_empty() || rules.iter().any(|r| r.matches_peer(peer.uid, peer.gid)) {
            Standing::Reader
        } else {
            Standing::Stranger
        }
    }

    fn require_admin(
        &self,
        peer: &Peer,
        what: &str,
        account: Option<&AccountKey>,
    ) -> Result<(), ApiError> {
        if self.is_admin(peer) {
            return Ok(());
        }
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            account = account.map(tracing::field::display),
            action = what,
            "refused: not an admin"
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "uid {} may not {what}: only the daemon's user and socket.admin_uids may",
                peer.uid
            ),
        ))
    }

    /// `Ok(rule name)` when the peer may read the account's token under `config`.
    fn may_read(
        &self,
        config: &Config,
        peer: &Peer,
        key: &AccountKey,
    ) -> Result<Option<String>, ApiError> {
        if self.is_admin_under(config, peer) {
            return Ok(None);
        }
        let rules = &config.socket.clients;
        if rules.is_empty() {
            return Ok(None);
        }
        if let Some(rule) = rules
            .iter()
            .find(|r| r.matches_peer(peer.uid, peer.gid) && r.allows(key))
        {
            return Ok(Some(rule.name.clone()));
        }
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            account = %key,
            "refused: no socket.clients rule lets this peer read the account"
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("uid {} may not read {key}", peer.uid),
        ))
    }

    fn visible(&self, peer: &Peer, key: &AccountKey) -> bool {
        if self.is_admin(peer) {
            return true;
        }
        let config = self.config.borrow();
        config.socket.clients.is_empty()
            || config
                .socket
                .clients
                .iter()
                .any(|r| r.matches_peer(peer.uid, peer.gid) && r.allows(key))
    }

    fn account_json(&self, a: &AccountRecord) -> Value {
        let policy = Policy::from_config(&self.config.borrow());
        json!({
            "provider": a.key.provider,
            "account": a.key.name,
            "status": a.status,
            "status_since": a.status_since,
            "email": a.email,
            "expires_at": a.current.as_ref().and_then(|t| t.expires_at),
            "refresh_after": a.current.as_ref().and_then(|t| refresh_point(&a.key, t, &policy)),
            "last_rotated_at": a.last_rotated_at,
            "last_verified_at": a.last_verified_at,
            "last_error": a.last_error,
            "issued_at": a.current.as_ref().map(|t| t.issued_at),
            "next_attempt_at": a.next_attempt_at,
        })
    }
}

fn key_from(provider: &str, account: &str) -> Result<AccountKey, ApiError> {
    Ok(AccountKey::new(provider, account)?)
}

async fn health(State(state): Shared) -> Response {
    let accounts = state.registry.accounts();
    let mut by_status = serde_json::Map::new();
    for s in Status::ALL {
        let n = accounts.iter().filter(|a| a.status == s).count();
        by_status.insert(s.as_str().into(), n.into());
    }
    axum::Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "accounts": accounts.len(),
        "by_status": by_status,
        "now": state.clock.now(),
        "last_sweep_at": state.last_sweep.at(),
        // Providers where many accounts answer with evidence at once: flags are held there.
        "incidents": state.engine.incidents().into_iter().map(|(provider, since)| {
            json!({"provider": provider, "since": since})
        }).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// `{provider}/{account}` from the path, validated: a bad or undecodable segment is a JSON
/// 400 (or 404 for an unknown provider), never axum's plain-text rejection.
struct AccountPath(AccountKey);

impl<S: Send + Sync> FromRequestParts<S> for AccountPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path((provider, account)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "bad path: {}",
                    e.body_text().chars().take(200).collect::<String>()
                ))
            })?;
        Ok(AccountPath(key_from(&provider, &account)?))
    }
}

fn query_error(e: QueryRejection) -> ApiError {
    // serde's messages name the parameter and never echo more than the bad value.
    ApiError::bad_request(format!(
        "bad query string: {}",
        e.body_text().chars().take(200).collect::<String>()
    ))
}

/// The query of `GET /v1/tokens/{provider}/{account}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenQuery {
    /// Long poll: answer once the token or status differs from `known`, or after this many
    /// seconds with the current state.
    wait: Option<u64>,
    /// What the client already has: the `fingerprint` of its token, or the `error` code of its
    /// last answer. Without it, the state when the request arrived.
    known: Option<String>,
}

/// The longest `?wait=` accepted, in seconds.
pub const MAX_WAIT_SECS: u64 = 300;

/// A token that may be handed out, still inside its record (no copy of the secret).
struct Servable {
    record: Arc<AccountRecord>,
    candidate: bool,
}

impl Servable {
    fn token(&self) -> Option<&TokenRecord> {
        if self.candidate {
            self.record.candidate.as_ref()
        } else {
            self.record.current.as_ref()
        }
    }
}

impl ApiState {
    /// The token to hand out for `key` now, from memory, or why there is none.
    async fn servable(&self, key: &AccountKey) -> Result<Servable, ApiError> {
        let lookup = || {
            self.registry
                .account(key)
                .ok_or_else(|| ApiError::from(RegistryError::NotFound(key.clone())))
        };
        let mut record = lookup()?;
        if record.candidate.is_some() {
            // A token issued a moment ago is being probed: wait for the verdict rather than
            // hand out the previous token, which ShipHero may already have invalidated.
            self.engine.settle(key, CANDIDATE_WAIT).await;
            record = lookup()?;
        }
        let now = self.clock.now();
        // The newest stored token wins. A candidate still here after its probe was
        // inconclusive (outage, throttling) is newer than the served one, which may no longer
        // work.
        let candidate = record.candidate.as_ref().is_some_and(|c| usable(c, now));
        let newest = if candidate {
            record.candidate.as_ref()
        } else {
            record.current.as_ref()
        };
        match newest {
            Some(t) if record.status == Status::Active && usable(t, now) => {
                Ok(Servable { record, candidate })
            }
            _ => Err(unusable(&record, now)),
        }
    }
}

/// What a waiting client compares: the token's fingerprint, or the error code.
fn state_tag(outcome: &Result<Servable, ApiError>) -> String {
    match outcome {
        Ok(s) => s
            .token()
            .map(|t| t.access_token.fingerprint())
            .unwrap_or_default(),
        Err(e) => e.code.to_string(),
    }
}

async fn get_token(
    State(state): Shared,
    AccountPath(key): AccountPath,
    query: Result<Query<TokenQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    token_answer(&state, key, query, request.extensions(), request.headers()).await
}

/// `GET /v1/tokens/{provider}/{account}`, for both ways a request reaches it: the router and
/// [`Handler`]'s direct match.
async fn token_answer(
    state: &ApiState,
    key: AccountKey,
    query: Result<Query<TokenQuery>, QueryRejection>,
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let peer = peer_of(extensions)?;
    let Query(query) = query.map_err(query_error)?;
    // One snapshot of the configuration for the request: the rules that allowed the read are
    // the ones the answer is built under.
    let mut config = state.config.borrow().clone();
    let mut rule = state.may_read(&config, &peer, &key)?;
    let outcome = match query.wait {
        None => state.servable(&key).await,
        Some(wait) if wait > MAX_WAIT_SECS => {
            return Err(ApiError::bad_request(format!(
                "wait is at most {MAX_WAIT_SECS} seconds"
            )));
        }
        Some(wait) => {
            let outcome =
                wait_for_change(state, &key, Duration::from_secs(wait), query.known).await;
            // A reload during a long poll applies to its answer: access is decided again,
            // and the answer is built under the new configuration.
            config = state.config.borrow().clone();
            rule = state.may_read(&config, &peer, &key)?;
            outcome
        }
    };
    let served = outcome?;
    let Some(answer) = state.answers.get(&key, &served, &config) else {
        return Err(unusable(&served.record, state.clock.now()));
    };
    let now = state.clock.now();
    state.audit.record(audit::Read {
        at: now,
        account: &key,
        client: rule.as_deref(),
        peer,
        exe: extensions.get::<Caller>().and_then(|c| c.exe.as_deref()),
        fingerprint: &answer.fingerprint,
    });
    let wants_text = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain") && !v.contains("application/json"));
    let mut response = if wants_text {
        served
            .token()
            .map(|t| t.access_token.expose().to_string())
            .unwrap_or_default()
            .into_response()
    } else {
        let mut response = Response::new(axum::body::Body::from(answer.json.clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::ETAG, answer.etag.clone());
    Ok(response)
}

/// Waits until the account's token or status differs from `known` (or, without it, from what
/// it was on arrival), for at most `wait`; then answers the state of that moment.
///
/// The change receiver is taken *before* the first look, so a token stored between the look and
/// the wait still wakes us: the registry bumps it in the same step that updates the cache.
async fn wait_for_change(
    state: &ApiState,
    key: &AccountKey,
    wait: Duration,
    known: Option<String>,
) -> Result<Servable, ApiError> {
    let mut changes = state.registry.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut known = known;
    loop {
        let outcome = state.servable(key).await;
        let tag = state_tag(&outcome);
        match &known {
            Some(k) if *k != tag => return outcome,
            Some(_) => {}
            None => known = Some(tag),
        }
        let woke = tokio::select! {
            changed = tokio::time::timeout_at(deadline, changes.changed()) => {
                matches!(changed, Ok(Ok(())))
            }
            () = state.shutdown.cancelled() => false,
        };
        if !woke {
            return outcome;
        }
    }
}

/// The 409 answer for an account that has no token to hand out.
fn unusable(record: &AccountRecord, now: Timestamp) -> ApiError {
    let status = match record.status {
        Status::Active => Status::Expired,
        s => s,
    };
    let message = match status {
        Status::Pending => format!("{} has no proven token yet", record.key),
        Status::Suspended => format!(
            "{} is suspended: ShipHero issues tokens but its API rejects them",
            record.key
        ),
        Status::Revoked => format!(
            "{} is revoked: the provider rejects its credentials",
            record.key
        ),
        Status::Expired | Status::Active => format!(
            "{}'s token has expired and could not be refreshed",
            record.key
        ),
    };
    let since = if record.status == Status::Active {
        record
            .current
            .as_ref()
            .and_then(|t| t.expires_at)
            .unwrap_or(now)
    } else {
        record.status_since
    };
    ApiError {
        status: StatusCode::CONFLICT,
        code: status.error_code(),
        message,
        extra: Some(json!({
            "provider": record.key.provider,
            "account": record.key.name,
            "status": status,
            "status_since": since,
            "last_error": record.last_error,
        })),
    }
}

async fn list_accounts(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    let accounts: Vec<Value> = state
        .registry
        .accounts()
        .iter()
        .filter(|a| state.visible(&peer, &a.key))
        .map(|a| state.account_json(a))
        .collect();
    Ok(axum::Json(json!({ "accounts": accounts })).into_response())
}

async fn get_account(
    State(state): Shared,
    AccountPath(key): AccountPath,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.may_read(&state.config.borrow(), &peer, &key)?;
    let record = state
        .registry
        .account(&key)
        .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
    Ok(axum::Json(state.account_json(&record)).into_response())
}

async fn account_events(
    State(state): Shared,
    AccountPath(key): AccountPath,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.may_read(&state.config.borrow(), &peer, &key)?;
    let events = state.registry.events(&key, 200).await?;
    Ok(axum::Json(json!({ "events": events })).into_response())
}

/// The body of `POST /v1/accounts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddAccount {
    provider: String,
    account: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    refresh_token: Option<Secret>,
    #[serde(default)]
    access_token: Option<Secret>,
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    // serde's messages name the field ("unknown field `x`", "missing field `account`") and
    // never echo a value, so they are safe to return and log.
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn non_empty(field: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if v.is_empty() => Err(ApiError::bad_request(format!("{field} is empty"))),
        Some(v) if v.len() > 256 || v.chars().any(char::is_control) => Err(ApiError::bad_request(
            format!("{field} must be at most 256 printable characters"),
        )),
        other => Ok(other),
    }
}

fn secret_field(field: &str, value: Option<Secret>) -> Result<Option<Secret>, ApiError> {
    match value {
        Some(s) if s.is_empty() => Err(ApiError::bad_request(format!("{field} is empty"))),
        Some(s)
            if s.expose().len() > 8192 || s.expose().trim().chars().any(char::is_whitespace) =>
        {
            Err(ApiError::bad_request(format!(
                "{field} is not a token (whitespace inside, or over 8 KiB)"
            )))
        }
        Some(s) => Ok(Some(Secret::new(s.expose().trim()))),
        None => Ok(None),
    }
}

async fn add_account(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "add accounts", None)?;
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is over 64 KiB",
            )
        })?;
    let req: AddAccount = parse_json(&body)?;
    let provider = Provider::parse(&req.provider).ok_or_else(|| {
        ApiError::bad_request(format!(
            "provider must be shiphero or shippo, not \"{}\"",
            req.provider.chars().take(40).collect::<String>()
        ))
    })?;
    validate_account_name(&req.account)?;
    let key = AccountKey {
        provider,
        name: req.account.clone(),
    };
    let now = state.clock.now();
    let email = non_empty("email", req.email)?;
    let refresh_token = secret_field("refresh_token", req.refresh_token)?;
    let access_token = secret_field("access_token", req.access_token)?;
    let new = match provider {
        Provider::ShipHero => {
            let email = email.ok_or_else(|| {
                ApiError::bad_request("email is required for a ShipHero developer user")
            })?;
            if !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
                return Err(ApiError::bad_request(format!(
                    "email \"{email}\" is not an email address"
                )));
            }
            let refresh_token = refresh_token.ok_or_else(|| {
                ApiError::bad_request("refresh_token is required for a ShipHero developer user")
            })?;
            let access_token = match access_token {
                Some(t) => {
                    let Some((iat, exp)) = crate::jwt::times(t.expose()) else {
                        return Err(ApiError::bad_request(
                            "access_token is not a ShipHero JWT with an exp claim",
                        ));
                    };
                    let expires_at = Timestamp::from_secs(i64::try_from(exp).unwrap_or(i64::MAX));
                    if !expires_at.in_calendar() {
                        return Err(ApiError::bad_request(format!(
                            "access_token's exp claim {exp} lies past the year 9999; register the token ShipHero issued, or leave access_token out and let the daemon refresh"
                        )));
                    }
                    let issued_at = iat
                        .map(|s| Timestamp::from_secs(i64::try_from(s).unwrap_or(i64::MAX)))
                        .filter(|t| t.in_calendar() && *t <= expires_at)
                        .unwrap_or(now);
                    Some(TokenRecord {
                        access_token: t,
                        issued_at,
                        expires_at: Some(expires_at),
                    })
                }
                None => None,
            };
            NewAccount {
                key: key.clone(),
                email: Some(email),
                first_name: non_empty("first_name", req.first_name)?,
                last_name: non_empty("last_name", req.last_name)?,
                refresh_token: Some(refresh_token),
                access_token,
            }
        }
        Provider::Shippo => {
            if refresh_token.is_some() || email.is_some() {
                return Err(ApiError::bad_request(
                    "a Shippo account takes only provider, account and access_token",
                ));
            }
            let access_token = access_token.ok_or_else(|| {
                ApiError::bad_request("access_token is required for a Shippo account")
            })?;
            NewAccount::shippo(key.clone(), access_token, now)
        }
    };
    state.registry.add(new, now).await?;
    tracing::info!(provider = %key.provider, account = %key.name, event = "added", uid = peer.uid, "account registered");
    // Prove the credentials at once, so the answer already says whether they work. An
    // upstream failure here is not a failed registration: the sweep retries.
    if let Err(e) = state.engine.verify_now(&key).await {
        tracing::info!(provider = %key.provider, account = %key.name, error = %e, "first check after registration did not pass");
    }
    let record = state
        .registry
        .account(&key)
        .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
    Ok((StatusCode::CREATED, axum::Json(state.account_json(&record))).into_response())
}

async fn remove_account(
    State(state): Shared,
    AccountPath(key): AccountPath,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "remove accounts", Some(&key))?;
    state.registry.remove(&key, state.clock.now()).await?;
    state.answers.forget(&key);
    tracing::info!(provider = %key.provider, account = %key.name, event = "removed", uid = peer.uid, "account removed");
    Ok(axum::Json(json!({ "removed": key.to_string() })).into_response())
}

async fn rotate_account(
    State(state): Shared,
    AccountPath(key): AccountPath,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "rotate tokens", Some(&key))?;
    let record = state.engine.rotate_now(&key).await?;
    Ok(axum::Json(state.account_json(&record)).into_response())
}

async fn verify_account(
    State(state): Shared,
    AccountPath(key): AccountPath,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "verify tokens", Some(&key))?;
    let record = state.engine.verify_now(&key).await?;
    Ok(axum::Json(state.account_json(&record)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Connect {
    account: String,
}

async fn shippo_connect(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "connect Shippo accounts", None)?;
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is over 64 KiB",
            )
        })?;
    let req: Connect = parse_json(&body)?;
    validate_account_name(&req.account)?;
    let Some(oauth) = &state.oauth else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "oauth_not_configured",
            "Shippo OAuth is not configured: set shippo.client_id, shippo.client_secret_file and shippo.redirect_uri",
        ));
    };
    match oauth.start(&req.account).await {
        Ok(url) => {
            tracing::info!(account = %req.account, uid = peer.uid, "Shippo connect link issued");
            Ok(axum::Json(json!({ "authorize_url": url, "account": req.account })).into_response())
        }
        Err(crate::oauth::OAuthError::InvalidName(e)) => Err(e.into()),
        Err(e @ crate::oauth::OAuthError::AccountExists(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "account_exists",
            e.to_string(),
        )),
        Err(crate::oauth::OAuthError::Registry(e)) => Err(e.into()),
    }
}

/// The query of `GET /v1/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    account: Option<String>,
    /// RFC 3339, or a duration ("1h") meaning that long ago.
    since: Option<String>,
    limit: Option<usize>,
}

/// Entries `GET /v1/audit` answers when no `limit` is given, and at most.
const AUDIT_LIMIT: usize = 1000;
const AUDIT_LIMIT_MAX: usize = 100_000;

async fn read_audit(
    State(state): Shared,
    query: Result<Query<AuditParams>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    let Query(params) = query.map_err(query_error)?;
    let account = params
        .account
        .as_deref()
        .map(AccountKey::parse)
        .transpose()?;
    state.require_admin(&peer, "read the audit", account.as_ref())?;
    let since = match params.since.as_deref() {
        None => None,
        Some(s) => Some(audit::parse_since(s, state.clock.now()).ok_or_else(|| {
            ApiError::bad_request(
                "since must be an RFC 3339 time or a duration such as \"1h\" (that long ago)",
            )
        })?),
    };
    let limit = params.limit.unwrap_or(AUDIT_LIMIT);
    if limit == 0 || limit > AUDIT_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {AUDIT_LIMIT_MAX}"
        )));
    }
    // Write what is queued first, so the answer includes every read up to this request.
    state.audit.flush(&state.registry).await;
    let entries = state
        .registry
        .audit(AuditQuery {
            account,
            since,
            limit,
        })
        .await?;
    Ok(axum::Json(json!({ "entries": entries })).into_response())
}

/// `POST /v1/debug/clock`, only in builds with the `dev` feature (never in the .deb).
#[cfg(feature = "dev")]
fn debug_routes() -> Router<Arc<ApiState>> {
    Router::new().route("/v1/debug/clock", post(move_clock))
}

/// No debug routes: this build has no `dev` feature.
#[cfg(not(feature = "dev"))]
fn debug_routes() -> Router<Arc<ApiState>> {
    Router::new()
}

#[cfg(feature = "dev")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveClock {
    advance: String,
}

/// Test and dev-mode hook: moves the daemon's clock forward so a 28-day cycle takes seconds.
#[cfg(feature = "dev")]
async fn move_clock(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    if !state.movable_clock {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route; see GET /v1/health and the README",
        ));
    }
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "move the clock", None)?;
    let body = axum::body::to_bytes(request.into_body(), 1024)
        .await
        .map_err(|_| ApiError::bad_request("body too large"))?;
    let req: MoveClock = parse_json(&body)?;
    let d: Duration = humantime::parse_duration(&req.advance)
        .map_err(|e| ApiError::bad_request(format!("advance: {e}")))?;
    state.clock.advance(d);
    tracing::info!(advance = %req.advance, now = %state.clock.now().to_rfc3339(), "clock moved forward");
    Ok(axum::Json(json!({ "now": state.clock.now() })).into_response())
}
