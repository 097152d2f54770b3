//! `GET /v1/accounts/{provider}/{account}/detail`: what `shiptoken accounts show` adds to an
//! account's row, so an operator can see why it is flagged without reading the registry:
//! the evidence held against it and when that is confirmed, the next check, the pinned
//! identity, and which sinks and socket rules use it. Never a secret.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::access::peer_of;
use super::routes::AccountPath;
use super::{ApiError, Shared};
use crate::registry::{Doubt, RegistryError};
use crate::rotation::next_check;

/// The handler; the same access as `GET /v1/accounts/{provider}/{account}`.
pub(super) async fn account_detail(
    State(state): Shared,
    AccountPath(key): AccountPath,
    request: Request,
) -> Result<Response, ApiError> {
    let peer = peer_of(request.extensions())?;
    let config = state.config.borrow().clone();
    state.may_read(&config, &peer, &key)?;
    let a = state
        .registry
        .account(&key)
        .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
    let confirm_after = config.verify.confirm_after;
    let doubt = |d: Option<&Doubt>| -> Value {
        d.map_or(Value::Null, |d| {
            json!({
                "since": d.since,
                "reason": d.reason,
                "confirm_at": d.since.plus(confirm_after),
            })
        })
    };
    let body = json!({
        "created_at": a.created_at,
        "upstream_id": a.upstream_id,
        "failures": a.failures,
        "has_refresh_token": a.has_refresh_token,
        "candidate_issued_at": a.candidate.as_ref().map(|t| t.issued_at),
        "next_check_at": a
            .last_verified_at
            .map(|v| next_check(&key, v, config.verify.interval)),
        "token_doubt": doubt(a.token_doubt.as_deref()),
        "renew_doubt": doubt(a.renew_doubt.as_deref()),
        "sinks": config
            .sinks
            .iter()
            .filter(|s| s.account == key)
            .map(|s| s.path.display().to_string())
            .collect::<Vec<_>>(),
        "readers": config
            .socket
            .clients
            .iter()
            .filter(|r| r.allows(&key))
            .map(|r| r.name.clone())
            .collect::<Vec<_>>(),
    });
    Ok(axum::Json(body).into_response())
}
