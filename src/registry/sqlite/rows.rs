//! Rows to records and back on SQLite: the `accounts` row, its `tokens` row (sealed by the
//! SQL functions), the history, and the duplicate checks of a registration.

use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::Timestamp;
use crate::names::AccountKey;
use crate::registry::{AccountRecord, Doubt, NewAccount, RegistryError, TokenRecord, stored};
use crate::secret::Secret;

const SELECT_ACCOUNT: &str = "
    SELECT a.provider, a.name, a.email, a.first_name, a.last_name, a.status, a.status_since,
           a.created_at, a.last_rotated_at, a.last_verified_at, a.last_error, a.failures,
           a.next_attempt_at, unseal(t.access_token, a.provider, a.name, 'access_token'),
           t.issued_at, t.expires_at, unseal(t.candidate_token, a.provider, a.name, 'candidate_token'),
           t.candidate_issued_at, t.candidate_expires_at, t.refresh_token IS NOT NULL,
           a.generation, a.revision, a.upstream_id, a.token_doubt_since, a.token_doubt_reason,
           a.token_doubt_signature, a.renew_doubt_since, a.renew_doubt_reason
    FROM accounts a LEFT JOIN tokens t ON t.account_id = a.id";

/// A stored row as a record; a provider or status this build does not know is
/// [`RegistryError::UnknownRow`] ([`stored`]).
fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AccountRecord, RegistryError>> {
    let provider: String = r.get(0)?;
    let status: String = r.get(5)?;
    let (key, status) = match stored::account(&provider, r.get(1)?, &status) {
        Ok(known) => known,
        Err(e) => return Ok(Err(e)),
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
        key,
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
        candidate: token(r.get(16)?, r.get(17)?, r.get(18)?).map(Box::new),
        has_refresh_token: r.get::<_, Option<bool>>(19)?.unwrap_or(false),
        generation: r.get(20)?,
        revision: r.get(21)?,
        upstream_id: r.get(22)?,
        token_doubt: doubt(r.get(23)?, r.get(24)?, r.get(25)?).map(Box::new),
        renew_doubt: doubt(r.get(26)?, r.get(27)?, None).map(Box::new),
        saved: None,
    }))
}

/// Writes every mutable column of `r`: the account row (conditional on its registration and,
/// with `expect`, on the stored revision) and its tokens, sealed.
pub(crate) fn write_record(
    tx: &rusqlite::Transaction<'_>,
    r: &AccountRecord,
    expect: Option<i64>,
) -> Result<(), RegistryError> {
    let (p, n) = (r.key.provider.as_str(), r.key.name.as_ref());
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
    rows.map(|row| row?).collect()
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
    .ok_or_else(|| RegistryError::NotFound(key.clone()))?
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
                existing: stored::key(&p, n)?,
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
                existing: stored::key(&p, n)?,
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
