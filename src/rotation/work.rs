//! The engine's work: sweeps, the manual rotate and verify, and the one path every upstream
//! result takes into the registry ([`Engine::apply`]).

use std::sync::Arc;
use std::time::Duration;

use super::judge::{Outcome, Probed, Rules, transition};
use super::plan::{Work, backoff};
use super::{Engine, EngineError, ProbingGuard};
use crate::clock::Timestamp;
use crate::metrics::CheckResult;
use crate::names::{AccountKey, Provider, Status};
use crate::pacing::Class;
use crate::providers::Verdict;
use crate::registry::{AccountRecord, LeaseAnswer, Registry, RegistryError, TokenRecord};
use tokio::sync::SemaphorePermit;

impl Engine {
    /// Waits (at most `max`) while a freshly issued token of the account is being probed, so
    /// a reader gets the outcome: the promoted token, a flag, or an inconclusive candidate.
    pub async fn settle(&self, key: &AccountKey, max: Duration) {
        let mut ended = self.probe_ended.subscribe();
        let deadline = tokio::time::Instant::now() + max;
        while self
            .probing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
        {
            if tokio::time::timeout_at(deadline, ended.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Refreshes (a renewing provider) or re-checks the account now, ignoring backoff; waits
    /// for any operation already running on it, and returns that one's outcome instead when
    /// it already produced a fresh, proven token.
    pub async fn rotate_now(&self, key: &AccountKey) -> Result<Arc<AccountRecord>, EngineError> {
        let requested = self.clock.now();
        self.act_now(key, |account| {
            let done = account.status == Status::Active
                && account.candidate.is_none()
                && account.last_rotated_at.is_some_and(|t| t >= requested);
            if done {
                Ok(None)
            } else if self.upstreams.get(key.provider).renews() {
                Ok(Some(Work::Refresh))
            } else {
                probe_work(account).map(Some)
            }
        })
        .await
    }

    /// Probes the account's token now (the candidate first, if one waits).
    pub async fn verify_now(&self, key: &AccountKey) -> Result<Arc<AccountRecord>, EngineError> {
        let requested = self.clock.now();
        self.act_now(key, |account| {
            // A sweep that held the lock may have just done this very work.
            let done = account.status == Status::Active
                && account.candidate.is_none()
                && account.last_error.is_none()
                && account.last_verified_at.is_some_and(|t| t >= requested);
            if done {
                return Ok(None);
            }
            match probe_work(account) {
                Err(_) if self.upstreams.get(key.provider).renews() => Ok(Some(Work::Refresh)),
                other => other.map(Some),
            }
        })
        .await
    }

    /// The first check of an account just registered. It runs now when a call to its
    /// provider can start at once, or when `wait` says the caller will wait for its slot;
    /// otherwise (the provider's pacing would hold it) it is queued first in
    /// its provider's lane and this returns at once with about how long until it runs.
    pub async fn check_added(
        &self,
        key: &AccountKey,
        wait: bool,
    ) -> Result<Option<Duration>, EngineError> {
        let queue_for = if wait {
            None
        } else {
            self.slot_wait(key.provider)
        };
        let Some(after) = queue_for else {
            return self.verify_now(key).await.map(|_| None);
        };
        let account = self.account(key)?;
        let work = match probe_work(&account) {
            Err(_) if self.upstreams.get(key.provider).renews() => Work::Refresh,
            other => other?,
        };
        self.lane(key.provider)
            .offer_urgent(key.clone(), work, account.revision);
        Ok(Some(after))
    }

    /// A manual operation: under the account's lock, `work` says what to do with the record
    /// as it is now (`None`: already done, the record is the answer). Work that another
    /// daemon sharing the registry made stale is judged again on the stored record, a few
    /// times; work asked of one registration never lands on the next one.
    async fn act_now(
        &self,
        key: &AccountKey,
        work: impl Fn(&AccountRecord) -> Result<Option<Work>, EngineError>,
    ) -> Result<Arc<AccountRecord>, EngineError> {
        let lock = self.account_lock(key);
        let _guard = lock.lock().await;
        let generation = self.account(key)?.generation;
        for tries_left in (0..3).rev() {
            let account = self.account(key)?;
            if account.generation != generation {
                return Err(EngineError::Registry(RegistryError::Stale(key.clone())));
            }
            let Some(work) = work(&account)? else {
                return Ok(account);
            };
            match self.perform(key, work, None, Class::Urgent).await {
                Err(EngineError::Registry(RegistryError::Stale(_))) if tries_left > 0 => {}
                other => return other,
            }
        }
        Err(EngineError::Registry(RegistryError::Stale(key.clone())))
    }

    /// Stores a token issued outside the engine (a Shippo OAuth code exchange) as the
    /// account's candidate, then probes it.
    pub async fn accept_issued(
        &self,
        key: &AccountKey,
        token: TokenRecord,
    ) -> Result<Arc<AccountRecord>, EngineError> {
        let lock = self.account_lock(key);
        let _guard = lock.lock().await;
        let account = self.account(key)?;
        let generation = account.generation;
        let lease = self.lease(&account).await?;
        let result = match self.apply(key, generation, Outcome::Issued(token)).await {
            Ok(_) => {
                self.verify(
                    key,
                    generation,
                    Probed::Candidate,
                    true,
                    Turn::Wait(Class::Urgent),
                )
                .await
            }
            Err(e) => Err(e),
        };
        lease.give_back().await;
        result
    }

    /// Takes the fleet-wide lease on the account for work planned from `account` (granted
    /// at once with SQLite). Another daemon holding it is [`EngineError::Elsewhere`]; a record
    /// another daemon saved since is loaded and the work refused as stale, to be planned again.
    pub(super) async fn lease(
        &self,
        account: &Arc<AccountRecord>,
    ) -> Result<Lease<'_>, EngineError> {
        if !self.registry.is_shared() {
            return Ok(Lease(None));
        }
        let key = &account.key;
        let duration = self.config.borrow().registry.lease;
        match self.registry.lease(account, duration).await? {
            LeaseAnswer::Granted => {
                self.metrics.lease("granted");
                Ok(Lease(Some((&self.registry, key.clone()))))
            }
            LeaseAnswer::Busy { holder } => {
                self.metrics.lease("busy");
                Err(EngineError::Elsewhere {
                    key: key.clone(),
                    holder,
                })
            }
            LeaseAnswer::Moved => {
                self.metrics.lease("moved");
                Err(EngineError::Registry(RegistryError::Stale(key.clone())))
            }
        }
    }

    pub(super) fn account(&self, key: &AccountKey) -> Result<Arc<AccountRecord>, EngineError> {
        Ok(self
            .registry
            .account(key)
            .ok_or_else(|| RegistryError::NotFound(key.clone()))?)
    }

    /// Does `work` on the account. With `planned_from`, the work was planned from that
    /// revision: if the account was saved since (a manual rotate here, another daemon's
    /// work), the plan is void and nothing is done; the next sweep plans again.
    pub(super) async fn perform(
        &self,
        key: &AccountKey,
        work: Work,
        planned_from: Option<i64>,
        class: Class,
    ) -> Result<Arc<AccountRecord>, EngineError> {
        let account = self.account(key)?;
        if planned_from.is_some_and(|r| r != account.revision) {
            return Err(EngineError::Registry(RegistryError::Stale(key.clone())));
        }
        let generation = account.generation;
        if let (Some(_), Work::Verify(_), Some(wait)) =
            (planned_from, work, self.budgets.spent_for(key))
        {
            // The account's budget is spent (an application's call through the proxy was
            // throttled): a scheduled probe takes its share by waiting until it is back; the
            // next sweep plans it again. A probe asked for by hand still goes.
            return Err(EngineError::Nothing(format!(
                "{key}: {} throttled this account; the check waits {}s for its budget",
                key.provider,
                wait.as_secs().max(1)
            )));
        }
        // The first call's turn (pacing, then a permit) before the lease: a lease is held
        // only while its work runs, never while the work waits for its turn, since a shared
        // registry's lease can be shorter than the wait (another daemon would take it over
        // and refresh the account a second time).
        let turn = match work {
            Work::Expire => Turn::Taken(None),
            Work::Refresh | Work::Verify(_) => Turn::Taken(self.pace(key.provider, class).await),
        };
        let lease = self.lease(&account).await?;
        let result = match work {
            Work::Refresh => self.refresh(key, generation, turn).await,
            Work::Verify(which) => self.verify(key, generation, which, true, turn).await,
            Work::Expire => {
                let record = self.apply(key, generation, Outcome::Expired).await?;
                Err(flagged(&record))
            }
        };
        lease.give_back().await;
        result
    }

    /// Renews the token, stores what was issued, then probes it. After a refused renewal,
    /// probes the served token to learn whether it still works.
    pub(super) async fn refresh(
        &self,
        key: &AccountKey,
        generation: i64,
        turn: Turn<'_>,
    ) -> Result<Arc<AccountRecord>, EngineError> {
        if self.stopping() {
            return Err(stopping());
        }
        let Some(refresh_token) = self.registry.refresh_token(key).await? else {
            return Err(EngineError::Nothing(format!("{key} has no refresh token")));
        };
        let upstream = self.upstreams.get(key.provider);
        let result = {
            let _permit = self.take_turn(key.provider, turn).await;
            upstream.renew(&refresh_token).await
        };
        let now = self.clock.now();
        let verdict = match result {
            Ok(issued) => {
                if let Some(rotated) = issued.refresh {
                    // The provider may have invalidated the old refresh token: the new one is
                    // stored before anything issued with it, or a crash loses the account.
                    self.registry.set_refresh_token(key, rotated).await?;
                }
                self.metrics.rotation(key.provider, CheckResult::Ok);
                let token = TokenRecord {
                    access_token: issued.access_token,
                    issued_at: now,
                    expires_at: issued.lifetime.map(|l| now.plus(l)),
                };
                // Marked as being probed before it is stored: a reader woken by the store
                // (a long poll, a file sink) must wait for the verdict, never serve it unproven.
                let _probing = self.probing_guard(key);
                // Stored before it is probed or served: the provider may have invalidated
                // the previous token, and a crash or shutdown must not lose this one.
                let stored = self.apply(key, generation, Outcome::Issued(token)).await?;
                if self.stopping() {
                    return Ok(stored);
                }
                return self
                    .verify(
                        key,
                        generation,
                        Probed::Candidate,
                        false,
                        Turn::Wait(Class::Urgent),
                    )
                    .await;
            }
            Err(verdict) => verdict,
        };
        self.metrics.rotation(key.provider, verdict.metric_result());
        let refused = matches!(verdict, Verdict::Refused(_));
        let record = self
            .apply(key, generation, Outcome::RenewFailed(verdict))
            .await?;
        let served = record
            .current
            .as_ref()
            .is_some_and(|t| usable(t, self.clock.now()));
        if refused && served && !record.status.is_flagged() && !self.stopping() {
            return self
                .verify(
                    key,
                    generation,
                    Probed::Served,
                    false,
                    Turn::Wait(Class::Urgent),
                )
                .await
                .and_then(|r| {
                    // The served token works, but the refresh is refused: an alert, not a token
                    // the caller can count on for long.
                    Err(EngineError::Upstream {
                        key: key.clone(),
                        message: r.last_error.clone().unwrap_or_default(),
                    })
                });
        }
        Err(failed(&record))
    }

    /// Marks the account's candidate as being probed until the guard drops; readers
    /// ([`Engine::settle`]) wait for the verdict meanwhile.
    fn probing_guard(&self, key: &AccountKey) -> ProbingGuard<'_> {
        self.probing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        ProbingGuard {
            engine: self,
            key: key.clone(),
        }
    }

    /// Probes one of the account's tokens and stores the verdict. With `follow_up`, evidence
    /// against the served token of a renewing provider is judged on a fresh refresh.
    async fn verify(
        &self,
        key: &AccountKey,
        generation: i64,
        which: Probed,
        follow_up: bool,
        turn: Turn<'_>,
    ) -> Result<Arc<AccountRecord>, EngineError> {
        let account = self.account(key)?;
        let token = match which {
            Probed::Candidate => account.candidate.as_deref().cloned(),
            Probed::Served => account.current.clone(),
        };
        let Some(token) = token.filter(|_| account.generation == generation) else {
            return Err(EngineError::Nothing(format!("{key} has no token to check")));
        };
        if self.stopping() {
            return Err(stopping());
        }
        let _probing = (which == Probed::Candidate).then(|| self.probing_guard(key));
        let upstream = self.upstreams.get(key.provider);
        let credential = match upstream.rules().reads_credential {
            true => self.registry.refresh_token(key).await?,
            false => None,
        };
        let verdict = {
            let _permit = self.take_turn(key.provider, turn).await;
            upstream
                .probe(&token.access_token, credential.as_ref())
                .await
        };
        if let Verdict::Throttled { wait, .. } = &verdict {
            self.budgets.throttle(key, *wait);
        }
        self.metrics
            .verification(key.provider, verdict.metric_result());
        self.count_for_incidents(key, &verdict);
        let passed = matches!(verdict, Verdict::Pass { .. });
        let evidence = matches!(verdict, Verdict::Refused(_) | Verdict::Undocumented { .. });
        let record = self
            .apply(key, generation, Outcome::Probe(which, verdict))
            .await?;
        if record.status.is_flagged() {
            return Err(flagged(&record));
        }
        if evidence && follow_up && which == Probed::Served && upstream.renews() {
            tracing::info!(provider = %key.provider, account = %key.name, "served token refused; refreshing to tell suspension from revocation");
            return Box::pin(self.refresh(key, generation, Turn::Wait(Class::Urgent))).await;
        }
        if passed {
            Ok(record)
        } else {
            Err(failed(&record))
        }
    }

    /// The rules a transition of `record` by `outcome` is judged by now. Its `now` is the
    /// account's steady time (see [`steady_time`]), so spans and backoffs keep
    /// running when the wall clock steps back.
    fn rules(&self, record: &AccountRecord, outcome: &Outcome) -> Rules {
        let now = steady_time(record, self.clock.now());
        let threshold = self.threshold();
        let signature = match outcome {
            Outcome::Probe(_, Verdict::Undocumented { signature, .. }) => Some(signature.as_str()),
            _ => None,
        };
        let (hold, others_passed_at, others_same_answer_at) = {
            let incidents = self.incidents.lock().unwrap_or_else(|e| e.into_inner());
            (
                incidents.hold(record.key.provider, threshold),
                // Only an undocumented answer needs it, and it walks the provider's accounts.
                signature.and_then(|_| incidents.others_passed_at(&record.key, now, threshold)),
                signature.and_then(|s| incidents.others_same_answer_at(&record.key, s)),
            )
        };
        let c = self.config.borrow();
        Rules {
            now,
            confirm_after: c.verify.confirm_after,
            recheck: c.verify.suspended_interval,
            retry: backoff(
                record.failures.saturating_add(1),
                c.rotation.retry_initial,
                c.rotation.retry_max,
                &mut rand::rng(),
            ),
            renews: self.upstreams.get(record.key.provider).renews(),
            hold,
            others_passed_at,
            others_same_answer_at,
        }
    }

    /// Judges `outcome` against the account's newest record and stores the result; the one
    /// path by which any upstream result reaches the registry. Work for a registration that
    /// is gone is dropped; a save that lost a race with other work is judged again.
    pub(super) async fn apply(
        &self,
        key: &AccountKey,
        generation: i64,
        outcome: Outcome,
    ) -> Result<Arc<AccountRecord>, EngineError> {
        for _ in 0..3 {
            let Some(current) = self
                .registry
                .account(key)
                .filter(|a| a.generation == generation)
            else {
                tracing::warn!(provider = %key.provider, account = %key.name, "the account was removed (or removed and added again) while work was in flight; its result is dropped");
                return Err(EngineError::Registry(RegistryError::Stale(key.clone())));
            };
            let rules = self.rules(&current, &outcome);
            let (next, notes) = transition(&current, outcome.clone(), &rules);
            match self.registry.save(next, notes.clone(), rules.now).await {
                Ok(saved) => {
                    self.report(&current, &saved, &notes);
                    return Ok(saved);
                }
                Err(RegistryError::Stale(_)) => continue,
                Err(e @ RegistryError::LeaseLost(_)) => {
                    self.metrics.lease("lost");
                    tracing::warn!(provider = %key.provider, account = %key.name, "the lease on this account ran out while this daemon worked on it and another daemon took it over; this result is not stored over newer work");
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Registry(RegistryError::Stale(key.clone())))
    }
}

/// A call's turn at its provider: to be waited for (pacing, then a permit), or already
/// taken (the first call of an operation, whose turn comes before its lease).
pub(super) enum Turn<'a> {
    Wait(Class),
    Taken(Option<SemaphorePermit<'a>>),
}

impl Engine {
    /// Waits for the turn unless it was already taken; the permit is held until the call ends.
    async fn take_turn<'a>(
        &'a self,
        provider: Provider,
        turn: Turn<'a>,
    ) -> Option<SemaphorePermit<'a>> {
        match turn {
            Turn::Wait(class) => self.pace(provider, class).await,
            Turn::Taken(permit) => permit,
        }
    }
}

/// The fleet-wide lease on an account while work on it runs, given back when dropped.
pub(super) struct Lease<'a>(Option<(&'a Registry, AccountKey)>);

