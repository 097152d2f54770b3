//! What a reload (SIGHUP) may do to access: it never widens it silently.
//!
//! A file that is empty, gone, or that lists no `[[socket.clients]]` while the running
//! configuration has some would let every peer read every token; such a reload is refused and
//! the running configuration kept (an operator who means it restarts the daemon). A reload
//! that grants any peer more than before is allowed, and each grant is reported for a WARN.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::{Config, SocketConfig};

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The file holds nothing but blank lines and comments.
    #[error(
        "{} is empty; it would drop every setting, every socket.clients rule among them (restart the daemon to run on defaults on purpose)",
        .0.display()
    )]
    EmptyFile(PathBuf),
    /// The file the daemon was started with is gone.
    #[error(
        "{} is gone; reloading defaults would drop every socket.clients rule (restart the daemon to run without it on purpose)",
        .0.display()
    )]
    FileGone(PathBuf),
    /// The new configuration has no client rules while the running one has some.
    #[error(
        "the new configuration has no [[socket.clients]] while the running one has {0}; without rules every peer that can open the socket reads every token (restart the daemon to drop every rule on purpose)"
    )]
    RulesDropped(usize),
}

/// One peer (as the rules name it) gaining something it did not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `uid 1001` or `gid 1002`.
    pub peer: String,
    /// `administer (socket.admin_uids)` or `read shiphero/beta`.
    pub what: String,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} may now {}", self.peer, self.what)
    }
}

/// Checks a reload from `current` to `new`: `Err` when it must be refused, else what it
/// grants that `current` did not.
pub fn check(current: &Config, new: &Config) -> Result<Vec<Grant>, Refused> {
    match (&current.file, &new.file) {
        (_, Some(path)) if is_empty_file(path) => return Err(Refused::EmptyFile(path.clone())),
        (Some(path), None) => return Err(Refused::FileGone(path.clone())),
        _ => {}
    }
    let sinks = sink_grants(&current.sinks, &new.sinks);
    let (old, new) = (&current.socket, &new.socket);
    if new.clients.is_empty() && !old.clients.is_empty() {
        return Err(Refused::RulesDropped(old.clients.len()));
    }
    Ok(grants(old, new).into_iter().chain(sinks).collect())
}

/// A group-readable `[[sink]]` that is new, or whose account or group changed, gives that
/// group (or the daemon's own) a token it could not read before.
fn sink_grants(old: &[super::SinkConfig], new: &[super::SinkConfig]) -> Vec<Grant> {
    new.iter()
        .filter(|s| s.mode & 0o040 != 0)
        .filter(|s| {
            !old.iter()
                .any(|o| o.path == s.path && o.account == s.account && o.group == s.group)
        })
        .map(|s| Grant {
            peer: s
                .group
                .map_or_else(|| "the daemon's group".to_string(), |g| format!("gid {g}")),
            what: format!("read {} from the sink file {}", s.account, s.path.display()),
        })
        .collect()
}

/// Blank lines and comments only. An unreadable file counts as not empty: the load that
/// just succeeded read it, and a failure here must not refuse a good reload.
fn is_empty_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines()
            .map(str::trim)
            .all(|l| l.is_empty() || l.starts_with('#'))
    })
}

/// What `new` grants beyond `old`, per uid and gid as the rules name them. With no rules in
/// `old`, every peer already read every token, so read rules cannot widen anything.
fn grants(old: &SocketConfig, new: &SocketConfig) -> Vec<Grant> {
    let mut out: Vec<Grant> = new
        .admin_uids
        .iter()
        .filter(|uid| !old.admin_uids.contains(uid))
        .map(|uid| Grant {
            peer: format!("uid {uid}"),
            what: "administer (socket.admin_uids)".to_string(),
        })
        .collect();
    if old.clients.is_empty() {
        return out;
    }
    let (before, after) = (readable(old), readable(new));
    for (peer, patterns) in after {
        let had = before.get(&peer);
        for pattern in patterns {
            if !had.is_some_and(|had| covered(&pattern, had)) {
                out.push(Grant {
                    peer: peer.clone(),
                    what: format!("read {pattern}"),
                });
            }
        }
    }
    out
}

/// The account patterns each uid and gid named in the rules may read.
fn readable(socket: &SocketConfig) -> BTreeMap<String, BTreeSet<String>> {
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in &socket.clients {
        let peers = rule
            .uids
            .iter()
            .map(|u| format!("uid {u}"))
            .chain(rule.gids.iter().map(|g| format!("gid {g}")));
        for peer in peers {
            map.entry(peer)
                .or_default()
                .extend(rule.accounts.iter().cloned());
        }
    }
    map
}

