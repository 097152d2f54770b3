//! What a registry backend does: it stores records and their history, and decides nothing.
//! The state machine (`rotation::judge`) computes every record; the backend only keeps it,
//! refusing a save computed from a record that is no longer the stored one.
//!
//! SQLite implements it ([`super::sqlite`]); a backend shared by several daemons
//! (PostgreSQL) implements the same calls, plus leases and a change feed, which have
//! single-host defaults here.

use crate::clock::Timestamp;
use crate::names::AccountKey;
use crate::secret::Secret;

use super::{AccountRecord, Event, NewAccount, Note, RegistryError};

/// One record to store, with the history notes it adds.
#[derive(Debug)]
pub struct Save<'a> {
    /// The record, already carrying its new revision.
    pub record: &'a AccountRecord,
    /// The revision it was computed from; `None` writes it whatever is stored (used to write
    /// back records kept in memory while the disk refused writes).
    pub expected: Option<i64>,
    /// What to append to its history.
    pub notes: &'a [Note],
    /// When.
    pub at: Timestamp,
}

/// A registry backend.
pub trait Store {
    /// Every account, as stored. An account this build cannot read is an error, never
    /// silently skipped.
    fn load_all(&mut self) -> Result<Vec<AccountRecord>, RegistryError>;

    /// One account.
    fn load(&mut self, key: &AccountKey) -> Result<AccountRecord, RegistryError>;

    /// Stores every record in one transaction (one commit, one fsync): all or nothing. A
    /// record whose registration is gone or whose stored revision moved on fails the batch
    /// with [`RegistryError::Stale`].
    fn save_all(&mut self, saves: &[Save<'_>]) -> Result<(), RegistryError>;

    /// Registers an account under a generation never used before.
    fn insert(&mut self, new: &NewAccount, now: Timestamp) -> Result<AccountRecord, RegistryError>;

    /// Removes an account and its tokens; its history stays, ending with `removed`.
    fn delete(&mut self, key: &AccountKey, now: Timestamp) -> Result<(), RegistryError>;

    /// The stored refresh token, read when it is about to be used.
    fn refresh_token(&mut self, key: &AccountKey) -> Result<Option<Secret>, RegistryError>;

    /// The newest `limit` history entries of one registration (all, when `generation` is
    /// `None`), oldest first.
    fn events(
        &mut self,
        key: &AccountKey,
        generation: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError>;

    /// Takes the right to do upstream work for the account until `until`, fleet-wide.
    /// A single-host backend has no one to share with: always granted.
    fn lease(&mut self, _key: &AccountKey, _until: Timestamp) -> Result<bool, RegistryError> {
        Ok(true)
    }

    /// Accounts other daemons changed since the last call. A single-host backend: none.
    fn changed(&mut self) -> Result<Vec<AccountKey>, RegistryError> {
        Ok(Vec::new())
    }
}
