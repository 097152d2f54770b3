//! One lane per provider: its queue of due work, its pacer and its concurrency permits,
//! worked by a task of its own. A lane is the bulkhead between providers: nothing one
//! provider waits on (its pacing, a throttle, an incident, a hung upstream, its backoff)
//! delays another provider's refreshes, probes, confirmations or adds.
//!
//! A sweep only plans: it offers each lane the accounts due now and returns. A lane takes new
//! work while older work still waits for its pacing, so a confirmation that falls due while
//! a queue of new accounts waits for a slot is started next, not after the queue. An account
//! is in a lane's queue once at most; offered again, it keeps its place and takes the newer
//! plan. A lane knows which sweeps' work it has finished, so `/v1/health` can say when every
//! account due at a sweep's time had been worked ([`Engine::swept_through`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::plan::{Work, plan};
use super::{Engine, release_freed_memory};
use crate::clock::Timestamp;
use crate::names::{AccountKey, Provider};
use crate::pacing::{Class, Pacer, URGENT_STREAK};
use crate::registry::AccountRecord;

/// One provider's share of the engine.
pub(super) struct Lane {
    /// The provider whose work this is.
    pub(super) provider: Provider,
    /// The provider's bucket, shared by sweeps and manual work.
    pub(super) pacer: Pacer,
    /// Calls of this provider in flight at once (`[<provider>] concurrency`, read at start).
    pub(super) permits: Semaphore,
    queue: Mutex<Queue>,
    /// Wakes the lane's worker when work is offered.
    offered: Notify,
}

/// Work offered to a lane and not finished yet.
struct Queue {
    /// Due work not started, by account.
    waiting: HashMap<AccountKey, Queued>,
    /// The waiting accounts of each rank, by arrival: urgent ones start first.
    urgent: BTreeSet<(u64, AccountKey)>,
    routine: BTreeSet<(u64, AccountKey)>,
    /// Accounts whose work has started and not ended.
    running: HashSet<AccountKey>,
    /// Sweeps with work not finished: sweep number -> how many accounts left.
    open: BTreeMap<u64, usize>,
    /// The time of each sweep offered since the oldest open one (and the newest before it).
    times: BTreeMap<u64, Timestamp>,
    /// The newest sweep whose work in this lane is all finished, and when it finished.
    swept: (u64, Timestamp),
    /// The next arrival number.
    arrivals: u64,
    /// Urgent work started in a row while routine work waited (see [`URGENT_STREAK`]).
    streak: u32,
}

/// Which queued work starts first: urgent work, then routine work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Urgent,
    Routine,
}

/// An account's work in a lane's queue.
struct Queued {
    work: Work,
    /// The revision the work was planned from: work on a record saved since (by another
    /// daemon, or an operator's rotate) is void, and the next sweep plans again.
    planned_from: i64,
    rank: Rank,
    arrival: u64,
    /// The sweep that offered it; `None` for work no sweep waits for.
    sweep: Option<u64>,
}

/// An account's work found by a sweep.
pub(super) struct Due {
    pub(super) key: AccountKey,
    pub(super) work: Work,
    pub(super) planned_from: i64,
    /// A confirmation, an expiry or a flagged account's re-check: starts before routine work.
    pub(super) urgent: bool,
}

/// What a lane shows of itself in `/v1/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LaneState {
    /// Accounts whose due work has not started.
    pub queued: usize,
    /// Accounts whose work is under way (waiting for a pacing slot included).
    pub running: usize,
    /// Calls waiting for a pacing slot.
    pub waiting_for_pace: usize,
    /// When the newest sweep whose due work in this lane has all been done finished.
    pub swept_through: Timestamp,
}

