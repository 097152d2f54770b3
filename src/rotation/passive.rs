//! Passive evidence: what applications' own calls, forwarded by the socket's proxy, prove
//! about an account. An answer goes through the same transition as a probe of the served
//! token ([`Engine::observed`]); the proxy asks cheaply whether a pass is worth handing over
//! ([`Engine::pass_is_news`]) and waits for work under way ([`Engine::quiet`]) before it
//! resends a call refused with a token a rotation replaced.

use std::time::Duration;

use super::Engine;
use super::judge::{Outcome, Probed};
use super::work::Turn;
use crate::clock::Timestamp;
use crate::names::{AccountKey, Status};
use crate::pacing::Class;
use crate::providers::Verdict;
use crate::registry::AccountRecord;
use crate::secret::Secret;

impl Engine {
    /// Judges what an application's own call, forwarded by the proxy with `token`, got back:
    /// passive evidence, through the same transition as a probe of the served token. A
    /// refusal starts (or completes) a confirmation at once, and for a renewing provider a
    /// refresh tells suspension from revocation, as after a probe; a pass counts as a probe
    /// that passed, but is written only when it changes something (a busy application must
    /// not write the registry on every call). Answers about a token no longer served (a
    /// rotation raced the call), and answers that prove nothing, are dropped; so is the
    /// answer when work on the account is already running, which reaches its own verdict.
    pub async fn observed(&self, key: &AccountKey, token: &Secret, verdict: Verdict) {
        let evidence = matches!(verdict, Verdict::Refused(_) | Verdict::Undocumented { .. });
        let passed = matches!(verdict, Verdict::Pass { .. });
        if !(evidence || passed) || self.stopping() {
            return;
        }
        let about_served =
            |a: &AccountRecord| a.current.as_ref().is_some_and(|t| t.access_token == *token);
        let Ok(account) = self.account(key) else {
            return;
        };
        if !about_served(&account) {
            return;
        }
        let now = self.clock.now();
        let (half, confirm_after) = {
            let c = self.config.borrow();
            (c.verify.interval / 2, c.verify.confirm_after)
        };
        if passed && !pass_is_news(&account, now, half) {
            return;
        }
        // Evidence already in doubt and not yet old enough to confirm it says nothing new:
        // a busy application's failing calls write and refresh once, not once per call.
        let first_sighting = account.token_doubt.is_none();
        if evidence
            && account
                .token_doubt
                .as_ref()
                .is_some_and(|d| now.since(d.since) < confirm_after)
        {
            return;
        }
        let lock = self.account_lock(key);
        let Ok(_guard) = lock.try_lock() else {
            return;
        };
        let Ok(account) = self.account(key) else {
            return;
        };
        if !about_served(&account) {
            return;
        }
        let generation = account.generation;
        let Ok(lease) = self.lease(&account).await else {
            return;
        };
        self.count_for_incidents(key, &verdict);
        let record = match self
            .apply(key, generation, Outcome::Probe(Probed::Served, verdict))
            .await
        {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(provider = %key.provider, account = %key.name, error = %e, "could not store what a proxied call proved");
                return;
            }
        };
        if evidence
            && first_sighting
            && !record.status.is_flagged()
            && self.upstreams.get(key.provider).renews()
        {
            tracing::info!(provider = %key.provider, account = %key.name, "an application's call was refused the served token; refreshing to tell suspension from revocation");
            let _ = self
                .refresh(key, generation, Turn::Wait(Class::Urgent))
                .await;
        }
        lease.give_back().await;
    }

    /// Whether a passing answer with `token` would change what is stored about the account
    /// (see [`Engine::observed`]); cheap, for callers that would otherwise hand every pass over.
    pub fn pass_is_news(&self, key: &AccountKey, token: &Secret) -> bool {
        let Ok(account) = self.account(key) else {
            return false;
        };
        let half = self.config.borrow().verify.interval / 2;
        account
            .current
            .as_ref()
            .is_some_and(|t| t.access_token == *token)
            && pass_is_news(&account, self.clock.now(), half)
    }

    /// Waits (at most `max`) until no work runs on the account: a caller whose token was just
    /// refused learns whether a rotation under way replaced it.
    pub async fn quiet(&self, key: &AccountKey, max: Duration) {
        let lock = self.account_lock(key);
        let _ = tokio::time::timeout(max, lock.lock()).await;
    }
}

/// Whether a pass of the served token tells something not stored: the token is in doubt,
/// a candidate waits, the account is not active, or its last proof is older than `half` (at
/// most one write per half `verify.interval`; a refused refresh alert alone is not news).
fn pass_is_news(account: &AccountRecord, now: Timestamp, half: Duration) -> bool {
    let recent = account
        .last_verified_at
        .is_some_and(|t| now.since(t) < half);
    !(account.status == Status::Active
        && account.candidate.is_none()
        && account.token_doubt.is_none()
        && recent)
}
