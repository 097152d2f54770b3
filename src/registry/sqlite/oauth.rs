//! OAuth states on SQLite: issued, spent in one statement, and forgotten with their account.
//! Which providers connect by OAuth is decided above the store ([`crate::registry::Registry::begin_oauth`]).

use rusqlite::{OptionalExtension, params};

use super::rows::{account_id, insert_account, insert_event, load_one};
use crate::clock::Timestamp;
use crate::names::{AccountKey, Status};
use crate::registry::store::OAuthBegin;
use crate::registry::{AccountRecord, RegistryError, stored};

/// Deletes every state issued for `key`, in the caller's transaction. Called when the account
/// is removed: a link made for the old account must not complete for a new one registered
/// under the same name, replacing the operator's token.
pub(super) fn forget_account(
    tx: &rusqlite::Transaction<'_>,
    key: &AccountKey,
) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM oauth_states WHERE provider = ?1 AND account = ?2",
        params![key.provider.as_str(), key.name],
    )
}

/// [`Store::begin_oauth`](crate::registry::Store::begin_oauth) on SQLite.
pub(super) fn begin(
    conn: &mut rusqlite::Connection,
    begin: &OAuthBegin<'_>,
) -> Result<AccountRecord, RegistryError> {
    let OAuthBegin {
        key,
        state_hash: hash,
        expires_at,
        added_detail,
        now,
    } = *begin;
    let tx = conn.transaction()?;
    match account_id(&tx, key) {
        Ok(id) => {
            let status: String =
                tx.query_row("SELECT status FROM accounts WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            if Status::parse(&status) != Some(Status::Pending) {
                return Err(RegistryError::AccountExists(key.clone()));
            }
        }
        Err(RegistryError::NotFound(_)) => {
            let id = insert_account(&tx, key, [None, None, None], now)?;
            tx.execute("INSERT INTO tokens (account_id) VALUES (?1)", [id])?;
            insert_event(&tx, now, key, "added", Some(added_detail))?;
        }
        Err(e) => return Err(e),
    }
    tx.execute(
        "DELETE FROM oauth_states
             WHERE (provider = ?1 AND account = ?2 AND used_at IS NULL) OR expires_at <= ?3",
        params![key.provider.as_str(), key.name, now.millis()],
    )?;
    tx.execute(
        "INSERT INTO oauth_states (state_hash, provider, account, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            hash,
            key.provider.as_str(),
            key.name,
            now.millis(),
            expires_at.millis()
        ],
    )?;
    tx.commit()?;
    load_one(conn, key)
}

/// [`Store::take_oauth_state`](crate::registry::Store::take_oauth_state) on SQLite.
pub(super) fn take(
    conn: &mut rusqlite::Connection,
    hash: &str,
    now: Timestamp,
) -> Result<Option<AccountKey>, RegistryError> {
    let tx = conn.transaction()?;
    let taken: Option<(String, String)> = tx
        .query_row(
            "UPDATE oauth_states SET used_at = ?2
             WHERE state_hash = ?1 AND used_at IS NULL AND expires_at > ?2
             RETURNING provider, account",
            params![hash, now.millis()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let key = taken.map(|(p, n)| stored::key(&p, n)).transpose()?;
    let key = match key {
        Some(key) => {
            let status: Option<String> = tx
                .query_row(
                    "SELECT status FROM accounts WHERE provider = ?1 AND name = ?2",
                    params![key.provider.as_str(), key.name],
                    |r| r.get(0),
                )
                .optional()?;
            // Removed or connected some other way since the link was made: spent, unused.
            (status.as_deref() == Some(Status::Pending.as_str())).then_some(key)
        }
        None => None,
    };
    tx.commit()?;
    Ok(key)
}

/// [`Store::discard_unconnected`](crate::registry::Store::discard_unconnected) on SQLite.
pub(super) fn discard(
    conn: &mut rusqlite::Connection,
    key: &AccountKey,
    detail: &str,
    now: Timestamp,
) -> Result<bool, RegistryError> {
    let tx = conn.transaction()?;
    let unconnected: Option<i64> = tx
        .query_row(
            "SELECT id FROM accounts WHERE provider = ?1 AND name = ?2 AND status = 'pending'
               AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.account_id = accounts.id
                               AND (t.access_token IS NOT NULL OR t.candidate_token IS NOT NULL))",
            params![key.provider.as_str(), key.name],
            |r| r.get(0),
        )
        .optional()?;
    let deleted = match unconnected {
        Some(id) => {
            // Written first, while the row still names the registration.
            insert_event(&tx, now, key, "removed", Some(detail))?;
            tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?
        }
        None => 0,
    };
    tx.commit()?;
    Ok(deleted > 0)
}