impl Lane {
    /// A lane for `provider` with `concurrency` calls in flight at most.
    pub(super) fn new(provider: Provider, concurrency: usize, start: Timestamp) -> Lane {
        Lane {
            provider,
            pacer: Pacer::default(),
            permits: Semaphore::new(concurrency.max(1)),
            queue: Mutex::new(Queue {
                waiting: HashMap::new(),
                urgent: BTreeSet::new(),
                routine: BTreeSet::new(),
                running: HashSet::new(),
                open: BTreeMap::new(),
                times: BTreeMap::new(),
                swept: (0, start),
                arrivals: 0,
                streak: 0,
            }),
            offered: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers sweep `sweep`'s due work (planned at `at`). Work already running is left to
    /// end (the next sweep plans again from what it stored); work already waiting keeps its
    /// place and takes the newer plan.
    fn offer(&self, sweep: u64, at: Timestamp, due: Vec<Due>) {
        let mut q = self.lock();
        let mut added = 0;
        for d in due {
            let rank = if d.urgent {
                Rank::Urgent
            } else {
                Rank::Routine
            };
            if q.running.contains(&d.key) {
                continue;
            }
            if q.waiting.contains_key(&d.key) {
                q.replan(&d.key, d.work, d.planned_from, rank);
                continue;
            }
            q.push(d.key, d.work, d.planned_from, rank, Some(sweep));
            added += 1;
        }
        if added > 0 {
            q.open.insert(sweep, added);
        }
        q.times.insert(sweep, at);
        q.settle(at);
        drop(q);
        self.offered.notify_one();
    }

    /// Queues work an operator asked for (the first check of a new account, planned from
    /// `revision`) ahead of routine work; no sweep waits for it.
    pub(super) fn offer_urgent(&self, key: AccountKey, work: Work, revision: i64) {
        let mut q = self.lock();
        if q.running.contains(&key) {
            return;
        }
        if q.waiting.contains_key(&key) {
            q.replan(&key, work, revision, Rank::Urgent);
        } else {
            q.push(key, work, revision, Rank::Urgent, None);
        }
        drop(q);
        self.offered.notify_one();
    }

    /// Takes the most urgent waiting work and marks it running; routine work goes after at
    /// most [`URGENT_STREAK`] urgent ones, as in the pacer.
    fn take(&self) -> Option<(AccountKey, Queued)> {
        let mut q = self.lock();
        let take_urgent = match (q.urgent.is_empty(), q.routine.is_empty()) {
            (true, true) => return None,
            (false, true) => true,
            (true, false) => false,
            (false, false) => q.streak < URGENT_STREAK,
        };
        let (_, key) = if take_urgent {
            if !q.routine.is_empty() {
                q.streak += 1;
            }
            q.urgent.pop_first()?
        } else {
            q.streak = 0;
            q.routine.pop_first()?
        };
        let queued = q.waiting.remove(&key)?;
        q.running.insert(key.clone());
        Some((key, queued))
    }

    /// Marks the account's work ended at `now`; returns whether that finished every sweep's
    /// work.
    fn finish(&self, key: &AccountKey, sweep: Option<u64>, now: Timestamp) -> bool {
        let mut q = self.lock();
        q.running.remove(key);
        if q.waiting.is_empty() && q.waiting.capacity() > 256 {
            // A sweep that queued the whole fleet left a table sized for it; an idle daemon
            // must not keep that memory until the next such sweep (issue 32 item 5).
            q.waiting.shrink_to_fit();
        }
        if let Some(s) = sweep
            && let Some(left) = q.open.get_mut(&s)
        {
            *left -= 1;
            if *left == 0 {
                q.open.remove(&s);
                q.settle(now);
            }
        }
        let idle = q.open.is_empty() && q.waiting.is_empty() && q.running.is_empty();
        if idle {
            // A sweep of thousands leaves tables sized for thousands; hand that memory back.
            q.waiting.shrink_to_fit();
            q.running.shrink_to_fit();
        }
        idle
    }

    /// What `/v1/health` shows of the lane.
    pub(super) fn state(&self) -> LaneState {
        let q = self.lock();
        LaneState {
            queued: q.waiting.len(),
            running: q.running.len(),
            waiting_for_pace: self.pacer.waiting(),
            swept_through: q.swept.1,
        }
    }

    /// When the newest sweep whose work in this lane is all done finished.
    pub(super) fn swept_through(&self) -> Timestamp {
        self.lock().swept.1
    }
}

impl Queue {
    fn push(
        &mut self,
        key: AccountKey,
        work: Work,
        planned_from: i64,
        rank: Rank,
        sweep: Option<u64>,
    ) {
        let arrival = self.arrivals;
        self.arrivals += 1;
        self.ranked(rank).insert((arrival, key.clone()));
        let queued = Queued {
            work,
            planned_from,
            rank,
            arrival,
            sweep,
        };
        self.waiting.insert(key, queued);
    }

    fn ranked(&mut self, rank: Rank) -> &mut BTreeSet<(u64, AccountKey)> {
        match rank {
            Rank::Urgent => &mut self.urgent,
            Rank::Routine => &mut self.routine,
        }
    }

    /// Newer plan for waiting work: the same place, unless it became urgent. The work and
    /// the revision it is planned from are replaced together, so the work done is always
    /// the one planned from the record it will find (or none, if that changed again).
    fn replan(&mut self, key: &AccountKey, work: Work, planned_from: i64, rank: Rank) {
        let Some(q) = self.waiting.get_mut(key) else {
            return;
        };
        q.work = work;
        q.planned_from = planned_from;
        if rank < q.rank {
            let (old, arrival) = (q.rank, q.arrival);
            q.rank = rank;
            self.ranked(old).remove(&(arrival, key.clone()));
            self.ranked(rank).insert((arrival, key.clone()));
        }
    }

    /// The newest sweep with no sweep at or before it still open becomes `swept`, finished
    /// at `now`; the times of sweeps before it are forgotten.
    fn settle(&mut self, now: Timestamp) {
        let oldest_open = self.open.keys().next().copied();
        let done = match oldest_open {
            None => self.times.last_key_value(),
            Some(o) => self.times.range(..o).next_back(),
        }
        .map(|(s, t)| (*s, *t));
        if let Some((s, _)) = done {
            // The wall-clock time as it is, even when it stepped back: the monotonic
            // measures of a stall are the scheduler's (LastSweep), not this.
            if s > self.swept.0 {
                self.swept = (s, now);
            }
            self.times = self.times.split_off(&s);
        }
    }
}

impl Engine {
    /// Plans the due work of every account at `now` and offers it to each provider's lane;
    /// returns at once with how many accounts had work. The lanes do the work.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let policy = self.policy();
        let mut due: Vec<Vec<Due>> = self.lanes.iter().map(|_| Vec::new()).collect();
        let accounts = self.registry.accounts();
        for a in &accounts {
            let steady = super::work::steady_time(a, now);
            let renews = self.upstreams.get(a.key.provider).renews();
            // Schedules (backoff, checks, refresh points) on the steady time; expiry on the
            // wall clock alone.
            let work = match plan(a, steady, policy, renews) {
                Some(Work::Expire) if steady > now => plan(a, now, policy, renews),
                other => other,
            };
            if let Some(work) = work {
                due[self.lane_index(a.key.provider)].push(Due {
                    key: a.key.clone(),
                    work,
                    planned_from: a.revision,
                    urgent: urgent(a, work),
                });
            }
        }
        // The snapshot holds every account's record as it was before the sweep; kept, it
        // would keep each replaced record (tokens and all) alive while the lanes work.
        drop(accounts);
        let count = due.iter().map(Vec::len).sum();
        if self.registry.is_shared() {
            // Daemons sharing the registry see the same due accounts in the same order; each
            // starts at its own place in the list, so their leases seldom meet.
            let start = {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                self.config.borrow().registry.host_name.hash(&mut h);
                h.finish()
            };
            for list in &mut due {
                if !list.is_empty() {
                    let len = u64::try_from(list.len()).unwrap_or(u64::MAX);
                    list.rotate_left(usize::try_from(start % len).unwrap_or(0));
                }
            }
        }
        let sweep = self
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        for (lane, list) in self.lanes.iter().zip(due) {
            lane.offer(sweep, now, list);
        }
        self.note_swept();
        count
    }

    /// When the last sweep finished in every lane: the oldest of the lanes' times at which
    /// the newest sweep whose due work they had all done finished. Every account due when
    /// that sweep was planned has been refreshed or checked (or was busy with an operator's
    /// work).
    pub fn swept_through(&self) -> Timestamp {
        self.lanes
            .iter()
            .map(Lane::swept_through)
            .min()
            .unwrap_or_else(|| self.clock.now())
    }

    /// Each provider's lane as `/v1/health` shows it.
    pub fn lanes(&self) -> Vec<(Provider, LaneState)> {
        self.lanes.iter().map(|l| (l.provider, l.state())).collect()
    }

    /// Counts a sweep in the metrics once every lane has finished it.
    fn note_swept(&self) {
        let through = self.swept_through();
        let mut last = self.swept.lock().unwrap_or_else(|e| e.into_inner());
        if through != *last {
            *last = through;
            self.metrics.sweep_done(self.clock.now());
        }
    }

    /// Works every provider's lane until `stop`; then lets the work in hand finish (a token
    /// a provider just issued gets stored) for at most [`Engine::stop_grace`].
    pub async fn run_lanes(self: Arc<Self>, stop: CancellationToken) {
        let workers = (0..self.lanes.len()).map(|i| self.clone().work_lane(i, stop.clone()));
        futures_util::future::join_all(workers).await;
    }

    /// One lane's worker: starts queued work, most urgent first, keeping at most twice the
    /// provider's concurrency in hand (enough that permits never idle while others write to
    /// the registry, few enough that memory does not grow with the queue).
    async fn work_lane(self: Arc<Self>, index: usize, stop: CancellationToken) {
        let lane = &self.lanes[index];
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let in_hand = self
                .config
                .borrow()
                .upstream(lane.provider)
                .concurrency
                .saturating_mul(2)
                .max(1);
            let ready = async {
                while tasks.len() >= in_hand {
                    tasks.join_next().await;
                }
            };
            tokio::select! {
                () = ready => {}
                () = stop.cancelled() => break,
            }
            let Some((key, queued)) = lane.take() else {
                tokio::select! {
                    () = lane.offered.notified() => {}
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    () = stop.cancelled() => break,
                }
                continue;
            };
            let engine = self.clone();
            tasks.spawn(async move {
                engine.work_one(&key, &queued).await;
                let lane = &engine.lanes[index];
                if lane.finish(&key, queued.sweep, engine.clock.now()) {
                    // The lane is idle: hand back what the work used (see release_freed_memory),
                    // again once the registry has committed the last saves and the finished
                    // tasks are gone, and once more when the connection pool has closed the
                    // work's connections (measured after a 10,000-account sweep: 1.7 MB). The
                    // pool checks every POOL_IDLE, so an idle connection is gone within twice it.
                    release_freed_memory();
                    tokio::spawn(async {
                        let settled = std::time::Duration::from_secs(2);
                        tokio::time::sleep(settled).await;
                        release_freed_memory();
                        let closed =
                            2 * crate::providers::POOL_IDLE + std::time::Duration::from_millis(500);
                        tokio::time::sleep(closed.saturating_sub(settled)).await;
                        release_freed_memory();
                    });
                }
                engine.note_swept();
            });
        }
        let grace = self.stop_grace();
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(provider = %lane.provider, "abandoned {} work still running at shutdown", lane.provider);
        }
    }

    /// Does one queued account's work. Skipped when an operator's rotate or verify is on the
    /// account right now (its lock is busy).
    async fn work_one(&self, key: &AccountKey, queued: &Queued) {
        let lock = self.account_lock(key);
        let Ok(_guard) = lock.try_lock() else { return };
        let class = match queued.rank {
            Rank::Urgent => Class::Urgent,
            Rank::Routine => Class::Routine,
        };
        if let Err(e) = self
            .perform(key, queued.work, Some(queued.planned_from), class)
            .await
        {
            tracing::debug!(account = %key, error = %e, "queued work ended without a working token");
        }
    }

    /// The lane of `provider`.
    pub(super) fn lane(&self, provider: Provider) -> &Lane {
        &self.lanes[self.lane_index(provider)]
    }

    fn lane_index(&self, provider: Provider) -> usize {
        self.lanes
            .iter()
            .position(|l| l.provider == provider)
            .unwrap_or_default()
    }

    /// Whether a call of `provider` could start now, or must wait for its pacing; when it
    /// must, about when it could start.
    pub(super) fn slot_wait(&self, provider: Provider) -> Option<Duration> {
        let lane = self.lane(provider);
        let rate = self.config.borrow().upstream(provider).pace;
        if lane.pacer.free_now(rate) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate.per_second.max(1e-6));
        let waiting = u32::try_from(lane.pacer.waiting() + 1).unwrap_or(u32::MAX);
        Some(interval.saturating_mul(waiting))
    }
}

