//! Registering a Shippo account with an OAuth token obtained elsewhere (the other way in is
//! the OAuth flow, [`super::oauth`]): the `accounts add shippo` arguments and the rules the
//! socket API applies to its add body.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::clock::Timestamp;
use crate::providers::account::{AddFields, Read};
use crate::registry::NewAccount;

/// `shiptoken accounts add shippo`: the token is read from a file, never an argument.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Account name: 1-64 characters of a-z 0-9 . _ -
    pub name: String,
    /// File holding the OAuth access token ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub access_token_file: PathBuf,
}

impl AddArgs {
    /// The `POST /v1/accounts` body, reading the token with `read(file, what)`.
    pub fn body<E>(
        &self,
        mut read: impl FnMut(&Path, &str) -> Result<String, E>,
    ) -> Result<Value, E> {
        let access = read(&self.access_token_file, "access token")?;
        Ok(json!({ "provider": "shippo", "account": self.name, "access_token": access }))
    }
}

/// A Shippo account registered with an OAuth token obtained elsewhere: that token alone.
pub fn new_account(fields: AddFields, now: Timestamp) -> Read {
    if fields.refresh_token.is_some() || fields.email.is_some() {
        return Err("a Shippo account takes only provider, account and access_token".into());
    }
    let access_token = fields
        .access_token
        .ok_or("access_token is required for a Shippo account")?;
    Ok(NewAccount::shippo(fields.key, access_token, now))
}
