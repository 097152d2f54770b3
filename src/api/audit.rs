//! The socket's audit queue: every token handed out is queued in memory and written to the
//! registry in batches, so a read costs a short critical section, never a SQLite write.
//!
//! Reads of the same token by the same peer are merged as they arrive into one entry with a
//! count and a last time: an application polling its token thousands of times a second adds
//! one row per flush, and a repeated read allocates nothing. A flush happens every second, or
//! sooner once [`BATCH`] distinct entries wait.
//!
//! No entry is lost while the registry cannot be written (PostgreSQL unreachable, SQLite's
//! disk full: issue 28 item 4): a batch that fails goes back to the front of the queue and
//! the next flush tries again, so entries reach the registry in the order of their first
//! read once it is back. The queue is bounded at [`MAX_QUEUED`] distinct entries (held and
//! new together): beyond it a read is counted in `shiptoken_audit_dropped_total` and not
//! audited, rather than growing memory without limit. With `socket.audit_required`, such a
//! read is refused instead (see [`AuditLog::admit`]). On shutdown the queue is flushed; what
//! the registry still cannot take then is counted as dropped.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::Peer;
use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::names::AccountKey;
use crate::registry::{AuditEntry, ProxiedCall, Registry};

/// Distinct entries written per transaction; reaching it wakes the flusher early.
pub const BATCH: usize = 500;
/// Distinct entries held in memory at most, waiting for a flush or for the registry to come
/// back (documented in docs/socket.md; a few hundred bytes an entry, so tens of MB at most).
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
    /// Entries lost since the last flush logged them.
    dropped: AtomicU64,
    /// `shiptoken_audit_dropped_total`, when the daemon's metrics are attached.
    dropped_total: Option<IntCounter>,
    /// Held by a flush: two at once (the flusher and `GET /v1/audit`'s) could write a later
    /// batch before an earlier one, or put entries back out of order.
    flushing: tokio::sync::Mutex<()>,
    /// Set when a write to the registry failed, cleared when one succeeds: the registry
    /// cannot take entries now, and `socket.audit_required` refuses reads meanwhile.
    unwritable: AtomicBool,
}

/// Why a read may not be served under `socket.audit_required`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unaudited {
    /// The queue holds [`MAX_QUEUED`] entries: this read could not be recorded.
    QueueFull,
    /// The registry's last audit write failed; entries wait in memory until it is back.
    RegistryUnwritable,
}

impl std::fmt::Display for Unaudited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unaudited::QueueFull => {
                "the audit queue is full, so this read could not be audited; socket.audit_required refuses it"
            }
            Unaudited::RegistryUnwritable => {
                "the registry cannot be written, so this read could not be audited now; socket.audit_required refuses it"
            }
        })
    }
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
    /// For a call the proxy forwarded with the token, what was called and how it went.
    pub request: Option<&'a ProxiedCall>,
}

impl Read<'_> {
    /// A hash of everything but the time: reads that hash alike (and compare alike) merge.
    fn identity(&self) -> u64 {
        identity(
            self.account,
            self.client,
            self.peer,
            self.exe,
            self.fingerprint,
            self.request,
        )
    }

    fn same_as(&self, e: &AuditEntry) -> bool {
        e.account == *self.account
            && e.client.as_deref() == self.client
            && e.uid == self.peer.uid
            && e.gid == self.peer.gid
            && e.pid == self.peer.pid
            && e.exe.as_deref() == self.exe
            && e.fingerprint == self.fingerprint
            && e.request.as_ref().map(ProxiedCall::kind) == self.request.map(ProxiedCall::kind)
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
            request: self.request.cloned(),
        }
    }
}

/// The hash [`Read::identity`] and [`entry_identity`] share.
fn identity(
    account: &AccountKey,
    client: Option<&str>,
    peer: Peer,
    exe: Option<&str>,
    fingerprint: &str,
    request: Option<&ProxiedCall>,
) -> u64 {
    let mut h = DefaultHasher::new();
    (
        account,
        client,
        peer,
        exe,
        fingerprint,
        request.map(ProxiedCall::kind),
    )
        .hash(&mut h);
    h.finish()
}

