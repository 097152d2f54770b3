//! Token answers, serialized once per stored token and configuration and then handed out as
//! shared bytes.
//!
//! Serializing the answer (a ShipHero JWT appears twice in it, JSON-escaped each time) was
//! the largest single cost of `GET /v1/tokens/...`: about an eighth of the daemon's CPU under
//! the socket benchmark. The answer depends only on the account's record, on whether the
//! candidate token is the one served, and on the configuration (refresh point, a provider's
//! served headers such as Shippo's API version), so it is built on the first read of each such combination and reused until one of
//! them changes.
//!
//! Coherence comes from identity, not from invalidation messages: the registry replaces an
//! account's record (a new `Arc`) in the same step that stores a new token, and a reload
//! replaces the configuration's `Arc`. A cached answer remembers both by address and is
//! rebuilt when either differs, so it can never outlive the token it carries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use axum::body::Bytes;
use axum::http::HeaderValue;

use super::Servable;
use crate::clock::Timestamp;
use crate::config::Config;
use crate::names::{AccountKey, Provider};
use crate::registry::AccountRecord;
use crate::rotation::{Policy, Probed, refresh_point};

/// The 200 answer of `GET /v1/tokens/{provider}/{account}` (CONTRACT.md), plus `fingerprint`.
#[derive(serde::Serialize)]
struct TokenAnswer<'a> {
    provider: Provider,
    account: &'a str,
    access_token: &'a str,
    token_type: &'static str,
    expires_at: Option<Timestamp>,
    refresh_after: Option<Timestamp>,
    status: &'static str,
    headers: UpstreamHeaders<'a>,
    /// `Secret::fingerprint` of the token: what the audit records, and what `?known=` takes.
    fingerprint: &'a str,
}

/// Exactly the headers to send upstream: `Authorization`, then the provider's own
/// (`providers::Rules::served_headers`, e.g. Shippo's `Shippo-API-Version`).
struct UpstreamHeaders<'a> {
    authorization: &'a str,
    extra: Vec<(&'static str, &'a str)>,
}

