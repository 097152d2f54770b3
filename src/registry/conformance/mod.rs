//! The conformance suite: the same tests against every registry backend, so SQLite and
//! PostgreSQL cannot disagree again (they did: an unknown provider read as ShipHero on one and
//! refused on the other).
//!
//! Each test is written once, over a [`Factory`] that makes a fresh, empty registry of one
//! backend; [`conformance!`] runs every test for SQLite (a temporary folder) and PostgreSQL
//! (a fresh database per test at `TEST_POSTGRES_URL`, default 127.0.0.1:5432/test; skipped
//! with a printed reason when no server answers, unless `TEST_REQUIRE_POSTGRES=1`, which CI
//! sets). The stores are the real ones, opened as the daemon opens them; only the rows a
//! newer build would write are planted with raw SQL ([`Backend::plant_unknown_rows`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod shared;

use std::path::PathBuf;

use crate::clock::Timestamp;
use crate::keys::MasterKey;
use crate::names::AccountKey;
use crate::registry::{AccountRecord, NewAccount, Note, RegistryError, Save, Store};
use crate::secret::Secret;

/// One registry of one backend, empty when made.
pub(super) trait Backend {
    /// A store on it, as the daemon named `host` opens it; every call opens another (a
    /// second daemon, or the same one restarted).
    fn open(&self, host: &str) -> Box<dyn Store + Send> {
        self.try_open(host).unwrap()
    }
    /// [`Backend::open`], or why the daemon would not start.
    fn try_open(&self, host: &str) -> Result<Box<dyn Store + Send>, RegistryError>;
    /// The key file every store of it is opened with.
    fn key_path(&self) -> PathBuf;
    /// Whether several daemons share it (leases are real).
    fn shared(&self) -> bool;
    /// Every stored value of the token columns, as stored.
    fn stored_secrets(&self) -> Vec<String>;
    /// Writes what a newer build could: the account `fedex/acme` (a provider this build does
    /// not know) holding the refresh token `refresh-fedex-aaaaaaaa`, the account
    /// `shiphero/frozen` in status `frozen`, a history entry and an audit entry of
    /// `fedex/acme`, and the unused OAuth state hashed `fedex-state` for `fedex/acme`.
    fn plant_unknown_rows(&self);
}

/// Makes a fresh, empty registry; each name a different one.
pub(super) type Factory<'a> = &'a dyn Fn(&str) -> Box<dyn Backend>;

/// A time all tests start at.
pub(super) const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

pub(super) fn key(s: &str) -> AccountKey {
    AccountKey::parse(s).unwrap()
}

/// A ShipHero registration as `accounts add` makes it.
pub(super) fn shiphero(name: &str) -> NewAccount {
    NewAccount {
        key: key(&format!("shiphero/{name}")),
        email: Some(format!("{name}@x.test")),
        first_name: Some("Ada".into()),
        last_name: None,
        refresh_token: Some(Secret::new(format!("refresh-{name}-aaaaaaaa"))),
        access_token: None,
    }
}

/// Saves `record` changed by `change`, computed from the revision it carries.
pub(super) fn save(
    store: &mut dyn Store,
    record: &AccountRecord,
    change: impl FnOnce(&mut AccountRecord),
    notes: &[Note],
) -> Result<AccountRecord, RegistryError> {
    let mut next = record.clone();
    change(&mut next);
    next.revision = record.revision + 1;
    store.save_all(&[Save {
        record: &next,
        expected: Some(record.revision),
        notes,
        at: T0,
    }])?;
    Ok(next)
}

/// A key file of the test's own.
fn key_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("secret.key");
    crate::keys::write_key(&path, &MasterKey::generate()).unwrap();
    path
}

/// SQLite in a temporary folder.
pub(super) struct Sqlite {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Sqlite {
    pub(super) fn new() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        Sqlite { dir, key }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("registry.db")
    }

    fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).unwrap()
    }
}

impl Backend for Sqlite {
    fn try_open(&self, _host: &str) -> Result<Box<dyn Store + Send>, RegistryError> {
        let (conn, _) = super::sqlite::open_blocking(self.dir.path(), &self.db(), Some(&self.key))?;
        Ok(Box::new(conn))
    }

    fn key_path(&self) -> PathBuf {
        self.key.clone()
    }

    fn shared(&self) -> bool {
        false
    }

    fn stored_secrets(&self) -> Vec<String> {
        let conn = self.raw();
        let mut stmt = conn
            .prepare("SELECT refresh_token, access_token, candidate_token FROM tokens")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok([r.get::<_, Option<String>>(0)?, r.get(1)?, r.get(2)?])
            })
            .unwrap();
        rows.flat_map(|r| r.unwrap()).flatten().collect()
    }

    fn plant_unknown_rows(&self) {
        let conn = self.raw();
        conn.execute_batch(&format!(
            "INSERT INTO accounts (provider, name, status, status_since, created_at, generation)
                 VALUES ('fedex', 'acme', 'pending', 0, 0, 9001),
                        ('shiphero', 'frozen', 'frozen', 0, 0, 9002);
             INSERT INTO tokens (account_id, refresh_fingerprint)
                 SELECT id, '{fp}' FROM accounts WHERE provider = 'fedex';
             INSERT INTO tokens (account_id)
                 SELECT id FROM accounts WHERE name = 'frozen';
             INSERT INTO events (at, provider, account, kind, generation)
                 VALUES (0, 'fedex', 'acme', 'added', 9001);
             INSERT INTO audit (at, last_at, count, provider, account, uid, gid, fingerprint)
                 VALUES (0, 0, 1, 'fedex', 'acme', 0, 0, 'ffffffffffff');
             INSERT INTO oauth_states (state_hash, provider, account, created_at, expires_at)
                 VALUES ('fedex-state', 'fedex', 'acme', 0, 9000000000000);",
            fp = Secret::new("refresh-fedex-aaaaaaaa").fingerprint()
        ))
        .unwrap();
    }
}

