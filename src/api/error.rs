//! The API's error answer, and how the library's errors map onto HTTP statuses and codes.
//!
//! Every error the socket answers is JSON (`{"error": CODE, "message": TEXT}`): the codes are
//! part of the interface (README, docs/socket.md), so they are chosen here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::names::NameError;
use crate::registry::RegistryError;
use crate::rotation::EngineError;

/// A JSON error answer: `{"error": CODE, "message": TEXT, ...extra}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    /// Fields merged into the body beside `error` and `message`.
    pub(super) extra: Option<Value>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
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
            RegistryError::KeyFileChanged { .. }
            | RegistryError::KeyNotReplaceable { .. }
            | RegistryError::NextKeyMissing { .. }
            | RegistryError::NextKeyNotEverywhere { .. } => {
                ApiError::new(StatusCode::CONFLICT, "key_rotation_refused", e.to_string())
            }
            RegistryError::Stale(_) | RegistryError::LeaseLost(_) => {
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
            EngineError::Elsewhere { .. } => {
                ApiError::new(StatusCode::CONFLICT, "in_progress_elsewhere", e.to_string())
            }
            EngineError::Nothing(m) => ApiError::new(StatusCode::CONFLICT, "account_pending", m),
        }
    }
}
