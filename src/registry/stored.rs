//! How a backend reads back the names it stored: the one rule, for both backends, about a row
//! naming a provider or status this build does not know (written by a newer build or by
//! hand).
//!
//! An account or history row is an error ([`RegistryError::UnknownRow`]): skipping it would
//! make the account silently disappear from the socket, and reading it as another provider
//! would refresh it against the wrong upstream. An audit row is skipped with a warning: the
//! audit is a log, and one line this build cannot read must not hide the others.

use crate::names::{AccountKey, Provider, Status};

use super::RegistryError;

/// The account a stored `provider` and `name` name.
pub(crate) fn key(provider: &str, name: String) -> Result<AccountKey, RegistryError> {
    match Provider::parse(provider) {
        Some(provider) => Ok(AccountKey {
            provider,
            name: name.into(),
        }),
        None => Err(RegistryError::UnknownRow(format!("{provider}/{name}"))),
    }
}

/// The account and status of a stored account row.
pub(crate) fn account(
    provider: &str,
    name: String,
    status: &str,
) -> Result<(AccountKey, Status), RegistryError> {
    match (Provider::parse(provider), Status::parse(status)) {
        (Some(provider), Some(status)) => Ok((
            AccountKey {
                provider,
                name: name.into(),
            },
            status,
        )),
        _ => Err(RegistryError::UnknownRow(format!(
            "{provider}/{name} (status {status})"
        ))),
    }
}

/// The account of a stored audit row, or `None` (logged) for one this build cannot read.
pub(crate) fn audit_key(provider: &str, name: String) -> Option<AccountKey> {
    let key = Provider::parse(provider).map(|provider| AccountKey {
        provider,
        name: name.into(),
    });
    if key.is_none() {
        tracing::warn!(
            provider,
            "skipping an audit entry of a provider this build does not know"
        );
    }
    key
}
