//! Against a real PostgreSQL: `TEST_POSTGRES_URL` (default the machine's, at
//! 127.0.0.1:5432, database `test`). Without one these tests say so and pass, unless
//! `TEST_REQUIRE_POSTGRES=1` (CI) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::keys::MasterKey;

pub(crate) fn server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of one test's own, dropped when the test ends.
pub(crate) struct TestDatabase {
    /// Its URL.
    pub(crate) url: String,
    name: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&server(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A fresh database of this test's own, or `None` (skipped) without a server.
pub(crate) fn fresh_database(test: &str) -> Option<TestDatabase> {
    let mut admin = match postgres::Client::connect(&server(), postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "TEST_REQUIRE_POSTGRES=1 but no PostgreSQL at {}: {e}",
                server()
            );
            eprintln!(
                "skipped {test}: no PostgreSQL at {} ({e}); set TEST_POSTGRES_URL",
                server()
            );
            return None;
        }
    };
    let name = format!("shiptoken_unit_{}_{test}", std::process::id());
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut url = url::Url::parse(&server()).unwrap();
    url.set_path(&name);
    Some(TestDatabase {
        url: url.to_string(),
        name,
    })
}

fn store(url: &str, host: &str, key: &KeySource) -> PgStore {
    let target = PostgresTarget::new(url, None, host).unwrap();
    open_blocking(&target, key).unwrap().0
}

pub(crate) fn key_file(dir: &std::path::Path) -> KeySource {
    let path = dir.join("key");
    crate::keys::write_key(&path, &MasterKey::generate()).unwrap();
    KeySource::ConfigFile(path)
}

// The lease test moved into the conformance suite (registry/conformance/shared.rs).

#[test]
fn another_key_is_refused_and_a_missing_one_is_never_made() {
    let Some(db) = fresh_database("keys") else {
        return;
    };
    let url = &db.url;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    drop(store(url, "host-a", &key));
    let other = tempfile::tempdir().unwrap();
    let target = PostgresTarget::new(url, None, "host-b").unwrap();
    let wrong = open_blocking(&target, &key_file(other.path())).err();
    assert!(
        matches!(wrong, Some(RegistryError::WrongKey { .. })),
        "{wrong:?}"
    );
    let missing = KeySource::StateFile(other.path().join("absent.key"));
    let err = open_blocking(&target, &missing).err();
    assert!(matches!(err, Some(RegistryError::Key(_))), "{err:?}");
    assert!(!other.path().join("absent.key").exists());
}

#[test]
fn the_url_shown_never_holds_the_password() {
    let url = "postgres://ship:s3cret@db.internal:5432/shiptoken?sslmode=require";
    let shown = shown(url);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("db.internal"));
    let err = PostgresTarget::new("postgres://ship:s3cret@db/x?sslmode=bogus", None, "h")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("sslmode=bogus") && !err.contains("s3cret"),
        "{err}"
    );
}
