//! The socket's router and its handlers, except the token route (`tokens`): accounts, their
//! history, admin actions, Shippo connect, the audit, health and the debug clock.
//!
//! Each handler checks access first (`access`), then does one thing; errors are [`ApiError`]s,
//! so every answer is JSON.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::peer_of;
use super::accounts::{AddAccount, new_account};
use super::tokens::get_token;
use super::{ApiError, ApiState, Shared, TOKEN_ROUTE, audit};
use crate::names::{AccountKey, Status, validate_account_name};
use crate::registry::{AccountRecord, AuditQuery, RegistryError};
use crate::rotation::{Policy, refresh_point};

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
        .route(
            "/v1/accounts/{provider}/{account}/detail",
            get(super::detail::account_detail),
        )
        .route("/v1/shippo/connect", post(shippo_connect))
        .route("/v1/audit", get(read_audit))
        .route("/v1/key/rotate", post(rotate_key))
        .route(
            super::proxy::PROXY_ROUTE,
            axum::routing::any(super::proxy::proxy),
        )
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

/// The account a path names, or the JSON error that says what is wrong with it.
pub(crate) fn key_from(provider: &str, account: &str) -> Result<AccountKey, ApiError> {
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
        // Every account due at this time has had its work done, in every provider's lane.
        "last_sweep_at": state.engine.swept_through(),
        // Each provider's lane: its queue, work under way, pacing and throttle.
        "lanes": state.engine.lanes().into_iter().map(|(provider, lane)| {
            (provider.as_str().to_string(), json!(lane))
        }).collect::<serde_json::Map<_, _>>(),
        // Providers where many accounts answer with evidence at once: flags are held there.
        "incidents": state.engine.incidents().into_iter().map(|(provider, since)| {
            json!({"provider": provider, "since": since})
        }).collect::<Vec<_>>(),
        // Where the registry lives, and what keeps it from being written or followed.
        "registry": {
            "shared": state.registry.is_shared(),
            "host_name": state.registry.is_shared().then(|| state.config.borrow().registry.host_name.clone()),
            "problem": state.registry.feed_problem().or_else(|| state.registry.write_problem()),
        },
    }))
    .into_response()
}

/// `{provider}/{account}` from the path, validated: a bad or undecodable segment is a JSON
/// 400 (or 404 for an unknown provider), never axum's plain-text rejection.
pub(super) struct AccountPath(pub(super) AccountKey);

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

/// A 400 for a query string the route's parameters do not take.
pub(super) fn query_error(e: QueryRejection) -> ApiError {
    // serde's messages name the parameter and never echo more than the bad value.
    ApiError::bad_request(format!(
        "bad query string: {}",
        e.body_text().chars().take(200).collect::<String>()
    ))
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

/// A JSON body, or a 400 naming the field that is wrong.
fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    // serde's messages name the field ("unknown field `x`", "missing field `account`") and
    // never echo a value, so they are safe to return and log.
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// An admin request's body, at most 64 KiB (no registration or connect request needs more).
async fn read_body(request: Request) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the body is over 64 KiB",
            )
        })
}

/// `?wait=true` on `POST /v1/accounts`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddParams {
    #[serde(default)]
    wait: bool,
}

/// `POST /v1/accounts` (admin): registers an account and checks its credentials at once, or,
/// when its provider's pacing would hold the check (and `?wait=true` is not
/// given), answers at once with the account `pending` and `check_in_seconds`.
async fn add_account(
    State(state): Shared,
    query: Result<Query<AddParams>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(query_error)?;
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "add accounts", None)?;
    let body = read_body(request).await?;
    let now = state.clock.now();
    let new = new_account(parse_json::<AddAccount>(&body)?, now)?;
    let key = new.key.clone();
    state.registry.add(new, now).await?;
    tracing::info!(provider = %key.provider, account = %key.name, event = "added", uid = peer.uid, "account registered");
    // Prove the credentials at once, so the answer already says whether they work. An
    // upstream failure here is not a failed registration: the sweep retries.
    let queued = match state.engine.check_added(&key, params.wait).await {
        Ok(queued) => queued,
        Err(e) => {
            tracing::info!(provider = %key.provider, account = %key.name, error = %e, "first check after registration did not pass");
            None
        }
    };
    if let Some(after) = queued {
        tracing::info!(provider = %key.provider, account = %key.name, check_in_seconds = after.as_secs(), "first check queued behind the provider's pacing");
    }
    let record = state
        .registry
        .account(&key)
        .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
    let mut body = state.account_json(&record);
    if let (Some(after), Some(map)) = (queued, body.as_object_mut()) {
        map.insert("check_in_seconds".into(), after.as_secs().into());
    }
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
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

/// `POST /v1/key/rotate` (admin): re-seals every token with a new key while the daemon
/// serves, and keeps the old key beside the new one for the backups that need it.
async fn rotate_key(State(state): Shared, request: Request) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    state.require_admin(&peer, "rotate the key", None)?;
    let done = state.registry.rotate_key().await?;
    tracing::info!(
        uid = peer.uid,
        accounts = done.accounts,
        event = "key_rotated",
        "key rotated"
    );
    Ok(axum::Json(json!({
        "accounts": done.accounts,
        "key_file": done.key_file,
        "old_key_file": done.old_key_file,
    }))
    .into_response())
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
    let body = read_body(request).await?;
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
        Err(crate::providers::shippo::oauth::OAuthError::InvalidName(e)) => Err(e.into()),
        Err(e @ crate::providers::shippo::oauth::OAuthError::AccountExists(_)) => Err(
            ApiError::new(StatusCode::CONFLICT, "account_exists", e.to_string()),
        ),
        Err(crate::providers::shippo::oauth::OAuthError::Registry(e)) => Err(e.into()),
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
    let d: std::time::Duration = humantime::parse_duration(&req.advance)
        .map_err(|e| ApiError::bad_request(format!("advance: {e}")))?;
    state.clock.advance(d);
    tracing::info!(advance = %req.advance, now = %state.clock.now().to_rfc3339(), "clock moved forward");
    Ok(axum::Json(json!({ "now": state.clock.now() })).into_response())
}

impl ApiState {
    /// `ACCOUNT` (README): an account as the API shows it, never a secret.
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
