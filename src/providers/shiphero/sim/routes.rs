//! The fake ShipHero's HTTP side: `/auth/refresh`, `/auth/token` and `/graphql`, and the
//! answers they send in each mode and shape (`UPSTREAM.md`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::{AuthFailureShape, RefreshRejectShape, Shared, ShipHeroMode};
use crate::sim::{lock, sleep_or_shutdown, until_shutdown};

/// The fake's routes over `shared`.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/auth/refresh", post(refresh))
        .route("/auth/token", post(password_login))
        .route("/graphql", post(graphql))
        .with_state(shared)
}

impl Shared {
    /// Counts a request and waits out the configured latency.
    async fn begin_request(&self) {
        let latency = {
            let mut st = lock(&self.state);
            st.total_requests += 1;
            st.latency
        };
        self.events.notify_waiters();
        sleep_or_shutdown(&self.shutdown, latency).await;
    }

    /// Applies the transient modes: an early answer for `Down`, `Hang` and `Throttled429`,
    /// a delay for `Slow`, nothing otherwise.
    async fn transient_gate(&self, mode: ShipHeroMode) -> Option<Response> {
        match mode {
            ShipHeroMode::Down => Some(down()),
            ShipHeroMode::Hang => {
                until_shutdown(self.shutdown.clone()).await;
                Some(down())
            }
            ShipHeroMode::Throttled429 { seconds } => Some(too_many_requests(seconds)),
            ShipHeroMode::Slow(d) => {
                sleep_or_shutdown(&self.shutdown, d).await;
                None
            }
            ShipHeroMode::Active
            | ShipHeroMode::Suspended
            | ShipHeroMode::Revoked
            | ShipHeroMode::Throttled { .. } => None,
        }
    }
}

/// `POST /auth/refresh`.
async fn refresh(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.begin_request().await;
    let Some(body) = json_body(&headers, &body) else {
        return bad_request("body must be a JSON object");
    };
    let Some(refresh_token) = body.get("refresh_token").and_then(Value::as_str) else {
        return bad_request("refresh_token is required");
    };
    let attributed = {
        let mut st = lock(&shared.state);
        let email = st.by_refresh.get(refresh_token).cloned();
        email.and_then(|email| {
            let user = st.users.get_mut(&email)?;
            user.refresh_count += 1;
            Some((email, user.mode))
        })
    };
    shared.events.notify_waiters();
    let Some((email, mode)) = attributed else {
        return refresh_rejected(RefreshRejectShape::InvalidGrant401);
    };
    tracing::debug!(email, ?mode, "fake shiphero: refresh");
    if let Some(canned) = lock(&shared.state)
        .canned
        .get(Some(&email), crate::sim::Route::Refresh)
    {
        return canned.response();
    }
    if let Some(answer) = shared.transient_gate(mode).await {
        return answer;
    }
    let mut st = lock(&shared.state);
    let Some(user) = st.users.get(&email) else {
        return refresh_rejected(RefreshRejectShape::InvalidGrant401);
    };
    if user.mode == ShipHeroMode::Revoked {
        if st.echo_credentials {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_grant",
                    "error_description": format!("refresh token {refresh_token} is revoked")})),
            )
                .into_response();
        }
        return refresh_rejected(user.refresh_reject_shape);
    }
    // Suspended users still get a token here: that is the silent failure being simulated.
    let issue_for = user.issue_as.clone().unwrap_or(email);
    match st.issue(&issue_for) {
        Some((access_token, expires_in)) => ok_json(json!({
            "access_token": access_token,
            "expires_in": expires_in,
            "scope": "openid profile offline_access",
            "token_type": "Bearer",
        })),
        None => refresh_rejected(RefreshRejectShape::InvalidGrant401),
    }
}

/// `POST /auth/token`: password login, which the daemon never uses; kept minimal.
async fn password_login(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.begin_request().await;
    let Some(body) = json_body(&headers, &body) else {
        return bad_request("body must be a JSON object");
    };
    let username = body.get("username").and_then(Value::as_str).unwrap_or("");
    let password = body.get("password").and_then(Value::as_str).unwrap_or("");
    let mut st = lock(&shared.state);
    let refresh_token = st.users.get(username).map(|u| u.refresh_token.clone());
    match refresh_token {
        Some(refresh_token) if !password.is_empty() => match st.issue(username) {
            Some((access_token, expires_in)) => ok_json(json!({
                "access_token": access_token,
                "refresh_token": refresh_token,
                "expires_in": expires_in,
                "scope": "openid profile offline_access",
                "token_type": "Bearer",
            })),
            None => wrong_password(),
        },
        _ => wrong_password(),
    }
}

