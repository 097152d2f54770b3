//! The fake carrier's HTTP side: the UPS and FedEx token paths and the probe, answering in
//! each client's mode (UPSTREAM.md, carriers; RFC 6749 5.1 and 5.2, RFC 6750 3.1).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::{CarrierMode, FEDEX_TOKEN_PATH, PROBE_PATH, Shared, Shutdown, UPS_TOKEN_PATH, issue};
use crate::sim::{form_decode, lock, random_hex, sleep_or_shutdown};

/// Which carrier a token path answers like.
#[derive(Clone, Copy, PartialEq)]
enum Style {
    Ups,
    FedEx,
}

pub(super) fn router(shared: Arc<Shared>, shutdown: Shutdown) -> Router {
    let gate = shared.clone();
    Router::new()
        .route(UPS_TOKEN_PATH, post(ups))
        .route(FEDEX_TOKEN_PATH, post(fedex))
        .route(PROBE_PATH, get(probe))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (gate, shutdown) = (gate.clone(), shutdown.clone());
                async move {
                    let latency = gate.begin_request();
                    sleep_or_shutdown(&shutdown, latency).await;
                    next.run(request).await
                }
            },
        ))
        .with_state(shared)
}

impl Shared {
    /// Counts a request; how long its answer waits.
    fn begin_request(&self) -> std::time::Duration {
        let mut st = lock(&self.state);
        st.total_requests += 1;
        st.latency
    }
}

async fn ups(Extract(s): Extract<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    token(&s, Style::Ups, &headers, &body)
}

async fn fedex(Extract(s): Extract<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    token(&s, Style::FedEx, &headers, &body)
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "error_description": format!("simulated {code}")})),
    )
        .into_response()
}

fn html(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><body>Service unavailable</body></html>",
    )
        .into_response()
}

/// The client id and secret: HTTP Basic for UPS, form fields for FedEx.
fn credentials(
    style: Style,
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Option<(String, String)> {
    if style == Style::FedEx {
        return Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ));
    }
    let basic = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(basic.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn token(s: &Shared, style: Style, headers: &HeaderMap, body: &[u8]) -> Response {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        // FedEx refuses JSON bodies with a 400 of its own shape, not the RFC's.
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"errors": [{"code": "BAD.REQUEST.ERROR", "message": "form body required"}]}),
            ),
        )
            .into_response();
    }
    let form = form_decode(&String::from_utf8_lossy(body));
    let answer = answer_token(s, style, headers, &form);
    s.events.notify_waiters();
    answer
}

fn answer_token(
    s: &Shared,
    style: Style,
    headers: &HeaderMap,
    form: &std::collections::HashMap<String, String>,
) -> Response {
    let Some((id, secret)) = credentials(style, headers, form) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let mut st = lock(&s.state);
    let lifetime = st.lifetime;
    let rotate = st.rotate_refresh;
    let Some(client) = st.clients.get_mut(&id) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    client.token_calls += 1;
    match client.mode {
        CarrierMode::Down => return html(StatusCode::SERVICE_UNAVAILABLE),
        CarrierMode::ProxyPage => return html(StatusCode::UNAUTHORIZED),
        CarrierMode::Throttled => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "",
            )
                .into_response();
        }
        CarrierMode::BadScope => return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope"),
        CarrierMode::Revoked | CarrierMode::Active => {}
    }
    let grant = form.get("grant_type").map(String::as_str);
    let refresh_ok =
        form.get("refresh_token") == client.refresh.as_ref() && client.refresh.is_some();
    let status = if style == Style::Ups {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    if client.secret != secret || client.mode == CarrierMode::Revoked {
        return oauth_error(status, "invalid_client");
    }
    let new_refresh = match grant {
        Some("client_credentials") => None,
        Some("refresh_token") if !refresh_ok => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
        Some("refresh_token") if rotate => {
            let r = format!("rt-{}", random_hex(16));
            client.refresh = Some(r.clone());
            Some(r)
        }
        Some("refresh_token") => None,
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    let access = issue(&mut st, &id);
    let mut answer = match style {
        Style::Ups => json!({
            "token_type": "Bearer",
            "issued_at": format!("{}", crate::sim::unix_now(std::time::Duration::ZERO) * 1000),
            "client_id": id,
            "access_token": access,
            "expires_in": lifetime.to_string(),
            "status": "approved",
        }),
        Style::FedEx => json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": "CXS",
        }),
    };
    if let Some(r) = new_refresh {
        answer["refresh_token"] = json!(r);
    }
    axum::Json(answer).into_response()
}

async fn probe(Extract(s): Extract<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let st = lock(&s.state);
    let client = st.tokens.get(token).and_then(|id| st.clients.get(id));
    match client.map(|c| c.mode) {
        Some(CarrierMode::Active | CarrierMode::BadScope) => {
            axum::Json(json!({"ok": true})).into_response()
        }
        Some(CarrierMode::Down) => html(StatusCode::SERVICE_UNAVAILABLE),
        Some(CarrierMode::ProxyPage) => html(StatusCode::UNAUTHORIZED),
        Some(CarrierMode::Throttled) => {
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")], "").into_response()
        }
        Some(CarrierMode::Revoked) | None => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="carrier", error="invalid_token", error_description="the token is revoked or unknown""#,
            )],
            "",
        )
            .into_response(),
    }
}
