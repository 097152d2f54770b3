//! The key that seals tokens at rest: where it comes from, how it is created and replaced,
//! and the permission checks on it and on the state folder.
//!
//! Where the key is read from, first match wins: `key_file` in the config, the systemd
//! credential `shiptoken.key`, `<state_dir>/secret.key` (created once, mode 0600, with a
//! warning). The file holds 32 random bytes, base64 on one line (raw 32 bytes are accepted
//! too, so `systemd-creds encrypt` of random bytes works).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;

/// Length of the key in bytes (XChaCha20-Poly1305 takes 256 bits).
pub const KEY_LEN: usize = 32;

/// The file name of the key created in the state folder when none is configured.
pub const DEFAULT_KEY_FILE: &str = "secret.key";

/// The systemd credential that holds the key.
pub const CREDENTIAL: &str = "shiptoken.key";

/// The key itself. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        MasterKey(bytes)
    }

    /// The raw bytes, for the cipher.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A public identifier of the key, for telling keys apart in messages and for the
    /// advisory locks by which the daemons sharing a PostgreSQL registry show which keys they
    /// hold: 32 bits of a SHA-256 of the key under a label of its own, which says nothing
    /// about the key itself.
    pub fn id(&self) -> i32 {
        use sha2::Digest as _;
        let digest = sha2::Sha256::new()
            .chain_update(b"shiptoken key id\0")
            .chain_update(self.0)
            .finalize();
        i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    }

    /// The file form: base64 and a newline.
    pub fn encode(&self) -> String {
        let mut s = base64::engine::general_purpose::STANDARD.encode(self.0);
        s.push('\n');
        s
    }

    /// Parses the file form (base64 on one line, or exactly 32 raw bytes).
    pub fn decode(data: &[u8]) -> Option<MasterKey> {
        let text = std::str::from_utf8(data).ok().map(str::trim);
        if let Some(bytes) =
            text.and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
        {
            return <[u8; KEY_LEN]>::try_from(bytes.as_slice())
                .ok()
                .map(MasterKey);
        }
        <[u8; KEY_LEN]>::try_from(data).ok().map(MasterKey)
    }
}

/// Where the key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `key_file` in the configuration.
    ConfigFile(PathBuf),
    /// The systemd credential `shiptoken.key` (read-only; systemd manages it).
    Credential(PathBuf),
    /// `<state_dir>/secret.key`, created by the daemon when missing.
    StateFile(PathBuf),
}

