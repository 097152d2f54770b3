//! Rows to records and back on PostgreSQL: one `accounts` row per account, its tokens sealed
//! in Rust (the same sealing and associated data as SQLite's), history and notices.

use postgres::{GenericClient, Row};

use super::CHANNEL;
use crate::clock::Timestamp;
use crate::names::AccountKey;
use crate::registry::seal::{Keyring, Opener as _};
use crate::registry::{AccountRecord, Doubt, NewAccount, RegistryError, TokenRecord, stored};
use crate::secret::Secret;

pub(super) const SELECT_ACCOUNT: &str = "
    SELECT provider, name, email, first_name, last_name, status, status_since, created_at,
           last_rotated_at, last_verified_at, last_error, failures, next_attempt_at,
           access_token, issued_at, expires_at, candidate_token, candidate_issued_at,
           candidate_expires_at, refresh_token IS NOT NULL, generation, revision, upstream_id,
           token_doubt_since, token_doubt_reason, token_doubt_signature, renew_doubt_since,
           renew_doubt_reason
    FROM accounts";

pub(super) fn row_to_record(row: &Row, sealer: &Keyring) -> Result<AccountRecord, RegistryError> {
    let provider: String = row.get(0);
    let name: String = row.get(1);
    let (key, status) = stored::account(&provider, name.clone(), row.get(5))?;
    let token = |col: usize, column: &str| -> Result<Option<TokenRecord>, RegistryError> {
        let stored = row.get::<_, Option<&str>>(col);
        let Some(plain) = sealer.open_column(&provider, &name, column, stored)? else {
            return Ok(None);
        };
        Ok(Some(TokenRecord {
            access_token: Secret::new(plain),
            issued_at: Timestamp::from_millis(row.get::<_, Option<i64>>(col + 1).unwrap_or(0)),
            expires_at: row
                .get::<_, Option<i64>>(col + 2)
                .map(Timestamp::from_millis),
        }))
    };
    let ts = |col: usize| row.get::<_, Option<i64>>(col).map(Timestamp::from_millis);
    let doubt = |col: usize, signature: Option<String>| {
        ts(col).map(|since| Doubt {
            since,
            reason: row.get::<_, Option<String>>(col + 1).unwrap_or_default(),
            signature,
        })
    };
    Ok(AccountRecord {
        email: row.get(2),
        first_name: row.get(3),
        last_name: row.get(4),
        status,
        status_since: Timestamp::from_millis(row.get(6)),
        created_at: Timestamp::from_millis(row.get(7)),
        last_rotated_at: ts(8),
        last_verified_at: ts(9),
        last_error: row.get(10),
        failures: u32::try_from(row.get::<_, i64>(11)).unwrap_or(u32::MAX),
        next_attempt_at: ts(12),
        current: token(13, "access_token")?,
        candidate: token(16, "candidate_token")?.map(Box::new),
        has_refresh_token: row.get(19),
        generation: row.get(20),
        revision: row.get(21),
        upstream_id: row.get(22),
        token_doubt: doubt(23, row.get(25)).map(Box::new),
        renew_doubt: doubt(26, None).map(Box::new),
        saved: None,
        key,
    })
}

/// Seals `value` for its column, or NULL.
pub(super) fn sealed(
    sealer: &Keyring,
    key: &AccountKey,
    column: &str,
    value: Option<&Secret>,
) -> Result<Option<String>, RegistryError> {
    let value = value.map(Secret::expose);
    Ok(sealer
        .sealer()
        .seal_column(key.provider.as_str(), key.name.as_ref(), column, value)?)
}

/// Tells every daemon (this one too) that `record` changed, at commit.
pub(super) fn notify(
    c: &mut impl GenericClient,
    key: &AccountKey,
    generation: i64,
    revision: i64,
) -> Result<(), RegistryError> {
    let payload = format!("{generation} {revision} {key}");
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
    Ok(())
}

pub(super) fn insert_event(
    c: &mut impl GenericClient,
    host: &str,
    key: &AccountKey,
    generation: Option<i64>,
    at: Timestamp,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), RegistryError> {
    c.execute(
        "INSERT INTO events (at, provider, account, generation, kind, detail, host)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &at.millis(),
            &key.provider.as_str(),
            &key.name.as_ref(),
            &generation,
            &kind,
            &detail,
            &host,
        ],
    )?;
    Ok(())
}

