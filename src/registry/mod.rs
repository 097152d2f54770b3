//! The registry: the single source of truth for accounts, their tokens and their history.
//!
//! SQLite lives on one owner thread fed by a channel, so no SQLite call ever blocks an async
//! worker. Every write commits first and only then updates an in-memory copy of the accounts,
//! which is what the socket serves from: a token is visible to readers only once it is
//! durably stored, and reading it touches neither SQLite nor the network.

mod audit;
mod migrations;
mod oauth_states;
pub mod rekey;
pub mod seal;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

pub use audit::{AuditEntry, AuditQuery};
pub use migrations::SCHEMA_VERSION;

use crate::clock::Timestamp;
use crate::keys::{KeyError, KeySource};
use crate::names::{AccountKey, Provider, Status};
use crate::secret::Secret;

/// What can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file or folder could not be created or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database was written by a newer shiptoken.
    #[error(
        "registry schema version {found} is newer than this build knows ({known}); refusing to downgrade: run the newer shiptoken or restore a backup"
    )]
    NewerSchema {
        /// Version in the file.
        found: i64,
        /// Version this build writes.
        known: i64,
    },
    /// No such account.
    #[error("no account {0}")]
    NotFound(AccountKey),
    /// The name is taken.
    #[error("account {0} already exists")]
    AccountExists(AccountKey),
    /// The email is registered under another name.
    #[error(
        "the email {email} is already registered as {existing}; ShipHero advises one developer user per integration"
    )]
    EmailTaken {
        /// The email.
        email: String,
        /// Who has it.
        existing: AccountKey,
    },
    /// The refresh token is registered under another name.
    #[error("this refresh token is already registered as {existing}")]
    RefreshTokenTaken {
        /// Who has it.
        existing: AccountKey,
    },
    /// The owner thread is gone (the daemon is stopping).
    #[error("the registry is closed")]
    Closed,
    /// The key, or the permissions of the key or the state folder.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A sealed value did not open or a value could not be sealed.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The registry was sealed with another key than the one configured.
    #[error(
        "{db} was sealed with a different key than {key}; restore the right key (key_file, the systemd credential shiptoken.key or <state_dir>/secret.key), or a backup taken with this key"
    )]
    WrongKey {
        /// The database.
        db: PathBuf,
        /// The key file tried.
        key: PathBuf,
    },
    /// The registry holds sealed tokens but its key check is gone, and the key at hand is
    /// missing or does not open them: a new key would seal them a second time.
    #[error(
        "{db} holds sealed tokens but its key check is missing, and the key {key} is missing or does not open them; shiptoken will not make a new key over them. Restore the key that sealed them (key_file, the systemd credential shiptoken.key or <state_dir>/secret.key) and start again, or restore a backup of the registry together with its key"
    )]
    KeyCheckMissing {
        /// The database.
        db: PathBuf,
        /// The key file tried.
        key: PathBuf,
    },
}

/// How the registry is opened.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// `key_file` from the configuration; `None` means the systemd credential or
    /// `<state_dir>/secret.key`.
    pub key_file: Option<PathBuf>,
    /// Counts failed writes (`shiptoken_registry_errors_total`).
    pub errors: Option<prometheus::IntCounter>,
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

/// How often the owner thread retries writing records kept in memory.
const RETRY_UNSAVED: Duration = Duration::from_secs(2);

/// An access token with its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    /// The token itself.
    pub access_token: Secret,
    /// When it was issued (or registered).
    pub issued_at: Timestamp,
    /// When it stops working; `None` for tokens that never expire (Shippo).
    pub expires_at: Option<Timestamp>,
}

/// Everything known about one account, as served from memory. Holds the access tokens but
/// never the refresh token, which is read from SQLite only when it is about to be used.
#[derive(Clone, Debug)]
pub struct AccountRecord {
    /// Provider and name.
    pub key: AccountKey,
    /// Developer user email (ShipHero).
    pub email: Option<String>,
    /// Developer user first name.
    pub first_name: Option<String>,
    /// Developer user last name.
    pub last_name: Option<String>,
    /// Current status.
    pub status: Status,
    /// When the status last changed.
    pub status_since: Timestamp,
    /// When the account was registered.
    pub created_at: Timestamp,
    /// When a token was last issued by the provider.
    pub last_rotated_at: Option<Timestamp>,
    /// When a probe last proved a token works.
    pub last_verified_at: Option<Timestamp>,
    /// The last upstream error, cleared by a passing probe.
    pub last_error: Option<String>,
    /// Consecutive failed attempts, for backoff.
    pub failures: u32,
    /// No routine work before this time (backoff, throttling, flagged re-check).
    pub next_attempt_at: Option<Timestamp>,
    /// The token served to applications.
    pub current: Option<TokenRecord>,
    /// A newer token not yet proven by a probe.
    pub candidate: Option<TokenRecord>,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
}

