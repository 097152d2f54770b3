//! Each account's budget at its provider, as its answers tell it: ShipHero's credits and
//! Shippo's rate limit are per account (UPSTREAM.md), so a throttled answer, to the daemon's
//! own probe or to an application's call through the proxy, holds back every call of that
//! account until the time the provider named, and no other account's.
//!
//! The proxy waits here (bounded: a queue depth per account and a deadline) instead of
//! sending a call that would be throttled; the engine's probes skip their call while the
//! account's budget is spent, so they take their share of the same budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::names::AccountKey;

/// Throttles learned from answers, per account.
#[derive(Default)]
pub struct Budgets {
    accounts: Mutex<HashMap<AccountKey, Spent>>,
}

/// An account whose budget is spent, or that has callers waiting for it.
#[derive(Default)]
struct Spent {
    /// No call before this.
    until: Option<Instant>,
    /// Callers waiting for `until` right now.
    waiting: usize,
}

/// Whether a call may go now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go; after waiting this long for the budget (zero: at once).
    Go(Duration),
    /// Do not send: answer 429 with `Retry-After` this long.
    Refused {
        /// How long until the budget is back.
        retry_after: Duration,
        /// Why the call is not queued.
        why: &'static str,
    },
}

impl Budgets {
    /// Records that the provider asked `key`'s calls to wait `wait` from now.
    pub fn throttle(&self, key: &AccountKey, wait: Duration) {
        let until = Instant::now() + wait;
        let mut accounts = self.lock();
        let spent = accounts.entry(key.clone()).or_default();
        spent.until = Some(spent.until.map_or(until, |u| u.max(until)));
    }

    /// How long `key`'s calls must still wait; `None` when they may go.
    pub fn spent_for(&self, key: &AccountKey) -> Option<Duration> {
        let now = Instant::now();
        let mut accounts = self.lock();
        let until = accounts.get(key).and_then(|s| s.until)?;
        if until <= now {
            Self::forget_if_idle(&mut accounts, key);
            return None;
        }
        Some(until - now)
    }

    /// Waits until `key`'s budget is back, for at most `max_wait` and behind at most
    /// `depth - 1` other waiting callers; or says why the call must not be sent. `on_wait`
    /// is told `+1` when this caller starts waiting and `-1` when it stops (the queue
    /// gauge), however the wait ends, the caller going away included.
    pub async fn admit(
        &self,
        key: &AccountKey,
        max_wait: Duration,
        depth: usize,
        on_wait: &(dyn Fn(i64) + Sync),
    ) -> Admission {
        let started = Instant::now();
        let deadline = started + max_wait;
        let mut waited = false;
        loop {
            let until = {
                let mut accounts = self.lock();
                let now = Instant::now();
                let Some(until) = accounts.get(key).and_then(|s| s.until).filter(|u| *u > now)
                else {
                    Self::forget_if_idle(&mut accounts, key);
                    return Admission::Go(if waited {
                        started.elapsed()
                    } else {
                        Duration::ZERO
                    });
                };
                if until > deadline {
                    return Admission::Refused {
                        retry_after: until - now,
                        why: "the provider throttled this account for longer than the request may wait",
                    };
                }
                let spent = accounts.entry(key.clone()).or_default();
                if spent.waiting >= depth {
                    return Admission::Refused {
                        retry_after: until - now,
                        why: "too many requests of this account are already waiting for the provider's throttle",
                    };
                }
                spent.waiting += 1;
                until
            };
            let _waiting = Waiting {
                budgets: self,
                key,
                on_wait,
            };
            on_wait(1);
            waited = true;
            tokio::time::sleep_until(until).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountKey, Spent>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the entry of an account whose budget is back and that nobody waits for, so the
    /// map holds only throttled accounts.
    fn forget_if_idle(accounts: &mut HashMap<AccountKey, Spent>, key: &AccountKey) {
        let now = Instant::now();
        if accounts
            .get(key)
            .is_some_and(|s| s.waiting == 0 && s.until.is_none_or(|u| u <= now))
        {
            accounts.remove(key);
        }
    }
}

/// One caller waiting for an account's budget; counted out when dropped.
struct Waiting<'a> {
    budgets: &'a Budgets,
    key: &'a AccountKey,
    on_wait: &'a (dyn Fn(i64) + Sync),
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        (self.on_wait)(-1);
        let mut accounts = self.budgets.lock();
        if let Some(spent) = accounts.get_mut(self.key) {
            spent.waiting = spent.waiting.saturating_sub(1);
        }
        Budgets::forget_if_idle(&mut accounts, self.key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(s: &str) -> AccountKey {
        AccountKey::parse(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_account_waits_and_others_do_not() {
        let b = Budgets::default();
        b.throttle(&key("shippo/a"), Duration::from_secs(5));
        let none = |_| {};
        assert_eq!(
            b.admit(&key("shippo/b"), Duration::from_secs(30), 4, &none)
                .await,
            Admission::Go(Duration::ZERO)
        );
        match b
            .admit(&key("shippo/a"), Duration::from_secs(30), 4, &none)
            .await
        {
            Admission::Go(waited) => assert!(waited >= Duration::from_secs(5), "{waited:?}"),
            other => panic!("{other:?}"),
        }
        assert!(b.lock().is_empty(), "a budget that is back is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_or_a_full_queue_is_refused() {
        let b = Budgets::default();
        let a = key("shiphero/a");
        b.throttle(&a, Duration::from_secs(60));
        let none = |_| {};
        match b.admit(&a, Duration::from_secs(10), 4, &none).await {
            Admission::Refused { retry_after, .. } => {
                assert!(retry_after > Duration::from_secs(59), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        b.lock().get_mut(&a).unwrap().waiting = 4;
        assert!(matches!(
            b.admit(&a, Duration::from_secs(120), 4, &none).await,
            Admission::Refused { .. }
        ));
    }
}
