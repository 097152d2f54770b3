//! The rotation engine: finds the work each account needs ([`plan`]), does the upstream calls
//! through the providers' [`Upstream`] trait, judges what came back with the pure state
//! machine ([`judge::transition`]), and stores the result before anything is served.
//!
//! Data flows one way: scheduler -> engine -> provider call -> transition -> registry. Work is
//! bound to one registration of an account (its generation) and every save is conditional
//! on the revision it was computed from, so a result never lands on an account that was
//! removed and added again. Each provider's work runs in a lane of its own (its queue, pacer
//! and permits), and every upstream call waits for its provider's pacing, then for one of its
//! provider's permits: one provider's pacing or trouble never holds another's work.

pub mod incident;
pub mod judge;
mod lanes;
pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{SemaphorePermit, watch};

pub use judge::{Outcome, Probed, Rules};
pub use lanes::LaneState;
pub use plan::{Policy, Work, backoff, next_check, plan, refresh_point, usable};

use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::names::{AccountKey, Provider, Status};
use crate::notify::Notifier;
use crate::pacing::{Class, Pacer, Rate};
use crate::providers::Providers;
use crate::registry::{Registry, RegistryError};
use incident::{Incidents, Threshold};

/// Hands memory freed after a sweep back to the OS. glibc keeps freed heap in its per-thread
/// arenas, so after one sweep of thousands of accounts the resident size would otherwise
/// stay at its peak for good. A few milliseconds, once per sweep that had work.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer.
    // No crate wraps it, and it is the only way to hand glibc's arenas back.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Why a requested operation did not end with a working token.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The account is flagged.
    #[error("{key} is {status}: {message}")]
    Flagged {
        /// The account.
        key: AccountKey,
        /// Its status.
        status: Status,
        /// What the provider said.
        message: String,
    },
    /// The try proved nothing (an outage, throttling, a proxy's answer, evidence not yet
    /// confirmed); the status is unchanged.
    #[error("{key}: {message}")]
    Upstream {
        /// The account.
        key: AccountKey,
        /// What went wrong.
        message: String,
    },
    /// Another daemon sharing the registry holds the account's lease: it is refreshing or
    /// checking it right now, and its result reaches this daemon within a second.
    #[error(
        "{key}: in progress on {holder}, which shares this registry and is refreshing or checking it right now; its result is served here as soon as it is stored: try again in a few seconds"
    )]
    Elsewhere {
        /// The account.
        key: AccountKey,
        /// `registry.host_name` of the daemon working on it.
        holder: String,
    },
    /// The account has nothing to act on (e.g. a Shippo account still waiting for OAuth), or
    /// the daemon is stopping.
    #[error("{0}")]
    Nothing(String),
}

/// Runs refreshes and probes; one operation per account at a time, and at most
/// `rotation.concurrency` upstream calls in flight.
pub struct Engine {
    registry: Registry,
    upstreams: Providers,
    clock: Clock,
    metrics: Metrics,
    config: watch::Receiver<Arc<Config>>,
    /// One lane per provider ([`Provider::ALL`] order): its queue, pacer and permits.
    lanes: Vec<lanes::Lane>,
    /// The number of the last sweep planned.
    sweeps: AtomicU64,
    /// The newest sweep every lane had finished, as last counted in the metrics.
    swept: Mutex<Timestamp>,
    account_locks: Mutex<HashMap<AccountKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Accounts whose freshly issued candidate token is being probed right now; readers wait
    /// for the outcome rather than get a token that may be superseded a moment later.
    probing: Mutex<HashSet<AccountKey>>,
    /// Bumped whenever a candidate probe ends, to wake those readers.
    probe_ended: watch::Sender<u64>,
    /// Where status changes are reported besides logs and metrics.
    notifier: Notifier,
    /// Many accounts of one provider answering with evidence at once.
    incidents: Mutex<Incidents>,
    /// Set on shutdown: no new upstream call starts; a token already issued is still stored.
    stopping: AtomicBool,
    /// Each account's budget at its provider, learned from throttled answers (the engine's
    /// and the proxy's).
    budgets: budget::Budgets,
}

/// Removes the account from `probing` and wakes waiting readers, however the probe ends.
struct ProbingGuard<'a> {
    engine: &'a Engine,
    key: AccountKey,
}

impl Drop for ProbingGuard<'_> {
    fn drop(&mut self) {
        self.engine
            .probing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        self.engine.probe_ended.send_modify(|n| *n += 1);
    }
}

