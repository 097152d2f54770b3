//! The registry handle over the SQLite backend: durability across reopening, stale work
//! refused, saves batched by the owner thread, the file's permissions and schema version.
//! What every backend must do alike is in the conformance suite (`conformance/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::names::Status;

fn key(s: &str) -> AccountKey {
    AccountKey::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn shiphero(name: &str, email: &str, refresh: &str) -> NewAccount {
    NewAccount {
        key: key(&format!("shiphero/{name}")),
        email: Some(email.into()),
        first_name: None,
        last_name: None,
        refresh_token: Some(Secret::new(refresh)),
        access_token: None,
    }
}

/// What a passing probe of the candidate does, for tests of the store alone.
pub(crate) async fn activate(
    reg: &Registry,
    key: &AccountKey,
    now: Timestamp,
) -> Arc<AccountRecord> {
    let mut r = (*reg.account(key).unwrap()).clone();
    r.current = r.candidate.take().map(|c| *c);
    r.status = Status::Active;
    r.last_verified_at = Some(now);
    let note = Note {
        kind: EventKind::Checked,
        detail: None,
    };
    reg.save(r, vec![note], now).await.unwrap()
}

#[tokio::test]
async fn a_saved_token_survives_reopening_and_stale_work_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Timestamp::from_secs(1_800_000_000);
    let acme = key("shiphero/acme");
    {
        let reg = Registry::open(dir.path()).await.unwrap();
        reg.add(shiphero("acme", "a@x.io", "refresh-aaaaaaaa"), t0)
            .await
            .unwrap();
        let tok = TokenRecord {
            access_token: Secret::new("tok-1"),
            issued_at: t0,
            expires_at: Some(t0.plus(std::time::Duration::from_secs(60))),
        };
        let mut r = (*reg.account(&acme).unwrap()).clone();
        r.candidate = Some(Box::new(tok.clone()));
        let stale = r.clone();
        reg.save(r, vec![], t0).await.unwrap();
        // Computed from a revision that is no longer stored: refused, nothing written.
        assert!(matches!(
            reg.save(stale, vec![], t0).await,
            Err(RegistryError::Stale(_))
        ));
        let r = activate(&reg, &acme, t0).await;
        assert_eq!(r.current.as_ref(), Some(&tok));
        assert_eq!(r.status, Status::Active);
    }
    let reg = Registry::open(dir.path()).await.unwrap();
    let r = reg.account(&acme).unwrap();
    assert_eq!(
        r.current.as_ref().map(|t| t.access_token.expose()),
        Some("tok-1")
    );
    assert_eq!(
        reg.refresh_token(&acme).await.unwrap(),
        Some(Secret::new("refresh-aaaaaaaa"))
    );
    let kinds: Vec<_> = reg
        .events(&acme, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["added", "checked"]);
    let mode = std::fs::metadata(dir.path().join("registry.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Removed and added again: old work cannot land on the new registration, and the
    // new one's history starts empty.
    let old = (*r).clone();
    reg.remove(&acme, t0).await.unwrap();
    reg.add(shiphero("acme", "b@x.io", "refresh-bbbbbbbb"), t0)
        .await
        .unwrap();
    let new = reg.account(&acme).unwrap();
    assert_ne!(new.generation, old.generation);
    assert!(matches!(
        reg.save(old, vec![], t0).await,
        Err(RegistryError::Stale(_))
    ));
    let kinds: Vec<_> = reg
        .events(&acme, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["added"]);
}

#[tokio::test]
async fn a_far_future_time_is_refused_and_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).await.unwrap();
    let t0 = Timestamp::from_secs(1_800_000_000);
    let mut new = shiphero("acme", "a@x.io", "refresh-aaaaaaaa");
    new.access_token = Some(TokenRecord {
        access_token: Secret::new("t"),
        issued_at: t0,
        expires_at: Some(Timestamp::from_secs(300_000_000_000)),
    });
    assert!(matches!(
        reg.add(new, t0).await,
        Err(RegistryError::TimeOutOfRange { .. })
    ));
    assert_eq!(
        Timestamp::from_millis(i64::MAX).to_rfc3339(),
        "9999-12-31T23:59:59Z"
    );
    // The registry thread is still alive.
    reg.add(shiphero("beta", "b@x.io", "refresh-bbbbbbbb"), t0)
        .await
        .unwrap();
}

#[tokio::test]
async fn saves_queued_together_are_all_stored_and_a_panic_does_not_close_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Timestamp::from_secs(1_800_000_000);
    let keys: Vec<AccountKey> = (0..200).map(|i| key(&format!("shiphero/m{i}"))).collect();
    {
        let reg = Registry::open(dir.path()).await.unwrap();
        for (i, k) in keys.iter().enumerate() {
            reg.add(
                shiphero(&k.name, &format!("{i}@x.io"), &format!("refresh-{i:08}")),
                t0,
            )
            .await
            .unwrap();
        }
        // Two saves per account in flight at once, as a sweep makes them: the second
        // computed from the first, so they chain inside one batch.
        let mut tasks = tokio::task::JoinSet::new();
        for k in &keys {
            let (reg, k) = (reg.clone(), k.clone());
            tasks.spawn(async move {
                let mut r = (*reg.account(&k).unwrap()).clone();
                r.candidate = Some(Box::new(TokenRecord {
                    access_token: Secret::new(format!("tok-{}", k.name)),
                    issued_at: t0,
                    expires_at: None,
                }));
                let first = reg.save(r, vec![], t0).await.unwrap();
                let mut r = (*first).clone();
                r.current = r.candidate.take().map(|c| *c);
                r.status = Status::Active;
                reg.save(r, vec![], t0).await.unwrap();
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        // A job that panics is logged; the next one runs.
        assert!(matches!(
            reg.call(|_| -> Result<(), RegistryError> { panic!("a bad value") })
                .await,
            Err(RegistryError::Closed)
        ));
        reg.ping().await.unwrap();
    }
    let reg = Registry::open(dir.path()).await.unwrap();
    for k in &keys {
        let r = reg.account(k).unwrap();
        assert_eq!(r.status, Status::Active);
        assert_eq!(
            r.current
                .as_ref()
                .map(|t| t.access_token.expose().to_string()),
            Some(format!("tok-{}", k.name))
        );
        assert_eq!(r.revision, 2);
    }
}

#[tokio::test]
async fn duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).await.unwrap();
    let t0 = Timestamp::from_secs(1);
    reg.add(shiphero("acme", "a@x.io", "refresh-aaaaaaaa"), t0)
        .await
        .unwrap();
    assert!(matches!(
        reg.add(shiphero("acme", "b@x.io", "refresh-bbbbbbbb"), t0)
            .await,
        Err(RegistryError::AccountExists(_))
    ));
    assert!(matches!(
        reg.add(shiphero("other", "A@X.io", "refresh-cccccccc"), t0)
            .await,
        Err(RegistryError::EmailTaken { .. })
    ));
    assert!(matches!(
        reg.add(shiphero("other", "c@x.io", "refresh-aaaaaaaa"), t0)
            .await,
        Err(RegistryError::RefreshTokenTaken { .. })
    ));
    reg.remove(&key("shiphero/acme"), t0).await.unwrap();
    assert!(reg.account(&key("shiphero/acme")).is_none());
    reg.add(shiphero("other", "a@x.io", "refresh-aaaaaaaa"), t0)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Registry::open(dir.path()).await.unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("registry.db")).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = Registry::open(dir.path())
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("refusing to downgrade"), "{err}");
}
