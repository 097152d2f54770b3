//! The socket's audit queue: every token handed out is queued in memory and written to the
//! registry in batches, so a read costs a mutex push, never a SQLite write.
//!
//! A flush happens every second, or sooner once [`BATCH`] entries wait. The queue is bounded:
//! if the registry stalls, entries beyond [`MAX_QUEUED`] are counted and dropped with a
//! warning rather than growing memory without limit. On shutdown the queue is flushed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::names::AccountKey;
use crate::registry::{AuditEntry, Registry};

/// Entries written per transaction; reaching it wakes the flusher early.
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
    queue: Mutex<Vec<AuditEntry>>,
    /// Wakes the flusher when a batch is full.
    full: Notify,
    /// Entries lost because the queue was full.
    dropped: AtomicU64,
}

impl AuditLog {
    /// An empty queue.
    pub fn new() -> AuditLog {
        AuditLog::default()
    }

    /// Queues an entry. Never blocks on I/O.
    pub fn record(&self, entry: AuditEntry) {
        let len = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_QUEUED {
                drop(q);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push(entry);
            q.len()
        };
        if len == BATCH {
            self.inner.full.notify_one();
        }
    }

    fn take(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut *self.inner.queue.lock().unwrap_or_else(|e| e.into_inner()))
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
        let mut entries = coalesce(self.take());
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

/// Merges reads of the same token by the same peer into one entry with a count, keeping the
/// order of first reads.
fn coalesce(reads: Vec<AuditEntry>) -> Vec<AuditEntry> {
    use std::collections::HashMap;
    let mut out: Vec<AuditEntry> = Vec::new();
    type Same = (
        AccountKey,
        Option<String>,
        u32,
        u32,
        Option<i32>,
        Option<String>,
        String,
    );
    let mut index: HashMap<Same, usize> = HashMap::new();
    for e in reads {
        let key = (
            e.account.clone(),
            e.client.clone(),
            e.uid,
            e.gid,
            e.pid,
            e.exe.clone(),
            e.fingerprint.clone(),
        );
        match index.get(&key) {
            Some(&i) => {
                let merged = &mut out[i];
                merged.count += e.count;
                merged.last_at = merged.last_at.max(e.last_at);
            }
            None => {
                index.insert(key, out.len());
                out.push(e);
            }
        }
    }
    out
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

    #[test]
    fn the_queue_is_bounded() {
        let log = AuditLog::new();
        let e = AuditEntry {
            at: Timestamp::from_secs(1),
            last_at: Timestamp::from_secs(1),
            count: 1,
            account: AccountKey::parse("shippo/a").unwrap(),
            client: None,
            uid: 1,
            gid: 1,
            pid: None,
            exe: None,
            fingerprint: "x".into(),
        };
        for _ in 0..MAX_QUEUED + 10 {
            log.record(e.clone());
        }
        assert_eq!(log.take().len(), MAX_QUEUED);
        assert_eq!(log.inner.dropped.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn identical_reads_become_one_entry_with_a_count() {
        let read = |at: i64, uid: u32| AuditEntry {
            at: Timestamp::from_secs(at),
            last_at: Timestamp::from_secs(at),
            count: 1,
            account: AccountKey::parse("shippo/a").unwrap(),
            client: None,
            uid,
            gid: 1,
            pid: Some(7),
            exe: None,
            fingerprint: "f".into(),
        };
        let merged = coalesce(vec![read(1, 1), read(2, 2), read(3, 1)]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].count, 2);
        assert_eq!(merged[0].at, Timestamp::from_secs(1));
        assert_eq!(merged[0].last_at, Timestamp::from_secs(3));
        assert_eq!(merged[1].uid, 2);
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
