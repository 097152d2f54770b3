//! Against a real PostgreSQL: `TEST_POSTGRES_URL` (default the machine's, at
//! 127.0.0.1:5432, database `test`). Without one these tests say so and pass, unless
//! `TEST_REQUIRE_POSTGRES=1` (CI) makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::keys::MasterKey;
use crate::registry::Note;

fn server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of one test's own, dropped when the test ends.
struct TestDatabase {
    url: String,
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
fn fresh_database(test: &str) -> Option<TestDatabase> {
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

fn key_file(dir: &std::path::Path) -> KeySource {
    let path = dir.join("key");
    crate::keys::write_key(&path, &MasterKey::generate()).unwrap();
    KeySource::ConfigFile(path)
}

fn account(name: &str) -> NewAccount {
    NewAccount {
        key: AccountKey::parse(&format!("shiphero/{name}")).unwrap(),
        email: Some(format!("{name}@x.test")),
        first_name: None,
        last_name: None,
        refresh_token: Some(Secret::new(format!("refresh-{name}-aaaaaaaa"))),
        access_token: None,
    }
}

fn save(store: &mut PgStore, record: &AccountRecord) -> Result<AccountRecord, RegistryError> {
    let mut next = record.clone();
    next.revision += 1;
    next.last_error = Some(format!("saved by revision {}", next.revision));
    let notes = [Note {
        kind: crate::registry::EventKind::Failed,
        detail: None,
    }];
    store.save_all(&[Save {
        record: &next,
        expected: Some(record.revision),
        notes: &notes,
        at: Timestamp::from_secs(1_800_000_000),
    }])?;
    Ok(next)
}

#[test]
fn one_daemon_works_on_an_account_at_a_time_and_a_lease_lost_stores_nothing() {
    let Some(db) = fresh_database("lease") else {
        return;
    };
    let url = &db.url;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let (mut a, mut b) = (store(url, "host-a", &key), store(url, "host-b", &key));
    let t0 = Timestamp::from_secs(1_800_000_000);
    let record = a.insert(&account("acme"), t0).unwrap();
    // b sees what a registered, sealed with the shared key.
    assert_eq!(b.load(&record.key).unwrap().revision, record.revision);
    assert_eq!(
        b.refresh_token(&record.key).unwrap(),
        Some(Secret::new("refresh-acme-aaaaaaaa"))
    );

    let short = Duration::from_millis(300);
    assert_eq!(a.lease(&record, short).unwrap(), LeaseAnswer::Granted);
    assert_eq!(
        b.lease(&record, short).unwrap(),
        LeaseAnswer::Busy {
            holder: "host-a".into()
        }
    );
    // a pauses past its lease; b takes the account over and stores newer work.
    let taken = loop {
        match b.lease(&record, Duration::from_secs(30)).unwrap() {
            LeaseAnswer::Granted => break true,
            LeaseAnswer::Busy { .. } => std::thread::sleep(Duration::from_millis(20)),
            LeaseAnswer::Moved => break false,
        }
    };
    assert!(taken, "b must get the lease once a's ran out");
    let newer = save(&mut b, &record).unwrap();
    // a resumes: whatever it computed from the old record is refused, not stored over b's.
    assert!(matches!(
        save(&mut a, &record),
        Err(RegistryError::LeaseLost(_))
    ));
    assert_eq!(
        a.load(&record.key).unwrap().last_error,
        newer.last_error,
        "b's work stays"
    );
    // Planned from the old record, a lease is refused as moved on.
    b.release(&record.key).unwrap();
    assert_eq!(a.lease(&record, short).unwrap(), LeaseAnswer::Moved);
    let events = a.events(&record.key, None, 10).unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["added", "failed"]
    );
}

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
