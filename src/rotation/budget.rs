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
    /// Wakes callers waiting for a pilot call (see [`Pilot`]) to end.
    pilot_ended: tokio::sync::Notify,
}

/// An account whose budget is spent, or that has callers waiting for it.
#[derive(Default)]
struct Spent {
    /// No call before this. Once past, it stays until a first call (the pilot) has shown
    /// whether the budget is really back.
    until: Option<Instant>,
    /// Callers waiting right now.
    waiting: usize,
    /// A first call after the throttle is under way; the others wait for its answer.
    pilot: bool,
}

/// Whether a call may go now.
#[derive(Debug)]
pub enum Admission<'a> {
    /// Go; after waiting this long for the budget (zero: at once). With a [`Pilot`], this
    /// call is the first after a throttle: hold it until its answer is judged.
    Go(Duration, Option<Pilot<'a>>),
    /// Do not send: answer 429 with `Retry-After` this long.
    Refused {
        /// How long until the budget is back.
        retry_after: Duration,
        /// Why the call is not queued.
        why: &'static str,
    },
}

/// The first call of an account after its throttle ended. The account's other callers wait
/// until it is dropped (its answer judged, and a new throttle recorded if it was throttled
/// again), so they are not all sent at once into a budget that is not back yet.
pub struct Pilot<'a> {
    budgets: &'a Budgets,
    key: AccountKey,
}

impl std::fmt::Debug for Pilot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pilot({})", self.key)
    }
}

impl Drop for Pilot<'_> {
    fn drop(&mut self) {
        let mut accounts = self.budgets.lock();
        if let Some(spent) = accounts.get_mut(&self.key) {
            spent.pilot = false;
            if spent.until.is_some_and(|u| u <= Instant::now()) {
                spent.until = None;
            }
        }
        Budgets::forget_if_idle(&mut accounts, &self.key);
        drop(accounts);
        self.budgets.pilot_ended.notify_waiters();
    }
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
        let accounts = self.lock();
        let until = accounts.get(key).and_then(|s| s.until)?;
        (until > now).then(|| until - now)
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
    ) -> Admission<'_> {
        let started = Instant::now();
        let deadline = started + max_wait;
        let mut waited = false;
        loop {
            // Registered before the look, so a pilot ending in between still wakes us.
            let pilot_ended = self.pilot_ended.notified();
            let until = {
                let mut accounts = self.lock();
                let now = Instant::now();
                let waited_for = if waited {
                    started.elapsed()
                } else {
                    Duration::ZERO
                };
                let Some(spent) = accounts.get_mut(key) else {
                    return Admission::Go(waited_for, None);
                };
                let throttled = spent.until.filter(|u| *u > now);
                if throttled.is_none() && !spent.pilot {
                    if spent.until.is_none() {
                        Self::forget_if_idle(&mut accounts, key);
                        return Admission::Go(waited_for, None);
                    }
                    spent.pilot = true;
                    let pilot = Pilot {
                        budgets: self,
                        key: key.clone(),
                    };
                    return Admission::Go(waited_for, Some(pilot));
                }
                // Throttled, or a pilot shows whether the budget is back: wait, if allowed.
                let wake = throttled.unwrap_or(deadline);
                if throttled.is_some_and(|u| u > deadline) {
                    return Admission::Refused {
                        retry_after: wake - now,
                        why: "the provider throttled this account for longer than the request may wait",
                    };
                }
                if now >= deadline {
                    return Admission::Refused {
                        retry_after: Duration::from_secs(1),
                        why: "the first call after the provider's throttle has not answered yet",
                    };
                }
                if spent.waiting >= depth {
                    return Admission::Refused {
                        retry_after: wake
                            .saturating_duration_since(now)
                            .max(Duration::from_secs(1)),
                        why: "too many requests of this account are already waiting for the provider's throttle",
                    };
                }
                spent.waiting += 1;
                throttled
            };
            let _waiting = Waiting {
                budgets: self,
                key,
                on_wait,
            };
            on_wait(1);
            waited = true;
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => {
                    let _ = tokio::time::timeout_at(deadline, pilot_ended).await;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountKey, Spent>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the entry of an account whose budget is back, that has no pilot and that
    /// nobody waits for, so the map holds only throttled accounts.
    fn forget_if_idle(accounts: &mut HashMap<AccountKey, Spent>, key: &AccountKey) {
        if accounts
            .get(key)
            .is_some_and(|s| s.waiting == 0 && !s.pilot && s.until.is_none())
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

    const NONE: &(dyn Fn(i64) + Sync) = &|_| {};

    #[tokio::test(start_paused = true)]
    async fn a_throttled_account_waits_and_others_do_not() {
        let b = Budgets::default();
        b.throttle(&key("shippo/a"), Duration::from_secs(5));
        assert!(matches!(
            b.admit(&key("shippo/b"), Duration::from_secs(30), 4, NONE).await,
            Admission::Go(w, None) if w.is_zero()
        ));
        match b
            .admit(&key("shippo/a"), Duration::from_secs(30), 4, NONE)
            .await
        {
            Admission::Go(waited, Some(pilot)) => {
                assert!(waited >= Duration::from_secs(5), "{waited:?}");
                drop(pilot);
            }
            other => panic!("{other:?}"),
        }
        assert!(b.lock().is_empty(), "a budget that is back is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_throttle_one_call_goes_first_and_the_rest_follow_its_answer() {
        let b = std::sync::Arc::new(Budgets::default());
        let a = key("shiphero/a");
        b.throttle(&a, Duration::from_secs(2));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let Admission::Go(_, Some(pilot)) = b.admit(&a, Duration::from_secs(30), 4, NONE).await
        else {
            panic!("the first call after the throttle is the pilot");
        };
        let follower = {
            let (b, a) = (b.clone(), a.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                match b.admit(&a, Duration::from_secs(30), 4, NONE).await {
                    // After the new throttle, this one is the next pilot.
                    Admission::Go(_, Some(_)) => started.elapsed(),
                    other => panic!("{other:?}"),
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !follower.is_finished(),
            "a follower went before the pilot's answer"
        );
        // The pilot was throttled again: the followers wait out the new time as well.
        b.throttle(&a, Duration::from_secs(4));
        drop(pilot);
        let waited = follower.await.unwrap();
        assert!(waited >= Duration::from_secs(5), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_the_deadline_or_a_full_queue_is_refused() {
        let b = Budgets::default();
        let a = key("shiphero/a");
        b.throttle(&a, Duration::from_secs(60));
        match b.admit(&a, Duration::from_secs(10), 4, NONE).await {
            Admission::Refused { retry_after, .. } => {
                assert!(retry_after > Duration::from_secs(59), "{retry_after:?}");
            }
            other => panic!("{other:?}"),
        }
        b.lock().get_mut(&a).unwrap().waiting = 4;
        assert!(matches!(
            b.admit(&a, Duration::from_secs(120), 4, NONE).await,
            Admission::Refused { .. }
        ));
    }
}
