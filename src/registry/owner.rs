//! The registry's owner thread: the one place the store (SQLite or PostgreSQL) is used.
//!
//! It works in rounds. A round takes everything queued at that moment: the calls (reads,
//! leases, registrations, OAuth states, the audit) run first, in order, each as before; then the
//! saves are written in one transaction with one fsync, and only after that commit is each
//! record published to the in-memory copy and acknowledged, so "stored before served" holds
//! for every one of them. While a round waits for its fsync the next round's work queues up,
//! so the busier the registry, the more saves share one fsync.
//!
//! Running a round's calls before its saves reorders only jobs that were in the queue
//! together: none of their senders had an answer yet, so none can have depended on another,
//! and each sender's own jobs keep their order (a sender waits for each answer). A read of
//! the refresh token thus never waits for other accounts' fsync, nor splits their batch.
//!
//! A panic in a job is caught and logged with what was being done; the thread goes on (the
//! open transaction rolls back as it unwinds), so one bad value cannot close the registry
//! for every later write.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::store::{LeaseAnswer, Save, Store};
use super::{AccountRecord, Cache, Note, RegistryError, WriteHealth, publish, read};
use crate::clock::Timestamp;
use crate::names::AccountKey;

/// How often the owner thread retries writing records kept in memory.
const RETRY_UNSAVED: Duration = Duration::from_secs(2);

/// The most jobs taken in one round, so one round's transaction stays small.
const MAX_ROUND: usize = 512;

/// A job run on the store.
pub(super) type StoreCall = Box<dyn FnOnce(&mut dyn Store) + Send>;

/// Work for the owner thread.
pub(super) enum Job {
    /// Anything on the connection: reads, registrations, OAuth states, the audit.
    Call(StoreCall),
    /// A record to store, group-committed with the saves queued beside it.
    Save(SaveJob),
    /// A fleet-wide lease to take, taken together with the leases queued beside it.
    Lease(LeaseJob),
    /// A lease to give back, given back together with the others queued beside it; `done`
    /// is told once it is.
    Release(AccountKey, Option<oneshot::Sender<()>>),
}

/// One lease to take and whom to tell.
pub(super) struct LeaseJob {
    /// The record the work was planned from: the lease is granted only while it is the
    /// stored one.
    pub record: Arc<AccountRecord>,
    /// How long the lease lasts unless given back.
    pub lease: Duration,
    /// Told the answer.
    pub reply: oneshot::Sender<Result<LeaseAnswer, RegistryError>>,
}

/// One record to store and whom to tell.
pub(super) struct SaveJob {
    /// The record, carrying its new revision.
    pub record: Arc<AccountRecord>,
    /// The revision it was computed from.
    pub expected: i64,
    /// What it adds to the history.
    pub notes: Vec<Note>,
    /// When.
    pub at: Timestamp,
    /// Told once the record is stored and published, or why not.
    pub reply: oneshot::Sender<Result<(), RegistryError>>,
}

/// Runs rounds until every registry handle is gone.
pub(super) fn run(
    mut store: Box<dyn Store + Send>,
    rx: Receiver<Job>,
    cache: Cache,
    health: WriteHealth,
) {
    let conn = store.as_mut();
    loop {
        let first = match rx.recv_timeout(RETRY_UNSAVED) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                guarded("writing back records kept in memory", || {
                    store_unsaved(conn, &cache, &health)
                });
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut calls = Vec::new();
        let mut saves = Vec::new();
        let mut leases = Vec::new();
        let mut releases = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(job) = next.take() {
            match job {
                Job::Call(f) => calls.push(f),
                Job::Save(s) => saves.push(s),
                Job::Lease(l) => leases.push(l),
                Job::Release(key, done) => releases.push((key, done)),
            }
            taken += 1;
            if taken < MAX_ROUND {
                next = rx.try_recv().ok();
            }
        }
        // Records kept in memory go first, so a later write never lands before them.
        guarded("writing back records kept in memory", || {
            store_unsaved(conn, &cache, &health)
        });
        for f in calls {
            guarded("a registry job", || f(&mut *conn));
        }
        // Leases given back go before leases taken, so an account released and asked for
        // again in one round is free when asked for.
        if !releases.is_empty() {
            guarded("giving leases back", || give_back(conn, releases));
        }
        if !leases.is_empty() {
            guarded("taking leases", || take_leases(conn, leases));
        }
        if !saves.is_empty() {
            guarded("storing account records", || {
                commit(conn, &cache, &health, saves)
            });
        }
    }
}

/// Takes a round's leases in one statement where the store can (one commit instead of one
/// per account: on PostgreSQL the commits, not the upstream calls, bounded a daemon's sweep).
fn take_leases(conn: &mut dyn Store, jobs: Vec<LeaseJob>) {
    let wanted: Vec<(&AccountRecord, Duration)> =
        jobs.iter().map(|j| (&*j.record, j.lease)).collect();
    let answers = conn.lease_all(&wanted);
    drop(wanted);
    match answers {
        Ok(answers) => {
            for (job, answer) in jobs.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
        }
        Err(e) => fail_all(
            jobs.into_iter().map(|j| j.reply),
            e,
            RegistryError::Postgres,
        ),
    }
}

