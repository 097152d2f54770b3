//! The registry: the single source of truth for accounts, their tokens and their history.
//!
//! SQLite lives on one owner thread fed by a channel, so no SQLite call ever blocks an async
//! worker. Every write commits first and only then updates an in-memory copy of the accounts,
//! which is what the socket serves from: a token is visible to readers only once it is
//! durably stored, and reading it touches neither SQLite nor the network.

mod migrations;
mod oauth_states;

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

pub use migrations::SCHEMA_VERSION;

use crate::clock::Timestamp;
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
}

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
type Cache = Arc<RwLock<HashMap<AccountKey, Arc<AccountRecord>>>>;

/// A handle to the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    jobs: std::sync::mpsc::Sender<Job>,
    cache: Cache,
    changes: watch::Sender<u64>,
    path: PathBuf,
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
    /// Opens (creating if needed) `<state_dir>/registry.db`, migrates it and loads the accounts.
    pub async fn open(state_dir: &Path) -> Result<Registry, RegistryError> {
        let state_dir = state_dir.to_path_buf();
        let path = state_dir.join("registry.db");
        let (conn, records) = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_blocking(&state_dir, &path))
                .await
                .map_err(|_| RegistryError::Closed)??
        };
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("registry".into())
            .spawn(move || {
                let mut conn = conn;
                // Ends when every Registry handle is dropped.
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|source| RegistryError::Io {
                what: "cannot start the registry thread for",
                path: path.clone(),
                source,
            })?;
        let cache: Cache = Arc::new(RwLock::new(
            records
                .into_iter()
                .map(|r| (r.key.clone(), Arc::new(r)))
                .collect(),
        ));
        let (changes, _) = watch::channel(0);
        Ok(Registry {
            jobs,
            cache,
            changes,
            path,
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
        let cache = self.cache.clone();
        let key = key.clone();
        let record = self
            .call(move |conn| {
                let tx = conn.transaction()?;
                let id = account_id(&tx, &key)?;
                f(&tx, id)?;
                tx.commit()?;
                // Reloaded from SQLite after the commit, so memory never runs ahead of disk.
                let record = Arc::new(load_one(conn, &key)?);
                write(&cache).insert(key, record.clone());
                Ok(record)
            })
            .await?;
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
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        id,
                        new.refresh_token.as_ref().map(|s| s.expose().to_string()),
                        new.refresh_token.as_ref().map(Secret::fingerprint),
                        access.map(|t| t.access_token.expose().to_string()),
                        access.map(|t| t.issued_at.millis()),
                        access.and_then(|t| t.expires_at.map(Timestamp::millis)),
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
        let key = key.clone();
        self.call(move |conn| {
            let tx = conn.transaction()?;
            let id = account_id(&tx, &key)?;
            tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
            insert_event(&tx, now, &key, "removed", None)?;
            tx.commit()?;
            write(&cache).remove(&key);
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
                "SELECT refresh_token FROM tokens WHERE account_id = ?1",
                [id],
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
        self.update(key, move |tx, id| {
            tx.execute(
                "UPDATE tokens SET candidate_token = ?2, candidate_issued_at = ?3, candidate_expires_at = ?4
                 WHERE account_id = ?1",
                params![id, token.access_token.expose(), token.issued_at.millis(), token.expires_at.map(Timestamp::millis)],
            )?;
            tx.execute("UPDATE accounts SET last_rotated_at = ?2 WHERE id = ?1", params![id, now.millis()])?;
            let detail = match token.expires_at {
                Some(exp) => format!("new token, expires {}", exp.to_rfc3339()),
                None => "new token".to_string(),
            };
            insert_event(tx, now, &key2, "rotated", Some(&detail))
        })
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
        self.update(key, move |tx, id| {
            if promote_candidate {
                tx.execute(
                    "UPDATE tokens SET access_token = candidate_token, issued_at = candidate_issued_at,
                            expires_at = candidate_expires_at, candidate_token = NULL,
                            candidate_issued_at = NULL, candidate_expires_at = NULL
                     WHERE account_id = ?1 AND candidate_token IS NOT NULL",
                    [id],
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
        })
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
) -> Result<(Connection, Vec<AccountRecord>), RegistryError> {
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err("cannot create the state folder", state_dir))?;
    }
    let mut conn = Connection::open(path)?;
    // The tokens are secrets: the file (and WAL/SHM, created with the same mode) is owner-only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot restrict permissions of", path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
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
    let records = load_all(&conn)?;
    Ok((conn, records))
}

const SELECT_ACCOUNT: &str = "
    SELECT a.provider, a.name, a.email, a.first_name, a.last_name, a.status, a.status_since,
           a.created_at, a.last_rotated_at, a.last_verified_at, a.last_error, a.failures,
           a.next_attempt_at, t.access_token, t.issued_at, t.expires_at, t.candidate_token,
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
