//! What a registry backend does: it stores records and their history, and decides nothing.
//! The state machine (`rotation::judge`) computes every record; the backend only keeps it,
//! refusing a save computed from a record that is no longer the stored one.
//!
//! SQLite implements it (`sqlite/`); PostgreSQL (`postgres/`, the `postgres` feature),
//! shared by several daemons, implements the same calls plus leases, which have single-host
//! defaults here. Both must answer alike: the conformance suite (`conformance/`) runs the same
//! tests against each. Rules that are not about storing (which providers connect by OAuth,
//! which times a record may hold, what an unreadable row means: [`super::stored`]) live above
//! this trait, once.

use crate::clock::Timestamp;
use crate::names::AccountKey;
use crate::secret::Secret;

use std::path::Path;
use std::time::Duration;

use super::seal::Sealer;
use super::{AccountRecord, AuditEntry, AuditQuery, Event, NewAccount, Note, RegistryError};

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

    /// One account; `UnknownRow` when its row holds a status this build does not know.
    fn load(&mut self, key: &AccountKey) -> Result<AccountRecord, RegistryError>;

    /// The accounts of `keys` that exist, in one round trip where the backend can.
    fn load_some(&mut self, keys: &[AccountKey]) -> Result<Vec<AccountRecord>, RegistryError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match self.load(key) {
                Ok(r) => found.push(r),
                Err(RegistryError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

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

    /// Replaces the stored refresh token with the one a provider rotated to (RFC 6749 6).
    fn set_refresh_token(&mut self, key: &AccountKey, token: &Secret) -> Result<(), RegistryError>;

    /// The newest `limit` history entries of one registration (all, when `generation` is
    /// `None`), oldest first.
    fn events(
        &mut self,
        key: &AccountKey,
        generation: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError>;

    /// Starts an OAuth flow: creates the account as `pending` unless it already waits for a
    /// token (any other account under that name is `AccountExists`), drops its earlier unused
    /// states and every expired one, and stores the state's hash until it expires. Whether the
    /// provider connects by OAuth at all is decided above the store
    /// ([`super::Registry::begin_oauth`]).
    fn begin_oauth(&mut self, begin: &OAuthBegin<'_>) -> Result<AccountRecord, RegistryError>;

    /// Spends a state in one statement: the pending account it was issued for, or `None`.
    fn take_oauth_state(
        &mut self,
        state_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AccountKey>, RegistryError>;

    /// Removes the account if it is `pending` with no token at all; whether it did.
    fn discard_unconnected(
        &mut self,
        key: &AccountKey,
        detail: &str,
        now: Timestamp,
    ) -> Result<bool, RegistryError>;

    /// Appends audit entries in one transaction.
    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), RegistryError>;

    /// Audit entries matching `query`, oldest first.
    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RegistryError>;

    /// Deletes audit entries last read before `before`; how many.
    fn prune_audit(&mut self, before: Timestamp) -> Result<usize, RegistryError>;

    /// Proves the backend answers (a health check).
    fn ping(&mut self) -> Result<(), RegistryError>;

    /// Every history entry, oldest first, with the registration it belongs to.
    fn all_events(&mut self) -> Result<Vec<DumpedEvent>, RegistryError>;

    /// Everything a registry holds that outlives a daemon, for `registry migrate`.
    fn export(&mut self) -> Result<Dump, RegistryError> {
        let mut accounts = Vec::new();
        for record in self.load_all()? {
            let refresh = self.refresh_token(&record.key)?;
            accounts.push((record, refresh));
        }
        let events = self.all_events()?;
        let audit = self.audit(&AuditQuery {
            limit: usize::MAX,
            ..AuditQuery::default()
        })?;
        Ok(Dump {
            accounts,
            events,
            audit,
        })
    }

    /// Writes `dump` into this registry, which must hold no account yet.
    fn import(&mut self, dump: &Dump) -> Result<(), RegistryError>;

    /// Re-seals every stored secret with `next` in one transaction and seals with it from
    /// then on (`key rotate` of a running daemon). `current` must be the key the registry is
    /// sealed with ([`RegistryError::KeyFileChanged`] names `key_file` when not). How many
    /// accounts were re-sealed.
    fn rekey(
        &mut self,
        current: &Sealer,
        next: &Sealer,
        key_file: &Path,
    ) -> Result<u64, RegistryError>;

    /// Takes `key` as one that opens values besides the sealing key: the next key, staged on
    /// every host of a shared registry before one of them rotates to it. A registry only one
    /// daemon writes has nothing to stage.
    fn stage_key(&mut self, _key: &Sealer) -> Result<(), RegistryError> {
        Ok(())
    }

    /// Takes the right to do upstream work on the account for `lease`, fleet-wide, if its
    /// stored registration and revision are still `record`'s. A single-host backend has no
    /// one to share with: always granted.
    fn lease(
        &mut self,
        _record: &AccountRecord,
        _lease: Duration,
    ) -> Result<LeaseAnswer, RegistryError> {
        Ok(LeaseAnswer::Granted)
    }

    /// Gives a lease back once its work is stored (or abandoned).
    fn release(&mut self, _key: &AccountKey) -> Result<(), RegistryError> {
        Ok(())
    }

    /// [`Store::lease`] for several accounts at once, answers in the same order. A backend
    /// that can take them in one statement does; an error fails them all.
    fn lease_all(
        &mut self,
        wanted: &[(&AccountRecord, Duration)],
    ) -> Result<Vec<LeaseAnswer>, RegistryError> {
        wanted.iter().map(|(r, l)| self.lease(r, *l)).collect()
    }

    /// [`Store::release`] for several accounts at once.
    fn release_all(&mut self, keys: &[AccountKey]) -> Result<(), RegistryError> {
        keys.iter().try_for_each(|k| self.release(k))
    }
}

/// An OAuth flow to start ([`Store::begin_oauth`]).
#[derive(Debug)]
pub struct OAuthBegin<'a> {
    /// The account it connects.
    pub key: &'a AccountKey,
    /// The hex SHA-256 of the state (the state itself is a bearer secret, never stored).
    pub state_hash: &'a str,
    /// When the state stops being accepted.
    pub expires_at: Timestamp,
    /// The history detail of the account, when the flow creates it.
    pub added_detail: &'a str,
    /// When.
    pub now: Timestamp,
}

/// Whether a daemon may work on an account now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// Yes, until the lease runs out; saves are refused once another daemon took it over.
    Granted,
    /// Another daemon holds it.
    Busy {
        /// The `registry.host_name` of the daemon working on it.
        holder: String,
    },
    /// The stored record is newer than the one the work was planned from (another daemon
    /// saved it): the caller reloads it and plans again.
    Moved,
}

/// One history entry with the registration it belongs to, as `registry migrate` copies it.
#[derive(Clone, Debug)]
pub struct DumpedEvent {
    /// The account.
    pub key: AccountKey,
    /// Its registration.
    pub generation: Option<i64>,
    /// The entry.
    pub event: Event,
}

/// The accounts (with their refresh tokens), their history and the audit of a registry.
/// OAuth states are not carried: they live ten minutes, and a flow in progress is started
/// again.
#[derive(Debug, Default)]
pub struct Dump {
    /// Every account, with its stored refresh token.
    pub accounts: Vec<(AccountRecord, Option<Secret>)>,
    /// Every history entry, oldest first.
    pub events: Vec<DumpedEvent>,
    /// Every audit entry, oldest first.
    pub audit: Vec<AuditEntry>,
}
