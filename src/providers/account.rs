//! What registering an account takes, common to every provider: the fields of an add request
//! (socket API body and `accounts add`) after the checks every field gets. Each provider's
//! `account` module reads them into a [`NewAccount`] with its own rules.

use crate::names::AccountKey;
use crate::registry::NewAccount;
use crate::secret::Secret;

/// The fields of an add request; which of them a provider takes is its own rule. `email` and
/// the tokens are already trimmed and checked for shape (non-empty, printable, a token without
/// whitespace); the names are as sent, for the providers that take them to check with
/// [`non_empty`].
pub struct AddFields {
    /// The account being registered.
    pub key: AccountKey,
    /// A contact email (ShipHero's developer user).
    pub email: Option<String>,
    /// A first name (ShipHero's developer user), unchecked.
    pub first_name: Option<String>,
    /// A last name (ShipHero's developer user), unchecked.
    pub last_name: Option<String>,
    /// The refresh credential, for providers that renew.
    pub refresh_token: Option<Secret>,
    /// An access token obtained elsewhere.
    pub access_token: Option<Secret>,
}

/// Why an add request was refused: a message naming the field, never echoing a secret.
pub type Refusal = String;

/// The result of reading an add request.
pub type Read = Result<NewAccount, Refusal>;

/// Trims a text field: `None` stays `None`; empty, over 256 bytes or with control characters
/// is refused, naming `field`.
pub fn non_empty(field: &str, value: Option<String>) -> Result<Option<String>, Refusal> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if v.is_empty() => Err(format!("{field} is empty")),
        Some(v) if v.len() > 256 || v.chars().any(char::is_control) => {
            Err(format!("{field} must be at most 256 printable characters"))
        }
        other => Ok(other),
    }
}
