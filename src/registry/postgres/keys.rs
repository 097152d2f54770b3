//! The keys of a shared registry: the key check every daemon must pass, the next key staged
//! on every host before a rotation, the rotation itself, and how the other daemons follow it.
//!
//! Each daemon's registry connection holds a shared advisory lock on the id of every key it
//! can open ([`MasterKey::id`](crate::keys::MasterKey::id)); its `application_name` is
//! `shiptoken <host_name>`. A rotation thus asks PostgreSQL, not a table of its own that a
//! crashed daemon would leave stale, which live daemons (the sessions holding a key lock)
//! cannot open the next key yet, and refuses while any cannot.
//!
//! A rotation takes the key check `FOR UPDATE` before it re-seals; every write that seals
//! takes it `FOR SHARE` first ([`PgKeys::follow`]), so a write either lands before the
//! rotation (and is re-sealed by it) or after it, when its daemon has seen the new check and
//! seals with the new key. No value is ever sealed with a key the registry has left.

use postgres::{Client, GenericClient};

use super::PostgresTarget;
use crate::clock::Clock;
use crate::keys::{self, KeySource};
use crate::registry::RegistryError;
use crate::registry::seal::{self, Keyring, SECRET_COLUMNS, Sealer, ad};

/// The first half of the advisory lock (`pg_advisory_lock_shared(class, key id)`) by which a
/// connection shows it holds a key ("SHKY").
const KEY_LOCK_CLASS: i32 = 0x5348_4b59;

/// This daemon's keys and what it last read of the registry's key check.
pub(super) struct PgKeys {
    ring: Keyring,
    /// The stored key check as last read; another value means another daemon rotated.
    check: String,
    source: KeySource,
}

impl std::ops::Deref for PgKeys {
    type Target = Keyring;
    fn deref(&self) -> &Keyring {
        &self.ring
    }
}