impl Engine {
    /// Builds the engine.
    pub fn new(
        registry: Registry,
        upstreams: Providers,
        clock: Clock,
        metrics: Metrics,
        config: watch::Receiver<Arc<Config>>,
    ) -> Engine {
        let start = clock.now();
        let lanes = Provider::ALL
            .into_iter()
            .map(|p| lanes::Lane::new(p, config.borrow().upstream(p).concurrency, start))
            .collect();
        Engine {
            registry,
            upstreams,
            clock,
            metrics,
            config,
            lanes,
            sweeps: AtomicU64::new(0),
            swept: Mutex::new(start),
            account_locks: Mutex::new(HashMap::new()),
            probing: Mutex::new(HashSet::new()),
            probe_ended: watch::channel(0).0,
            notifier: Notifier::disabled(),
            incidents: Mutex::new(Incidents::default()),
            stopping: AtomicBool::new(false),
            budgets: budget::Budgets::default(),
        }
    }

    /// Each account's budget at its provider, which the proxy shares with the engine's probes.
    pub fn budgets(&self) -> &budget::Budgets {
        &self.budgets
    }

    /// Reports status changes through `notifier` (webhooks, a command).
    pub fn with_notifier(mut self, notifier: Notifier) -> Engine {
        self.notifier = notifier;
        self
    }

    /// Starts no upstream call from now on. Work in flight finishes its call, and a token a
    /// provider already issued is stored (not probed), so shutdown never loses one.
    pub fn stop_new_work(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// How long shutdown waits for work in flight: the longest provider timeout, so a
    /// token issued at the last moment is still stored, plus time to store it.
    pub fn stop_grace(&self) -> Duration {
        let c = self.config.borrow();
        let longest = Provider::ALL
            .into_iter()
            .map(|p| c.upstream(p).timeout)
            .max()
            .unwrap_or_default();
        longest + Duration::from_secs(5)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The providers with an incident going on, and since when.
    pub fn incidents(&self) -> Vec<(Provider, Timestamp)> {
        let incidents = self.incidents.lock().unwrap_or_else(|e| e.into_inner());
        Provider::ALL
            .into_iter()
            .filter_map(|p| incidents.since(p).map(|t| (p, t)))
            .collect()
    }

    fn policy(&self) -> Policy {
        Policy::from_config(&self.config.borrow())
    }

    fn threshold(&self) -> Threshold {
        let c = self.config.borrow();
        Threshold {
            share: c.verify.incident_share,
            min_accounts: c.verify.incident_min_accounts,
            window: c.verify.incident_window,
        }
    }

    fn pacer(&self, provider: Provider) -> &Pacer {
        &self.lane(provider).pacer
    }

    /// Waits for the provider's pacing (read from the live config, so a reload applies),
    /// then for one of the provider's permits, held until the call ends. Pacing comes first:
    /// a call waiting for its slot holds nothing another call could use.
    async fn pace(&self, provider: Provider, class: Class) -> Option<SemaphorePermit<'_>> {
        let rate: Rate = self.config.borrow().upstream(provider).pace;
        self.pacer(provider).wait(rate, class).await;
        // Err only if the semaphore were closed, which the engine never does.
        self.lane(provider).permits.acquire().await.ok()
    }

    /// The lock that keeps this daemon's work on one account one at a time. Its entry leaves
    /// the map with its last user, so the map holds only accounts being worked on.
    fn account_lock<'a>(&'a self, key: &'a AccountKey) -> AccountLock<'a> {
        let mut locks = self.account_locks.lock().unwrap_or_else(|e| e.into_inner());
        let lock = locks.entry(key.clone()).or_default().clone();
        AccountLock {
            engine: self,
            key,
            lock,
        }
    }
}

/// One user's share of an account's lock ([`Engine::account_lock`]); lock it with `lock` or
/// `try_lock`, and keep it beside the guard.
struct AccountLock<'a> {
    engine: &'a Engine,
    key: &'a AccountKey,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::ops::Deref for AccountLock<'_> {
    type Target = tokio::sync::Mutex<()>;

    fn deref(&self) -> &Self::Target {
        &self.lock
    }
}

impl Drop for AccountLock<'_> {
    fn drop(&mut self) {
        let mut locks = self
            .engine
            .account_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Shares are only handed out under this map's lock, so two (the map's and this one)
        // means nobody else holds or waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(self.key);
            if locks.capacity() > 64 && locks.len() < locks.capacity() / 4 {
                locks.shrink_to_fit();
            }
        }
    }
}

pub mod budget;
mod observe;
mod passive;
mod work;
