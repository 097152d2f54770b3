//! `key rotate` of a running daemon: every token moves to a new key while the daemon keeps
//! serving, and the old key is kept beside the new one for the backups that need it.
//!
//! The new key waits at `<key>.new` (written here for SQLite; for a shared PostgreSQL
//! registry the operator copies one file to every host first, since every daemon must open
//! what another seals). The registry is re-sealed in one transaction on the owner thread, so
//! no save slips in between; only then is the key file replaced, after a copy of the old key
//! is kept at `<key>.before-<time>`. A crash before the replacement leaves the new key
//! waiting beside the old one, and the next start installs it (see `sqlite::unlock` and
//! `postgres::keys::PgKeys::unlock`).

use std::path::PathBuf;

use super::seal::Sealer;
use super::{Registry, RegistryError};
use crate::clock::Clock;
use crate::keys::{self, KeyError, KeySource, MasterKey};

/// What a rotation did.
#[derive(Debug)]
pub struct KeyRotated {
    /// Accounts whose tokens were re-sealed.
    pub accounts: u64,
    /// The key file, now holding the new key.
    pub key_file: PathBuf,
    /// Where the old key is kept: backups taken before the rotation open only with it.
    pub old_key_file: PathBuf,
}

impl Registry {
    /// Re-seals every token with a new key and installs it, keeping the old key beside it
    /// (named by the wall-clock time, which backups are dated by, not the daemon's clock).
    pub async fn rotate_key(&self) -> Result<KeyRotated, RegistryError> {
        let source = self.key.clone();
        let shared = self.shared;
        self.call(move |store| {
            if !source.replaceable() {
                return Err(RegistryError::KeyNotReplaceable {
                    key: source.path().to_path_buf(),
                });
            }
            let current = Sealer::new(&source.load(false)?);
            let pending = source.pending_path();
            let next = match KeySource::ConfigFile(pending.clone()).load(false) {
                Ok(next) => next,
                Err(KeyError::Missing { .. }) if shared => {
                    return Err(RegistryError::NextKeyMissing { pending });
                }
                Err(KeyError::Missing { .. }) => {
                    let next = MasterKey::generate();
                    // Durable before the registry changes, so it always has its key.
                    keys::write_key(&pending, &next)?;
                    next
                }
                Err(e) => return Err(e.into()),
            };
            let accounts = store.rekey(&current, &Sealer::new(&next), source.path())?;
            let old_key_file = keys::install_pending(&source, Clock::system_now())
                .map_err(|e| RegistryError::KeyNotInstalled {
                    pending: pending.clone(),
                    source: e,
                })?;
            tracing::warn!(
                accounts,
                key_file = %source.path().display(),
                old_key_file = %old_key_file.display(),
                "rotated the key: every token is sealed with the new key; backups taken before open only with the old key, kept beside it until you delete it"
            );
            Ok(KeyRotated {
                accounts,
                key_file: source.path().to_path_buf(),
                old_key_file,
            })
        })
        .await
    }

    /// Stages the next key (`<key>.new`), if there is one, as a key that opens: a daemon of a
    /// shared registry must open what another daemon seals once it has rotated. Called at
    /// start and on reload; a registry only this daemon writes ignores it.
    pub async fn stage_next_key(&self) -> Result<bool, RegistryError> {
        if !self.shared {
            return Ok(false);
        }
        let pending = self.key.pending_path();
        match KeySource::ConfigFile(pending).load(false) {
            Ok(next) => {
                self.call(move |store| store.stage_key(&Sealer::new(&next)))
                    .await?;
                Ok(true)
            }
            Err(KeyError::Missing { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