impl PgKeys {
    /// Proves the key (or the staged next key, when another host rotated to it while this
    /// daemon was stopped) opens the registry; the first daemon to start writes the check.
    pub(super) fn unlock(
        client: &mut Client,
        current: Sealer,
        source: &KeySource,
        target: &PostgresTarget,
    ) -> Result<PgKeys, RegistryError> {
        client.execute(
            "INSERT INTO meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
            &[&seal::key_check(&current)?],
        )?;
        let check: String = client
            .query_one("SELECT value FROM meta WHERE key = 'key_check'", &[])?
            .get(0);
        let mut ring = Keyring::new(current);
        let pending = source.pending_path();
        match KeySource::ConfigFile(pending.clone()).load(false) {
            Ok(next) => ring.add(Sealer::new(&next)),
            Err(keys::KeyError::Missing { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the next key waiting beside the key cannot be used")
            }
        }
        let mut keys = PgKeys {
            ring,
            check: String::new(),
            source: source.clone(),
        };
        if keys.ring.opener_of_check(&check).is_none() {
            return Err(RegistryError::WrongKey {
                db: target.shown.clone().into(),
                key: source.path().to_path_buf(),
            });
        }
        keys.adopt(check);
        keys.hold(client)?;
        Ok(keys)
    }

    /// Takes `check` as the registry's key check: seals with the key that opens it from now
    /// on, and installs that key as the key file if it was the staged one.
    fn adopt(&mut self, check: String) {
        if let Some(opener) = self.ring.opener_of_check(&check).cloned()
            && opener.id() != self.ring.sealer().id()
        {
            self.ring.promote(opener);
            if !self.source.replaceable() {
                tracing::warn!(key = %self.source.path().display(), "the shared registry was rotated to the next key; install it as the credential shiptoken.key before this daemon restarts");
            } else {
                match keys::install_pending(&self.source, Clock::system_now()) {
                    Ok(old) => {
                        tracing::warn!(key_file = %self.source.path().display(), old_key_file = %old.display(), "the shared registry was rotated to the next key; installed it, the old key is kept for backups taken before")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the shared registry was rotated to the next key, but it could not be installed as the key file; install it before this daemon restarts")
                    }
                }
            }
        }
        self.check = check;
    }

    /// Shows, on a new connection, every key this daemon holds (see the module's note).
    pub(super) fn hold(&self, client: &mut Client) -> Result<(), RegistryError> {
        for key in self.ring.keys() {
            client.execute(
                "SELECT pg_advisory_lock_shared($1, $2)",
                &[&KEY_LOCK_CLASS, &key.id()],
            )?;
        }
        Ok(())
    }

    /// Adds the staged next key to the ring and shows it is held.
    pub(super) fn stage(
        &mut self,
        client: &mut Client,
        next: &Sealer,
    ) -> Result<(), RegistryError> {
        if self.ring.keys().all(|k| k.id() != next.id()) {
            self.ring.add(next.clone());
            client.execute(
                "SELECT pg_advisory_lock_shared($1, $2)",
                &[&KEY_LOCK_CLASS, &next.id()],
            )?;
            tracing::info!("staged the next key: values sealed with it open here");
        }
        Ok(())
    }

    /// Run first in every transaction that seals: reads the key check `FOR SHARE` and, when
    /// another daemon rotated, moves to its key before anything is sealed.
    pub(super) fn follow(&mut self, tx: &mut impl GenericClient) -> Result<(), RegistryError> {
        let stored: String = tx
            .query_one(
                "SELECT value FROM meta WHERE key = 'key_check' FOR SHARE",
                &[],
            )?
            .get(0);
        if stored == self.check {
            return Ok(());
        }
        if self.ring.opener_of_check(&stored).is_none() {
            return Err(RegistryError::KeyRotatedElsewhere {
                key: self.source.path().to_path_buf(),
            });
        }
        self.adopt(stored);
        Ok(())
    }

    /// Re-seals every account with `next` in one transaction, once every live daemon holds
    /// it, and seals with it from then on.
    pub(super) fn rekey(
        &mut self,
        client: &mut Client,
        current: &Sealer,
        next: &Sealer,
        key_file: &std::path::Path,
    ) -> Result<u64, RegistryError> {
        self.stage(client, next)?;
        let mut tx = client.transaction()?;
        let stored: String = tx
            .query_one(
                "SELECT value FROM meta WHERE key = 'key_check' FOR UPDATE",
                &[],
            )?
            .get(0);
        if !seal::opens_key_check(current, &stored) {
            return Err(RegistryError::KeyFileChanged {
                key: key_file.to_path_buf(),
            });
        }
        let lacking: Vec<String> = tx
            .query(
                "SELECT DISTINCT regexp_replace(s.application_name, '^shiptoken ', '')
                 FROM pg_stat_activity s
                 WHERE s.datname = current_database() AND s.pid <> pg_backend_pid()
                   AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = s.pid AND l.granted
                               AND l.locktype = 'advisory' AND l.objsubid = 2
                               AND l.classid::bigint = $1::bigint)
                   AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = s.pid AND l.granted
                               AND l.locktype = 'advisory' AND l.objsubid = 2
                               AND l.classid::bigint = $1::bigint
                               AND l.objid::bigint = ($2::bigint + 4294967296) % 4294967296)
                 ORDER BY 1",
                &[&i64::from(KEY_LOCK_CLASS), &i64::from(next.id())],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !lacking.is_empty() {
            return Err(RegistryError::NextKeyNotEverywhere {
                hosts: lacking.join(", "),
                pending: self.source.pending_path(),
            });
        }
        let rows = tx.query(
            "SELECT provider, name, refresh_token, access_token, candidate_token
             FROM accounts ORDER BY id FOR UPDATE",
            &[],
        )?;
        for row in &rows {
            let (provider, name): (&str, &str) = (row.get(0), row.get(1));
            let mut sealed: Vec<Option<String>> = Vec::with_capacity(SECRET_COLUMNS.len());
            for (i, column) in SECRET_COLUMNS.iter().enumerate() {
                let ad = ad(provider, name, column);
                sealed.push(match row.get::<_, Option<&str>>(i + 2) {
                    Some(v) => Some(next.seal(&self.ring.open(v, &ad)?, &ad)?),
                    None => None,
                });
            }
            tx.execute(
                "UPDATE accounts SET refresh_token = $3, access_token = $4, candidate_token = $5
                 WHERE provider = $1 AND name = $2",
                &[&provider, &name, &sealed[0], &sealed[1], &sealed[2]],
            )?;
        }
        let check = seal::key_check(next)?;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'key_check'",
            &[&check],
        )?;
        tx.commit()?;
        self.ring.promote(next.clone());
        self.check = check;
        Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
    }
}
