//! OAuth states (Shippo's today: a provider that [connects by
//! OAuth](crate::names::Provider::connects_by_oauth)): issued by `shippo connect`, spent by the
//! callback. The rules live here, above the store; each backend keeps the table
//! (`sqlite/oauth.rs`, `postgres/store.rs`).
//!
//! A state is a bearer secret for one flow, so only its SHA-256 is stored, and it is spent by a
//! single `UPDATE` in one transaction before anything else happens: two callbacks racing with
//! the same state cannot both win, and a spent, forged or expired state never reaches Shippo.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{AccountRecord, EventKind, Note, OAuthBegin, Registry, RegistryError, write};
use crate::clock::Timestamp;
use crate::names::AccountKey;
use crate::secret::Secret;

/// The stored form of a state: the hex SHA-256 of its value.
pub(super) fn state_hash(state: &Secret) -> String {
    Sha256::digest(state.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The history detail of an account an OAuth flow creates: "awaiting a Shippo OAuth
/// connection", the provider's name capitalized.
fn awaiting(key: &AccountKey) -> String {
    let name = key.provider.as_str();
    let mut chars = name.chars();
    let capitalized: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase())
        .into_iter()
        .chain(chars)
        .collect();
    format!("awaiting a {capitalized} OAuth connection")
}

impl Registry {
    /// Starts an OAuth flow for an account of a provider that connects by OAuth (others are
    /// refused with `NoOAuth`): creates the account as `pending` (no token)
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
        if !key.provider.connects_by_oauth() {
            return Err(RegistryError::NoOAuth(key.provider));
        }
        let cache = self.cache.clone();
        let key = key.clone();
        let hash = state_hash(state);
        let record = self
            .call(move |store| {
                let detail = awaiting(&key);
                let begin = OAuthBegin {
                    key: &key,
                    state_hash: &hash,
                    expires_at,
                    added_detail: &detail,
                    now,
                };
                let record = Arc::new(store.begin_oauth(&begin)?);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::names::Status;
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
