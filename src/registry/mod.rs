//! The registry: the single source of truth for accounts, their tokens and their history.
//!
//! The store lives on one owner thread fed by a channel, so no database call ever blocks an
//! async worker. Every write commits first and only then updates an in-memory copy of the
//! accounts, which is what the socket serves from: a token is visible to readers only once it
//! is durably stored, and reading it touches neither the database nor the network.
//!
//! Each backend is a folder behind one trait ([`Store`]): `sqlite/` (a single host's file)
//! and `postgres/` (shared by several daemons; the `postgres` cargo feature). What is not
//! about storing lives here, above the trait, once: the in-memory copy, OAuth's rules, the
//! times a record may hold, and what a row this build cannot read means ([`stored`]).

mod audit;
pub mod backup;
mod error;
pub mod migrate;
mod oauth_states;
mod owner;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(not(feature = "postgres"))]
#[path = "no_postgres.rs"]
pub mod postgres;
mod record;
mod rekey;
pub mod seal;
mod sqlite;
pub mod store;
mod stored;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{oneshot, watch};

pub use audit::{AuditEntry, AuditQuery, ProxiedCall};
pub use error::RegistryError;
pub use postgres::follow;
pub use record::{AccountRecord, Doubt, Event, EventKind, NewAccount, Note, SavedAt, TokenRecord};
pub use rekey::KeyRotated;
pub use sqlite::SCHEMA_VERSION;
pub use store::{Dump, LeaseAnswer, OAuthBegin, Save, Store};

use crate::clock::Timestamp;
use crate::keys::KeySource;
use crate::names::AccountKey;
use crate::secret::Secret;

/// How the registry is opened.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// `key_file` from the configuration; `None` means the systemd credential or
    /// `<state_dir>/secret.key`.
    pub key_file: Option<PathBuf>,
    /// Counts failed writes (`shiptoken_registry_errors_total`).
    pub errors: Option<prometheus::IntCounter>,
    /// The shared PostgreSQL registry (`registry.url`); `None` is SQLite in the state folder.
    pub postgres: Option<postgres::PostgresTarget>,
}

/// Writes that failed, and what they left in memory only. A token the provider issued is
/// never dropped because the disk refused it: it is served from memory and written back as
/// soon as a write succeeds.
#[derive(Default)]
struct Unsaved {
    /// The last write error, until the registry is written successfully again.
    error: Option<String>,
    /// Accounts whose record in memory is newer than the one on disk.
    accounts: HashSet<AccountKey>,
}

/// Shared by the handles and the owner thread.
#[derive(Clone, Default)]
struct WriteHealth {
    unsaved: Arc<Mutex<Unsaved>>,
    errors: Option<prometheus::IntCounter>,
}

impl WriteHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, Unsaved> {
        self.unsaved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs a failed write loudly and counts it.
    fn failed(&self, what: &str, error: &RegistryError) {
        tracing::error!(error = %error, "cannot write the registry ({what}); serving what is in memory and retrying");
        if let Some(c) = &self.errors {
            c.inc();
        }
        self.lock().error = Some(error.to_string());
    }
}

type Cache = Arc<RwLock<HashMap<AccountKey, Arc<AccountRecord>>>>;

/// A handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    jobs: std::sync::mpsc::Sender<owner::Job>,
    cache: Cache,
    changes: watch::Sender<u64>,
    path: PathBuf,
    health: WriteHealth,
    /// PostgreSQL, shared with other daemons: leases are taken before upstream work.
    shared: bool,
    /// Where the key that seals the registry comes from (`key rotate` replaces it).
    key: KeySource,
    /// Why other daemons' changes are not reaching this one, while they are not.
    feed_problem: Arc<Mutex<Option<String>>>,
    /// Where records stored by other daemons are reported (see [`Registry::remote_changes`]).
    remote: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RemoteChange>>>,
}

/// A record another daemon stored, as this one loaded it, with what memory held before.
#[derive(Debug)]
pub struct RemoteChange {
    /// What memory held; `None` for an account new to this daemon.
    pub before: Option<Arc<AccountRecord>>,
    /// The stored record.
    pub after: Arc<AccountRecord>,
}

