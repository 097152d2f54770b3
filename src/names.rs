//! The vocabulary shared by every module: providers, account names and account statuses.

use std::fmt;

/// An upstream platform whose tokens shiptoken keeps.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ShipHero: developer users with a static refresh token and 28-day access tokens.
    ShipHero,
    /// Shippo: OAuth access tokens that never expire but can be revoked.
    Shippo,
    /// Carrier APIs over OAuth 2.0 (UPS, FedEx, any RFC 6749 token endpoint): short-lived
    /// tokens from client credentials or a refresh token.
    OAuth2,
}

impl Provider {
    /// Every provider, for metrics and listings.
    pub const ALL: [Provider; 3] = [Provider::ShipHero, Provider::Shippo, Provider::OAuth2];

    /// The name used in paths, labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::ShipHero => "shiphero",
            Provider::Shippo => "shippo",
            Provider::OAuth2 => "oauth2",
        }
    }

    /// Whether its accounts are connected by an OAuth flow (`shippo connect`) rather than
    /// registered with a token; the registry issues OAuth states only for these.
    pub fn connects_by_oauth(self) -> bool {
        match self {
            Provider::ShipHero => false,
            Provider::Shippo => true,
            Provider::OAuth2 => false,
        }
    }

    /// Parses a provider's name ([`Provider::as_str`]).
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Every provider's name for a message: `shiphero or shippo`.
    pub fn names() -> String {
        let names: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a provider or account name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not the name of a provider.
    #[error("unknown provider \"{0}\": expected {names}", names = Provider::names())]
    UnknownProvider(String),
    /// Outside the allowed alphabet or length.
    #[error("invalid account name \"{0}\": use 1-64 characters of a-z 0-9 . _ -")]
    InvalidAccount(String),
    /// Not of the form `provider/account`.
    #[error("\"{0}\" is not PROVIDER/ACCOUNT (e.g. shiphero/acme)")]
    NotAKey(String),
}

/// Checks an account name: 1-64 characters of `a-z 0-9 . _ -`, and not `.` or `..`, so a
/// name is always safe in a URL path, a label and a file name.
pub fn validate_account_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidAccount(name.chars().take(80).collect()))
    }
}

/// An account's identity: provider and name, written `provider/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountKey {
    /// The provider.
    pub provider: Provider,
    /// The account's name, unique per provider. Shared, because keys are cloned into every
    /// per-account map (the in-memory copy, the incident counts, the lanes' queues): a clone
    /// is a reference count, not an allocation that outlives a sweep between its buffers.
    pub name: std::sync::Arc<str>,
}

impl AccountKey {
    /// Builds a key from parts, validating both.
    pub fn new(provider: &str, name: &str) -> Result<AccountKey, NameError> {
        let provider = Provider::parse(provider)
            .ok_or_else(|| NameError::UnknownProvider(provider.chars().take(40).collect()))?;
        validate_account_name(name)?;
        Ok(AccountKey {
            provider,
            name: name.into(),
        })
    }

    /// Parses `provider/name`.
    pub fn parse(s: &str) -> Result<AccountKey, NameError> {
        let (p, n) = s
            .split_once('/')
            .ok_or_else(|| NameError::NotAKey(s.chars().take(80).collect()))?;
        AccountKey::new(p, n)
    }
}

impl fmt::Display for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.name)
    }
}

/// Whether an account's token can be used, as the contract defines the words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No proven token yet.
    Pending,
    /// The current token passed its last probe.
    Active,
    /// The provider issues tokens but its API rejects them (the silent failure).
    Suspended,
    /// The provider rejects the refresh token (ShipHero) or the access token (Shippo).
    Revoked,
    /// Past expiry and not refreshed.
    Expired,
}

impl Status {
    /// Every status, for the `shiptoken_account_status` gauge.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::Active,
        Status::Suspended,
        Status::Revoked,
        Status::Expired,
    ];

    /// The lower-case word used in JSON, SQLite and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
        }
    }

    /// Parses the lower-case word.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the status is a flag an operator must look at.
    pub fn is_flagged(self) -> bool {
        matches!(self, Status::Suspended | Status::Revoked | Status::Expired)
    }

    /// The error code a token request gets while the account is in this status.
    pub fn error_code(self) -> &'static str {
        match self {
            Status::Pending => "account_pending",
            Status::Active => "ok",
            Status::Suspended => "account_suspended",
            Status::Revoked => "account_revoked",
            Status::Expired => "token_expired",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_follow_the_contract() {
        assert!(validate_account_name("acme-east_1.eu").is_ok());
        assert!(validate_account_name(&"a".repeat(64)).is_ok());
        for bad in ["", "Acme", "a/b", "..", ".", "a b", "ü", &"a".repeat(65)] {
            assert!(validate_account_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn providers_are_named_as_they_parse() {
        assert_eq!(Provider::names(), "shiphero, shippo or oauth2");
        for p in Provider::ALL {
            assert_eq!(Provider::parse(p.as_str()), Some(p));
        }
        assert_eq!(
            NameError::UnknownProvider("ups".into()).to_string(),
            "unknown provider \"ups\": expected shiphero, shippo or oauth2"
        );
    }

    #[test]
    fn keys_parse() {
        assert_eq!(
            AccountKey::parse("shiphero/acme").map(|k| k.to_string()),
            Ok("shiphero/acme".to_string())
        );
        assert!(matches!(
            AccountKey::parse("ups/acme"),
            Err(NameError::UnknownProvider(_))
        ));
        assert!(matches!(
            AccountKey::parse("acme"),
            Err(NameError::NotAKey(_))
        ));
    }
}
