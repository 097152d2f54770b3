//! The audit: who was handed which account's token, and when.
//!
//! Entries arrive in batches from the socket's audit queue (`api::audit`) and are written in
//! one transaction, so recording a read never puts SQLite on the hot path. Only a short
//! fingerprint of each token is kept, never the token.

use super::{Registry, RegistryError};
use crate::clock::Timestamp;
use crate::names::AccountKey;

/// A token handed out over the socket, `count` times from `at` to `last_at` to the same peer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// When it was (first) handed out.
    pub at: Timestamp,
    /// When it was last handed out; `at` for a single read.
    pub last_at: Timestamp,
    /// How many reads this entry stands for.
    pub count: u64,
    /// The account whose token it was.
    #[serde(serialize_with = "key_string")]
    pub account: AccountKey,
    /// The `[[socket.clients]]` rule that allowed it; `None` for admins and when no rules exist.
    pub client: Option<String>,
    /// The peer's uid (SO_PEERCRED).
    pub uid: u32,
    /// The peer's primary gid.
    pub gid: u32,
    /// The peer's pid, when the kernel reported it.
    pub pid: Option<i32>,
    /// The peer's executable (`/proc/<pid>/exe`), when it could be read.
    pub exe: Option<String>,
    /// `Secret::fingerprint` of the token handed out: tells tokens apart, reveals nothing.
    pub fingerprint: String,
    /// For a call forwarded by the proxy, what was called and how it went; `None` for a
    /// token read. Never a body or a header value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<ProxiedCall>,
}

/// One use of the proxy: the request and what came of it, as the audit keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProxiedCall {
    /// The request's method.
    pub method: String,
    /// The path under the provider's API base, without the query (which may carry data).
    pub path: String,
    /// The upstream's HTTP status; `None` when no answer came (refused here, timeout).
    pub status: Option<u16>,
    /// `forwarded`, `queued` (forwarded after waiting out a throttle), `refused` or
    /// `throttled` (answered 429 here, nothing sent).
    pub outcome: String,
    /// Request body bytes sent upstream (over the entry's `count` calls).
    pub bytes_in: u64,
    /// Answer body bytes passed back (over the entry's `count` calls).
    pub bytes_out: u64,
    /// From the request's arrival to the answer's last byte, in milliseconds (the sum over
    /// the entry's `count` calls).
    pub duration_ms: u64,
}

impl ProxiedCall {
    /// What makes two calls the same kind, so a busy application's calls merge into one
    /// entry with a count (as repeated token reads do): method, path, status and outcome.
    pub fn kind(&self) -> (&str, &str, Option<u16>, &str) {
        (&self.method, &self.path, self.status, &self.outcome)
    }

    /// Adds another call of the same kind to this entry's totals.
    pub fn add(&mut self, other: &ProxiedCall) {
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.duration_ms = self.duration_ms.saturating_add(other.duration_ms);
    }

    /// The form stored in the registry's `request` column.
    pub fn to_column(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the `request` column back; an unreadable value reads as none.
    pub fn from_column(column: Option<String>) -> Option<ProxiedCall> {
        serde_json::from_str(&column?).ok()
    }
}

fn key_string<S: serde::Serializer>(key: &AccountKey, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(key)
}

/// Which entries to read.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only this account.
    pub account: Option<AccountKey>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// At most this many, the newest.
    pub limit: usize,
}

impl Registry {
    /// Appends a batch of entries in one transaction (one fsync for the whole batch).
    pub async fn append_audit(&self, entries: Vec<AuditEntry>) -> Result<(), RegistryError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.call(move |store| store.append_audit(&entries)).await
    }

    /// Entries matching `query`, oldest first.
    pub async fn audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, RegistryError> {
        self.call(move |store| store.audit(&query)).await
    }

    /// Deletes entries whose last read is older than `before`; returns how many.
    pub async fn prune_audit(&self, before: Timestamp) -> Result<usize, RegistryError> {
        self.call(move |store| store.prune_audit(before)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(account: &str, at: i64, fp: &str) -> AuditEntry {
        AuditEntry {
            at: Timestamp::from_secs(at),
            last_at: Timestamp::from_secs(at),
            count: 1,
            account: AccountKey::parse(account).unwrap(),
            client: Some("order-sync".into()),
            uid: 1001,
            gid: 1001,
            pid: Some(42),
            exe: Some("/usr/bin/app".into()),
            fingerprint: fp.into(),
            request: None,
        }
    }

    #[tokio::test]
    async fn entries_are_filtered_limited_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        reg.append_audit(vec![
            entry("shiphero/acme", 10, "aaaaaaaaaaaa"),
            entry("shippo/beta", 20, "bbbbbbbbbbbb"),
            entry("shiphero/acme", 30, "cccccccccccc"),
        ])
        .await
        .unwrap();
        let all = reg
            .audit(AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], entry("shiphero/acme", 10, "aaaaaaaaaaaa"));
        let acme = reg
            .audit(AuditQuery {
                account: Some(AccountKey::parse("shiphero/acme").unwrap()),
                since: Some(Timestamp::from_secs(15)),
                limit: 100,
            })
            .await
            .unwrap();
        assert_eq!(acme, [entry("shiphero/acme", 30, "cccccccccccc")]);
        let newest = reg
            .audit(AuditQuery {
                limit: 1,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(newest[0].fingerprint, "cccccccccccc");
        assert_eq!(reg.prune_audit(Timestamp::from_secs(25)).await.unwrap(), 2);
        let left = reg
            .audit(AuditQuery {
                limit: 100,
                ..AuditQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
    }
}
