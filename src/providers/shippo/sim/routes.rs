//! The fake Shippo's HTTP side: the OAuth pages and token endpoint, the two API listings
//! the daemon probes with, and the answers they send in each mode and shape (`UPSTREAM.md`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{
    Account, ExchangeMode, MIN_API_VERSION, Shared, ShippoMode, ShippoState, SuspendedShape,
};
use crate::sim::{form_decode, form_encode, lock, random_hex, sleep_or_shutdown, until_shutdown};

/// The fake's routes over `shared`.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/access_token", post(access_token))
        .route("/carrier_accounts", get(carrier_accounts))
        .route("/carrier_accounts/", get(carrier_accounts))
        .route("/parcel-templates", get(parcel_templates))
        .route("/parcel-templates/", get(parcel_templates))
        .with_state(shared)
}

impl Shared {
    /// Counts a request (plus whatever `count` adds) and waits out the configured latency.
    async fn begin_request(&self, count: impl FnOnce(&mut ShippoState)) {
        let latency = {
            let mut st = lock(&self.state);
            st.total_requests += 1;
            count(&mut st);
            st.latency
        };
        self.events.notify_waiters();
        sleep_or_shutdown(&self.shutdown, latency).await;
    }
}

/// `GET /oauth/authorize`: the consent page, answered at once as the configured user decision.
async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    shared.begin_request(|st| st.authorize_count += 1).await;
    let redirect = lock(&shared.state).authorize(&params);
    match redirect {
        Ok(location) => match HeaderValue::try_from(location) {
            Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
            Err(_) => html_error(StatusCode::BAD_REQUEST, "invalid redirect"),
        },
        Err(why) => html_error(StatusCode::BAD_REQUEST, why),
    }
}

/// `POST /oauth/access_token`: accepts form-encoded or JSON bodies.
async fn access_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let recorded = content_type.clone();
    shared
        .begin_request(|st| {
            st.exchange_count += 1;
            st.last_exchange_content_type = recorded;
        })
        .await;
    let (mode, canned) = {
        let st = lock(&shared.state);
        (
            st.exchange_mode,
            st.canned.get(None, crate::sim::Route::ShippoToken),
        )
    };
    if let Some(canned) = canned {
        return canned.response();
    }
    match mode {
        ExchangeMode::Normal => {}
        ExchangeMode::Down => return down(),
        ExchangeMode::Hang => {
            until_shutdown(shared.shutdown.clone()).await;
            return down();
        }
    }
    let media_type = content_type.unwrap_or_default().to_ascii_lowercase();
    let params = if media_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            _ => return invalid_request("body is not a JSON object"),
        }
    } else if media_type.starts_with("application/x-www-form-urlencoded") {
        form_decode(&String::from_utf8_lossy(&body))
    } else {
        return invalid_request("send application/x-www-form-urlencoded or application/json");
    };
    let mut st = lock(&shared.state);
    let token = match st.exchange(&params) {
        Ok(token) => token,
        Err((status, body)) => return json_response(status, body),
    };
    if st.token_answer_form_encoded {
        let body = format!(
            "access_token={}&scope=*&token_type=bearer",
            form_encode(&token)
        );
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
            body,
        )
            .into_response()
    } else {
        json_response(
            StatusCode::OK,
            json!({"access_token": token, "scope": "*", "token_type": "bearer"}),
        )
    }
}

/// The lists the API endpoints return.
#[derive(Clone, Copy)]
enum Listing {
    /// `GET /carrier_accounts`.
    CarrierAccounts,
    /// `GET /parcel-templates`.
    ParcelTemplates,
}

/// `GET /carrier_accounts`.
async fn carrier_accounts(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    api_call(&shared, &headers, Listing::CarrierAccounts).await
}

/// `GET /parcel-templates`.
async fn parcel_templates(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    api_call(&shared, &headers, Listing::ParcelTemplates).await
}