impl Lease<'_> {
    /// Gives the lease back once the work is stored, and waits until it is: the caller's
    /// answer must not reach someone who then finds the account still leased.
    pub(super) async fn give_back(mut self) {
        if let Some((registry, key)) = self.0.take() {
            registry.release_now(&key).await;
        }
    }
}

impl Drop for Lease<'_> {
    /// Work that ended early (an error, a cancelled task) gives the lease back too.
    fn drop(&mut self) {
        if let Some((registry, key)) = &self.0 {
            registry.release(key);
        }
    }
}

/// The time the account's schedule is judged at: `now`, or later when the wall clock stepped
/// back since this daemon saved the account (its save time plus the monotonic time elapsed
/// since, [`AccountRecord::saved`]).
pub(super) fn steady_time(record: &AccountRecord, now: Timestamp) -> Timestamp {
    match record.saved {
        Some(s) => now.max(s.at.plus(s.instant.elapsed())),
        None => now,
    }
}

/// Which token a probe-only operation checks: the candidate first, else the served one.
fn probe_work(account: &AccountRecord) -> Result<Work, EngineError> {
    match (&account.candidate, &account.current) {
        (Some(_), _) => Ok(Work::Verify(Probed::Candidate)),
        (None, Some(_)) => Ok(Work::Verify(Probed::Served)),
        (None, None) => Err(EngineError::Nothing((crate::providers::rules(
            account.key.provider,
        )
        .no_token_hint)(&account.key))),
    }
}

fn flagged(record: &AccountRecord) -> EngineError {
    EngineError::Flagged {
        key: record.key.clone(),
        status: record.status,
        message: record.last_error.clone().unwrap_or_default(),
    }
}

fn failed(record: &AccountRecord) -> EngineError {
    if record.status.is_flagged() {
        return flagged(record);
    }
    EngineError::Upstream {
        key: record.key.clone(),
        message: record
            .last_error
            .clone()
            .unwrap_or_else(|| "no working token yet".into()),
    }
}

fn stopping() -> EngineError {
    EngineError::Nothing("the daemon is stopping; no new upstream call is started".into())
}

use super::plan::usable;