/// [`Read::identity`] of the read an entry was made from.
fn entry_identity(e: &AuditEntry) -> u64 {
    let peer = Peer {
        uid: e.uid,
        gid: e.gid,
        pid: e.pid,
    };
    identity(
        &e.account,
        e.client.as_deref(),
        peer,
        e.exe.as_deref(),
        &e.fingerprint,
        e.request.as_ref(),
    )
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

    /// Puts `unwritten` (taken by a flush that failed) back before what was queued since,
    /// keeping the order of first reads; returns how many of the newest entries the bound
    /// then leaves no room for (they are dropped).
    fn put_back(&mut self, mut unwritten: Vec<AuditEntry>) -> usize {
        unwritten.append(&mut self.entries);
        let over = unwritten.len().saturating_sub(MAX_QUEUED);
        unwritten.truncate(MAX_QUEUED);
        self.index.clear();
        for (i, e) in unwritten.iter().enumerate() {
            self.index.entry(entry_identity(e)).or_insert(i);
        }
        self.entries = unwritten;
        over
    }
}

impl AuditLog {
    /// An empty queue.
    pub fn new() -> AuditLog {
        AuditLog::default()
    }

    /// An empty queue that counts what it drops in `dropped_total`
    /// (`shiptoken_audit_dropped_total`).
    pub fn with_dropped_counter(dropped_total: IntCounter) -> AuditLog {
        AuditLog {
            inner: Arc::new(Inner {
                dropped_total: Some(dropped_total),
                ..Inner::default()
            }),
        }
    }

    /// Queues a read, merged into a queued entry when it repeats one. Never blocks on I/O.
    /// A read the full queue has no room for is counted as dropped.
    pub fn record(&self, read: Read<'_>) {
        let _ = self.admit(read, false);
    }

    /// Whether a new entry could be audited now (what [`AuditLog::admit`] with `required`
    /// checks): asked before the proxy forwards a call under `socket.audit_required`, since
    /// a call cannot be taken back once sent.
    pub fn can_audit(&self) -> Result<(), Unaudited> {
        if self.inner.unwritable.load(Ordering::Relaxed) {
            return Err(Unaudited::RegistryUnwritable);
        }
        let q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.entries.len() >= MAX_QUEUED {
            return Err(Unaudited::QueueFull);
        }
        Ok(())
    }

    /// Queues a read like [`AuditLog::record`]; with `required` (`socket.audit_required`)
    /// it is refused instead, and not queued, when it cannot be audited: the queue has no
    /// room for it, or the registry's last audit write failed (until one succeeds). A read
    /// admitted is written once the registry takes it, even if it fails for a while after.
    pub fn admit(&self, read: Read<'_>, required: bool) -> Result<(), Unaudited> {
        if required && self.inner.unwritable.load(Ordering::Relaxed) {
            return Err(Unaudited::RegistryUnwritable);
        }
        let identity = read.identity();
        let len = {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = q.find(identity, &read) {
                let entry = &mut q.entries[i];
                entry.count += 1;
                entry.last_at = entry.last_at.max(read.at);
                if let (Some(total), Some(call)) = (&mut entry.request, read.request) {
                    total.add(call);
                }
                return Ok(());
            }
            if q.entries.len() >= MAX_QUEUED {
                drop(q);
                if required {
                    return Err(Unaudited::QueueFull);
                }
                self.count_dropped(1);
                return Ok(());
            }
            q.entries.push(read.to_entry());
            let len = q.entries.len();
            q.index.entry(identity).or_insert(len - 1);
            len
        };
        if len == BATCH {
            self.inner.full.notify_one();
        }
        Ok(())
    }

    fn count_dropped(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.inner.dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(total) = &self.inner.dropped_total {
            total.inc_by(n);
        }
    }

    fn take(&self) -> Vec<AuditEntry> {
        std::mem::take(&mut *self.inner.queue.lock().unwrap_or_else(|e| e.into_inner())).entries
    }