/// PostgreSQL: a fresh database of the test's own, dropped when the test ends.
#[cfg(feature = "postgres")]
pub(super) struct Postgres {
    db: super::postgres::tests::TestDatabase,
    key: crate::keys::KeySource,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "postgres")]
impl Postgres {
    /// `None` (the test is skipped, with the reason printed) when no server answers.
    pub(super) fn new(test: &str) -> Option<Postgres> {
        // Database names are cut at 63 bytes: a short one of its own, not the test's name.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let db =
            super::postgres::tests::fresh_database(&format!("conformance_{n}")).or_else(|| {
                eprintln!("skipped {test}");
                None
            })?;
        let dir = tempfile::tempdir().unwrap();
        let key = crate::keys::KeySource::ConfigFile(key_file(dir.path()));
        Some(Postgres { db, key, _dir: dir })
    }

    fn raw(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.db.url, ::postgres::NoTls).unwrap()
    }
}

#[cfg(feature = "postgres")]
impl Backend for Postgres {
    fn try_open(&self, host: &str) -> Result<Box<dyn Store + Send>, RegistryError> {
        let target = super::postgres::PostgresTarget::new(&self.db.url, None, host).unwrap();
        Ok(Box::new(
            super::postgres::open_blocking(&target, &self.key)?.0,
        ))
    }

    fn key_path(&self) -> PathBuf {
        self.key.path().to_path_buf()
    }

    fn shared(&self) -> bool {
        true
    }

    fn stored_secrets(&self) -> Vec<String> {
        self.raw()
            .query(
                "SELECT refresh_token, access_token, candidate_token FROM accounts",
                &[],
            )
            .unwrap()
            .iter()
            .flat_map(|r| -> [Option<String>; 3] { [r.get(0), r.get(1), r.get(2)] })
            .flatten()
            .collect()
    }

    fn plant_unknown_rows(&self) {
        self.raw()
            .batch_execute(&format!(
                "INSERT INTO accounts (provider, name, status, status_since, created_at,
                                       generation, refresh_fingerprint)
                     VALUES ('fedex', 'acme', 'pending', 0, 0, 9001, '{fp}'),
                            ('shiphero', 'frozen', 'frozen', 0, 0, 9002, NULL);
                 INSERT INTO events (at, provider, account, kind, generation, host)
                     VALUES (0, 'fedex', 'acme', 'added', 9001, 'h');
                 INSERT INTO audit (host, at, last_at, count, provider, account, uid, gid,
                                    fingerprint)
                     VALUES ('h', 0, 0, 1, 'fedex', 'acme', 0, 0, 'ffffffffffff');
                 INSERT INTO oauth_states (state_hash, provider, account, created_at,
                                           expires_at, host)
                     VALUES ('fedex-state', 'fedex', 'acme', 0, 9000000000000, 'h');",
                fp = Secret::new("refresh-fedex-aaaaaaaa").fingerprint()
            ))
            .unwrap();
    }
}

/// Runs each named test (a `fn(Factory)` of [`accounts`] or [`shared`]) once per backend.
macro_rules! conformance {
    ($($module:ident :: $test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $test() {
                    super::$module::$test(&|_| Box::new(super::Sqlite::new()));
                }
            )*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[test]
                fn $test() {
                    // Asked first, so that a missing server skips the test instead of
                    // failing inside it.
                    if super::Postgres::new(stringify!($test)).is_none() {
                        return;
                    }
                    super::$module::$test(&|_| {
                        Box::new(super::Postgres::new(stringify!($test)).expect("PostgreSQL went away"))
                    });
                }
            )*
        }
    };
}

conformance!(
    accounts::accounts_are_added_read_listed_and_removed,
    accounts::duplicates_are_refused_alike,
    accounts::a_save_lands_only_on_the_revision_it_was_computed_from,
    accounts::a_batch_of_saves_is_all_or_nothing,
    accounts::tokens_are_sealed_at_rest_and_open_again,
    accounts::history_belongs_to_one_registration,
    accounts::a_rekey_moves_every_token_to_the_new_key,
    accounts::unknown_rows_are_refused_never_read_as_another_provider,
    shared::oauth_states_are_spent_once_superseded_and_expire,
    shared::the_audit_is_written_filtered_and_pruned,
    shared::export_and_import_carry_everything,
    shared::a_lease_lost_stores_nothing,
    shared::leases_taken_together_answer_each_account,
    shared::two_writers_racing_a_save_one_wins_the_other_is_stale,
);
