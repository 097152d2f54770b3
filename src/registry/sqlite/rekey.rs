//! `shiptoken key rotate` with the daemon stopped: re-seals every token under a new key.
//! (A running daemon rotates itself: `registry::rekey`.)
//!
//! The state lock proves no daemon runs. The new key is written beside the old one
//! (`<key>.new`) before the registry changes, all values move to it in one transaction, and
//! only then does it replace the old key, which is kept at `<key>.before-<time>`: a crash at
//! any point leaves a key that opens the registry, and the next start-up finishes an
//! interrupted rotation (see `unlock`).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::seal::{self, KeyCheck};
use crate::keys::{self, KeyError, KeySource, MasterKey, StateLock};
use crate::registry::RegistryError;
use crate::registry::seal::Sealer;

/// What `key rotate` did.
#[derive(Debug)]
pub struct Rotated {
    /// Accounts whose secrets were re-sealed.
    pub accounts: u64,
    /// Where the new key is now.
    pub key_path: PathBuf,
    /// Whether the new key must still be installed by the operator (systemd credential).
    pub install_needed: bool,
    /// Where the replaced key is kept, when shiptoken replaced it.
    pub old_key_path: Option<PathBuf>,
}

/// Why `key rotate` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// The daemon (or another command) holds the state folder.
    #[error(
        "the state folder {0} is in use by a running daemon whose socket did not answer: run `shiptoken key rotate` as the daemon's user or one in socket.admin_uids (it rotates while serving), or stop it first"
    )]
    InUse(PathBuf),
    /// No registry to rotate.
    #[error("no registry in {0}; nothing to re-seal")]
    NoRegistry(PathBuf),
    /// The key comes from a systemd credential, which shiptoken cannot replace.
    #[error(
        "the key is the systemd credential {0}, which shiptoken cannot replace: pass --new-key-out FILE, then install FILE as the credential shiptoken.key (e.g. with systemd-creds) before starting the daemon"
    )]
    CredentialNeedsOut(PathBuf),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The key file failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Re-seals the registry in `state_dir` with a fresh key. The new key replaces the key file,
/// or goes to `new_key_out` when given (required when the key is a systemd credential, which
/// only the system can replace). `progress` gets (done, total) as accounts are re-sealed.
pub fn rotate_key(
    state_dir: &Path,
    key_file: Option<&Path>,
    new_key_out: Option<&Path>,
    progress: impl FnMut(u64, u64),
) -> Result<Rotated, RekeyError> {
    let db = state_dir.join("registry.db");
    if !db.exists() {
        return Err(RekeyError::NoRegistry(state_dir.to_path_buf()));
    }
    let Some(_lock) = StateLock::try_take(state_dir)? else {
        return Err(RekeyError::InUse(state_dir.to_path_buf()));
    };
    let source = KeySource::resolve(key_file, state_dir);
    let (target, install_needed) = match (new_key_out, source.replaceable()) {
        (Some(out), _) => (out.to_path_buf(), true),
        (None, true) => (source.pending_path(), false),
        (None, false) => return Err(RekeyError::CredentialNeedsOut(source.path().to_path_buf())),
    };
    let mut conn = Connection::open(&db).map_err(RegistryError::from)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(RegistryError::from)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(RegistryError::from)?;
    super::schema::migrate(&mut conn)?;
    let old = Sealer::new(&source.load(false)?);
    let from = match seal::check_key(&conn, &old).map_err(RegistryError::from)? {
        KeyCheck::Matches => Some(&old),
        KeyCheck::Unsealed => None,
        KeyCheck::Differs => {
            return Err(RegistryError::WrongKey {
                db,
                key: source.path().to_path_buf(),
            }
            .into());
        }
    };
    let new_key = MasterKey::generate();
    // Durable before the registry changes, so the re-sealed registry always has its key.
    keys::write_key(&target, &new_key)?;
    let tx = conn.transaction().map_err(RegistryError::from)?;
    let accounts = seal::reseal_all(&tx, from, &Sealer::new(&new_key), progress)?;
    tx.commit().map_err(RegistryError::from)?;
    let (key_path, old_key_path) = if install_needed {
        (target, None)
    } else {
        let old = keys::install_pending(&source, crate::clock::Clock::system_now())?;
        (source.path().to_path_buf(), Some(old))
    };
    Ok(Rotated {
        accounts,
        key_path,
        install_needed,
        old_key_path,
    })
}
