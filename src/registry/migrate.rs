//! `shiptoken registry migrate`: copies the configured registry into another one, so a
//! single-host SQLite install can move to a shared PostgreSQL registry (and back) without
//! registering anyone again.
//!
//! Accounts keep their tokens (opened with the key, sealed again in the target with the same
//! key), registrations, revisions and history; the audit comes along. OAuth states do not:
//! they live minutes, and a connect in progress is started again. The target must hold no
//! account, so a migration run twice refuses instead of mixing two registries.

use std::path::{Path, PathBuf};

use super::postgres::PostgresTarget;
use super::store::{Dump, Store};
use super::{RegistryError, sqlite};
use crate::keys::KeySource;

/// Where a registry is: the SQLite file in a state folder, or a PostgreSQL database.
#[derive(Debug)]
pub enum Location {
    /// `registry.db` in this folder.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PostgresTarget>),
}

impl Location {
    /// How the location is named in messages (no password).
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite(dir) => dir.join("registry.db").display().to_string(),
            Location::Postgres(t) => t.shown.clone(),
        }
    }
}

/// What a migration copied.
#[derive(Debug, PartialEq, Eq)]
pub struct Copied {
    /// Accounts.
    pub accounts: usize,
    /// History entries.
    pub events: usize,
    /// Audit entries.
    pub audit: usize,
}

/// Opens `location` with `key`. A SQLite source must exist already; a SQLite target is
/// created (in a new folder, mode 0700).
fn open(
    location: &Location,
    key: &KeySource,
    must_exist: bool,
) -> Result<Box<dyn Store>, RegistryError> {
    match location {
        Location::Sqlite(dir) => {
            let db = dir.join("registry.db");
            if must_exist && !db.exists() {
                return Err(RegistryError::Io {
                    what: "no registry to migrate at",
                    path: db,
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            let (conn, _) = sqlite::open_blocking(dir, &db, Some(key.path()))?;
            Ok(Box::new(conn))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(target) => Ok(Box::new(super::postgres::open_blocking(target, key)?.0)),
        #[cfg(not(feature = "postgres"))]
        Location::Postgres(target) => target.absurd(),
    }
}

/// Copies everything from `from` into `to` (which must hold no account), both sealed with
/// the key at `key`. Runs on a thread of its own: the PostgreSQL client starts a runtime of
/// its own, which must not be inside the caller's.
pub fn migrate(from: &Location, to: &Location, key: &Path) -> Result<Copied, RegistryError> {
    let key = KeySource::ConfigFile(key.to_path_buf());
    std::thread::scope(|s| {
        s.spawn(|| {
            let dump: Dump = open(from, &key, true)?.export()?;
            open(to, &key, false)?.import(&dump)?;
            Ok(Copied {
                accounts: dump.accounts.len(),
                events: dump.events.len(),
                audit: dump.audit.len(),
            })
        })
        .join()
        .unwrap_or(Err(RegistryError::Closed))
    })
}