impl serde::Serialize for UpstreamHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1 + self.extra.len()))?;
        map.serialize_entry("Authorization", self.authorization)?;
        for (name, value) in &self.extra {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One account's token answer, ready to send.
pub(super) struct Answer {
    /// The record it was built from. Weak, so a cached answer never keeps an old record
    /// alive; the allocation it points at cannot be reused while this is held, so comparing
    /// addresses is sound.
    record: Weak<AccountRecord>,
    /// Which of the record's tokens was served: the candidate or the current one.
    which: Probed,
    /// The configuration it was built with.
    config: Weak<Config>,
    /// The JSON body.
    pub json: Bytes,
    /// The token's fingerprint, for the audit and the `ETag`.
    pub fingerprint: String,
    /// `"<fingerprint>"`.
    pub etag: HeaderValue,
}

impl Answer {
    fn built_from(&self, served: &Servable, config: &Arc<Config>) -> bool {
        self.which == served.which
            && std::ptr::eq(self.record.as_ptr(), Arc::as_ptr(&served.record))
            && std::ptr::eq(self.config.as_ptr(), Arc::as_ptr(config))
    }

    /// `None` when `served` holds no token (the caller answers why).
    fn build(key: &AccountKey, served: &Servable, config: &Arc<Config>) -> Option<Answer> {
        let token = served.token()?;
        let fingerprint = token.access_token.fingerprint();
        let authorization = format!("Bearer {}", token.access_token.expose());
        let json = serde_json::to_vec(&TokenAnswer {
            provider: key.provider,
            account: &key.name,
            access_token: token.access_token.expose(),
            token_type: "Bearer",
            expires_at: token.expires_at,
            refresh_after: refresh_point(key, token, &Policy::from_config(config)),
            status: "active",
            headers: UpstreamHeaders {
                authorization: &authorization,
                extra: (crate::providers::rules(key.provider).served_headers)(config),
            },
            fingerprint: &fingerprint,
        })
        // Serializing borrowed strings and numbers into a Vec cannot fail.
        .unwrap_or_default();
        let etag = HeaderValue::from_str(&format!("\"{fingerprint}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        Some(Answer {
            record: Arc::downgrade(&served.record),
            which: served.which,
            config: Arc::downgrade(config),
            json: Bytes::from(json),
            fingerprint,
            etag,
        })
    }
}

/// The token answers built so far, one per account at most. Start with `Answers::default()`.
#[derive(Default)]
pub struct Answers {
    by_account: RwLock<HashMap<AccountKey, Arc<Answer>>>,
    /// Answers built since stale ones were last dropped.
    built: AtomicUsize,
}

/// The fewest answers built between two walks that drop stale ones.
const PRUNE_EVERY: usize = 64;

impl Answers {
    /// The answer for `served` under `config`: the cached one when it was built from exactly
    /// these, otherwise a new one, which replaces it. `None` when there is no token to serve.
    pub(super) fn get(
        &self,
        key: &AccountKey,
        served: &Servable,
        config: &Arc<Config>,
    ) -> Option<Arc<Answer>> {
        let cached = self
            .by_account
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .filter(|a| a.built_from(served, config))
            .cloned();
        if cached.is_some() {
            return cached;
        }
        let answer = Arc::new(Answer::build(key, served, config)?);
        let mut by_account = self
            .by_account
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        by_account.insert(key.clone(), answer.clone());
        // An answer goes stale when its account's token or status changes, and would stay
        // (its token's text, and its record's memory through the `Weak`) until that account
        // is read again. So every so often, once as many answers were built as half the map
        // holds, the stale ones go: O(1) per answer built, and after a sweep replaced every
        // record the map is back to the accounts read since.
        let built = self.built.fetch_add(1, Ordering::Relaxed) + 1;
        if built >= PRUNE_EVERY.max(by_account.len() / 2) {
            self.built.store(0, Ordering::Relaxed);
            by_account.retain(|_, a| a.record.strong_count() > 0);
            if by_account.len() < by_account.capacity() / 4 {
                by_account.shrink_to_fit();
            }
        }
        Some(answer)
    }

    /// Drops the answer of `key` (the account was removed) and every answer whose record is
    /// gone: one that a read in flight during an earlier removal put back, or one of an
    /// account whose token or status changed and that nobody has read since. Removals are
    /// rare, so the scan costs nothing that matters; reads never pay for it.
    pub(super) fn forget(&self, key: &AccountKey) {
        self.by_account
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, a| k != key && a.record.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::RawConfig;
    use crate::registry::TokenRecord;
    use crate::secret::Secret;
    use figment::Figment;
    use figment::providers::Serialized;

    fn defaults() -> Arc<Config> {
        let figment = Figment::from(Serialized::defaults(RawConfig::default()));
        Arc::new(Config::from_figment(&figment, None).unwrap())
    }

    fn served(key: &AccountKey, token: &str) -> Servable {
        let day = 86_400;
        Servable {
            record: Arc::new(AccountRecord {
                current: Some(TokenRecord {
                    access_token: Secret::new(token),
                    issued_at: Timestamp::from_secs(day),
                    expires_at: Some(Timestamp::from_secs(29 * day)),
                }),
                ..AccountRecord::example(key.clone(), Timestamp::from_secs(day))
            }),
            which: Probed::Served,
        }
    }

    fn body(answer: &Answer) -> serde_json::Value {
        serde_json::from_slice(&answer.json).unwrap()
    }

    #[test]
    fn an_answer_is_reused_until_its_record_or_the_configuration_changes() {
        let answers = Answers::default();
        let key = AccountKey::parse("shiphero/acme").unwrap();
        let config = defaults();

        let first = served(&key, "token-one");
        let a = answers.get(&key, &first, &config).unwrap();
        assert!(Arc::ptr_eq(
            &a,
            &answers.get(&key, &first, &config).unwrap()
        ));
        assert_eq!(body(&a)["access_token"], "token-one");
        assert_eq!(body(&a)["headers"]["Authorization"], "Bearer token-one");
        assert_eq!(a.etag, format!("\"{}\"", a.fingerprint).as_str());

        // A stored token is a new record: the next read serves it, never the cached one.
        let second = served(&key, "token-two");
        let b = answers.get(&key, &second, &config).unwrap();
        assert_eq!(body(&b)["access_token"], "token-two");
        assert_ne!(a.fingerprint, b.fingerprint);

        // A reload is a new configuration: the refresh point follows it.
        let mut later = (*config).clone();
        later.rotation.rotate_at = 0.9;
        let c = answers.get(&key, &second, &Arc::new(later)).unwrap();
        assert_eq!(body(&c)["access_token"], "token-two");
        assert_ne!(body(&c)["refresh_after"], body(&b)["refresh_after"]);

        // Removing another account drops answers whose record is gone, and keeps live ones.
        let other = AccountKey::parse("shiphero/other").unwrap();
        let live = served(&other, "token-three");
        answers.get(&other, &live, &config).unwrap();
        drop((first, second));
        answers.forget(&AccountKey::parse("shiphero/removed").unwrap());
        let left: Vec<AccountKey> = answers.by_account.read().unwrap().keys().cloned().collect();
        assert_eq!(left, vec![other.clone()]);
        answers.forget(&other);
        assert!(answers.by_account.read().unwrap().is_empty());
    }

    #[test]
    fn stale_answers_are_dropped_as_new_ones_are_built() {
        let answers = Answers::default();
        let config = defaults();
        let keys: Vec<AccountKey> = (0..1000)
            .map(|i| AccountKey::parse(&format!("shiphero/a{i}")).unwrap())
            .collect();
        let first: Vec<Servable> = keys.iter().map(|k| served(k, "old")).collect();
        for (k, s) in keys.iter().zip(&first) {
            answers.get(k, s, &config).unwrap();
        }
        // A sweep replaces every record; applications then read half of the accounts, each
        // several times (a cached answer builds nothing).
        drop(first);
        let read: Vec<Servable> = keys.iter().take(500).map(|k| served(k, "new")).collect();
        for _ in 0..3 {
            for (k, s) in keys.iter().zip(&read) {
                assert_eq!(
                    body(&answers.get(k, s, &config).unwrap())["access_token"],
                    "new"
                );
            }
        }
        // 500 answers built, at least half of the 1,000 held: the stale half is gone.
        assert_eq!(answers.by_account.read().unwrap().len(), 500);
    }

    #[test]
    fn each_provider_serves_its_own_headers_after_authorization() {
        let answers = Answers::default();
        let config = defaults();
        let headers = |key: &str| {
            let key = AccountKey::parse(key).unwrap();
            let answer = answers.get(&key, &served(&key, "t1"), &config).unwrap();
            let json = String::from_utf8(answer.json.to_vec()).unwrap();
            let at = json.find("\"headers\":").unwrap();
            let end = at + json[at..].find('}').unwrap() + 1;
            json[at..end].to_string()
        };
        assert_eq!(
            headers("shiphero/acme"),
            r#""headers":{"Authorization":"Bearer t1"}"#
        );
        assert_eq!(
            headers("shippo/shop"),
            r#""headers":{"Authorization":"Bearer t1","Shippo-API-Version":"2018-02-08"}"#
        );
    }
}