/// Tells every waiter of a batch that failed: the first gets the error itself, the others
/// its text as `others` (errors are not `Clone`).
fn fail_all<T>(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<T, RegistryError>>>,
    e: RegistryError,
    others: fn(String) -> RegistryError,
) {
    let why = e.to_string();
    let mut first = Some(e);
    for reply in replies {
        let error = first.take().unwrap_or_else(|| others(why.clone()));
        let _ = reply.send(Err(error));
    }
}

/// Gives a round's leases back together. A lease that cannot be given back runs out by
/// itself, so a failure is only logged.
fn give_back(conn: &mut dyn Store, jobs: Vec<(AccountKey, Option<oneshot::Sender<()>>)>) {
    let keys: Vec<AccountKey> = jobs.iter().map(|(k, _)| k.clone()).collect();
    if let Err(e) = conn.release_all(&keys) {
        tracing::debug!(accounts = keys.len(), error = %e, "cannot give leases back; they run out by themselves");
    }
    for (_, done) in jobs {
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

/// Runs `f`, logging a panic with what was being done instead of ending the thread.
fn guarded(what: &str, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!(panic = %message, "the registry thread panicked while {what}; that work is lost, the registry goes on");
    }
}

/// Writes a batch of saves in one transaction; publishes and acknowledges each after the
/// commit. Memory is never behind the disk, so it decides which saves are stale.
fn commit(conn: &mut dyn Store, cache: &Cache, health: &WriteHealth, batch: Vec<SaveJob>) {
    let mut latest: HashMap<AccountKey, (i64, i64)> = HashMap::new();
    let mut current = Vec::with_capacity(batch.len());
    for job in batch {
        let key = &job.record.key;
        let stored = latest
            .get(key)
            .copied()
            .or_else(|| read(cache).get(key).map(|c| (c.generation, c.revision)));
        if stored == Some((job.record.generation, job.expected)) {
            latest.insert(key.clone(), (job.record.generation, job.record.revision));
            current.push(job);
        } else {
            let _ = job.reply.send(Err(RegistryError::Stale(key.clone())));
        }
    }
    if current.is_empty() {
        return;
    }
    let behind = health.lock().accounts.clone();
    let saves: Vec<Save<'_>> = current
        .iter()
        .map(|j| Save {
            record: &j.record,
            // The disk is asked too, unless a refused write left it behind memory.
            expected: (!behind.contains(&j.record.key)).then_some(j.expected),
            notes: &j.notes,
            at: j.at,
        })
        .collect();
    let result = conn.save_all(&saves);
    drop(saves);
    match result {
        Ok(()) => {
            // How many saves shared the fsync: the figure that says whether group commit works.
            tracing::debug!(saves = current.len(), "committed account records");
            acknowledge(cache, health, current);
        }
        // One save the store calls stale (or whose lease another daemon took over) fails the
        // whole transaction: write them one by one.
        Err(RegistryError::Stale(_) | RegistryError::LeaseLost(_)) if current.len() > 1 => {
            for job in current {
                commit(conn, cache, health, vec![job]);
            }
        }
        Err(e) => {
            // Another daemon saved the account (its notice not here yet): memory learns the
            // stored record, so the saver's next try is judged on it.
            if let (RegistryError::Stale(key), [_]) = (&e, current.as_slice())
                && let Err(load) =
                    super::merge_from_store(conn, cache, health, key, &Default::default())
            {
                tracing::debug!(account = %key, error = %load, "cannot reload the account after a refused save");
            }
            fail_all(
                current.into_iter().map(|j| j.reply),
                e,
                RegistryError::Unwritable,
            );
        }
    }
}

/// After the commit: publish in order, then tell each saver.
fn acknowledge(cache: &Cache, health: &WriteHealth, stored: Vec<SaveJob>) {
    {
        let mut unsaved = health.lock();
        for job in &stored {
            unsaved.accounts.remove(&job.record.key);
        }
        if unsaved.accounts.is_empty() && unsaved.error.take().is_some() {
            tracing::info!("the registry is writable again");
        }
    }
    for job in stored {
        let result = if publish(cache, &job.record) {
            Ok(())
        } else {
            Err(RegistryError::Stale(job.record.key.clone()))
        };
        let _ = job.reply.send(result);
    }
}

/// Writes the records kept in memory after failed writes (tokens, status, times), all in
/// one transaction; on failure they stay in memory for the next attempt.
fn store_unsaved(conn: &mut dyn Store, cache: &Cache, health: &WriteHealth) {
    let keys: Vec<AccountKey> = health.lock().accounts.iter().cloned().collect();
    if keys.is_empty() {
        return;
    }
    let records: Vec<Arc<AccountRecord>> = {
        let cache = read(cache);
        keys.iter().filter_map(|k| cache.get(k).cloned()).collect()
    };
    let saves: Vec<Save<'_>> = records
        .iter()
        .map(|r| Save {
            record: r,
            expected: None,
            notes: &[],
            at: r.status_since,
        })
        .collect();
    match conn.save_all(&saves) {
        Ok(()) => {
            let mut unsaved = health.lock();
            for k in &keys {
                unsaved.accounts.remove(k);
            }
            if unsaved.accounts.is_empty() {
                unsaved.error = None;
            }
            drop(unsaved);
            tracing::info!(
                accounts = keys.len(),
                "stored the tokens kept in memory; the registry is writable again"
            );
        }
        Err(RegistryError::NotFound(k) | RegistryError::Stale(k)) => {
            health.lock().accounts.remove(&k);
        }
        Err(e) => {
            tracing::error!(error = %e, accounts = keys.len(), "still cannot write the registry; the new tokens stay in memory");
            if let Some(c) = &health.errors {
                c.inc();
            }
            health.lock().error = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;
    use std::sync::mpsc::channel;

    use super::*;
    use crate::names::Status;
    use crate::registry::sqlite::open_blocking;
    use crate::registry::{NewAccount, Registry};
    use crate::secret::Secret;

    fn key(s: &str) -> AccountKey {
        AccountKey::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A save of `record` that activates it, and the receiver of its answer.
    fn save(
        record: &AccountRecord,
        at: Timestamp,
    ) -> (Job, oneshot::Receiver<Result<(), RegistryError>>) {
        let mut next = record.clone();
        next.status = Status::Active;
        next.revision = record.revision + 1;
        let (reply, answer) = oneshot::channel();
        let job = Job::Save(SaveJob {
            record: Arc::new(next),
            expected: record.revision,
            notes: Vec::new(),
            at,
            reply,
        });
        (job, answer)
    }

    #[tokio::test]
    async fn a_read_queued_behind_saves_runs_before_their_commit_and_they_are_all_stored() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_secs(1_800_000_000);
        let names = ["a", "b", "c"];
        {
            let reg = Registry::open(dir.path()).await.unwrap();
            for n in names {
                let new = NewAccount {
                    key: key(&format!("shiphero/{n}")),
                    email: Some(format!("{n}@x.io")),
                    first_name: None,
                    last_name: None,
                    refresh_token: Some(Secret::new(format!("refresh-{n}-aaaaaaaa"))),
                    access_token: None,
                };
                reg.add(new, t0).await.unwrap();
            }
        }
        let (conn, records) =
            open_blocking(dir.path(), &dir.path().join("registry.db"), None).unwrap();
        let by_name = |n: &str| records.iter().find(|r| &*r.key.name == n).cloned().unwrap();
        let cache: Cache = Arc::new(RwLock::new(
            records
                .iter()
                .map(|r| (r.key.clone(), Arc::new(r.clone())))
                .collect(),
        ));
        // Queued before the owner thread starts: one round, in this order.
        let (jobs, rx) = channel();
        let (save_a, answer_a) = save(&by_name("a"), t0);
        jobs.send(save_a).unwrap();
        let (seen, saw) = oneshot::channel();
        let (seen_cache, b) = (cache.clone(), key("shiphero/b"));
        jobs.send(Job::Call(Box::new(move |store: &mut dyn Store| {
            let a_published = read(&seen_cache)[&key("shiphero/a")].status == Status::Active;
            let _ = seen.send((a_published, store.refresh_token(&b)));
        })))
        .unwrap();
        let (save_c, answer_c) = save(&by_name("c"), t0);
        jobs.send(save_c).unwrap();
        drop(jobs);
        let thread_cache = cache.clone();
        let owner = std::thread::spawn(move || {
            run(Box::new(conn), rx, thread_cache, WriteHealth::default());
        });
        let (a_published, refresh) = saw.await.unwrap();
        // The read ran first: it did not wait for the commit of the saves queued before it.
        assert!(!a_published);
        assert_eq!(
            refresh.unwrap().map(|s| s.expose().to_string()),
            Some("refresh-b-aaaaaaaa".into())
        );
        answer_a.await.unwrap().unwrap();
        answer_c.await.unwrap().unwrap();
        owner.join().unwrap();
        for n in ["a", "c"] {
            assert_eq!(
                read(&cache)[&key(&format!("shiphero/{n}"))].status,
                Status::Active
            );
        }
        let (_, stored) = open_blocking(dir.path(), &dir.path().join("registry.db"), None).unwrap();
        assert!(
            stored
                .iter()
                .all(|r| (r.status == Status::Active) == (&*r.key.name != "b"))
        );
    }
}