/// Work that must not wait behind routine work: an expiry to record, evidence to confirm,
/// a flagged account's re-check.
fn urgent(account: &AccountRecord, work: Work) -> bool {
    work == Work::Expire
        || account.token_doubt.is_some()
        || account.renew_doubt.is_some()
        || account.status.is_flagged()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(name: &str) -> Due {
        Due {
            key: AccountKey::parse(&format!("shiphero/{name}")).unwrap(),
            work: Work::Refresh,
            planned_from: 1,
            urgent: false,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn a_sweep_counts_as_done_once_its_work_and_all_older_work_is() {
        let lane = Lane::new(Provider::ShipHero, 1, at(0));
        lane.offer(1, at(1), vec![due("a"), due("b")]);
        assert_eq!(lane.swept_through(), at(0));
        let (a, qa) = lane.take().unwrap();
        // Sweep 2 finds a running and b waiting: neither is its work.
        lane.offer(2, at(2), vec![due("a"), due("b")]);
        assert_eq!(lane.swept_through(), at(0));
        lane.finish(&a, qa.sweep, at(5));
        assert_eq!(lane.swept_through(), at(0), "b of sweep 1 still waits");
        let (b, qb) = lane.take().unwrap();
        lane.offer(3, at(3), vec![due("a")]);
        lane.finish(&b, qb.sweep, at(6));
        assert_eq!(
            lane.swept_through(),
            at(6),
            "sweep 2 finished at 6; 3's a is not done"
        );
        let (a, qa) = lane.take().unwrap();
        lane.finish(&a, qa.sweep, at(7));
        assert_eq!(lane.swept_through(), at(7));
        lane.offer(4, at(8), vec![]);
        assert_eq!(lane.swept_through(), at(8));
        assert!(lane.take().is_none());
    }

    #[test]
    fn urgent_work_goes_first_but_routine_work_still_moves() {
        let lane = Lane::new(Provider::ShipHero, 1, at(0));
        let mut list: Vec<Due> = (0..2).map(|i| due(&format!("r{i}"))).collect();
        list.extend((0..6).map(|i| Due {
            urgent: true,
            ..due(&format!("u{i}"))
        }));
        lane.offer(1, at(1), list);
        let order: Vec<String> =
            std::iter::from_fn(|| lane.take().map(|(k, _)| k.name.to_string())).collect();
        assert_eq!(order, ["u0", "u1", "u2", "u3", "r0", "u4", "u5", "r1"]);
    }
}
