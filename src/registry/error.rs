//! What can go wrong in the registry, whichever backend holds it.

use std::path::PathBuf;

use crate::keys::KeyError;
use crate::names::{AccountKey, Provider};

use super::seal;

/// What can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// SQLite failed.
    #[error("registry database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file or folder could not be created or read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database was written by a newer shiptoken.
    #[error(
        "registry schema version {found} is newer than this build knows ({known}); refusing to downgrade: run the newer shiptoken or restore a backup"
    )]
    NewerSchema {
        /// Version in the file.
        found: i64,
        /// Version this build writes.
        known: i64,
    },
    /// No such account.
    #[error("no account {0}")]
    NotFound(AccountKey),
    /// The name is taken.
    #[error("account {0} already exists")]
    AccountExists(AccountKey),
    /// The email is registered under another name.
    #[error(
        "the email {email} is already registered as {existing}; ShipHero advises one developer user per integration"
    )]
    EmailTaken {
        /// The email.
        email: String,
        /// Who has it.
        existing: AccountKey,
    },
    /// The refresh token is registered under another name.
    #[error("this refresh token is already registered as {existing}")]
    RefreshTokenTaken {
        /// Who has it.
        existing: AccountKey,
    },
    /// The account was removed, registered again, or changed by other work since the
    /// record being saved was read; nothing was written.
    #[error("{0} changed while this work was in flight; its result was not stored")]
    Stale(AccountKey),
    /// A time that no calendar of this daemon can hold (past year 9999).
    #[error("{what} {value} is out of range: times must fall between 1970 and 9999")]
    TimeOutOfRange {
        /// What the time is.
        what: &'static str,
        /// The value as given.
        value: String,
    },
    /// A batch of saves could not be written (the first saver gets the database's error).
    #[error("registry database error: {0}")]
    Unwritable(String),
    /// A row names a provider or status this build does not know (written by a newer build
    /// or by hand).
    #[error(
        "the registry holds an account this build cannot read: {0}; run the shiptoken that wrote it, or remove the row"
    )]
    UnknownRow(String),
    /// `registry migrate` writes only into a registry that holds no account yet.
    #[error(
        "the target registry is not empty ({0}); migrate into a new database, or remove what it holds first"
    )]
    NotEmpty(String),
    /// Another daemon took over the account's lease while this one worked on it (it was
    /// paused or slow past the lease): its result is not stored over newer work.
    #[error(
        "{0}: the lease on this account ran out and another daemon took it over; this daemon's result was not stored"
    )]
    LeaseLost(AccountKey),
    /// An OAuth flow was asked for an account of a provider that does not connect by OAuth.
    #[error("{0} accounts do not connect by OAuth")]
    NoOAuth(Provider),
    /// PostgreSQL failed or is unreachable.
    #[error("registry database error: {0}")]
    Postgres(String),
    /// The owner thread is gone (the daemon is stopping).
    #[error("the registry is closed")]
    Closed,
    /// The key, or the permissions of the key or the state folder.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A sealed value did not open or a value could not be sealed.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The registry was sealed with another key than the one configured.
    #[error(
        "{db} was sealed with a different key than {key}; restore the right key (key_file, the systemd credential shiptoken.key or <state_dir>/secret.key), or a backup taken with this key"
    )]
    WrongKey {
        /// The database.
        db: PathBuf,
        /// The key file tried.
        key: PathBuf,
    },
    /// The registry holds sealed tokens but its key check is gone, and the key at hand is
    /// missing or does not open them: a new key would seal them a second time.
    #[error(
        "{db} holds sealed tokens but its key check is missing, and the key {key} is missing or does not open them; shiptoken will not make a new key over them. Restore the key that sealed them (key_file, the systemd credential shiptoken.key or <state_dir>/secret.key) and start again, or restore a backup of the registry together with its key"
    )]
    KeyCheckMissing {
        /// The database.
        db: PathBuf,
        /// The key file tried.
        key: PathBuf,
    },
    /// `key rotate` found the key file no longer holding the key the running daemon seals
    /// with.
    #[error(
        "the key file {key} no longer holds the key this registry is sealed with (was it replaced while the daemon ran?); put the key back, then run `shiptoken key rotate` again"
    )]
    KeyFileChanged {
        /// The key file.
        key: PathBuf,
    },
    /// The key is a systemd credential, which only the system can replace.
    #[error(
        "the key is the systemd credential {key}, which shiptoken cannot replace while it runs: stop the daemon, run `shiptoken key rotate --new-key-out FILE`, install FILE as the credential shiptoken.key, and start it again"
    )]
    KeyNotReplaceable {
        /// The credential.
        key: PathBuf,
    },
    /// A shared registry is rotated to a key every host holds already; this one has none.
    #[error(
        "a PostgreSQL registry is shared, so its next key must be on every host before the rotation: make it with `shiptoken key generate {pending}`, copy that file to the same place on every host sharing the registry (mode 0600), run `systemctl reload shiptoken` on each, then `shiptoken key rotate` again (docs/deployment.md)"
    )]
    NextKeyMissing {
        /// Where the next key belongs.
        pending: PathBuf,
    },
    /// Daemons sharing the registry that do not hold the next key: rotating now would seal
    /// tokens they cannot open.
    #[error(
        "not rotated: the daemon(s) on {hosts} sharing this registry do not hold the next key; copy {pending} to the same place on each (mode 0600), run `systemctl reload shiptoken` there, then `shiptoken key rotate` again"
    )]
    NextKeyNotEverywhere {
        /// Their `registry.host_name`s, comma-separated.
        hosts: String,
        /// Where the next key belongs.
        pending: PathBuf,
    },
    /// The registry moved to the new key, but the key file could not be replaced; the next
    /// start of the daemon installs it.
    #[error(
        "the registry is sealed with the new key in {pending}, but it could not be installed as the key: {source}; fix that and restart the daemon, which installs it (do not delete {pending})"
    )]
    KeyNotInstalled {
        /// The new key, waiting.
        pending: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// Another daemon sharing the registry rotated to a key this one does not hold.
    #[error(
        "another daemon sharing the registry rotated its key to one this host does not hold, so nothing is written here; copy the key file from a host that rotated to {key} (mode 0600) and restart this daemon"
    )]
    KeyRotatedElsewhere {
        /// This host's key file.
        key: PathBuf,
    },
}
