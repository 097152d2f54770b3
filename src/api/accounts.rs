//! What `POST /v1/accounts` accepts: the body and the checks every field gets; each
//! provider's rules for a registration are in its folder (`providers::<name>::account`).
//!
//! Every refusal is a 400 that names the field; no message echoes a secret.

use serde::Deserialize;

use super::ApiError;
use crate::clock::Timestamp;
use crate::names::{AccountKey, Provider, validate_account_name};
use crate::providers::account::{AddFields, non_empty};
use crate::registry::NewAccount;
use crate::secret::Secret;

/// The body of `POST /v1/accounts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddAccount {
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

/// The account `req` registers, or a 400 naming what is wrong with it: the fields every
/// provider shares are checked here, in the order a client sees the errors, then the
/// provider's own rules (`providers::<name>::account`) read them.
pub(super) fn new_account(req: AddAccount, now: Timestamp) -> Result<NewAccount, ApiError> {
    let provider = Provider::parse(&req.provider).ok_or_else(|| {
        ApiError::bad_request(format!(
            "provider must be {}, not \"{}\"",
            Provider::names(),
            req.provider.chars().take(40).collect::<String>()
        ))
    })?;
    validate_account_name(&req.account)?;
    let fields = AddFields {
        key: AccountKey {
            provider,
            name: req.account.into(),
        },
        email: non_empty("email", req.email).map_err(ApiError::bad_request)?,
        first_name: req.first_name,
        last_name: req.last_name,
        refresh_token: secret_field("refresh_token", req.refresh_token)?,
        access_token: secret_field("access_token", req.access_token)?,
    };
    crate::providers::read_add(fields, now).map_err(ApiError::bad_request)
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

#[cfg(test)]
// Panicking on a failed expectation is what a test is for.
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

    fn jwt(claims: serde_json::Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn register(body: serde_json::Value) -> Result<NewAccount, String> {
        let req: AddAccount = serde_json::from_value(body).unwrap();
        new_account(req, NOW).map_err(|e| e.message)
    }

    #[test]
    fn a_shiphero_user_takes_its_life_from_its_jwt() {
        let access = jwt(json!({"exp": 1_900_000_000, "iat": 1_850_000_000}));
        let new = register(json!({"provider": "shiphero", "account": "acme",
            "email": " ops@acme.test ", "refresh_token": "r1", "access_token": access}))
        .unwrap();
        assert_eq!(new.key.to_string(), "shiphero/acme");
        assert_eq!(new.email.as_deref(), Some("ops@acme.test"));
        let token = new.access_token.unwrap();
        assert_eq!(token.expires_at, Some(Timestamp::from_secs(1_900_000_000)));
        assert_eq!(token.issued_at, Timestamp::from_secs(1_850_000_000));

        // An iat after exp is not believed: the token counts as issued now.
        let access = jwt(json!({"exp": 1_900_000_000, "iat": 1_950_000_000}));
        let new = register(json!({"provider": "shiphero", "account": "acme",
            "email": "ops@acme.test", "refresh_token": "r1", "access_token": access}))
        .unwrap();
        assert_eq!(new.access_token.unwrap().issued_at, NOW);
    }

    #[test]
    fn each_refusal_names_the_field() {
        let far = jwt(json!({"exp": u64::MAX}));
        let cases = [
            (
                json!({"provider": "fedex", "account": "a"}),
                "provider must be",
            ),
            (json!({"provider": "shiphero", "account": "A!"}), "account"),
            (
                json!({"provider": "shiphero", "account": "a", "refresh_token": "r"}),
                "email is required",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "ops", "refresh_token": "r"}),
                "is not an email address",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "  "}),
                "email is empty",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "o@a.test"}),
                "refresh_token is required",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "o@a.test", "refresh_token": "r s"}),
                "refresh_token is not a token",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "o@a.test", "refresh_token": "r", "access_token": "opaque"}),
                "not a ShipHero JWT",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "o@a.test", "refresh_token": "r", "access_token": far}),
                "past the year 9999",
            ),
            (
                json!({"provider": "shiphero", "account": "a", "email": "o@a.test", "refresh_token": "r", "first_name": ""}),
                "first_name is empty",
            ),
            (
                json!({"provider": "shippo", "account": "a", "email": "o@a.test", "access_token": "t"}),
                "takes only provider, account and access_token",
            ),
            (
                json!({"provider": "shippo", "account": "a"}),
                "access_token is required for a Shippo account",
            ),
        ];
        for (body, expected) in cases {
            let message = register(body.clone()).err().unwrap_or_default();
            assert!(message.contains(expected), "{body}: {message:?}");
        }
    }

    #[test]
    fn a_shippo_account_is_its_token_alone() {
        let new =
            register(json!({"provider": "shippo", "account": "store", "access_token": " t1 "}))
                .unwrap();
        assert_eq!(new.key.to_string(), "shippo/store");
        assert!(new.refresh_token.is_none() && new.email.is_none());
        let token = new.access_token.unwrap();
        assert_eq!(token.access_token.expose(), "t1");
        assert_eq!((token.issued_at, token.expires_at), (NOW, None));
    }
}
