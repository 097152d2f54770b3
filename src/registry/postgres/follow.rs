//! The change feed of a shared (PostgreSQL) registry: every write anywhere in the fleet
//! notifies `shiptoken_accounts` at commit, and this task reloads the account it names into
//! memory, so every daemon serves a token stored by another within moments.
//!
//! After a lost connection it connects again (with backoff) and reloads every account,
//! since notices sent meanwhile are gone; until then the daemon serves what it holds.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, PostgresTarget};
use crate::names::AccountKey;
use crate::registry::Registry;

/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Follows the feed until `stop`; `connected` is 1 while it listens.
pub async fn follow(
    registry: Registry,
    target: PostgresTarget,
    connected: prometheus::IntGauge,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    let mut was_lost = false;
    loop {
        match listen(&registry, &target, &connected, &stop, was_lost).await {
            Ok(()) => return,
            Err(e) => {
                connected.set(0);
                registry.set_feed_problem(Some(format!(
                    "the PostgreSQL registry is unreachable ({e}); serving the tokens held in memory, reconnecting"
                )));
                if was_lost {
                    tracing::debug!(registry = %target.shown, error = %e, "still no change feed from the PostgreSQL registry");
                } else {
                    tracing::warn!(registry = %target.shown, error = %e, "lost the change feed of the PostgreSQL registry; serving the tokens held in memory and reconnecting");
                }
                was_lost = true;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: LISTEN, reload everything, then reload what each notice names. Returns
/// `Ok` when stopped, the error when the connection is lost.
async fn listen(
    registry: &Registry,
    target: &PostgresTarget,
    connected: &prometheus::IntGauge,
    stop: &CancellationToken,
    was_lost: bool,
) -> Result<(), String> {
    let (client, mut connection) = target
        .config
        .connect(target.tls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let (notices, mut received) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if notices.send(n.payload().to_string()).is_err() {
                        return "stopped".to_string();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "the server closed the connection".to_string()
    });
    let mut driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    // Notices sent before LISTEN took effect (or while disconnected) are not coming.
    let changed = registry.resync().await.map_err(|e| e.to_string())?;
    connected.set(1);
    registry.set_feed_problem(None);
    if was_lost {
        tracing::info!(registry = %target.shown, accounts_changed = changed, "the change feed of the PostgreSQL registry is back; reloaded every account");
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            ended = &mut driver.0 => {
                return Err(ended.unwrap_or_else(|e| e.to_string()));
            }
            Some(first) = received.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = received.try_recv() {
                    batch.push(more);
                }
                apply(registry, &batch).await;
            }
        }
    }
}

/// Reloads each account the notices name, once, unless memory already holds that revision
/// (this daemon's own saves come back as notices too).
async fn apply(registry: &Registry, notices: &[String]) {
    let mut seen = HashSet::new();
    let mut stale = Vec::new();
    for notice in notices {
        let Some((generation, revision, key)) = parse(notice) else {
            tracing::debug!(notice, "ignoring a change notice this build cannot read");
            continue;
        };
        let held = registry
            .held_revision(&key)
            .is_some_and(|held| held >= (generation, revision));
        if !held && seen.insert(key.clone()) {
            stale.push(key);
        }
    }
    // The notices that arrived together are reloaded together: one round trip per chunk.
    for chunk in stale.chunks(500) {
        if let Err(e) = registry.reload(chunk.to_vec()).await {
            tracing::warn!(accounts = chunk.len(), error = %e, "cannot reload accounts another daemon changed; they are reloaded with their next change or the next reconnection");
        }
    }
}

/// `generation revision provider/name`.
fn parse(notice: &str) -> Option<(i64, i64, AccountKey)> {
    let mut parts = notice.splitn(3, ' ');
    let generation = parts.next()?.parse().ok()?;
    let revision = parts.next()?.parse().ok()?;
    let key = AccountKey::parse(parts.next()?).ok()?;
    Some((generation, revision, key))
}

/// Ends the connection's task with the listener.
struct AbortOnDrop(tokio::task::JoinHandle<String>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn notices_name_the_registration_revision_and_account() {
        let (g, r, k) = parse("7 12 shiphero/acme").unwrap();
        assert_eq!((g, r, k.to_string()), (7, 12, "shiphero/acme".to_string()));
        assert!(parse("7 shiphero/acme").is_none());
        assert!(parse("x 1 shiphero/acme").is_none());
    }
}
