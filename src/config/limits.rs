//! `[limits]`: how many connections each listener holds and for how long, so that no flood of
//! connections from a peer that may read nothing keeps an authorized reader from its token.
//!
//! A child of `config` so it validates with the same `Validator` (key, origin and reason in
//! every error) while its keys live apart from the sections other work changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validator};

/// `[limits]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// See [`LimitsConfig::socket_connections`].
    pub socket_connections: i64,
    /// See [`LimitsConfig::socket_connections_per_uid`].
    pub socket_connections_per_uid: i64,
    /// See [`LimitsConfig::socket_connections_unauthorized`].
    pub socket_connections_unauthorized: i64,
    /// See [`LimitsConfig::http_connections`].
    pub http_connections: i64,
    /// See [`LimitsConfig::header_timeout`].
    pub header_timeout: String,
    /// See [`LimitsConfig::idle_timeout`].
    pub idle_timeout: String,
    /// See [`LimitsConfig::reserved_fds`].
    pub reserved_fds: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            socket_connections: 512,
            socket_connections_per_uid: 64,
            socket_connections_unauthorized: 16,
            http_connections: 64,
            header_timeout: "10s".into(),
            idle_timeout: "30s".into(),
            reserved_fds: 256,
        }
    }
}

/// The validated `[limits]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Socket connections open at once, all peers together; past it, new connections wait in
    /// the kernel's queue until one closes.
    pub socket_connections: usize,
    /// Socket connections open at once per uid that may read (a `[[socket.clients]]` rule
    /// lists its uid or gid, or there are no rules); the daemon's uid and `socket.admin_uids`
    /// have no such cap. Past it, the uid's new connections are closed at once.
    pub socket_connections_per_uid: usize,
    /// Socket connections shared by every peer that may read nothing; past it, their new
    /// connections are closed at once. Zero shuts such peers out entirely.
    pub socket_connections_unauthorized: usize,
    /// Connections open at once on each TCP listener (metrics, Shippo OAuth callback); past it,
    /// new connections are closed at once, never queued.
    pub http_connections: usize,
    /// Time a client has to send a request's headers on any listener; it also bounds the wait
    /// for the next request on a kept-alive connection.
    pub header_timeout: Duration,
    /// A TCP listener's connection on which no byte moves for this long while no request is
    /// being handled (a client that stops reading the answer) is closed.
    pub idle_timeout: Duration,
    /// Open files the listeners never take (registry, upstream calls, logs, notifications):
    /// the connection caps together must fit under `RLIMIT_NOFILE` minus this.
    pub reserved_fds: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            socket_connections: 512,
            socket_connections_per_uid: 64,
            socket_connections_unauthorized: 16,
            http_connections: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            reserved_fds: 256,
        }
    }
}

impl Validator<'_> {
    pub(super) fn limits(&self, raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
        let count = |key: &str, value: i64| self.count(key, value).map(|n| n as usize);
        let limits = LimitsConfig {
            socket_connections: count("limits.socket_connections", raw.socket_connections)?,
            socket_connections_per_uid: count(
                "limits.socket_connections_per_uid",
                raw.socket_connections_per_uid,
            )?,
            socket_connections_unauthorized: match raw.socket_connections_unauthorized {
                0 => 0,
                n => count("limits.socket_connections_unauthorized", n)?,
            },
            http_connections: count("limits.http_connections", raw.http_connections)?,
            header_timeout: self.duration("limits.header_timeout", &raw.header_timeout)?,
            idle_timeout: self.duration("limits.idle_timeout", &raw.idle_timeout)?,
            reserved_fds: count("limits.reserved_fds", raw.reserved_fds)?,
        };
        // The shared pool is part of the socket's total: as large, it would leave readers none.
        if limits.socket_connections_unauthorized >= limits.socket_connections {
            return Err(self.invalid(
                "limits.socket_connections_unauthorized",
                &raw.socket_connections_unauthorized.to_string(),
                format!(
                    "must be smaller than limits.socket_connections ({}), or the peers that may \
                     read nothing could take every socket connection",
                    limits.socket_connections
                ),
            ));
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::*;

    #[test]
    fn the_defaults_are_the_documented_ones() {
        assert_eq!(load("").unwrap().limits, LimitsConfig::default());
        let set = load("[limits]\nsocket_connections_unauthorized = 0\nidle_timeout = \"2m\"\n")
            .unwrap()
            .limits;
        assert_eq!(set.socket_connections_unauthorized, 0);
        assert_eq!(set.idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn bad_values_name_the_key_and_the_reason() {
        for (toml, key, reason) in [
            (
                "http_connections = 0",
                "limits.http_connections",
                "between 1 and",
            ),
            (
                "socket_connections_per_uid = -1",
                "limits.socket_connections_per_uid",
                "between 1 and",
            ),
            (
                "header_timeout = \"soon\"",
                "limits.header_timeout",
                "not a duration",
            ),
            (
                "socket_connections = 16",
                "limits.socket_connections_unauthorized",
                "must be smaller than limits.socket_connections (16)",
            ),
        ] {
            let e = load(&format!("[limits]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(reason), "{toml}: {e}");
        }
    }
}