/// `POST /graphql`.
async fn graphql(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.begin_request().await;
    let Some(token) = bearer(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Unauthorized"})),
        )
            .into_response();
    };
    let (mode, canned) = {
        let mut st = lock(&shared.state);
        let email = st.tokens.get(token).map(|i| i.email.clone());
        let canned = st.canned.get(email.as_deref(), crate::sim::Route::Graphql);
        let mode = email.and_then(|email| {
            let user = st.users.get_mut(&email)?;
            user.graphql_count += 1;
            Some(user.mode)
        });
        (mode, canned)
    };
    shared.events.notify_waiters();
    if let Some(canned) = canned {
        return canned.response();
    }
    // Requests with unknown tokens cannot be attributed to a user, so they skip the user's mode.
    if let Some(mode) = mode
        && let Some(answer) = shared.transient_gate(mode).await
    {
        return answer;
    }
    let Some(query) = json_body(&headers, &body)
        .and_then(|b| b.get("query").and_then(Value::as_str).map(str::to_owned))
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                json!({"errors": [{"message": "Must provide a JSON body with a query string"}]}),
            ),
        )
            .into_response();
    };
    lock(&shared.state).graphql_answer(token, &query)
}

/// The JSON object in the body, if the request says JSON and the body is an object.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Option<Map<String, Value>> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return None;
    }
    match serde_json::from_slice(body).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer <token>` header, if well-formed.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The root field a query asks for, used to name the operation in errors.
pub(super) fn root_field(query: &str) -> &'static str {
    if query.contains("account") {
        "account"
    } else if query.contains("user_quota") {
        "user_quota"
    } else {
        "query"
    }
}

/// A JSON answer with HTTP 200.
pub(super) fn ok_json(body: Value) -> Response {
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// HTTP 400 for a malformed request body.
fn bad_request(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "invalid_request", "error_description": description})),
    )
        .into_response()
}

/// HTTP 401 for `/auth/token`.
fn wrong_password() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(
            json!({"error": "invalid_grant", "error_description": "Wrong email or password."}),
        ),
    )
        .into_response()
}

/// HTTP 503 with the HTML body a load balancer would send.
fn down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><head><title>503 Service Temporarily Unavailable</title></head>\
         <body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>\n",
    )
        .into_response()
}

/// HTTP 429 with `Retry-After`.
fn too_many_requests(seconds: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(json!({"message": "Too Many Requests"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A refresh rejection in the chosen shape.
fn refresh_rejected(shape: RefreshRejectShape) -> Response {
    let (status, body) = match shape {
        RefreshRejectShape::InvalidGrant401 => (
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."}),
        ),
        RefreshRejectShape::Message403 => (
            StatusCode::FORBIDDEN,
            json!({"message": "Refresh token is revoked or the account is inactive"}),
        ),
        RefreshRejectShape::InvalidGrant400 => {
            (StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}))
        }
    };
    (status, axum::Json(body)).into_response()
}

/// A graphql rejection of a non-working token in the chosen shape.
pub(super) fn auth_failure(
    shape: AuthFailureShape,
    field: &str,
    reason: &str,
    request_id: &str,
) -> Response {
    match shape {
        AuthFailureShape::Http401 => (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Unauthorized"})),
        )
            .into_response(),
        AuthFailureShape::Http403 => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"message": "Forbidden", "detail": reason})),
        )
            .into_response(),
        AuthFailureShape::GraphqlError => ok_json(json!({
            "errors": [{
                "message": reason,
                "operation": field,
                "field": field,
                "request_id": request_id,
                "code": 401,
            }],
            "data": { field: null },
        })),
        AuthFailureShape::NullData if field == "account" => ok_json(json!({
            "data": {"account": {"request_id": request_id, "complexity": 1, "data": null}},
        })),
        AuthFailureShape::NullData => ok_json(json!({ "data": { field: null } })),
    }
}

/// The code-30 "not enough credits" answer, details at the top level or under `extensions`.
pub(super) fn throttled_body(
    seconds: u64,
    field: &str,
    request_id: &str,
    in_extensions: bool,
) -> Value {
    let details = json!({
        "required_credits": 101,
        "remaining_credits": 0,
        "time_remaining": format!("{seconds} seconds"),
    });
    let mut error = json!({
        "code": 30,
        "message": format!(
            "There are not enough credits to perform the requested operation, which requires \
             101 credits. In {seconds} seconds you will have enough credits"
        ),
        "operation": field,
        "request_id": request_id,
    });
    if let (Some(error), Value::Object(details)) = (error.as_object_mut(), details) {
        if in_extensions {
            error.insert("extensions".into(), Value::Object(details));
        } else {
            error.extend(details);
        }
    }
    json!({"errors": [error], "data": null})
}