impl KeySource {
    /// Picks the source: `key_file`, else the systemd credential, else the state folder file.
    pub fn resolve(key_file: Option<&Path>, state_dir: &Path) -> KeySource {
        match key_file {
            Some(p) => KeySource::ConfigFile(p.to_path_buf()),
            None => match crate::config::credential_path(CREDENTIAL) {
                Some(p) => KeySource::Credential(p),
                None => KeySource::StateFile(state_dir.join(DEFAULT_KEY_FILE)),
            },
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        match self {
            KeySource::ConfigFile(p) | KeySource::Credential(p) | KeySource::StateFile(p) => p,
        }
    }

    /// Where a replacement key waits while `key rotate` runs: written before the registry is
    /// re-sealed, renamed over the key after, so a crash in between leaves a key that opens it.
    pub fn pending_path(&self) -> PathBuf {
        let mut name = self.path().as_os_str().to_owned();
        name.push(".new");
        PathBuf::from(name)
    }

    /// Where the key a rotation at `at` replaced is kept: `<key>.before-<UTC time>`, e.g.
    /// `secret.key.before-20261207T170000Z`. Backups taken before that moment open only with
    /// it; the operator deletes it once no such backup is kept.
    pub fn retired_path(&self, at: crate::clock::Timestamp) -> PathBuf {
        let stamp: String = at
            .to_rfc3339()
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        let mut name = self.path().as_os_str().to_owned();
        name.push(format!(".before-{stamp}"));
        let base = PathBuf::from(name);
        // Two rotations within a second keep both keys.
        let mut candidate = base.clone();
        let mut n = 1;
        while candidate.symlink_metadata().is_ok() {
            n += 1;
            let mut name = base.as_os_str().to_owned();
            name.push(format!(".{n}"));
            candidate = PathBuf::from(name);
        }
        candidate
    }

    /// Whether shiptoken may replace the file (a systemd credential is the system's to manage).
    pub fn replaceable(&self) -> bool {
        !matches!(self, KeySource::Credential(_))
    }

    /// Loads the key. A missing `<state_dir>/secret.key` is created when `may_create` (the
    /// registry holds nothing sealed yet); every other missing key is an error.
    pub fn load(&self, may_create: bool) -> Result<MasterKey, KeyError> {
        let path = self.path();
        match std::fs::read(path) {
            Ok(data) => {
                // systemd already restricts its credentials; anything else must be owner-only.
                if !matches!(self, KeySource::Credential(_)) {
                    check_private(path, "key file")?;
                }
                MasterKey::decode(&data).ok_or_else(|| KeyError::Malformed {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self {
                KeySource::StateFile(_) if may_create => {
                    let key = MasterKey::generate();
                    write_key(path, &key)?;
                    tracing::warn!(
                        key_file = %path.display(),
                        "created a new key to seal tokens at rest next to the registry; \
                         keep a copy apart from backups of registry.db, or set key_file / the systemd credential shiptoken.key"
                    );
                    Ok(key)
                }
                _ => Err(KeyError::Missing {
                    path: path.to_path_buf(),
                }),
            },
            Err(source) => Err(KeyError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// What can go wrong with the key or the permissions around it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file is absent while the registry holds sealed tokens (or it was named).
    #[error(
        "the key file {path} is missing; restore it (the registry's tokens cannot be opened without it), or point key_file at it"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A PostgreSQL registry's key is missing: every daemon sharing the database seals with
    /// one key, which no daemon makes by itself (each would make a different one).
    #[error(
        "the key file {path} is missing, and a shared PostgreSQL registry needs one key on every host: \
         copy it from a host that has one, or, for a new registry, make it once with \
         `shiptoken key generate {path}` (mode 0600) and install the same file on every host \
         (docs/deployment.md, step 2)"
    )]
    SharedMissing {
        /// The file.
        path: PathBuf,
    },
    /// `key generate` was asked to write over a file: that could lose the only key to sealed
    /// tokens.
    #[error(
        "{path} already exists; `key generate` never replaces a key (tokens sealed with it would be lost): choose another file, or `key rotate` to change the key of a registry"
    )]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The key file could not be read.
    #[error("cannot read the key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error(
        "the key file {path} does not hold a key (32 random bytes, base64 on one line, e.g. `head -c32 /dev/urandom | base64`)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// Group or others may read or write a file or folder that must be private.
    #[error(
        "the {what} {path} is open to group or others (mode {mode:04o}); fix it with `chmod {fix} {path}`"
    )]
    TooOpen {
        /// What it is.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// The mode to set.
        fix: &'static str,
    },
    /// A file or folder could not be written.
    #[error("cannot {what} {path}: {source}")]
    Write {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Refuses a file or folder that group or others can read, write or (folders) enter.
pub fn check_private(path: &Path, what: &'static str) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    let (open, fix) = if meta.is_dir() {
        (mode & 0o077 != 0, "700")
    } else {
        (mode & 0o066 != 0, "600")
    };
    if open {
        return Err(KeyError::TooOpen {
            what,
            path: path.to_path_buf(),
            mode,
            fix,
        });
    }
    Ok(())
}

/// Creates the state folder (mode 0700) or checks that an existing one is private.
pub fn prepare_state_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return check_private(dir, "state folder");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Write {
            what: "create the state folder",
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes a key file atomically with mode 0600: a temporary file, fsync, rename, fsync of
/// the folder, so a crash leaves either the old file or the whole new one.
pub fn write_key(path: &Path, key: &MasterKey) -> Result<(), KeyError> {
    let err = |what: &'static str| {
        move |source| KeyError::Write {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err("create the key file"))?;
    file.write_all(key.encode().as_bytes())
        .map_err(err("write the key file"))?;
    file.sync_all().map_err(err("flush the key file"))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err("install the key file"))?;
    sync_parent(path).map_err(err("flush the folder of"))
}

/// Makes the pending key (`<key>.new`, see [`KeySource::pending_path`]) the key, once the
/// registry is sealed with it. The key it replaces is first copied to
/// [`KeySource::retired_path`], durably, and kept there: backups taken before need it. A crash
/// at any step leaves the old key with the pending one beside it (the next start finishes the
/// job) or the new key with the old one kept. Returns where the old key now is.
pub fn install_pending(
    source: &KeySource,
    at: crate::clock::Timestamp,
) -> Result<PathBuf, KeyError> {
    let current = source.path();
    let retired = source.retired_path(at);
    let old = std::fs::read(current).map_err(|e| KeyError::Read {
        path: current.to_path_buf(),
        source: e,
    })?;
    let err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Write { what, path, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&retired)
        .map_err(err("keep the old key as", &retired))?;
    file.write_all(&old)
        .and_then(|()| file.sync_all())
        .map_err(err("keep the old key as", &retired))?;
    drop(file);
    std::fs::rename(source.pending_path(), current)
        .map_err(err("install the new key as", current))?;
    sync_parent(current).map_err(err("flush the folder of", current))?;
    Ok(retired)
}

/// `key generate FILE`: a new random key in a new file, mode 0600, written atomically. An
/// existing file is never replaced.
pub fn generate_file(path: &Path) -> Result<(), KeyError> {
    if path.symlink_metadata().is_ok() {
        return Err(KeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    write_key(path, &MasterKey::generate())
}

/// Makes a rename durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// An exclusive hold on a state folder: the daemon keeps one while it runs, and offline
/// commands (`key rotate`) take one, so they never write under a running daemon and two
/// daemons never share a registry. Released by the kernel when the process ends, even on
/// SIGKILL, so a crash leaves no stale lock.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock on `<state_dir>/shiptoken.lock` without waiting; `None` when another
    /// process holds it.
    pub fn try_take(state_dir: &Path) -> Result<Option<StateLock>, KeyError> {
        let path = state_dir.join("shiptoken.lock");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| KeyError::Write {
                what: "open the lock file",
                path: path.clone(),
                source,
            })?;
        // flock(2) on Linux: held per open file description, released when the file closes.
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(source)) => Err(KeyError::Write {
                what: "lock",
                path,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_and_never_prints() {
        let k = MasterKey::generate();
        assert_eq!(MasterKey::decode(k.encode().as_bytes()), Some(k.clone()));
        assert_eq!(MasterKey::decode(k.bytes()), Some(k.clone()));
        assert!(MasterKey::decode(b"short").is_none());
        assert!(!format!("{k:?}").contains(&k.encode().trim().to_string()));
    }

    #[test]
    fn an_open_key_file_or_folder_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("k");
        write_key(&path, &MasterKey::generate()).unwrap_or_else(|e| panic!("{e}"));
        let source = KeySource::ConfigFile(path.clone());
        assert!(source.load(false).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = source
            .load(false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(&format!("chmod 600 {}", path.display())),
            "{err}"
        );
        let state = dir.path().join("state");
        prepare_state_dir(&state).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = prepare_state_dir(&state)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("chmod 700"), "{err}");
    }

    #[test]
    fn a_missing_key_is_created_only_when_nothing_is_sealed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let source = KeySource::StateFile(dir.path().join(DEFAULT_KEY_FILE));
        assert!(matches!(source.load(false), Err(KeyError::Missing { .. })));
        let k = source.load(true).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(source.path())
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_default();
        assert_eq!(mode, 0o600);
        assert_eq!(source.load(false).ok(), Some(k));
    }

    #[test]
    fn installing_the_pending_key_keeps_the_old_one_beside() {
        let dir = tempfile::tempdir().unwrap();
        let source = KeySource::StateFile(dir.path().join(DEFAULT_KEY_FILE));
        let (old, next) = (MasterKey::generate(), MasterKey::generate());
        write_key(source.path(), &old).unwrap();
        write_key(&source.pending_path(), &next).unwrap();
        let at = crate::clock::Timestamp::parse_rfc3339("2026-12-07T17:00:00Z").unwrap();
        let retired = install_pending(&source, at).unwrap();
        assert!(
            retired.ends_with("secret.key.before-20261207T170000Z"),
            "{retired:?}"
        );
        assert_eq!(source.load(false).unwrap(), next);
        let kept = KeySource::ConfigFile(retired.clone()).load(false).unwrap();
        assert_eq!(kept, old);
        assert!(!source.pending_path().exists());
        // A second rotation in the same second keeps both old keys.
        write_key(&source.pending_path(), &MasterKey::generate()).unwrap();
        let again = install_pending(&source, at).unwrap();
        assert_ne!(again, retired);
        assert_eq!(KeySource::ConfigFile(again).load(false).unwrap(), next);
    }

    #[test]
    fn the_state_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let held = StateLock::try_take(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(held.is_some());
        // flock is per open file description, so a second open in this process conflicts too.
        assert!(matches!(StateLock::try_take(dir.path()), Ok(None)));
        drop(held);
        assert!(matches!(StateLock::try_take(dir.path()), Ok(Some(_))));
    }
}
