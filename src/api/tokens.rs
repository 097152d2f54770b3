//! `GET /v1/tokens/{provider}/{account}`: which token an account serves, the long poll that
//! waits for the next one, and the 409 that says why there is none.
//!
//! [`ApiState::servable`] is the one rule for what is handed out (status active, the newest
//! usable token); everything that hands out a token goes through it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::access::peer_of;
use super::routes::{AccountPath, query_error};
use super::{ApiError, ApiState, Caller, Shared, audit};
use crate::clock::Timestamp;
use crate::names::{AccountKey, Status};
use crate::registry::{AccountRecord, RegistryError, TokenRecord};
use crate::rotation::{Probed, usable};

/// How long a token request waits for the probe of a token issued a moment ago.
const CANDIDATE_WAIT: Duration = Duration::from_secs(3);

/// The query of `GET /v1/tokens/{provider}/{account}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenQuery {
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
pub(super) struct Servable {
    /// The account's record, which holds the token.
    pub(super) record: Arc<AccountRecord>,
    /// Which of the record's tokens is served: the candidate or the current one.
    pub(super) which: Probed,
}

impl Servable {
    /// The token served.
    pub(super) fn token(&self) -> Option<&TokenRecord> {
        match self.which {
            Probed::Candidate => self.record.candidate.as_deref(),
            Probed::Served => self.record.current.as_ref(),
        }
    }
}

impl ApiState {
    /// The token to hand out for `key` now, from memory, or why there is none.
    pub(super) async fn servable(&self, key: &AccountKey) -> Result<Servable, ApiError> {
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
        let which = if record.candidate.as_ref().is_some_and(|c| usable(c, now)) {
            Probed::Candidate
        } else {
            Probed::Served
        };
        let newest = match which {
            Probed::Candidate => record.candidate.as_deref(),
            Probed::Served => record.current.as_ref(),
        };
        match newest {
            Some(t) if record.status == Status::Active && usable(t, now) => {
                Ok(Servable { record, which })
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

/// The router's way to the token route (see [`token_answer`]).
pub(super) async fn get_token(
    State(state): Shared,
    AccountPath(key): AccountPath,
    query: Result<Query<TokenQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    token_answer(&state, key, query, request.extensions(), request.headers()).await
}

/// `GET /v1/tokens/{provider}/{account}`, for both ways a request reaches it: the router and
/// [`super::Handler`]'s direct match.
pub(super) async fn token_answer(
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
    let read = audit::Read {
        at: now,
        account: &key,
        client: rule.as_deref(),
        peer,
        exe: extensions.get::<Caller>().and_then(|c| c.exe.as_deref()),
        fingerprint: &answer.fingerprint,
        request: None,
    };
    if let Err(why) = state.audit.admit(read, config.socket.audit_required) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            why.to_string(),
        ));
    }
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
pub(super) fn unusable(record: &AccountRecord, now: Timestamp) -> ApiError {
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
