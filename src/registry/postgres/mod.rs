//! The PostgreSQL backend: one registry shared by several daemons.
//!
//! It keeps what the SQLite backend keeps (accounts with sealed tokens, history, OAuth states,
//! the audit), in tables of its own, and adds what sharing needs:
//! - **Leases.** Before upstream work on an account a daemon takes a lease in the row, timed by
//!   the database's clock and numbered by a fence that every lease bumps. Its saves are
//!   conditional on that fence: a daemon paused past its lease, whose account another daemon
//!   took over, stores nothing ([`RegistryError::LeaseLost`]).
//! - **A change feed.** Every write notifies `shiptoken_accounts` with the account it changed,
//!   delivered at commit; each daemon reloads that account ([`follow`]).
//!
//! The client is the blocking `postgres` crate on the registry's owner thread, as SQLite is:
//! one writer per daemon, group commit, no async worker ever waits on the database. A lost
//! connection is opened again on the next call; meanwhile writes fail, and the registry keeps
//! new tokens in memory and writes them back (see `owner`).
//!
//! One job a file: [`target`] (the URL and TLS), [`schema`] (migrations and the key check),
//! [`rows`] (records to rows and back), [`store`] (the store's operations), [`lease`]
//! (leases and fences) and [`follow`] (the change feed).

pub mod follow;
mod keys;
mod lease;
mod rows;
mod schema;
mod store;
mod target;
#[cfg(test)]
pub(crate) mod tests;

pub use target::{PostgresTarget, TargetError, shown};

use std::collections::HashMap;
use std::time::Duration;

use postgres::Client;

use crate::keys::KeySource;
use crate::names::AccountKey;
use crate::registry::seal::Sealer;
use crate::registry::store::Store;
use crate::registry::{AccountRecord, RegistryError};
use keys::PgKeys;
use schema::migrate;

/// The channel every write notifies, with `generation revision provider/name`.
pub const CHANNEL: &str = "shiptoken_accounts";

impl From<postgres::Error> for RegistryError {
    fn from(e: postgres::Error) -> Self {
        RegistryError::from_pg(&e)
    }
}

/// The store: one connection of the owner thread, opened again after a loss.
pub(crate) struct PgStore {
    target: PostgresTarget,
    client: Option<Client>,
    keys: PgKeys,
    /// Fences of the leases this daemon holds.
    leases: HashMap<AccountKey, i64>,
    /// The last failed connection attempt and its error: calls within [`RECONNECT_AFTER`]
    /// fail at once instead of each waiting for a connect timeout behind the others.
    down: Option<(std::time::Instant, String)>,
}

/// How long after a failed connection attempt calls fail without trying again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Connects, migrates, proves the key, and loads every account.
pub(crate) fn open_blocking(
    target: &PostgresTarget,
    key: &KeySource,
) -> Result<(PgStore, Vec<AccountRecord>), RegistryError> {
    let mut client = connect(target)?;
    migrate(&mut client)?;
    // Every host seals with the same key; a new key here would seal tokens no other host
    // can open, so a missing one is an error.
    let sealer = Sealer::new(&key.load(false).map_err(|e| match e {
        crate::keys::KeyError::Missing { path } => crate::keys::KeyError::SharedMissing { path },
        e => e,
    })?);
    let keys = PgKeys::unlock(&mut client, sealer, key, target)?;
    let mut store = PgStore {
        target: target.clone(),
        client: Some(client),
        keys,
        leases: HashMap::new(),
        down: None,
    };
    let records = store.load_all()?;
    Ok((store, records))
}

fn connect(target: &PostgresTarget) -> Result<Client, RegistryError> {
    postgres::Config::from(target.config.clone())
        .connect(target.tls.clone())
        .map_err(|e| {
            RegistryError::Postgres(format!(
                "cannot connect to {}: {}",
                target.shown,
                pg_text(&e)
            ))
        })
}

fn pg_text(e: &postgres::Error) -> String {
    match RegistryError::from_pg(e) {
        RegistryError::Postgres(t) => t,
        other => other.to_string(),
    }
}

/// A registration that lost a race with the same one on another host: the unique index
/// refused it; said as the duplicate it is.
fn duplicate(e: postgres::Error, key: &AccountKey) -> RegistryError {
    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
        RegistryError::AccountExists(key.clone())
    } else {
        e.into()
    }
}

impl RegistryError {
    /// A database error's own message (its Display is only "db error"), or the client
    /// error with its cause ("error connecting to server: Connection refused").
    fn from_pg(e: &postgres::Error) -> RegistryError {
        match e.as_db_error() {
            Some(db) => RegistryError::Postgres(format!("{}: {}", db.severity(), db.message())),
            None => RegistryError::Postgres(format!("{e}{}", source_text(e))),
        }
    }
}

/// The cause of a client error ("error connecting to server: Connection refused").
fn source_text(e: &postgres::Error) -> String {
    use std::error::Error as _;
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

impl PgStore {
    /// Runs `f` on a live connection, opening one if the last was lost; a call that fails
    /// on a broken connection drops it, so the next call connects again.
    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Client,
            &mut PgKeys,
            &str,
            &mut HashMap<AccountKey, i64>,
        ) -> Result<R, RegistryError>,
    ) -> Result<R, RegistryError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            if let Some((at, error)) = &self.down
                && at.elapsed() < RECONNECT_AFTER
            {
                return Err(RegistryError::Postgres(error.clone()));
            }
            match connect(&self.target).and_then(|mut client| {
                self.keys.hold(&mut client)?;
                Ok(client)
            }) {
                Ok(client) => {
                    if self.down.take().is_some() {
                        tracing::info!(registry = %self.target.shown, "connected to the PostgreSQL registry again");
                    }
                    self.client = Some(client);
                }
                Err(e) => {
                    self.down = Some((std::time::Instant::now(), e.to_string()));
                    return Err(e);
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(RegistryError::Closed);
        };
        let result = f(client, &mut self.keys, &self.target.host, &mut self.leases);
        if client.is_closed() {
            self.client = None;
        }
        result
    }
}
