//! Registering a ShipHero developer user: the `accounts add shiphero` arguments and the rules
//! the socket API applies to its add body (an email and a refresh token, perhaps the access
//! token ShipHero showed, whose JWT claims give its life).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::clock::Timestamp;
use crate::providers::account::{AddFields, Read, Refusal, non_empty};
use crate::registry::{NewAccount, TokenRecord};
use crate::secret::Secret;

/// `shiptoken accounts add shiphero`: secrets are read from files, never arguments.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Account name: 1-64 characters of a-z 0-9 . _ -
    pub name: String,
    /// The developer user's email (unique across ShipHero).
    #[arg(long)]
    pub email: String,
    /// The developer user's first name.
    #[arg(long)]
    pub first_name: Option<String>,
    /// The developer user's last name.
    #[arg(long)]
    pub last_name: Option<String>,
    /// File holding the refresh token ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub refresh_token_file: PathBuf,
    /// File holding the access token ShipHero showed ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub access_token_file: Option<PathBuf>,
}

impl AddArgs {
    /// The `POST /v1/accounts` body, reading each secret with `read(file, what)`.
    pub fn body<E>(
        &self,
        mut read: impl FnMut(&Path, &str) -> Result<String, E>,
    ) -> Result<Value, E> {
        let refresh = read(&self.refresh_token_file, "refresh token")?;
        let access = match &self.access_token_file {
            Some(f) => Some(read(f, "access token")?),
            None => None,
        };
        Ok(json!({
            "provider": "shiphero", "account": self.name, "email": self.email,
            "first_name": self.first_name, "last_name": self.last_name,
            "refresh_token": refresh, "access_token": access,
        }))
    }
}

/// A ShipHero developer user: an email and a refresh token, perhaps an access token.
pub fn new_account(fields: AddFields, now: Timestamp) -> Read {
    let email = fields
        .email
        .ok_or("email is required for a ShipHero developer user")?;
    if !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
        return Err(format!("email \"{email}\" is not an email address"));
    }
    let refresh_token = fields
        .refresh_token
        .ok_or("refresh_token is required for a ShipHero developer user")?;
    let access_token = match fields.access_token {
        Some(t) => Some(access_token(t, now)?),
        None => None,
    };
    Ok(NewAccount {
        key: fields.key,
        email: Some(email),
        first_name: non_empty("first_name", fields.first_name)?,
        last_name: non_empty("last_name", fields.last_name)?,
        refresh_token: Some(refresh_token),
        access_token,
    })
}

/// A ShipHero access token registered with its account: a JWT whose claims give its life.
fn access_token(token: Secret, now: Timestamp) -> Result<TokenRecord, Refusal> {
    let Some((iat, exp)) = crate::jwt::times(token.expose()) else {
        return Err("access_token is not a ShipHero JWT with an exp claim".into());
    };
    let expires_at = Timestamp::from_secs(i64::try_from(exp).unwrap_or(i64::MAX));
    if !expires_at.in_calendar() {
        return Err(format!(
            "access_token's exp claim {exp} lies past the year 9999; register the token ShipHero issued, or leave access_token out and let the daemon refresh"
        ));
    }
    let issued_at = iat
        .map(|s| Timestamp::from_secs(i64::try_from(s).unwrap_or(i64::MAX)))
        .filter(|t| t.in_calendar() && *t <= expires_at)
        .unwrap_or(now);
    Ok(TokenRecord {
        access_token: token,
        issued_at,
        expires_at: Some(expires_at),
    })
}
