//! The token the socket would serve, for readers inside the daemon (the file sinks): the same
//! rule (`ApiState::servable`) and the same answer bytes, without a request or a peer.

use axum::body::Bytes;
use axum::http::StatusCode;

use super::ApiState;
use crate::names::AccountKey;
use crate::secret::Secret;

/// A token the socket would hand out now.
pub struct ServedToken {
    /// The token itself.
    pub access_token: Secret,
    /// Its fingerprint (`Secret::fingerprint`): what changes when the token does.
    pub fingerprint: String,
    /// The socket's JSON answer for it, byte for byte.
    pub json: Bytes,
    /// The headers to send upstream, in the answer's order.
    pub headers: Vec<(String, String)>,
}

/// Why there is no token to hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withheld {
    /// No such account (it was removed, or never added).
    Unknown,
    /// The account exists but has no token to serve; the socket's error code
    /// (`account_suspended`, `account_revoked`, `token_expired`, `account_pending`).
    NoToken(&'static str),
}

impl ApiState {
    /// What `GET /v1/tokens/{provider}/{account}` would answer now, without access rules (the
    /// operator configured the reader) and without an audit entry (no peer read it).
    pub async fn served_token(&self, key: &AccountKey) -> Result<ServedToken, Withheld> {
        let withheld = |e: super::ApiError| match e.status {
            StatusCode::NOT_FOUND => Withheld::Unknown,
            _ => Withheld::NoToken(e.code),
        };
        let served = self.servable(key).await.map_err(withheld)?;
        let config = self.config.borrow().clone();
        let (Some(token), Some(answer)) = (served.token(), self.answers.get(key, &served, &config))
        else {
            return Err(withheld(super::tokens::unusable(
                &served.record,
                self.clock.now(),
            )));
        };
        #[derive(serde::Deserialize)]
        struct Headers {
            headers: serde_json::Map<String, serde_json::Value>,
        }
        let headers = serde_json::from_slice::<Headers>(&answer.json)
            .map(|h| {
                h.headers
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ServedToken {
            access_token: token.access_token.clone(),
            fingerprint: answer.fingerprint.clone(),
            json: answer.json.clone(),
            headers,
        })
    }
}