/// Authenticates an API call and answers it according to the token's account mode.
async fn api_call(shared: &Shared, headers: &HeaderMap, listing: Listing) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let counted = token.clone();
    shared
        .begin_request(|st| {
            if let Some(token) = counted {
                *st.api_counts.entry(token).or_insert(0) += 1;
            }
        })
        .await;
    let Some(token) = token else {
        // Also what a `ShippoToken ...` header earns: that scheme is for API keys, not OAuth.
        return detail(
            StatusCode::UNAUTHORIZED,
            "Authentication credentials were not provided.",
        );
    };
    let (account, canned) = {
        let st = lock(&shared.state);
        let account = st.live_account(&token).map(|a| (a.clone(), st.account(&a)));
        let canned = st.canned.get(
            account.as_ref().map(|(n, _)| n.as_str()),
            crate::sim::Route::ShippoApi,
        );
        (account, canned)
    };
    if let Some(canned) = canned {
        return canned.response();
    }
    match account.as_ref().map(|(_, a)| a.mode) {
        Some(ShippoMode::Down) => return down(),
        Some(ShippoMode::Slow(d)) => sleep_or_shutdown(&shared.shutdown, d).await,
        _ => {}
    }
    if let Some(refused) = version_refused(headers) {
        return refused;
    }
    let Some((account_name, account)) = account else {
        return detail(StatusCode::UNAUTHORIZED, "Token does not exist");
    };
    answer(shared, &account_name, account, listing)
}

/// The 400 Shippo sends for a missing or too old `Shippo-API-Version`.
fn version_refused(headers: &HeaderMap) -> Option<Response> {
    let version = headers
        .get("shippo-api-version")
        .and_then(|v| v.to_str().ok());
    match version {
        None => Some(detail(
            StatusCode::BAD_REQUEST,
            "Shippo-API-Version header missing",
        )),
        Some(v) if !is_date(v) || v < MIN_API_VERSION => Some(detail(
            StatusCode::BAD_REQUEST,
            "Invalid Shippo-API-Version: use a date of 2018-02-08 or later",
        )),
        Some(_) => None,
    }
}

/// What a known account's API call gets in its mode.
fn answer(shared: &Shared, account_name: &str, account: Account, listing: Listing) -> Response {
    match account.mode {
        ShippoMode::Suspended => match account.suspended_shape {
            SuspendedShape::Forbidden403 => detail(
                StatusCode::FORBIDDEN,
                "You do not have permission to perform this action.",
            ),
            SuspendedShape::Unauthorized401 => {
                detail(StatusCode::UNAUTHORIZED, "Token does not exist")
            }
        },
        ShippoMode::RateLimited { reset_in_secs } => {
            let (with_header, now) = {
                let st = lock(&shared.state);
                (st.rate_limit_reset_header, st.now())
            };
            let mut response = detail(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Request was throttled. Expected available in {reset_in_secs} seconds."),
            );
            if with_header {
                response.headers_mut().insert(
                    "x-ratelimit-reset",
                    HeaderValue::from(now.saturating_add(reset_in_secs)),
                );
            }
            response
        }
        ShippoMode::Active | ShippoMode::Slow(_) | ShippoMode::Down => {
            json_response(StatusCode::OK, listing_body(listing, account_name))
        }
    }
}

/// A small first page of the list, as Shippo paginates it.
fn listing_body(listing: Listing, account: &str) -> Value {
    let results = match listing {
        Listing::CarrierAccounts => json!([{
            "object_id": random_hex(16),
            "object_owner": account,
            "carrier": "usps",
            "carrier_name": "USPS",
            "account_id": "shippo_usps_account",
            "active": true,
            "is_shippo_account": true,
            "test": false,
        }]),
        Listing::ParcelTemplates => json!([{
            "object_id": random_hex(16),
            "object_owner": account,
            "name": "Small box",
            "length": "10",
            "width": "8",
            "height": "4",
            "distance_unit": "in",
        }]),
    };
    json!({"next": null, "previous": null, "results": results})
}

/// Whether `s` looks like `YYYY-MM-DD`, so a string comparison orders it as a date.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// A JSON answer.
fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Shippo's API error shape, `{"detail": ...}`.
fn detail(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "detail": message }))
}

/// HTTP 400 `invalid_grant` from the token endpoint.
pub(super) fn invalid_grant(description: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_grant", "error_description": description}),
    )
}

/// HTTP 400 `invalid_request` from the token endpoint.
fn invalid_request(description: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "invalid_request", "error_description": description}),
    )
}

/// An HTML error page, as the OAuth host shows a browser.
fn html_error(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Shippo</title></head>\
         <body><h1>Authorization error</h1><p>{message}</p></body></html>\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// HTTP 503 with the HTML body a load balancer would send.
fn down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><body><h1>503 Service Unavailable</h1>No server is available to handle this \
         request.</body></html>\n",
    )
        .into_response()
}
