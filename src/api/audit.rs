//! The socket's audit queue: every token handed out is queued in memory and written to the
//! registry in batches, so a read costs a short critical section, never a SQLite write.
//!
//! Reads of the same token by the same peer are merged as they arrive into one entry with a
//! count and a last time: an application polling its token thousands of times a second adds
//! one row per flush, and a repeated read allocates nothing. A flush happens every second, or
//! sooner once [`BATCH`] distinct entries wait. The queue is bounded: if the registry stalls,
//! entries beyond [`MAX_QUEUED`] are counted and dropped with a warning rather than growing
//! memory without limit. On shutdown the queue is flushed.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Peer;
use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::names::AccountKey;
use crate::registry::{AuditEntry, Registry};

/// Distinct entries written per transaction; reaching it wakes the flusher early.
pub const BATCH: usize = 500;
/// Entries held in memory at most while the registry is slow.
pub const MAX_QUEUED: usize = 100_000;
/// How often queued entries are written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often entries past `socket.audit_retention` are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A handle to the audit queue; cheap to clone.
#[derive(Clone, Default)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: Mutex<Queue>,
    /// Wakes the flusher when a batch is full.
    full: Notify,
    /// Entries lost because the queue was full.
    dropped: AtomicU64,
}

/// One token handed out, as the handler has it: borrowed, so that recording a read that
/// repeats a queued one allocates nothing.
pub struct Read<'a> {
    /// When it was handed out.
    pub at: Timestamp,
    /// The account whose token it was.
    pub account: &'a AccountKey,
    /// The `[[socket.clients]]` rule that allowed it, if any.
    pub client: Option<&'a str>,
    /// Who asked.
    pub peer: Peer,
    /// The peer's executable, when it could be read.
    pub exe: Option<&'a str>,
    /// `Secret::fingerprint` of the token handed out.
    pub fingerprint: &'a str,
}

impl Read<'_> {
    /// A hash of everything but the time: reads that hash alike (and compare alike) merge.
    fn identity(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (
            self.account,
            self.client,
            self.peer,
            self.exe,
            self.fingerprint,
        )
            .hash(&mut h);
        h.finish()
    }

    fn same_as(&self, e: &AuditEntry) -> bool {
        e.account == *self.account
            && e.client.as_deref() == self.client
            && e.uid == self.peer.uid
            && e.gid == self.peer.gid
            && e.pid == self.peer.pid
            && e.exe.as_deref() == self.exe
            && e.fingerprint == self.fingerprint
    }

    fn to_entry(&self) -> AuditEntry {
        AuditEntry {
            at: self.at,
            last_at: self.at,
            count: 1,
            account: self.account.clone(),
            client: self.client.map(str::to_string),
            uid: self.peer.uid,
            gid: self.peer.gid,
            pid: self.peer.pid,
            exe: self.exe.map(str::to_string),
            fingerprint: self.fingerprint.to_string(),
        }
    }
}

/// Entries waiting for the next flush, in the order of their first read.
#[derive(Default)]
struct Queue {
    entries: Vec<AuditEntry>,
    /// [`Read::identity`] to the index of the first entry with that hash. Equality is checked
    /// before merging; a read whose hash collides with a different entry's is looked up by a
    /// scan instead, so even then identical reads merge.
    index: HashMap<u64, usize>,
}

impl Queue {
    /// The queued entry `read` repeats, if any.
    fn find(&self, identity: u64, read: &Read<'_>) -> Option<usize> {
        let i = *self.index.get(&identity)?;
        if read.same_as(&self.entries[i]) {
            return Some(i);
        }
        self.entries.iter().position(|e| read.same_as(e))
    }
}

impl AuditLog {
    /// An empty queue.
    pub fn new() -> AuditLog {
        AuditLog::default()
    }

    /// Queues a read, merged into a queued entry when it repeats one. Never blocks on I/O.
    pub fn record(&self, read: Read<'_>) {
        let identity = read.identity();
        let len = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = q.find(identity, &read) {
                let entry = &mut q.entries[i];
                entry.count += 1;
                entry.last_at = entry.last_at.max(read.at);
                return;
            }
            if q.entries.len() >= MAX_QUEUED {
                drop(q);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.entries.push(read.to_entry());
            let len = q.entries.len();
            q.index.entry(identity).or_insert(len - 1);
            len
        };
        if len == BATCH {
            self.inner.full.notify_one();
        }
    }