    /// Writes what is queued now, in order; used by the flusher and by tests that read the
    /// audit. What the registry refuses goes back to the front of the queue for the next
    /// flush. Returns how many entries are still waiting because of a failure.
    pub async fn flush(&self, registry: &Registry) -> usize {
        let _flushing = self.inner.flushing.lock().await;
        let lost = self.inner.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                lost,
                max_queued = MAX_QUEUED,
                "the audit queue was full; reads were not audited (shiptoken_audit_dropped_total)"
            );
        }
        let mut entries = self.take();
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(BATCH));
            let batch = entries.clone();
            match registry.append_audit(batch).await {
                Ok(()) => {
                    if self.inner.unwritable.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "the registry takes audit entries again; held entries are being written in order"
                        );
                    }
                    entries = rest;
                }
                Err(e) => {
                    entries.extend(rest);
                    let held = entries.len();
                    if !self.inner.unwritable.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, held, max_queued = MAX_QUEUED, "cannot write audit entries; they are held in memory and written when the registry is back");
                    }
                    let over = self
                        .inner
                        .queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put_back(entries);
                    if over > 0 {
                        self.count_dropped(over);
                    }
                    return held - over;
                }
            }
        }
        0
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
        let left = self.flush(&registry).await;
        if left > 0 {
            self.count_dropped(left);
            tracing::error!(
                lost = left,
                "stopping with audit entries the registry could not take; they are lost"
            );
        }
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
            request: None,
        }
    }

    #[test]
    fn proxied_calls_of_one_kind_merge_with_their_totals() {
        let log = AuditLog::new();
        let account = AccountKey::parse("shiphero/a").unwrap();
        let call = |status, ms| ProxiedCall {
            method: "POST".into(),
            path: "graphql".into(),
            status: Some(status),
            outcome: "forwarded".into(),
            bytes_in: 10,
            bytes_out: 100,
            duration_ms: ms,
        };
        let (ok1, ok2, refused) = (call(200, 3), call(200, 5), call(401, 4));
        for c in [&ok1, &ok2, &refused] {
            log.record(Read {
                request: Some(c),
                ..read(&account, 1, 1001)
            });
        }
        log.record(read(&account, 1, 1001));
        let entries = log.take();
        assert_eq!(entries.len(), 3, "{entries:?}");
        let merged = entries[0].request.as_ref().unwrap();
        assert_eq!(entries[0].count, 2);
        assert_eq!(
            (merged.bytes_in, merged.bytes_out, merged.duration_ms),
            (20, 200, 8)
        );
        assert_eq!(entries[1].request.as_ref().unwrap().status, Some(401));
        assert!(
            entries[2].request.is_none(),
            "a token read is its own entry"
        );
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
    fn a_full_queue_refuses_required_reads_and_counts_the_others() {
        let counter = IntCounter::new("dropped", "test").unwrap();
        let log = AuditLog::with_dropped_counter(counter.clone());
        let account = AccountKey::parse("shippo/a").unwrap();
        for uid in 0..MAX_QUEUED {
            log.record(read(&account, 1, u32::try_from(uid).unwrap()));
        }
        let one_more = u32::try_from(MAX_QUEUED).unwrap();
        assert_eq!(
            log.admit(read(&account, 2, one_more), true),
            Err(Unaudited::QueueFull)
        );
        assert_eq!(
            counter.get(),
            0,
            "a refused read is not served, so not dropped"
        );
        // A repeat of a queued read merges, so it is audited even now.
        assert_eq!(log.admit(read(&account, 2, 0), true), Ok(()));
        assert_eq!(log.admit(read(&account, 2, one_more), false), Ok(()));
        assert_eq!(counter.get(), 1);
    }

    #[test]
    fn entries_a_flush_could_not_write_go_back_first_in_order_within_the_bound() {
        let account = AccountKey::parse("shippo/a").unwrap();
        let mut queue = Queue::default();
        let newer = read(&account, 5, 5);
        queue.entries.push(newer.to_entry());
        let held: Vec<AuditEntry> = (1..=3)
            .map(|uid| read(&account, 1, uid).to_entry())
            .collect();
        assert_eq!(queue.put_back(held), 0);
        let uids: Vec<u32> = queue.entries.iter().map(|e| e.uid).collect();
        assert_eq!(uids, [1, 2, 3, 5]);
        // The index is rebuilt: a repeat of a held read merges into it.
        let again = read(&account, 9, 2);
        assert_eq!(queue.find(again.identity(), &again), Some(1));
        let many: Vec<AuditEntry> = (0..MAX_QUEUED)
            .map(|uid| read(&account, 1, u32::try_from(uid).unwrap()).to_entry())
            .collect();
        assert_eq!(queue.put_back(many), 4, "the newest entries past the bound");
        assert_eq!(queue.entries.len(), MAX_QUEUED);
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
