//! The SQLite backend: the registry of a single host, one file in the state folder.
//!
//! One job a file: [`schema`] (migrations), [`seal`] (the key check and the SQL sealing
//! functions), [`rows`] (records to rows and back), [`store`] (the store's operations),
//! [`oauth`] and [`audit`] (their tables), [`backup`] (online copies) and [`rekey`] (`key
//! rotate`). This file opens the database and unlocks it with the key.

mod audit;
pub mod backup;
mod oauth;
pub mod rekey;
mod rows;
mod schema;
pub mod seal;
mod store;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

pub use schema::SCHEMA_VERSION;

use crate::keys::{KeyError, KeySource};
use crate::registry::{AccountRecord, RegistryError};

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn open_blocking(
    state_dir: &Path,
    path: &Path,
    key_file: Option<&Path>,
) -> Result<(Connection, Vec<AccountRecord>), RegistryError> {
    // The daemon checks the folder's permissions before it gets here (keys::prepare_state_dir);
    // the library only makes sure a new one is private.
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err("cannot create the state folder", state_dir))?;
    }
    // Created owner-only before SQLite opens it, so it is never briefly world-readable;
    // SQLite gives the WAL and SHM files the database file's mode.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("cannot create", path))?;
    let mut conn = Connection::open(path)?;
    // A file left open by an older build or a careless restore is closed again.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("cannot restrict permissions of", path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every account is kept in memory already and reads come from there, so SQLite's own
    // page cache helps only the write path: 512 KiB instead of the default 2 MiB.
    conn.pragma_update(None, "cache_size", -512)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode; continuing with {mode}");
    }
    // FULL: a commit is on disk (WAL fsynced) before we serve or acknowledge the token it holds.
    // NORMAL would be faster but could lose the last refreshed token on power loss, and ShipHero
    // may have invalidated the previous one by then.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    schema::migrate(&mut conn)?;
    unlock(&mut conn, path, &KeySource::resolve(key_file, state_dir))?;
    let records = rows::load_all(&conn)?;
    Ok((conn, records))
}

/// Loads the key, proves it opens the registry, and registers `seal`/`unseal` with it.
///
/// A registry with nothing sealed yet (new, or written by a build without encryption) gets
/// its plaintext sealed here, in one transaction. A key that does not open the registry is
/// refused, unless a `key rotate` crashed after re-sealing and its new key waits beside the
/// old one: then that key is installed.
fn unlock(conn: &mut Connection, path: &Path, source: &KeySource) -> Result<(), RegistryError> {
    use crate::registry::seal::Sealer;
    use seal::KeyCheck;
    let sealed = conn
        .query_row("SELECT 1 FROM meta WHERE key = 'key_check'", [], |_| Ok(()))
        .optional()?
        .is_some();
    // Sealed values without a key check: only the key that sealed them may go on.
    let orphaned = !sealed && seal::holds_sealed_values(conn)?;
    let key_check_missing = || RegistryError::KeyCheckMissing {
        db: path.to_path_buf(),
        key: source.path().to_path_buf(),
    };
    let key = match source.load(!sealed && !orphaned) {
        Err(KeyError::Missing { .. }) if orphaned => return Err(key_check_missing()),
        loaded => loaded?,
    };
    let sealer = Sealer::new(&key);
    if orphaned {
        if !seal::restore_key_check(conn, &sealer)? {
            return Err(key_check_missing());
        }
        tracing::warn!(db = %path.display(), "the registry's key check was missing; the key opens every sealed token, so the check was written again");
    }
    match seal::check_key(conn, &sealer)? {
        KeyCheck::Matches => {}
        KeyCheck::Unsealed => {
            let tx = conn.transaction()?;
            let n = seal::reseal_all(&tx, None, &sealer, |_, _| {})?;
            tx.commit()?;
            if n > 0 {
                tracing::info!(
                    accounts = n,
                    "sealed the tokens an older build stored in plaintext"
                );
            }
        }
        KeyCheck::Differs => {
            let pending = source.pending_path();
            let next = KeySource::ConfigFile(pending.clone())
                .load(false)
                .ok()
                .map(|k| Sealer::new(&k))
                .filter(|s| matches!(seal::check_key(conn, s), Ok(KeyCheck::Matches)));
            match next {
                Some(next) if source.replaceable() => {
                    let old =
                        crate::keys::install_pending(source, crate::clock::Clock::system_now())?;
                    tracing::warn!(key_file = %source.path().display(), old_key_file = %old.display(), "finished an interrupted key rotation: installed the new key; the old key is kept for backups taken before");
                    seal::register(conn, &next)?;
                    return Ok(());
                }
                _ => {
                    return Err(RegistryError::WrongKey {
                        db: path.to_path_buf(),
                        key: source.path().to_path_buf(),
                    });
                }
            }
        }
    }
    seal::register(conn, &sealer)?;
    Ok(())
}