    fn take(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut *self.inner.queue.lock().unwrap_or_else(|e| e.into_inner())).entries
    }

    /// Writes what is queued now; used by the flusher and by tests that read the audit.
    pub async fn flush(&self, registry: &Registry) {
        let lost = self.inner.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                lost,
                "the audit queue was full (registry too slow); entries were dropped"
            );
        }
        let mut entries = self.take();
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(BATCH));
            if let Err(e) = registry.append_audit(entries).await {
                tracing::error!(error = %e, "cannot write audit entries; they are lost");
            }
            entries = rest;
        }
    }

    /// Flushes every second (or when a batch fills) and prunes entries older than
    /// `socket.audit_retention`, until `shutdown`; then flushes what is left.
    pub async fn run(
        self,
        registry: Registry,
        clock: Clock,
        config: watch::Receiver<Arc<Config>>,
        shutdown: CancellationToken,
    ) {
        let mut next_prune = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_prune {
                let retention = config.borrow().socket.audit_retention;
                let now = clock.now();
                let cutoff = Timestamp::from_millis(
                    now.millis()
                        .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)),
                );
                match registry.prune_audit(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        deleted = n,
                        "pruned audit entries past socket.audit_retention"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot prune the audit"),
                }
                next_prune += PRUNE_EVERY;
            }
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => {}
                () = self.inner.full.notified() => {}
                () = shutdown.cancelled() => break,
            }
            self.flush(&registry).await;
        }
        self.flush(&registry).await;
    }
}

/// Parses `--since` / `?since=`: an RFC 3339 time, or a duration such as `"1h"` or `"7d"`
/// meaning that long before `now`.
pub fn parse_since(s: &str, now: Timestamp) -> Option<Timestamp> {
    let s = s.trim();
    if let Some(t) = Timestamp::parse_rfc3339(s) {
        return Some(t);
    }
    let d = humantime::parse_duration(s).ok()?;
    let ms = i64::try_from(d.as_millis()).ok()?;
    Some(Timestamp::from_millis(now.millis().saturating_sub(ms)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(account: &AccountKey, at: i64, uid: u32) -> Read<'_> {
        Read {
            at: Timestamp::from_secs(at),
            account,
            client: None,
            peer: Peer {
                uid,
                gid: 1,
                pid: Some(7),
            },
            exe: Some("/usr/bin/app"),
            fingerprint: "f",
        }
    }

    #[test]
    fn the_queue_is_bounded() {
        let log = AuditLog::new();
        let account = AccountKey::parse("shippo/a").unwrap();
        for uid in 0..MAX_QUEUED + 10 {
            log.record(read(&account, 1, u32::try_from(uid).unwrap()));
        }
        assert_eq!(log.take().len(), MAX_QUEUED);
        assert_eq!(log.inner.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn identical_reads_become_one_entry_with_a_count() {
        let log = AuditLog::new();
        let account = AccountKey::parse("shippo/a").unwrap();
        log.record(read(&account, 1, 1));
        log.record(read(&account, 2, 2));
        log.record(read(&account, 3, 1));
        log.record(Read {
            fingerprint: "g",
            ..read(&account, 4, 1)
        });
        let merged = log.take();
        assert_eq!(merged.len(), 3, "{merged:?}");
        assert_eq!(merged[0].count, 2);
        assert_eq!(merged[0].at, Timestamp::from_secs(1));
        assert_eq!(merged[0].last_at, Timestamp::from_secs(3));
        assert_eq!(merged[0].exe.as_deref(), Some("/usr/bin/app"));
        assert_eq!(merged[1].uid, 2);
        assert_eq!(merged[2].fingerprint, "g");
        assert!(log.take().is_empty(), "a flush empties the queue");
    }

    #[test]
    fn a_read_whose_hash_collides_still_merges_into_its_own_entry() {
        let account = AccountKey::parse("shippo/a").unwrap();
        let (a, b) = (read(&account, 1, 1), read(&account, 2, 2));
        // As if b hashed like a: the index points at a's entry.
        let queue = Queue {
            entries: vec![a.to_entry(), b.to_entry()],
            index: HashMap::from([(a.identity(), 0)]),
        };
        assert_eq!(queue.find(a.identity(), &a), Some(0));
        assert_eq!(queue.find(a.identity(), &b), Some(1));
        assert_eq!(queue.find(a.identity(), &read(&account, 3, 3)), None);
    }

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now = Timestamp::from_secs(10_000);
        assert_eq!(parse_since("1h", now), Some(Timestamp::from_secs(6_400)));
        assert_eq!(
            parse_since("1970-01-01T00:00:05Z", now),
            Some(Timestamp::from_secs(5))
        );
        assert_eq!(parse_since("yesterday", now), None);
    }
}