/// Writes every mutable column of `r`, conditional on its registration, on `expected` (the
/// stored revision; without it, on no newer revision being stored: a record kept in memory
/// while the database was away never lands over another daemon's later work) and on `fence`
/// (the lease this daemon holds on it).
pub(super) fn write_record(
    c: &mut impl GenericClient,
    sealer: &Keyring,
    r: &AccountRecord,
    expected: Option<i64>,
    fence: Option<i64>,
) -> Result<(), RegistryError> {
    let millis = |t: Option<Timestamp>| t.map(Timestamp::millis);
    let (cur, cand) = (r.current.as_ref(), r.candidate.as_ref());
    let written = c.execute(
        "UPDATE accounts SET status = $4, status_since = $5, last_rotated_at = $6,
                last_verified_at = $7, last_error = $8, failures = $9, next_attempt_at = $10,
                upstream_id = $11, token_doubt_since = $12, token_doubt_reason = $13,
                token_doubt_signature = $14, renew_doubt_since = $15, renew_doubt_reason = $16,
                revision = $17, access_token = $18, issued_at = $19, expires_at = $20,
                candidate_token = $21, candidate_issued_at = $22, candidate_expires_at = $23
         WHERE provider = $1 AND name = $2 AND generation = $3
           AND (revision = $24 OR ($24::bigint IS NULL AND revision <= $17))
           AND ($25::bigint IS NULL OR lease_fence = $25)",
        &[
            &r.key.provider.as_str(),
            &r.key.name.as_ref(),
            &r.generation,
            &r.status.as_str(),
            &r.status_since.millis(),
            &millis(r.last_rotated_at),
            &millis(r.last_verified_at),
            &r.last_error,
            &i64::from(r.failures),
            &millis(r.next_attempt_at),
            &r.upstream_id,
            &millis(r.token_doubt.as_ref().map(|d| d.since)),
            &r.token_doubt.as_ref().map(|d| d.reason.as_str()),
            &r.token_doubt.as_ref().and_then(|d| d.signature.as_deref()),
            &millis(r.renew_doubt.as_ref().map(|d| d.since)),
            &r.renew_doubt.as_ref().map(|d| d.reason.as_str()),
            &r.revision,
            &sealed(sealer, &r.key, "access_token", cur.map(|t| &t.access_token))?,
            &cur.map(|t| t.issued_at.millis()),
            &cur.and_then(|t| t.expires_at.map(Timestamp::millis)),
            &sealed(
                sealer,
                &r.key,
                "candidate_token",
                cand.map(|t| &t.access_token),
            )?,
            &cand.map(|t| t.issued_at.millis()),
            &cand.and_then(|t| t.expires_at.map(Timestamp::millis)),
            &expected,
            &fence,
        ],
    )?;
    if written == 1 {
        return Ok(());
    }
    // Why not: another daemon took the lease over, or the record moved on.
    let fence_now: Option<i64> = c
        .query_opt(
            "SELECT lease_fence FROM accounts WHERE provider = $1 AND name = $2 AND generation = $3",
            &[&r.key.provider.as_str(), &r.key.name.as_ref(), &r.generation],
        )?
        .map(|row| row.get(0));
    match (fence, fence_now) {
        (Some(mine), Some(now)) if mine != now => Err(RegistryError::LeaseLost(r.key.clone())),
        _ => Err(RegistryError::Stale(r.key.clone())),
    }
}

pub(super) fn load_one(
    c: &mut impl GenericClient,
    sealer: &Keyring,
    key: &AccountKey,
) -> Result<AccountRecord, RegistryError> {
    let sql = format!("{SELECT_ACCOUNT} WHERE provider = $1 AND name = $2");
    match c.query_opt(&sql, &[&key.provider.as_str(), &key.name.as_ref()])? {
        Some(row) => row_to_record(&row, sealer),
        None => Err(RegistryError::NotFound(key.clone())),
    }
}

/// The duplicate checks of a registration, with the errors the SQLite backend gives.
pub(super) fn check_unique(
    c: &mut impl GenericClient,
    new: &NewAccount,
) -> Result<(), RegistryError> {
    let exists = c.query_opt(
        "SELECT 1 FROM accounts WHERE provider = $1 AND name = $2",
        &[&new.key.provider.as_str(), &new.key.name.as_ref()],
    )?;
    if exists.is_some() {
        return Err(RegistryError::AccountExists(new.key.clone()));
    }
    if let Some(email) = &new.email {
        let row = c.query_opt(
            "SELECT provider, name FROM accounts WHERE provider = $1 AND lower(email) = lower($2)",
            &[&new.key.provider.as_str(), email],
        )?;
        if let Some(row) = row {
            return Err(RegistryError::EmailTaken {
                email: email.clone(),
                existing: stored::key(row.get::<_, &str>(0), row.get(1))?,
            });
        }
    }
    if let Some(refresh) = &new.refresh_token {
        let row = c.query_opt(
            "SELECT provider, name FROM accounts WHERE refresh_fingerprint = $1",
            &[&refresh.fingerprint()],
        )?;
        if let Some(row) = row {
            return Err(RegistryError::RefreshTokenTaken {
                existing: stored::key(row.get::<_, &str>(0), row.get(1))?,
            });
        }
    }
    Ok(())
}
