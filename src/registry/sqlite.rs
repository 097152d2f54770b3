//! The SQLite backend: the schema's SQL, sealed token columns, and [`Store`] for a
//! `rusqlite::Connection` owned by the registry thread.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::store::{Dump, DumpedEvent, Save, Store};
use super::{
    AccountRecord, AuditEntry, AuditQuery, Doubt, Event, NewAccount, RegistryError, TokenRecord,
    check_token_times,
};
use super::{migrations, seal};
use crate::clock::Timestamp;
use crate::keys::{KeyError, KeySource};
use crate::names::{AccountKey, Provider, Status};
use crate::secret::Secret;

impl Store for Connection {
    fn load_all(&mut self) -> Result<Vec<AccountRecord>, RegistryError> {
        load_all(self)
    }

    fn load(&mut self, key: &AccountKey) -> Result<AccountRecord, RegistryError> {
        load_one(self, key)
    }

    fn save_all(&mut self, saves: &[Save<'_>]) -> Result<(), RegistryError> {
        let tx = self.transaction()?;
        for save in saves {
            write_record(&tx, save.record, save.expected)?;
            for note in save.notes {
                insert_event(
                    &tx,
                    save.at,
                    &save.record.key,
                    note.kind.as_str(),
                    note.detail.as_deref(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn insert(&mut self, new: &NewAccount, now: Timestamp) -> Result<AccountRecord, RegistryError> {
        if let Some(t) = &new.access_token {
            check_token_times(t)?;
        }
        let tx = self.transaction()?;
        check_unique(&tx, new)?;
        let id = insert_account(
            &tx,
            &new.key,
            [
                new.email.as_deref(),
                new.first_name.as_deref(),
                new.last_name.as_deref(),
            ],
            now,
        )?;
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
        let detail = new.added_detail();
        insert_event(&tx, now, &new.key, "added", Some(&detail))?;
        tx.commit()?;
        load_one(self, &new.key)
    }

    fn delete(&mut self, key: &AccountKey, now: Timestamp) -> Result<(), RegistryError> {
        let tx = self.transaction()?;
        let id = account_id(&tx, key)?;
        // Written first, while the row still names the registration it belongs to.
        insert_event(&tx, now, key, "removed", None)?;
        tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
        // A link issued for this account must not complete for one registered again later.
        super::oauth_states::forget_account(&tx, key)?;
        tx.commit()?;
        Ok(())
    }

    fn refresh_token(&mut self, key: &AccountKey) -> Result<Option<Secret>, RegistryError> {
        let id = account_id(self, key)?;
        let token: Option<String> = self.query_row(
            "SELECT unseal(refresh_token, ?2, ?3, 'refresh_token') FROM tokens WHERE account_id = ?1",
            params![id, key.provider.as_str(), key.name],
            |r| r.get(0),
        )?;
        Ok(token.map(Secret::new))
    }

    fn events(
        &mut self,
        key: &AccountKey,
        generation: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError> {
        let mut stmt = self.prepare(
            "SELECT at, kind, detail FROM events
             WHERE provider = ?1 AND account = ?2 AND (?4 IS NULL OR generation = ?4)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                key.provider.as_str(),
                key.name,
                i64::try_from(limit).unwrap_or(i64::MAX),
                generation
            ],
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
    }

    fn begin_oauth(
        &mut self,
        key: &AccountKey,
        state_hash: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<AccountRecord, RegistryError> {
        super::oauth_states::begin(self, key, state_hash, expires_at, now)
    }

    fn take_oauth_state(
        &mut self,
        state_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AccountKey>, RegistryError> {
        super::oauth_states::take(self, state_hash, now)
    }

    fn discard_unconnected(
        &mut self,
        key: &AccountKey,
        detail: &str,
        now: Timestamp,
    ) -> Result<bool, RegistryError> {
        super::oauth_states::discard(self, key, detail, now)
    }

    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), RegistryError> {
        super::audit::append(self, entries)
    }

    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RegistryError> {
        super::audit::query(self, query)
    }

    fn prune_audit(&mut self, before: Timestamp) -> Result<usize, RegistryError> {
        super::audit::prune(self, before)
    }

    fn ping(&mut self) -> Result<(), RegistryError> {
        self.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    fn all_events(&mut self) -> Result<Vec<DumpedEvent>, RegistryError> {
        let mut stmt = self.prepare(
            "SELECT at, provider, account, generation, kind, detail FROM events ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (at, provider, name, generation, kind, detail) = row?;
            let Some(provider) = Provider::parse(&provider) else {
                return Err(RegistryError::UnknownRow(format!(
                    "history of {provider}/{name}"
                )));
            };
            let key = AccountKey { provider, name };
            events.push(DumpedEvent {
                event: Event {
                    at: Timestamp::from_millis(at),
                    account: key.to_string(),
                    kind,
                    detail,
                },
                key,
                generation,
            });
        }
        Ok(events)
    }

    fn import(&mut self, dump: &Dump) -> Result<(), RegistryError> {
        let tx = self.transaction()?;
        let held: i64 = tx.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
        if held > 0 {
            return Err(RegistryError::NotEmpty(format!("{held} account(s)")));
        }
        for (r, refresh) in &dump.accounts {
            let (p, n) = (r.key.provider.as_str(), r.key.name.as_str());
            tx.execute(
                "INSERT INTO accounts (provider, name, email, first_name, last_name, status,
                                       status_since, created_at, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    p,
                    n,
                    r.email,
                    r.first_name,
                    r.last_name,
                    r.status.as_str(),
                    r.status_since.millis(),
                    r.created_at.millis(),
                    r.generation
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO tokens (account_id, refresh_token, refresh_fingerprint)
                 VALUES (?1, seal(?2, ?4, ?5, 'refresh_token'), ?3)",
                params![
                    id,
                    refresh.as_ref().map(|s| s.expose().to_string()),
                    refresh.as_ref().map(Secret::fingerprint),
                    p,
                    n
                ],
            )?;
            write_record(&tx, r, None)?;
        }
        let newest = dump
            .accounts
            .iter()
            .map(|(r, _)| r.generation)
            .max()
            .unwrap_or(0);
        tx.execute(
            "UPDATE sequences SET value = max(value, ?1) WHERE name = 'generation'",
            [newest],
        )?;
        for e in &dump.events {
            tx.execute(
                "INSERT INTO events (at, provider, account, kind, detail, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.event.at.millis(),
                    e.key.provider.as_str(),
                    e.key.name,
                    e.event.kind,
                    e.event.detail,
                    e.generation
                ],
            )?;
        }
        tx.commit()?;
        super::audit::append(self, &dump.audit)
    }
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn open_blocking(
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

const SELECT_ACCOUNT: &str = "
    SELECT a.provider, a.name, a.email, a.first_name, a.last_name, a.status, a.status_since,
           a.created_at, a.last_rotated_at, a.last_verified_at, a.last_error, a.failures,
           a.next_attempt_at, unseal(t.access_token, a.provider, a.name, 'access_token'),
           t.issued_at, t.expires_at, unseal(t.candidate_token, a.provider, a.name, 'candidate_token'),
           t.candidate_issued_at, t.candidate_expires_at, t.refresh_token IS NOT NULL,
           a.generation, a.revision, a.upstream_id, a.token_doubt_since, a.token_doubt_reason,
           a.token_doubt_signature, a.renew_doubt_since, a.renew_doubt_reason
    FROM accounts a LEFT JOIN tokens t ON t.account_id = a.id";

/// A row the registry cannot read: a provider or status this build does not know.
#[derive(Debug)]
struct UnknownRow {
    provider: String,
    name: String,
    status: String,
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AccountRecord, UnknownRow>> {
    let provider: String = r.get(0)?;
    let name: String = r.get(1)?;
    let status: String = r.get(5)?;
    let (Some(provider), Some(status)) = (Provider::parse(&provider), Status::parse(&status))
    else {
        return Ok(Err(UnknownRow {
            provider,
            name,
            status,
        }));
    };
    let token = |tok: Option<String>, issued: Option<i64>, expires: Option<i64>| {
        tok.map(|t| TokenRecord {
            access_token: Secret::new(t),
            issued_at: Timestamp::from_millis(issued.unwrap_or(0)),
            expires_at: expires.map(Timestamp::from_millis),
        })
    };
    let ts = |v: Option<i64>| v.map(Timestamp::from_millis);
    let doubt = |since: Option<i64>, reason: Option<String>, signature: Option<String>| {
        since.map(|s| Doubt {
            since: Timestamp::from_millis(s),
            reason: reason.unwrap_or_default(),
            signature,
        })
    };
    Ok(Ok(AccountRecord {
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
        generation: r.get(20)?,
        revision: r.get(21)?,
        upstream_id: r.get(22)?,
        token_doubt: doubt(r.get(23)?, r.get(24)?, r.get(25)?),
        renew_doubt: doubt(r.get(26)?, r.get(27)?, None),
    }))
}

/// Writes every mutable column of `r`: the account row (conditional on its registration and,
/// with `expect`, on the stored revision) and its tokens, sealed.
pub(crate) fn write_record(
    tx: &rusqlite::Transaction<'_>,
    r: &AccountRecord,
    expect: Option<i64>,
) -> Result<(), RegistryError> {
    let (p, n) = (r.key.provider.as_str(), r.key.name.as_str());
    let millis = |t: Option<Timestamp>| t.map(Timestamp::millis);
    let id: Option<i64> = tx
        .query_row(
            "UPDATE accounts SET status = ?4, status_since = ?5, last_rotated_at = ?6,
                    last_verified_at = ?7, last_error = ?8, failures = ?9, next_attempt_at = ?10,
                    upstream_id = ?11, token_doubt_since = ?12, token_doubt_reason = ?13,
                    token_doubt_signature = ?14, renew_doubt_since = ?15, renew_doubt_reason = ?16,
                    revision = ?17
             WHERE provider = ?1 AND name = ?2 AND generation = ?3
               AND (?18 IS NULL OR revision = ?18)
             RETURNING id",
            params![
                p,
                n,
                r.generation,
                r.status.as_str(),
                r.status_since.millis(),
                millis(r.last_rotated_at),
                millis(r.last_verified_at),
                r.last_error,
                i64::from(r.failures),
                millis(r.next_attempt_at),
                r.upstream_id,
                millis(r.token_doubt.as_ref().map(|d| d.since)),
                r.token_doubt.as_ref().map(|d| d.reason.as_str()),
                r.token_doubt.as_ref().and_then(|d| d.signature.as_deref()),
                millis(r.renew_doubt.as_ref().map(|d| d.since)),
                r.renew_doubt.as_ref().map(|d| d.reason.as_str()),
                r.revision,
                expect,
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(id) = id else {
        return Err(RegistryError::Stale(r.key.clone()));
    };
    let (cur, cand) = (r.current.as_ref(), r.candidate.as_ref());
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
    Ok(())
}

pub(crate) fn load_all(conn: &Connection) -> Result<Vec<AccountRecord>, RegistryError> {
    let mut stmt = conn.prepare(SELECT_ACCOUNT)?;
    let rows = stmt.query_map([], row_to_record)?;
    let mut out = Vec::new();
    for row in rows {
        match row? {
            Ok(r) => out.push(r),
            // Skipping it would make the account silently disappear from the socket.
            Err(u) => {
                return Err(RegistryError::UnknownRow(format!(
                    "{}/{} (status {})",
                    u.provider, u.name, u.status
                )));
            }
        }
    }
    Ok(out)
}

pub(crate) fn load_one(
    conn: &Connection,
    key: &AccountKey,
) -> Result<AccountRecord, RegistryError> {
    let sql = format!("{SELECT_ACCOUNT} WHERE a.provider = ?1 AND a.name = ?2");
    conn.query_row(
        &sql,
        params![key.provider.as_str(), key.name],
        row_to_record,
    )
    .optional()?
    .and_then(Result::ok)
    .ok_or_else(|| RegistryError::NotFound(key.clone()))
}

pub(crate) fn account_id(conn: &Connection, key: &AccountKey) -> Result<i64, RegistryError> {
    conn.query_row(
        "SELECT id FROM accounts WHERE provider = ?1 AND name = ?2",
        params![key.provider.as_str(), key.name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| RegistryError::NotFound(key.clone()))
}

fn key_of(provider: String, name: String) -> AccountKey {
    AccountKey {
        provider: Provider::parse(&provider).unwrap_or(Provider::ShipHero),
        name,
    }
}

pub(crate) fn check_unique(conn: &Connection, new: &NewAccount) -> Result<(), RegistryError> {
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

/// Appends to the history of the account's current registration.
pub(crate) fn insert_event(
    conn: &Connection,
    at: Timestamp,
    key: &AccountKey,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), RegistryError> {
    conn.execute(
        "INSERT INTO events (at, provider, account, kind, detail, generation)
         VALUES (?1, ?2, ?3, ?4, ?5,
                 (SELECT generation FROM accounts WHERE provider = ?2 AND name = ?3))",
        params![at.millis(), key.provider.as_str(), key.name, kind, detail],
    )?;
    Ok(())
}

/// Inserts a `pending` account row with a generation never used before and returns its row
/// id; the caller inserts its tokens row.
pub(crate) fn insert_account(
    tx: &rusqlite::Transaction<'_>,
    key: &AccountKey,
    [email, first_name, last_name]: [Option<&str>; 3],
    now: Timestamp,
) -> Result<i64, RegistryError> {
    let generation: i64 = tx.query_row(
        "UPDATE sequences SET value = value + 1 WHERE name = 'generation' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO accounts (provider, name, email, first_name, last_name, status, status_since,
                               created_at, generation)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?7)",
        params![
            key.provider.as_str(),
            key.name,
            email,
            first_name,
            last_name,
            now.millis(),
            generation
        ],
    )?;
    Ok(tx.last_insert_rowid())
}