/// Reads the cache even if a writer panicked while holding the lock: the map itself is
/// always replaced whole-entry, so it is never half-written.
fn read(cache: &Cache) -> std::sync::RwLockReadGuard<'_, HashMap<AccountKey, Arc<AccountRecord>>> {
    cache.read().unwrap_or_else(|e| e.into_inner())
}

fn write(
    cache: &Cache,
) -> std::sync::RwLockWriteGuard<'_, HashMap<AccountKey, Arc<AccountRecord>>> {
    cache.write().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Opens (creating if needed) `<state_dir>/registry.db` with the default key (the systemd
    /// credential or `<state_dir>/secret.key`), migrates it and loads the accounts.
    pub async fn open(state_dir: &Path) -> Result<Registry, RegistryError> {
        Self::open_with(state_dir, OpenOptions::default()).await
    }

    /// Opens the registry: checks the state folder's permissions, loads the key (see
    /// [`crate::keys`]), migrates, seals any plaintext left by an older build, and proves the
    /// key opens the registry before a single token is loaded.
    pub async fn open_with(
        state_dir: &Path,
        options: OpenOptions,
    ) -> Result<Registry, RegistryError> {
        let state_dir = state_dir.to_path_buf();
        let shared = options.postgres.is_some();
        let key = KeySource::resolve(options.key_file.as_deref(), &state_dir);
        let (path, store, records) = match options.postgres.clone() {
            #[cfg(feature = "postgres")]
            Some(target) => {
                let path = PathBuf::from(&target.shown);
                let key_source = key.clone();
                let (store, records) = tokio::task::spawn_blocking(move || {
                    postgres::open_blocking(&target, &key_source)
                })
                .await
                .map_err(|_| RegistryError::Closed)??;
                let store: Box<dyn Store + Send> = Box::new(store);
                (path, store, records)
            }
            #[cfg(not(feature = "postgres"))]
            Some(target) => target.absurd(),
            None => {
                let path = state_dir.join("registry.db");
                let (conn, records) = {
                    let path = path.clone();
                    let key_file = options.key_file.clone();
                    tokio::task::spawn_blocking(move || {
                        sqlite::open_blocking(&state_dir, &path, key_file.as_deref())
                    })
                    .await
                    .map_err(|_| RegistryError::Closed)??
                };
                let store: Box<dyn Store + Send> = Box::new(conn);
                (path, store, records)
            }
        };
        // Every record first, then the map: built in turn, the map's growing tables sat
        // between the records, so when a sweep replaced the records their memory stayed pinned
        // between allocations that live on (measured after a 10,000-account sweep: 7 MB more
        // idle RSS, docs/scale.md). The keys share the records' names, so they allocate nothing.
        let records: Vec<Arc<AccountRecord>> = records.into_iter().map(Arc::new).collect();
        let cache: Cache = Arc::new(RwLock::new(
            records.into_iter().map(|r| (r.key.clone(), r)).collect(),
        ));
        let health = WriteHealth {
            unsaved: Arc::default(),
            errors: options.errors,
        };
        let (jobs, rx) = std::sync::mpsc::channel::<owner::Job>();
        let (thread_cache, thread_health) = (cache.clone(), health.clone());
        std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || owner::run(store, rx, thread_cache, thread_health))
            .map_err(|source| RegistryError::Io {
                what: "cannot start the registry thread for",
                path: path.clone(),
                source,
            })?;
        let (changes, _) = watch::channel(0);
        Ok(Registry {
            jobs,
            cache,
            changes,
            path,
            health,
            shared,
            key,
            feed_problem: Arc::default(),
            remote: Arc::default(),
        })
    }

    /// Why the registry cannot be written right now, if it cannot: the last write error and
    /// how many accounts have tokens kept in memory only. `None` once writes succeed again.
    pub fn write_problem(&self) -> Option<String> {
        let unsaved = self.health.lock();
        let error = unsaved.error.as_ref()?;
        Some(match unsaved.accounts.len() {
            0 => format!("registry write failed: {error}; retrying"),
            n => format!(
                "registry write failed: {error}; {n} account(s) have tokens kept in memory only, retrying"
            ),
        })
    }

    /// Records stored by other daemons, as they are loaded into memory (for the fleet-wide
    /// incident count). Only the first caller gets them; later calls get `None`.
    pub fn remote_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<RemoteChange>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.remote.set(tx).ok().map(|()| rx)
    }

    /// Records why changes stored by other daemons do not reach this one (`None`: they do).
    pub fn set_feed_problem(&self, problem: Option<String>) {
        *self.feed_problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Why changes stored by other daemons do not reach this one right now, if they do not.
    pub fn feed_problem(&self) -> Option<String> {
        self.feed_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether other daemons share this registry (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The database file (for PostgreSQL, its URL without the password).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the owner thread and returns its result.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<R, RegistryError> + Send + 'static,
    ) -> Result<R, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(owner::Job::Call(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            })))
            .map_err(|_| RegistryError::Closed)?;
        rx.await.map_err(|_| RegistryError::Closed)?
    }

    /// Stores `record` (computed from the stored revision it carries) with its history notes,
    /// in one transaction, and only then publishes it to the in-memory copy readers are served
    /// from. Refused with [`RegistryError::Stale`] when the account was removed, registered
    /// again or saved by other work since. When the disk refuses the write, the record is
    /// served from memory and written back as soon as a write succeeds: a token the provider
    /// issued is never dropped because of the disk.
    pub async fn save(
        &self,
        record: AccountRecord,
        notes: Vec<Note>,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        check_times(&record)?;
        let key = record.key.clone();
        let expected = record.revision;
        let mut next = record;
        next.revision = expected + 1;
        next.saved = Some(SavedAt {
            at: now,
            instant: std::time::Instant::now(),
        });
        let next = Arc::new(next);
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(owner::Job::Save(owner::SaveJob {
                record: next.clone(),
                expected,
                notes,
                at: now,
                reply,
            }))
            .map_err(|_| RegistryError::Closed)?;
        let result = answer.await.map_err(|_| RegistryError::Closed)?;
        match result {
            Ok(()) => {}
            Err(
                e @ (RegistryError::Sqlite(_)
                | RegistryError::Postgres(_)
                | RegistryError::Unwritable(_)),
            ) => {
                self.health.failed("saving an account", &e);
                if !publish(&self.cache, &next) {
                    return Err(RegistryError::Stale(key));
                }
                self.health.lock().accounts.insert(key.clone());
                tracing::error!(account = %key, "keeping the account's new state in memory until the registry can store it");
            }
            Err(e) => return Err(e),
        }
        self.changes.send_modify(|n| *n += 1);
        Ok(next)
    }

    /// Every account, sorted by provider and name.
    pub fn accounts(&self) -> Vec<Arc<AccountRecord>> {
        let mut all: Vec<_> = read(&self.cache).values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// One account, from memory.
    pub fn account(&self, key: &AccountKey) -> Option<Arc<AccountRecord>> {
        read(&self.cache).get(key).cloned()
    }

    /// A receiver that changes whenever any account does (for clients waiting on a new token).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers an account.
    pub async fn add(
        &self,
        new: NewAccount,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        if let Some(t) = &new.access_token {
            check_token_times(t)?;
        }
        let cache = self.cache.clone();
        let record = self
            .call(move |conn| {
                let record = Arc::new(conn.insert(&new, now)?);
                write(&cache).insert(record.key.clone(), record.clone());
                Ok(record)
            })
            .await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(record)
    }

    /// Removes an account and its tokens; its history stays, ending with `removed`.
    pub async fn remove(&self, key: &AccountKey, now: Timestamp) -> Result<(), RegistryError> {
        let cache = self.cache.clone();
        let health = self.health.clone();
        let key = key.clone();
        self.call(move |conn| {
            conn.delete(&key, now)?;
            write(&cache).remove(&key);
            health.lock().accounts.remove(&key);
            Ok(())
        })
        .await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The stored refresh token, read from the store at the moment it is needed.
    pub async fn refresh_token(&self, key: &AccountKey) -> Result<Option<Secret>, RegistryError> {
        let key = key.clone();
        self.call(move |conn| conn.refresh_token(&key)).await
    }

    /// Replaces the stored refresh token with the one the provider rotated to, durably, before
    /// the access token issued with it is stored or served (RFC 6749 6).
    pub async fn set_refresh_token(
        &self,
        key: &AccountKey,
        token: Secret,
    ) -> Result<(), RegistryError> {
        let key = key.clone();
        self.call(move |conn| conn.set_refresh_token(&key, &token))
            .await
    }

    /// An account's history, newest last; `limit` newest entries. Only the current
    /// registration's history; a removed account's shows in full.
    pub async fn events(
        &self,
        key: &AccountKey,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError> {
        let key = key.clone();
        let generation = self.account(&key).map(|a| a.generation);
        self.call(move |conn| conn.events(&key, generation, limit))
            .await
    }

    /// Takes the fleet-wide lease on the account for upstream work planned from `record`.
    /// When the stored record moved on (another daemon saved it and its notice has not
    /// arrived yet), the newer one is loaded into memory and `Moved` returned.
    pub async fn lease(
        &self,
        record: &Arc<AccountRecord>,
        lease: std::time::Duration,
    ) -> Result<LeaseAnswer, RegistryError> {
        if !self.shared {
            return Ok(LeaseAnswer::Granted);
        }
        let (reply, answer) = oneshot::channel();
        let job = owner::LeaseJob {
            record: record.clone(),
            lease,
            reply,
        };
        self.jobs
            .send(owner::Job::Lease(job))
            .map_err(|_| RegistryError::Closed)?;
        let answer = answer.await.map_err(|_| RegistryError::Closed)??;
        if answer == LeaseAnswer::Moved {
            // Memory learns the stored record before the caller plans again from it.
            self.reload(vec![record.key.clone()]).await?;
        }
        Ok(answer)
    }

    /// Gives the account's lease back and waits until it is, so another daemon asked right
    /// after this one's work answered may take the account at once.
    pub async fn release_now(&self, key: &AccountKey) {
        if !self.shared {
            return;
        }
        let (done, given_back) = oneshot::channel();
        if self
            .jobs
            .send(owner::Job::Release(key.clone(), Some(done)))
            .is_ok()
        {
            let _ = given_back.await;
        }
    }

    /// Gives the account's lease back without waiting (work that ended without
    /// [`Registry::release_now`], e.g. cancelled).
    pub fn release(&self, key: &AccountKey) {
        if !self.shared {
            return;
        }
        let _ = self.jobs.send(owner::Job::Release(key.clone(), None));
    }

    /// Loads these accounts from the store into memory (other daemons changed them), in one
    /// round trip; an account gone from the store leaves memory. Returns how many changed.
    pub async fn reload(&self, keys: Vec<AccountKey>) -> Result<usize, RegistryError> {
        self.load_into_memory(move |store| {
            let found = store.load_some(&keys)?;
            Ok((keys, found))
        })
        .await
    }

    /// Loads every account from the store into memory (after a lost change feed): newer
    /// records replace older ones, accounts gone from the store leave memory. Returns how
    /// many changed.
    pub async fn resync(&self) -> Result<usize, RegistryError> {
        let cache = self.cache.clone();
        self.load_into_memory(move |store| {
            let held: Vec<AccountKey> = read(&cache).keys().cloned().collect();
            Ok((held, store.load_all()?))
        })
        .await
    }

    /// Runs `load` on the owner thread: it names the accounts it speaks for and returns those
    /// the store holds. Newer records replace what memory holds; accounts it speaks for that
    /// the store no longer holds leave memory, unless memory holds a record the store has not
    /// got yet (a write that failed). Returns how many changed.
    async fn load_into_memory(
        &self,
        load: impl FnOnce(
            &mut dyn Store,
        ) -> Result<(Vec<AccountKey>, Vec<AccountRecord>), RegistryError>
        + Send
        + 'static,
    ) -> Result<usize, RegistryError> {
        let (cache, health, remote) =
            (self.cache.clone(), self.health.clone(), self.remote.clone());
        let changed = self
            .call(move |store| {
                let (scope, found) = load(store)?;
                Ok(absorb(&cache, &health, &remote, &scope, found))
            })
            .await?;
        if changed > 0 {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(changed)
    }

    /// The (generation, revision) memory holds for the account, if any.
    pub fn held_revision(&self, key: &AccountKey) -> Option<(i64, i64)> {
        read(&self.cache)
            .get(key)
            .map(|r| (r.generation, r.revision))
    }

    /// Checks the database file (`PRAGMA quick_check`); used by health checks.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.call(|store| store.ping()).await
    }
}

/// Publishes a stored record to the in-memory copy, unless the copy holds another
/// registration of the account or a newer revision (or the account is gone).
fn publish(cache: &Cache, record: &Arc<AccountRecord>) -> bool {
    let mut cache = write(cache);
    match cache.get(&record.key) {
        Some(old) if old.generation == record.generation && old.revision < record.revision => {
            cache.insert(record.key.clone(), record.clone());
            true
        }
        _ => false,
    }
}

/// Puts a record read from the store into memory if it is newer than what memory holds: a
/// later registration, or a later revision of the same one. Returns whether it did.
fn merge(
    cache: &mut HashMap<AccountKey, Arc<AccountRecord>>,
    record: AccountRecord,
    remote: &Remote,
) -> bool {
    let newer = match cache.get(&record.key) {
        Some(old) => {
            record.generation > old.generation
                || (record.generation == old.generation && record.revision > old.revision)
        }
        None => true,
    };
    if newer {
        let after = Arc::new(record);
        let before = cache.insert(after.key.clone(), after.clone());
        if let Some(tx) = remote.get() {
            let _ = tx.send(RemoteChange { before, after });
        }
    }
    newer
}

type Remote = std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<RemoteChange>>;

/// Loads `key` from the store and merges it into memory; an account gone from the store
/// leaves memory. Returns whether memory changed.
fn merge_from_store(
    store: &mut dyn Store,
    cache: &Cache,
    health: &WriteHealth,
    key: &AccountKey,
    remote: &Remote,
) -> Result<bool, RegistryError> {
    let found = store.load_some(std::slice::from_ref(key))?;
    Ok(absorb(cache, health, remote, std::slice::from_ref(key), found) > 0)
}

/// Puts records read from the store into memory: newer ones replace what memory holds, and
/// accounts of `scope` the store no longer holds leave memory, unless memory holds a record
/// the store has not got yet (a write that failed). Returns how many changed.
fn absorb(
    cache: &Cache,
    health: &WriteHealth,
    remote: &Remote,
    scope: &[AccountKey],
    found: Vec<AccountRecord>,
) -> usize {
    let unsaved = health.lock().accounts.clone();
    let mut cache = write(cache);
    let present: HashSet<&AccountKey> = found.iter().map(|r| &r.key).collect();
    let mut changed = scope
        .iter()
        .filter(|k| !present.contains(k) && !unsaved.contains(*k))
        .filter(|k| cache.remove(*k).is_some())
        .count();
    for record in found {
        changed += usize::from(merge(&mut cache, record, remote));
    }
    changed
}

/// Refuses a record whose times no calendar of ours can print (past year 9999): such a value
/// would make every later listing of the account fail.
fn check_times(r: &AccountRecord) -> Result<(), RegistryError> {
    [r.current.as_ref(), r.candidate.as_deref()]
        .into_iter()
        .flatten()
        .try_for_each(check_token_times)
}

fn check_token_times(t: &TokenRecord) -> Result<(), RegistryError> {
    for (what, at) in [
        ("token issue time", Some(t.issued_at)),
        ("token expiry", t.expires_at),
    ] {
        if let Some(at) = at
            && !at.in_calendar()
        {
            return Err(RegistryError::TimeOutOfRange {
                what,
                value: format!("{} ms since 1970", at.millis()),
            });
        }
    }
    Ok(())
}
