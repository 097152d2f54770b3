//! What the engine tells about each result: the log lines and status notifications of
//! every stored change, and the incident rule's count (this daemon's own probes and, with a
//! shared registry, what other daemons stored).

use std::sync::Arc;

use super::Engine;
use crate::clock::Timestamp;
use crate::names::{AccountKey, Status};
use crate::notify::StatusChange;
use crate::providers::Verdict;
use crate::registry::{AccountRecord, EventKind, Note, RemoteChange};
use crate::rotation::incident::Change;

impl Engine {
    /// Feeds a conclusive probe result to the incident detector and reports its changes.
    pub(super) fn count_for_incidents(&self, key: &AccountKey, verdict: &Verdict) {
        if let Verdict::Undocumented { signature, .. } = verdict {
            self.incidents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_odd(key, signature, self.clock.now());
        }
        let evidence = match verdict {
            Verdict::Pass { .. } => false,
            Verdict::Refused(_) | Verdict::Undocumented { .. } => true,
            _ => return,
        };
        self.count_result(key, evidence);
    }

    /// Counts what other daemons sharing the registry saw of their accounts toward this
    /// daemon's incident rule, so it counts the whole fleet's accounts, not only the share
    /// this daemon probed. Returns when `stop` is cancelled or the registry is gone.
    pub async fn follow_fleet(
        self: Arc<Self>,
        mut changes: tokio::sync::mpsc::UnboundedReceiver<RemoteChange>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => match change {
                    Some(c) => self.count_remote(&c),
                    None => return,
                },
            }
        }
    }

    /// A conclusive probe result read off a record another daemon stored: a new doubt or
    /// flag is evidence, a newer proof without doubt is a pass.
    fn count_remote(&self, change: &RemoteChange) {
        let (before, after) = (change.before.as_deref(), &change.after);
        if before.is_some_and(|b| b.generation != after.generation) {
            return;
        }
        let key = &after.key;
        let doubt_before = before.and_then(|b| b.token_doubt.as_ref()).map(|d| d.since);
        let new_doubt = after
            .token_doubt
            .as_ref()
            .filter(|d| doubt_before != Some(d.since));
        if let Some(signature) = new_doubt.and_then(|d| d.signature.as_deref()) {
            self.incidents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_odd(key, signature, self.clock.now());
        }
        let newly_flagged =
            after.status.is_flagged() && before.is_none_or(|b| b.status != after.status);
        let proven = after.token_doubt.is_none()
            && after.last_verified_at > before.and_then(|b| b.last_verified_at);
        if new_doubt.is_some() || newly_flagged {
            self.count_result(key, true);
        } else if proven {
            self.count_result(key, false);
        }
    }

    /// Counts one account's conclusive result toward the incident rule and reports a change.
    fn count_result(&self, key: &AccountKey, evidence: bool) {
        let now = self.clock.now();
        let threshold = self.threshold();
        let change = self
            .incidents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(key, evidence, now, threshold);
        match change {
            Change::None => {}
            Change::Began { evidence, checked } => {
                self.metrics.incident(key.provider, true);
                tracing::error!(
                    provider = %key.provider, event = "incident", evidence, checked,
                    "{evidence} of {checked} {} accounts answered with evidence at once: treating it as an incident at {}, not as suspensions; no account of it is flagged until it ends",
                    key.provider, key.provider
                );
            }
            Change::Ended => {
                self.metrics.incident(key.provider, false);
                tracing::warn!(provider = %key.provider, event = "incident_ended", "the incident at {} is over; its accounts are judged again on their next tries", key.provider);
            }
        }
    }

    /// Logs each history note, and reports a status change to the notifier.
    pub(super) fn report(&self, before: &AccountRecord, after: &AccountRecord, notes: &[Note]) {
        let key = &after.key;
        for note in notes {
            let detail = note.detail.as_deref().unwrap_or("");
            let (p, a, kind) = (key.provider, key.name.as_ref(), note.kind.as_str());
            match note.kind {
                EventKind::Rotated => {
                    tracing::info!(provider = %p, account = a, event = kind, detail, "issued a new access token; probing it")
                }
                EventKind::Checked => {
                    // A journald field of its own, so a ShipHero support ticket can quote it.
                    let upstream_request_id = detail.strip_prefix("request_id ");
                    tracing::info!(provider = %p, account = a, event = kind, status = %after.status, upstream_request_id, "token works")
                }
                EventKind::Cleared => {
                    tracing::info!(provider = %p, account = a, event = kind, status = %after.status, "account reactivated: its token works again")
                }
                EventKind::Flagged => {
                    tracing::warn!(provider = %p, account = a, event = kind, status = %after.status, error = detail, "account flagged {}", after.status)
                }
                EventKind::Suspected => {
                    tracing::warn!(provider = %p, account = a, event = kind, error = detail, "evidence against the account; it is flagged only if seen again after verify.confirm_after")
                }
                EventKind::RefreshRefused if before.current.is_some() => {
                    tracing::warn!(provider = %p, account = a, event = kind, error = detail, "the refresh token was refused; the served token is kept while it works")
                }
                EventKind::RefreshRefused => {
                    tracing::warn!(provider = %p, account = a, event = kind, error = detail, "the refresh token was refused; the account has no token to serve")
                }
                EventKind::Misconfigured => {
                    tracing::warn!(provider = %p, account = a, event = kind, error = detail, "the probe is wrong for this token; the status is unchanged")
                }
                EventKind::Held => {
                    tracing::warn!(provider = %p, account = a, event = kind, error = detail, "evidence held back by an incident at the provider")
                }
                EventKind::Failed | EventKind::Added | EventKind::Removed => {}
            }
        }
        if after.last_error.is_some() && after.status == before.status && after.failures > 0 {
            tracing::warn!(
                provider = %key.provider, account = %key.name, event = "failed",
                error = after.last_error.as_deref().unwrap_or(""),
                retry_at = %after.next_attempt_at.map(Timestamp::to_rfc3339).unwrap_or_default(),
                "status unchanged, will retry"
            );
        }
        if before.status != after.status {
            let reason = match after.status {
                Status::Active if before.status.is_flagged() => {
                    Some("account reactivated: its token works again".to_string())
                }
                _ => after.last_error.clone(),
            };
            self.notifier.status_changed(StatusChange {
                event: "account.status_changed",
                provider: key.provider,
                account: key.name.to_string(),
                previous_status: before.status,
                status: after.status,
                at: self.clock.now(),
                reason,
            });
        }
    }
}