/// A new account to register.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Provider and name.
    pub key: AccountKey,
    /// Developer user email (ShipHero).
    pub email: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// ShipHero's static refresh token.
    pub refresh_token: Option<Secret>,
    /// An access token obtained elsewhere; registered as the candidate until probed.
    pub access_token: Option<TokenRecord>,
}

impl NewAccount {
    /// A Shippo account with an OAuth token obtained at `now` (Shippo tokens never expire).
    pub fn shippo(key: AccountKey, access_token: Secret, now: Timestamp) -> NewAccount {
        NewAccount {
            key,
            email: None,
            first_name: None,
            last_name: None,
            refresh_token: None,
            access_token: Some(TokenRecord {
                access_token,
                issued_at: now,
                expires_at: None,
            }),
        }
    }
}

/// One entry of an account's history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    /// When it happened.
    pub at: Timestamp,
    /// `provider/name`.
    pub account: String,
    /// added, rotated, checked, flagged, cleared, failed, removed.
    pub kind: String,
    /// A human-readable detail, never a secret.
    pub detail: Option<String>,
}

/// How a status change is recorded.
#[derive(Clone, Debug)]
pub struct Flag {
    /// The new status.
    pub status: Status,
    /// What the provider answered.
    pub error: String,
    /// When to look at the account again.
    pub retry_at: Option<Timestamp>,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;
/// The in-memory form of a write the disk refused (see `update_or_keep`).
type Keep = Box<dyn FnOnce(&mut AccountRecord) + Send>;
type Cache = Arc<RwLock<HashMap<AccountKey, Arc<AccountRecord>>>>;

/// A handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    jobs: std::sync::mpsc::Sender<Job>,
    cache: Cache,
    changes: watch::Sender<u64>,
    path: PathBuf,
    health: WriteHealth,
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
        let path = state_dir.join("registry.db");
        let (conn, records) = {
            let path = path.clone();
            let key_file = options.key_file.clone();
            tokio::task::spawn_blocking(move || {
                open_blocking(&state_dir, &path, key_file.as_deref())
            })
            .await
            .map_err(|_| RegistryError::Closed)??
        };
        let cache: Cache = Arc::new(RwLock::new(
            records
                .into_iter()
                .map(|r| (r.key.clone(), Arc::new(r)))
                .collect(),
        ));
        let health = WriteHealth {
            unsaved: Arc::default(),
            errors: options.errors,
        };
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (thread_cache, thread_health) = (cache.clone(), health.clone());
        std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || {
                let mut conn = conn;
                // Ends when every Registry handle is dropped.
                loop {
                    match rx.recv_timeout(RETRY_UNSAVED) {
                        Ok(job) => {
                            // Records kept in memory go first, so a later write never
                            // reloads an older token over them.
                            store_unsaved(&mut conn, &thread_cache, &thread_health);
                            job(&mut conn);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            store_unsaved(&mut conn, &thread_cache, &thread_health);
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the owner thread and returns its result.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R, RegistryError> + Send + 'static,
    ) -> Result<R, RegistryError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| RegistryError::Closed)?;
        rx.await.map_err(|_| RegistryError::Closed)?
    }

    /// Runs a write on the owner thread; after it commits, reloads the account into the cache
    /// and wakes waiters. Returns the fresh record.
    async fn update(
        &self,
        key: &AccountKey,
        f: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<(), RegistryError> + Send + 'static,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        self.update_or_keep(key, "update", f, None).await
    }

    /// [`Registry::update`], and when the disk refuses the write, `keep` applies the change to
    /// the record in memory instead: it is served from there and stored by the owner thread
    /// as soon as a write succeeds. Used for the writes that carry a newly issued token.
    async fn update_or_keep(
        &self,
        key: &AccountKey,
        what: &'static str,
        f: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<(), RegistryError> + Send + 'static,
        keep: Option<Keep>,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let cache = self.cache.clone();
        let health = self.health.clone();
        let key2 = key.clone();
        let result = self
            .call(move |conn| {
                let key = key2;
                let tx = conn.transaction()?;
                let id = account_id(&tx, &key)?;
                f(&tx, id)?;
                tx.commit()?;
                // Reloaded from SQLite after the commit, so memory never runs ahead of disk...
                let mut fresh = load_one(conn, &key)?;
                let mut unsaved = health.lock();
                if unsaved.accounts.contains(&key) {
                    // ...except for tokens kept in memory after a failed write, newer than disk.
                    if let Some(old) = read(&cache).get(&key) {
                        fresh.current = old.current.clone();
                        fresh.candidate = old.candidate.clone();
                        fresh.last_rotated_at = old.last_rotated_at;
                    }
                } else if unsaved.error.take().is_some() {
                    tracing::info!("the registry is writable again");
                }
                drop(unsaved);
                let record = Arc::new(fresh);
                write(&cache).insert(key, record.clone());
                Ok(record)
            })
            .await;
        let record = match result {
            Ok(r) => r,
            Err(e @ RegistryError::Sqlite(_)) => {
                self.health.failed(what, &e);
                let Some(keep) = keep else { return Err(e) };
                let mut cache = write(&self.cache);
                let Some(old) = cache.get(key) else {
                    return Err(e);
                };
                let mut record = (**old).clone();
                keep(&mut record);
                let record = Arc::new(record);
                cache.insert(key.clone(), record.clone());
                drop(cache);
                self.health.lock().accounts.insert(key.clone());
                tracing::error!(account = %key, "keeping the account's new token in memory until the registry can store it");
                record
            }
            Err(e) => return Err(e),
        };
        self.changes.send_modify(|n| *n += 1);
        Ok(record)
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
        let cache = self.cache.clone();
        let record = self
            .call(move |conn| {
                let tx = conn.transaction()?;
                check_unique(&tx, &new)?;
                tx.execute(
                    "INSERT INTO accounts (provider, name, email, first_name, last_name, status, status_since, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
                    params![new.key.provider.as_str(), new.key.name, new.email, new.first_name, new.last_name, now.millis()],
                )?;
                let id = tx.last_insert_rowid();
                let access = new.access_token.as_ref();
                tx.execute(
                    "INSERT INTO tokens (account_id, refresh_token, refresh_fingerprint,
                                         candidate_token, candidate_issued_at, candidate_expires_at)
                     VALUES (?1, seal(?2, ?7, ?8, 'refresh_token'), ?3,
                             seal(?4, ?7, ?8, 'candidate_token'), ?5, ?6)",
                    params![
                        id,
                        new.refresh_token.as_ref().map(|s| s.expose().to_string()),
                        new.refresh_token.as_ref().map(Secret::fingerprint),
                        access.map(|t| t.access_token.expose().to_string()),
                        access.map(|t| t.issued_at.millis()),
                        access.and_then(|t| t.expires_at.map(Timestamp::millis)),
                        new.key.provider.as_str(),
                        new.key.name,
                    ],
                )?;
                let detail = match (&new.email, access) {
                    (Some(e), Some(_)) => format!("developer user {e}, with an access token"),
                    (Some(e), None) => format!("developer user {e}"),
                    (None, Some(_)) => "with an access token".to_string(),
                    (None, None) => "awaiting a token".to_string(),
                };
                insert_event(&tx, now, &new.key, "added", Some(&detail))?;
                tx.commit()?;
                let record = Arc::new(load_one(conn, &new.key)?);
                write(&cache).insert(new.key.clone(), record.clone());
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
            let tx = conn.transaction()?;
            let id = account_id(&tx, &key)?;
            tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
            oauth_states::forget_account(&tx, &key)?;
            insert_event(&tx, now, &key, "removed", None)?;
            tx.commit()?;
            write(&cache).remove(&key);
            health.lock().accounts.remove(&key);
            Ok(())
        })
        .await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The stored refresh token, read from SQLite at the moment it is needed.
    pub async fn refresh_token(&self, key: &AccountKey) -> Result<Option<Secret>, RegistryError> {
        let key = key.clone();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let id = account_id(&tx, &key)?;
            let token: Option<String> = tx.query_row(
                "SELECT unseal(refresh_token, ?2, ?3, 'refresh_token') FROM tokens WHERE account_id = ?1",
                params![id, key.provider.as_str(), key.name],
                |r| r.get(0),
            )?;
            Ok(token.map(Secret::new))
        })
        .await
    }

    /// Stores a token the provider just issued, as the candidate, before anything uses it:
    /// whatever happens next, what the provider issued is not lost.
    pub async fn store_issued(
        &self,
        key: &AccountKey,
        token: TokenRecord,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let key2 = key.clone();
        let kept = token.clone();
        let keep: Keep = Box::new(move |r| {
            r.candidate = Some(kept);
            r.last_rotated_at = Some(now);
        });
        self.update_or_keep(
            key,
            "storing a newly issued token",
            move |tx, id| {
                tx.execute(
                    "UPDATE tokens SET candidate_token = seal(?2, ?5, ?6, 'candidate_token'),
                        candidate_issued_at = ?3, candidate_expires_at = ?4
                 WHERE account_id = ?1",
                    params![
                        id,
                        token.access_token.expose(),
                        token.issued_at.millis(),
                        token.expires_at.map(Timestamp::millis),
                        key2.provider.as_str(),
                        key2.name
                    ],
                )?;
                tx.execute(
                    "UPDATE accounts SET last_rotated_at = ?2 WHERE id = ?1",
                    params![id, now.millis()],
                )?;
                let detail = match token.expires_at {
                    Some(exp) => format!("new token, expires {}", exp.to_rfc3339()),
                    None => "new token".to_string(),
                };
                insert_event(tx, now, &key2, "rotated", Some(&detail))
            },
            Some(keep),
        )
        .await
    }

    /// Records a passing probe: the probed candidate (if any) becomes the served token, the
    /// account becomes active, and errors and backoff are cleared.
    pub async fn record_verified(
        &self,
        key: &AccountKey,
        promote_candidate: bool,
        detail: Option<String>,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let key2 = key.clone();
        // If the disk refuses, the proven token is still served (from memory): the provider
        // may already have invalidated the previous one.
        let keep: Keep = Box::new(move |r| {
            if promote_candidate && let Some(c) = r.candidate.take() {
                r.current = Some(c);
            }
            if r.status != Status::Active {
                r.status = Status::Active;
                r.status_since = now;
            }
            r.last_verified_at = Some(now);
            r.last_error = None;
            r.failures = 0;
            r.next_attempt_at = None;
        });
        self.update_or_keep(key, "recording a proven token", move |tx, id| {
            if promote_candidate {
                // Re-sealed, not copied: the column is part of each value's associated data.
                tx.execute(
                    "UPDATE tokens SET
                            access_token = seal(unseal(candidate_token, ?2, ?3, 'candidate_token'), ?2, ?3, 'access_token'),
                            issued_at = candidate_issued_at,
                            expires_at = candidate_expires_at, candidate_token = NULL,
                            candidate_issued_at = NULL, candidate_expires_at = NULL
                     WHERE account_id = ?1 AND candidate_token IS NOT NULL",
                    params![id, key2.provider.as_str(), key2.name],
                )?;
            }
            let old = status_of(tx, id)?;
            tx.execute(
                "UPDATE accounts SET status = 'active',
                        status_since = CASE WHEN status = 'active' THEN status_since ELSE ?2 END,
                        last_verified_at = ?2, last_error = NULL, failures = 0, next_attempt_at = NULL
                 WHERE id = ?1",
                params![id, now.millis()],
            )?;
            insert_event(tx, now, &key2, "checked", detail.as_deref())?;
            if old.is_flagged() {
                insert_event(tx, now, &key2, "cleared", Some(&format!("account reactivated (was {old})")))?;
            }
            Ok(())
        }, Some(keep))
        .await
    }

    /// Changes the status to a flag (or back to pending), recording the provider's answer.
    pub async fn record_flag(
        &self,
        key: &AccountKey,
        flag: Flag,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let key2 = key.clone();
        self.update(key, move |tx, id| {
            let old = status_of(tx, id)?;
            tx.execute(
                "UPDATE accounts SET status = ?2,
                        status_since = CASE WHEN status = ?2 THEN status_since ELSE ?3 END,
                        last_error = ?4, next_attempt_at = ?5
                 WHERE id = ?1",
                params![
                    id,
                    flag.status.as_str(),
                    now.millis(),
                    flag.error,
                    flag.retry_at.map(Timestamp::millis)
                ],
            )?;
            if old != flag.status {
                insert_event(
                    tx,
                    now,
                    &key2,
                    "flagged",
                    Some(&format!("{old} -> {}: {}", flag.status, flag.error)),
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Records a failed attempt that does not change the status (outage, throttling).
    /// `counts` is false for throttling, which is not the account's fault and grows no backoff.
    pub async fn record_failure(
        &self,
        key: &AccountKey,
        error: String,
        retry_at: Timestamp,
        counts: bool,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let key2 = key.clone();
        self.update(key, move |tx, id| {
            let failures: i64 = tx.query_row("SELECT failures FROM accounts WHERE id = ?1", [id], |r| r.get(0))?;
            tx.execute(
                "UPDATE accounts SET last_error = ?2, next_attempt_at = ?3, failures = failures + ?4 WHERE id = ?1",
                params![id, error, retry_at.millis(), i64::from(counts)],
            )?;
            // The first failure of a streak goes into the history; the rest only update last_error.
            if failures == 0 && counts {
                insert_event(tx, now, &key2, "failed", Some(&error))?;
            }
            Ok(())
        })
        .await
    }

    /// Stores a token that needs no refresh (Shippo OAuth) as the candidate of an existing
    /// account, replacing any previous candidate.
    pub async fn replace_candidate(
        &self,
        key: &AccountKey,
        token: TokenRecord,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        self.store_issued(key, token, now).await
    }

    /// An account's history, newest last; `limit` newest entries.
    pub async fn events(
        &self,
        key: &AccountKey,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError> {
        let key = key.clone();
        self.call(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT at, kind, detail FROM events WHERE provider = ?1 AND account = ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![key.provider.as_str(), key.name, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(Event {
                        at: Timestamp::from_millis(r.get(0)?),
                        account: key.to_string(),
                        kind: r.get(1)?,
                        detail: r.get(2)?,
                    })
                },
            )?;
            let mut events = rows.collect::<Result<Vec<_>, _>>()?;
            events.reverse();
            Ok(events)
        })
        .await
    }

    /// Checks the database file (`PRAGMA quick_check`); used by health checks.
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.call(|conn| {
            conn.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn open_blocking(
    state_dir: &Path,
    path: &Path,
    key_file: Option<&Path>,
) -> Result<(Connection, Vec<AccountRecord>), RegistryError> {
    // The daemon checks the folder's permissions before it gets here (keys::prepare_state_dir);
    // the library only makes sure a new one is private.
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err("cannot create the state folder", state_dir))?;
    }
    // Created owner-only before SQLite opens it, so it is never briefly world-readable;
    // SQLite gives the WAL and SHM files the database file's mode.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot create", path))?;
    let mut conn = Connection::open(path)?;
    // A file left open by an older build or a careless restore is closed again.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot restrict permissions of", path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every account is kept in memory already and reads come from there, so SQLite's own
    // page cache helps only the write path: 512 KiB instead of the default 2 MiB.
    conn.pragma_update(None, "cache_size", -512)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode; continuing with {mode}");
    }
    // FULL: a commit is on disk (WAL fsynced) before we serve or acknowledge the token it holds.
    // NORMAL would be faster but could lose the last refreshed token on power loss, and ShipHero
    // may have invalidated the previous one by then.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrations::migrate(&mut conn)?;
    unlock(&mut conn, path, &KeySource::resolve(key_file, state_dir))?;
    let records = load_all(&conn)?;
    Ok((conn, records))
}

/// Loads the key, proves it opens the registry, and registers `seal`/`unseal` with it.
///
/// A registry with nothing sealed yet (new, or written by a build without encryption) gets
/// its plaintext sealed here, in one transaction. A key that does not open the registry is
/// refused, unless a `key rotate` crashed after re-sealing and its new key waits beside the
/// old one: then that key is installed.
fn unlock(conn: &mut Connection, path: &Path, source: &KeySource) -> Result<(), RegistryError> {
    use seal::{KeyCheck, Sealer};
    let sealed = conn
        .query_row("SELECT 1 FROM meta WHERE key = 'key_check'", [], |_| Ok(()))
        .optional()?
        .is_some();
    // Sealed values without a key check: only the key that sealed them may go on.
    let orphaned = !sealed && seal::holds_sealed_values(conn)?;
    let key_check_missing = || RegistryError::KeyCheckMissing {
        db: path.to_path_buf(),
        key: source.path().to_path_buf(),
    };
    let key = match source.load(!sealed && !orphaned) {
        Err(KeyError::Missing { .. }) if orphaned => return Err(key_check_missing()),
        loaded => loaded?,
    };
    let sealer = Sealer::new(&key);
    if orphaned {
        if !seal::restore_key_check(conn, &sealer)? {
            return Err(key_check_missing());
        }
        tracing::warn!(db = %path.display(), "the registry's key check was missing; the key opens every sealed token, so the check was written again");
    }
    match seal::check_key(conn, &sealer)? {
        KeyCheck::Matches => {}
        KeyCheck::Unsealed => {
            let tx = conn.transaction()?;
            let n = seal::reseal_all(&tx, None, &sealer, |_, _| {})?;
            tx.commit()?;
            if n > 0 {
                tracing::info!(
                    accounts = n,
                    "sealed the tokens an older build stored in plaintext"
                );
            }
        }
        KeyCheck::Differs => {
            let pending = source.pending_path();
            let next = KeySource::ConfigFile(pending.clone())
                .load(false)
                .ok()
                .map(|k| Sealer::new(&k))
                .filter(|s| matches!(seal::check_key(conn, s), Ok(KeyCheck::Matches)));
            match next {
                Some(next) if source.replaceable() => {
                    std::fs::rename(&pending, source.path())
                        .map_err(io_err("cannot install the rotated key", source.path()))?;
                    tracing::warn!(key_file = %source.path().display(), "finished an interrupted key rotation: installed the new key");
                    seal::register(conn, &next)?;
                    return Ok(());
                }
                _ => {
                    return Err(RegistryError::WrongKey {
                        db: path.to_path_buf(),
                        key: source.path().to_path_buf(),
                    });
                }
            }
        }
    }
    seal::register(conn, &sealer)?;
    Ok(())
}

/// Writes the records kept in memory after failed writes (tokens, status, times), all in
/// one transaction; on failure they stay in memory for the next attempt.
fn store_unsaved(conn: &mut Connection, cache: &Cache, health: &WriteHealth) {
    let keys: Vec<AccountKey> = health.lock().accounts.iter().cloned().collect();
    if keys.is_empty() {
        return;
    }
    let records: Vec<Arc<AccountRecord>> = {
        let cache = read(cache);
        keys.iter().filter_map(|k| cache.get(k).cloned()).collect()
    };
    let result = (|| -> Result<(), RegistryError> {
        let tx = conn.transaction()?;
        for r in &records {
            let id = account_id(&tx, &r.key)?;
            let (p, n) = (r.key.provider.as_str(), r.key.name.as_str());
            let cur = r.current.as_ref();
            let cand = r.candidate.as_ref();
            tx.execute(
                "UPDATE tokens SET access_token = seal(?2, ?8, ?9, 'access_token'), issued_at = ?3, expires_at = ?4,
                        candidate_token = seal(?5, ?8, ?9, 'candidate_token'), candidate_issued_at = ?6,
                        candidate_expires_at = ?7
                 WHERE account_id = ?1",
                params![
                    id,
                    cur.map(|t| t.access_token.expose()),
                    cur.map(|t| t.issued_at.millis()),
                    cur.and_then(|t| t.expires_at.map(Timestamp::millis)),
                    cand.map(|t| t.access_token.expose()),
                    cand.map(|t| t.issued_at.millis()),
                    cand.and_then(|t| t.expires_at.map(Timestamp::millis)),
                    p,
                    n,
                ],
            )?;
            tx.execute(
                "UPDATE accounts SET status = ?2, status_since = ?3, last_rotated_at = ?4,
                        last_verified_at = ?5, last_error = ?6, failures = ?7, next_attempt_at = ?8
                 WHERE id = ?1",
                params![
                    id,
                    r.status.as_str(),
                    r.status_since.millis(),
                    r.last_rotated_at.map(Timestamp::millis),
                    r.last_verified_at.map(Timestamp::millis),
                    r.last_error,
                    i64::from(r.failures),
                    r.next_attempt_at.map(Timestamp::millis),
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            let mut unsaved = health.lock();
            for k in &keys {
                unsaved.accounts.remove(k);
            }
            if unsaved.accounts.is_empty() {
                unsaved.error = None;
            }
            drop(unsaved);
            tracing::info!(
                accounts = keys.len(),
                "stored the tokens kept in memory; the registry is writable again"
            );
        }
        Err(RegistryError::NotFound(k)) => {
            health.lock().accounts.remove(&k);
        }
        Err(e) => {
            tracing::error!(error = %e, accounts = keys.len(), "still cannot write the registry; the new tokens stay in memory");
            if let Some(c) = &health.errors {
                c.inc();
            }
            health.lock().error = Some(e.to_string());
        }
    }
}

const SELECT_ACCOUNT: &str = "
    SELECT a.provider, a.name, a.email, a.first_name, a.last_name, a.status, a.status_since,
           a.created_at, a.last_rotated_at, a.last_verified_at, a.last_error, a.failures,
           a.next_attempt_at, unseal(t.access_token, a.provider, a.name, 'access_token'),
           t.issued_at, t.expires_at, unseal(t.candidate_token, a.provider, a.name, 'candidate_token'),
           t.candidate_issued_at, t.candidate_expires_at, t.refresh_token IS NOT NULL
    FROM accounts a LEFT JOIN tokens t ON t.account_id = a.id";

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<AccountRecord>> {
    let provider: String = r.get(0)?;
    let name: String = r.get(1)?;
    let status: String = r.get(5)?;
    let (Some(provider), Some(status)) = (Provider::parse(&provider), Status::parse(&status))
    else {
        return Ok(None);
    };
    let token = |tok: Option<String>, issued: Option<i64>, expires: Option<i64>| {
        tok.map(|t| TokenRecord {
            access_token: Secret::new(t),
            issued_at: Timestamp::from_millis(issued.unwrap_or(0)),
            expires_at: expires.map(Timestamp::from_millis),
        })
    };
    let ts = |v: Option<i64>| v.map(Timestamp::from_millis);
    Ok(Some(AccountRecord {
        key: AccountKey { provider, name },
        email: r.get(2)?,
        first_name: r.get(3)?,
        last_name: r.get(4)?,
        status,
        status_since: Timestamp::from_millis(r.get(6)?),
        created_at: Timestamp::from_millis(r.get(7)?),
        last_rotated_at: ts(r.get(8)?),
        last_verified_at: ts(r.get(9)?),
        last_error: r.get(10)?,
        failures: u32::try_from(r.get::<_, i64>(11)?).unwrap_or(u32::MAX),
        next_attempt_at: ts(r.get(12)?),
        current: token(r.get(13)?, r.get(14)?, r.get(15)?),
        candidate: token(r.get(16)?, r.get(17)?, r.get(18)?),
        has_refresh_token: r.get::<_, Option<bool>>(19)?.unwrap_or(false),
    }))
}

fn load_all(conn: &Connection) -> Result<Vec<AccountRecord>, RegistryError> {
    let mut stmt = conn.prepare(SELECT_ACCOUNT)?;
    let rows = stmt.query_map([], row_to_record)?;
    let mut out = Vec::new();
    for row in rows {
        match row? {
            Some(r) => out.push(r),
            None => tracing::warn!("skipping a registry row with an unknown provider or status"),
        }
    }
    Ok(out)
}

fn load_one(conn: &Connection, key: &AccountKey) -> Result<AccountRecord, RegistryError> {
    let sql = format!("{SELECT_ACCOUNT} WHERE a.provider = ?1 AND a.name = ?2");
    conn.query_row(
        &sql,
        params![key.provider.as_str(), key.name],
        row_to_record,
    )
    .optional()?
    .flatten()
    .ok_or_else(|| RegistryError::NotFound(key.clone()))
}

fn account_id(conn: &Connection, key: &AccountKey) -> Result<i64, RegistryError> {
    conn.query_row(
        "SELECT id FROM accounts WHERE provider = ?1 AND name = ?2",
        params![key.provider.as_str(), key.name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| RegistryError::NotFound(key.clone()))
}

fn status_of(conn: &Connection, id: i64) -> Result<Status, RegistryError> {
    let s: String = conn.query_row("SELECT status FROM accounts WHERE id = ?1", [id], |r| {
        r.get(0)
    })?;
    Ok(Status::parse(&s).unwrap_or(Status::Pending))
}

fn key_of(provider: String, name: String) -> AccountKey {
    AccountKey {
        provider: Provider::parse(&provider).unwrap_or(Provider::ShipHero),
        name,
    }
}

fn check_unique(conn: &Connection, new: &NewAccount) -> Result<(), RegistryError> {
    if account_id(conn, &new.key).is_ok() {
        return Err(RegistryError::AccountExists(new.key.clone()));
    }
    if let Some(email) = &new.email {
        let existing: Option<(String, String)> = conn
            .query_row(
                "SELECT provider, name FROM accounts WHERE provider = ?1 AND email = ?2 COLLATE NOCASE",
                params![new.key.provider.as_str(), email],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((p, n)) = existing {
            return Err(RegistryError::EmailTaken {
                email: email.clone(),
                existing: key_of(p, n),
            });
        }
    }
    if let Some(refresh) = &new.refresh_token {
        let existing: Option<(String, String)> = conn
            .query_row(
                "SELECT a.provider, a.name FROM tokens t JOIN accounts a ON a.id = t.account_id
                 WHERE t.refresh_fingerprint = ?1",
                [refresh.fingerprint()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((p, n)) = existing {
            return Err(RegistryError::RefreshTokenTaken {
                existing: key_of(p, n),
            });
        }
    }
    Ok(())
}

fn insert_event(
    conn: &Connection,
    at: Timestamp,
    key: &AccountKey,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), RegistryError> {
    conn.execute(
        "INSERT INTO events (at, provider, account, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![at.millis(), key.provider.as_str(), key.name, kind, detail],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AccountKey {
        AccountKey::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn shiphero(name: &str, email: &str, refresh: &str) -> NewAccount {
        NewAccount {
            key: key(&format!("shiphero/{name}")),
            email: Some(email.into()),
            first_name: None,
            last_name: None,
            refresh_token: Some(Secret::new(refresh)),
            access_token: None,
        }
    }

    #[tokio::test]
    async fn a_promoted_token_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_secs(1_800_000_000);
        {
            let reg = Registry::open(dir.path()).await.unwrap();
            reg.add(shiphero("acme", "a@x.io", "refresh-aaaaaaaa"), t0)
                .await
                .unwrap();
            let tok = TokenRecord {
                access_token: Secret::new("tok-1"),
                issued_at: t0,
                expires_at: Some(t0.plus(std::time::Duration::from_secs(60))),
            };
            reg.store_issued(&key("shiphero/acme"), tok.clone(), t0)
                .await
                .unwrap();
            // Issued but unproven: not served yet.
            assert!(
                reg.account(&key("shiphero/acme"))
                    .unwrap()
                    .current
                    .is_none()
            );
            let r = reg
                .record_verified(&key("shiphero/acme"), true, None, t0)
                .await
                .unwrap();
            assert_eq!(r.current.as_ref(), Some(&tok));
            assert_eq!(r.status, Status::Active);
        }
        let reg = Registry::open(dir.path()).await.unwrap();
        let r = reg.account(&key("shiphero/acme")).unwrap();
        assert_eq!(
            r.current.as_ref().map(|t| t.access_token.expose()),
            Some("tok-1")
        );
        assert_eq!(
            reg.refresh_token(&key("shiphero/acme")).await.unwrap(),
            Some(Secret::new("refresh-aaaaaaaa"))
        );
        let kinds: Vec<_> = reg
            .events(&key("shiphero/acme"), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["added", "rotated", "checked"]);
        let mode = std::fs::metadata(dir.path().join("registry.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let t0 = Timestamp::from_secs(1);
        reg.add(shiphero("acme", "a@x.io", "refresh-aaaaaaaa"), t0)
            .await
            .unwrap();
        assert!(matches!(
            reg.add(shiphero("acme", "b@x.io", "refresh-bbbbbbbb"), t0)
                .await,
            Err(RegistryError::AccountExists(_))
        ));
        assert!(matches!(
            reg.add(shiphero("other", "A@X.io", "refresh-cccccccc"), t0)
                .await,
            Err(RegistryError::EmailTaken { .. })
        ));
        assert!(matches!(
            reg.add(shiphero("other", "c@x.io", "refresh-aaaaaaaa"), t0)
                .await,
            Err(RegistryError::RefreshTokenTaken { .. })
        ));
        reg.remove(&key("shiphero/acme"), t0).await.unwrap();
        assert!(reg.account(&key("shiphero/acme")).is_none());
        reg.add(shiphero("other", "a@x.io", "refresh-aaaaaaaa"), t0)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Registry::open(dir.path()).await.unwrap());
        let conn = Connection::open(dir.path().join("registry.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = Registry::open(dir.path())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("refusing to downgrade"), "{err}");
    }
}
