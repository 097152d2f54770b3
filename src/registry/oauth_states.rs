//! Shippo OAuth states: issued by `shippo connect`, spent by the callback.
//!
//! A state is a bearer secret for one flow, so only its SHA-256 is stored, and it is spent by a
//! single `UPDATE` in one transaction before anything else happens: two callbacks racing with
//! the same state cannot both win, and a spent, forged or expired state never reaches Shippo.

use std::sync::Arc;

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{
    AccountRecord, EventKind, Note, Registry, RegistryError, account_id, insert_account,
    insert_event, load_one, write,
};
use crate::clock::Timestamp;
use crate::names::{AccountKey, Provider, Status};
use crate::secret::Secret;

/// The stored form of a state: the hex SHA-256 of its value.
pub(super) fn state_hash(state: &Secret) -> String {
    Sha256::digest(state.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

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

impl Registry {
    /// Starts an OAuth flow for a Shippo account: creates the account as `pending` (no token)
    /// unless it already waits for one, and stores `state` until `expires_at`.
    ///
    /// An account that exists in any other status is refused with `AccountExists`: connecting
    /// must never replace a working account's token behind the operator's back. A new state
    /// supersedes the account's earlier unused ones, so only the latest link works, and
    /// expired states are pruned here.
    pub async fn begin_oauth(
        &self,
        key: &AccountKey,
        state: &Secret,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let cache = self.cache.clone();
        let key = key.clone();
        let hash = state_hash(state);
        let record = self
            .call(move |store| {
                let record = Arc::new(store.begin_oauth(&key, &hash, expires_at, now)?);
                write(&cache).insert(key, record.clone());
                Ok(record)
            })
            .await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(record)
    }

    /// Spends a state: returns the account it was issued for, or `None` when the state is
    /// unknown, already used, expired, or its account is gone or no longer pending.
    ///
    /// The state is marked used in the same statement that checks it, and the transaction
    /// commits before the caller can talk to Shippo, so every state is good for one attempt.
    pub async fn take_oauth_state(
        &self,
        state: &Secret,
        now: Timestamp,
    ) -> Result<Option<AccountKey>, RegistryError> {
        let hash = state_hash(state);
        self.call(move |store| store.take_oauth_state(&hash, now))
            .await
    }

    /// Removes an account a connect flow created, if it is still `pending` and holds no token
    /// at all; returns whether it did. Used when the user declines, so a refusal leaves no
    /// empty account behind. An account registered with a token is never touched.
    pub async fn discard_unconnected(
        &self,
        key: &AccountKey,
        detail: &str,
        now: Timestamp,
    ) -> Result<bool, RegistryError> {
        let cache = self.cache.clone();
        let key = key.clone();
        let detail = detail.to_string();
        let removed = self
            .call(move |store| {
                let removed = store.discard_unconnected(&key, &detail, now)?;
                if removed {
                    write(&cache).remove(&key);
                }
                Ok(removed)
            })
            .await?;
        if removed {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(removed)
    }

    /// Records why a connect flow failed in the account's `last_error` and history, so
    /// `accounts list` explains a pending account; nothing else changes.
    pub async fn record_connect_failure(
        &self,
        key: &AccountKey,
        message: String,
        now: Timestamp,
    ) -> Result<Arc<AccountRecord>, RegistryError> {
        let mut record = self
            .account(key)
            .map(|r| (*r).clone())
            .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
        record.last_error = Some(message.clone());
        let note = Note {
            kind: EventKind::Failed,
            detail: Some(message),
        };
        self.save(record, vec![note], now).await
    }
}

/// [`Store::begin_oauth`](super::Store::begin_oauth) on SQLite.
pub(super) fn begin(
    conn: &mut rusqlite::Connection,
    key: &AccountKey,
    hash: &str,
    expires_at: Timestamp,
    now: Timestamp,
) -> Result<AccountRecord, RegistryError> {
    let key = key.clone();
    let tx = conn.transaction()?;
    match account_id(&tx, &key) {
        Ok(id) => {
            let status: String =
                tx.query_row("SELECT status FROM accounts WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
            if key.provider != Provider::Shippo || Status::parse(&status) != Some(Status::Pending) {
                return Err(RegistryError::AccountExists(key.clone()));
            }
        }
        Err(RegistryError::NotFound(_)) => {
            let id = insert_account(&tx, &key, [None, None, None], now)?;
            tx.execute("INSERT INTO tokens (account_id) VALUES (?1)", [id])?;
            insert_event(
                &tx,
                now,
                &key,
                "added",
                Some("awaiting a Shippo OAuth connection"),
            )?;
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
    load_one(conn, &key)
}

/// [`Store::take_oauth_state`](super::Store::take_oauth_state) on SQLite.
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
    let key = taken
        .and_then(|(p, n)| Provider::parse(&p).map(|provider| AccountKey { provider, name: n }));
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

/// [`Store::discard_unconnected`](super::Store::discard_unconnected) on SQLite.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::{NewAccount, TokenRecord};

    fn key(s: &str) -> AccountKey {
        AccountKey::parse(s).unwrap()
    }

    const MIN30: Duration = Duration::from_secs(1800);

    #[tokio::test]
    async fn a_state_is_good_once_and_only_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let t0 = Timestamp::from_secs(1_800_000_000);
        let acme = key("shippo/acme");
        let s1 = Secret::new("state-one-aaaaaaaaaaaaaaaa");
        let r = reg
            .begin_oauth(&acme, &s1, t0.plus(MIN30), t0)
            .await
            .unwrap();
        assert_eq!(r.status, Status::Pending);
        assert!(r.current.is_none() && r.candidate.is_none());

        assert_eq!(
            reg.take_oauth_state(&Secret::new("forged"), t0)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            reg.take_oauth_state(&s1, t0).await.unwrap(),
            Some(acme.clone())
        );
        assert_eq!(reg.take_oauth_state(&s1, t0).await.unwrap(), None, "replay");

        let s2 = Secret::new("state-two-bbbbbbbbbbbbbbbb");
        reg.begin_oauth(&acme, &s2, t0.plus(MIN30), t0)
            .await
            .unwrap();
        assert_eq!(
            reg.take_oauth_state(&s2, t0.plus(MIN30)).await.unwrap(),
            None,
            "expired"
        );
    }

    #[tokio::test]
    async fn a_new_link_supersedes_the_old_and_working_accounts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let t0 = Timestamp::from_secs(1_800_000_000);
        let acme = key("shippo/acme");
        let old = Secret::new("state-old-aaaaaaaaaaaaaaaa");
        let new = Secret::new("state-new-bbbbbbbbbbbbbbbb");
        reg.begin_oauth(&acme, &old, t0.plus(MIN30), t0)
            .await
            .unwrap();
        reg.begin_oauth(&acme, &new, t0.plus(MIN30), t0)
            .await
            .unwrap();
        assert_eq!(reg.take_oauth_state(&old, t0).await.unwrap(), None);
        assert_eq!(reg.take_oauth_state(&new, t0).await.unwrap(), Some(acme));

        let tok = TokenRecord {
            access_token: Secret::new("oauth.x"),
            issued_at: t0,
            expires_at: None,
        };
        let shop = key("shippo/shop");
        reg.add(
            NewAccount {
                key: shop.clone(),
                email: None,
                first_name: None,
                last_name: None,
                refresh_token: None,
                access_token: Some(tok),
            },
            t0,
        )
        .await
        .unwrap();
        crate::registry::tests::activate(&reg, &shop, t0).await;
        let s = Secret::new("state-shop-cccccccccccccccc");
        assert!(matches!(
            reg.begin_oauth(&shop, &s, t0.plus(MIN30), t0).await,
            Err(RegistryError::AccountExists(_))
        ));
        // A registered token is never discarded by a declined flow.
        assert!(
            !reg.discard_unconnected(&shop, "declined", t0)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_declined_flow_leaves_no_account_and_its_state_dies_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let t0 = Timestamp::from_secs(1_800_000_000);
        let acme = key("shippo/acme");
        let s1 = Secret::new("state-one-aaaaaaaaaaaaaaaa");
        let s2 = Secret::new("state-two-bbbbbbbbbbbbbbbb");
        reg.begin_oauth(&acme, &s1, t0.plus(MIN30), t0)
            .await
            .unwrap();
        assert!(
            reg.discard_unconnected(&acme, "declined", t0)
                .await
                .unwrap()
        );
        assert!(reg.account(&acme).is_none());
        assert_eq!(reg.take_oauth_state(&s1, t0).await.unwrap(), None);
        // The name is free for a new attempt.
        reg.begin_oauth(&acme, &s2, t0.plus(MIN30), t0)
            .await
            .unwrap();
        let r = reg
            .record_connect_failure(&acme, "Shippo refused".into(), t0)
            .await
            .unwrap();
        assert_eq!(r.last_error.as_deref(), Some("Shippo refused"));
        assert_eq!(r.status, Status::Pending);
    }
}