/// Whether `pattern` (`provider/account` or `provider/*`) was already granted by `had`.
fn covered(pattern: &str, had: &BTreeSet<String>) -> bool {
    had.contains(pattern)
        || pattern
            .split_once('/')
            .is_some_and(|(provider, _)| had.contains(&format!("{provider}/*")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientRule;

    fn rule(uids: &[u32], gids: &[u32], accounts: &[&str]) -> ClientRule {
        ClientRule {
            name: "r".into(),
            uids: uids.to_vec(),
            gids: gids.to_vec(),
            accounts: accounts.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn with(admins: &[u32], clients: Vec<ClientRule>) -> Config {
        let defaults = figment::Figment::from(figment::providers::Serialized::defaults(
            crate::config::RawConfig::default(),
        ));
        let mut c = Config::from_figment(&defaults, None).unwrap();
        c.socket.admin_uids = admins.to_vec();
        c.socket.clients = clients;
        c
    }

    #[test]
    fn dropping_every_rule_is_refused_and_narrowing_is_quiet() {
        let old = with(&[0], vec![rule(&[1001], &[], &["shiphero/acme"])]);
        assert!(matches!(
            check(&old, &with(&[0], vec![])),
            Err(Refused::RulesDropped(1))
        ));
        assert_eq!(check(&with(&[0], vec![]), &old).unwrap(), []);
        assert!(check(&old, &with(&[], vec![])).is_err());
        let narrower = with(&[0], vec![rule(&[1001], &[], &[])]);
        assert_eq!(check(&old, &narrower).unwrap(), []);
    }

    #[test]
    fn every_new_grant_is_named() {
        let old = with(
            &[0],
            vec![
                rule(&[1001], &[], &["shiphero/acme"]),
                rule(&[], &[1002], &["shiphero/*"]),
            ],
        );
        let new = with(
            &[0, 1003],
            vec![
                rule(&[1001], &[], &["shiphero/acme", "shiphero/beta"]),
                rule(&[], &[1002], &["shiphero/beta", "shippo/*"]),
                rule(&[1004], &[], &["shippo/shop"]),
            ],
        );
        let grants: Vec<String> = check(&old, &new)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            grants,
            [
                "uid 1003 may now administer (socket.admin_uids)",
                "gid 1002 may now read shippo/*",
                "uid 1001 may now read shiphero/beta",
                "uid 1004 may now read shippo/shop",
            ]
        );
    }

    #[test]
    fn an_empty_or_vanished_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shiptoken.toml");
        std::fs::write(&path, "\n  # nothing here\n\n").unwrap();
        let old = with(&[0], vec![]);
        let mut new = with(&[0], vec![]);
        new.file = Some(path.clone());
        assert!(matches!(check(&old, &new), Err(Refused::EmptyFile(_))));
        std::fs::write(&path, "[log]\nlevel = \"info\"\n").unwrap();
        assert_eq!(check(&old, &new).unwrap(), []);
        let mut started_with_file = with(&[0], vec![]);
        started_with_file.file = Some(path);
        assert!(matches!(
            check(&started_with_file, &with(&[0], vec![])),
            Err(Refused::FileGone(_))
        ));
    }

    #[test]
    fn a_new_group_readable_sink_is_a_grant() {
        use crate::config::SinkConfig;
        use crate::config::sinks::{OnFlag, SinkFormat};
        let sink = |path: &str, mode: u32, group: Option<u32>| SinkConfig {
            account: crate::names::AccountKey::parse("shiphero/acme").unwrap(),
            path: path.into(),
            format: SinkFormat::Token,
            group,
            mode,
            on_flag: OnFlag::Keep,
            command: Vec::new(),
            dir_created_by_systemd: false,
            allow_group_writable_dir: false,
        };
        let old = with(&[0], vec![]);
        let mut new = with(&[0], vec![]);
        new.sinks = vec![
            sink("/run/a/token", 0o640, Some(1005)),
            sink("/run/b/token", 0o600, Some(1006)),
        ];
        let grants: Vec<String> = check(&old, &new)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            grants,
            ["gid 1005 may now read shiphero/acme from the sink file /run/a/token"]
        );
        // Unchanged: nothing new.
        assert_eq!(check(&new, &new.clone()).unwrap(), []);
    }
}
