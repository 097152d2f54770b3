//! Who may do what on the socket: the daemon's uid and `socket.admin_uids` administer, a
//! `[[socket.clients]]` rule lets a peer read the accounts it lists, and without rules every
//! peer reads every token.
//!
//! Every check reads the live configuration, so a reload applies to the next request.

use axum::http::StatusCode;

use super::{ApiError, ApiState, Caller, Peer, Standing};
use crate::config::Config;
use crate::names::AccountKey;

/// The peer's credentials, which the accept loop attached; without them, nothing is allowed.
pub(super) fn peer_of(extensions: &axum::http::Extensions) -> Result<Peer, ApiError> {
    extensions.get::<Caller>().map(|c| c.peer).ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "peer credentials unavailable",
        )
    })
}

impl ApiState {
    fn is_admin(&self, peer: &Peer) -> bool {
        self.is_admin_under(&self.config.borrow(), peer)
    }

    fn is_admin_under(&self, config: &Config, peer: &Peer) -> bool {
        peer.uid == self.daemon_uid || config.socket.admin_uids.contains(&peer.uid)
    }

    /// Whether `peer` administers, may read some token, or may read nothing, under the
    /// current rules: the accept loop gives each a different share of the connections.
    pub(super) fn standing(&self, peer: &Peer) -> Standing {
        let config = self.config.borrow();
        let rules = &config.socket.clients;
        if self.is_admin_under(&config, peer) {
            Standing::Admin
        } else if rules.is_empty() || rules.iter().any(|r| r.matches_peer(peer.uid, peer.gid)) {
            Standing::Reader
        } else {
            Standing::Stranger
        }
    }

    /// `Ok` when `peer` administers; otherwise a 403 naming `what` it may not do, and a WARN.
    pub(super) fn require_admin(
        &self,
        peer: &Peer,
        what: &str,
        account: Option<&AccountKey>,
    ) -> Result<(), ApiError> {
        if self.is_admin(peer) {
            return Ok(());
        }
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            account = account.map(tracing::field::display),
            action = what,
            "refused: not an admin"
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "uid {} may not {what}: only the daemon's user and socket.admin_uids may",
                peer.uid
            ),
        ))
    }

    /// `Ok(rule name)` when the peer may read the account's token under `config`.
    pub(super) fn may_read(
        &self,
        config: &Config,
        peer: &Peer,
        key: &AccountKey,
    ) -> Result<Option<String>, ApiError> {
        if self.is_admin_under(config, peer) {
            return Ok(None);
        }
        let rules = &config.socket.clients;
        if rules.is_empty() {
            return Ok(None);
        }
        if let Some(rule) = rules
            .iter()
            .find(|r| r.matches_peer(peer.uid, peer.gid) && r.allows(key))
        {
            return Ok(Some(rule.name.clone()));
        }
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            account = %key,
            "refused: no socket.clients rule lets this peer read the account"
        );
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("uid {} may not read {key}", peer.uid),
        ))
    }

    /// Whether `peer` sees the account in `GET /v1/accounts` (the same rules as reading it).
    pub(super) fn visible(&self, peer: &Peer, key: &AccountKey) -> bool {
        if self.is_admin(peer) {
            return true;
        }
        let config = self.config.borrow();
        config.socket.clients.is_empty()
            || config
                .socket
                .clients
                .iter()
                .any(|r| r.matches_peer(peer.uid, peer.gid) && r.allows(key))
    }
}
