//! Conformance of the account operations: registration, reads, conditional saves, sealing,
//! history, and rows this build cannot read.

use std::time::Duration;

use super::{Factory, T0, key, save, shiphero};
use crate::names::Status;
use crate::registry::{EventKind, NewAccount, Note, RegistryError, Save, TokenRecord};
use crate::secret::Secret;

fn kinds(events: &[crate::registry::Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

pub(super) fn accounts_are_added_read_listed_and_removed(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    let acme = store.insert(&shiphero("acme"), T0).unwrap();
    assert_eq!(acme.key, key("shiphero/acme"));
    assert_eq!(acme.status, Status::Pending);
    assert_eq!(acme.email.as_deref(), Some("acme@x.test"));
    assert_eq!(acme.first_name.as_deref(), Some("Ada"));
    assert_eq!((acme.revision, acme.created_at), (0, T0));
    assert!(acme.has_refresh_token && acme.current.is_none() && acme.candidate.is_none());
    // A registration with an access token keeps it as the candidate a probe will check.
    let tok = TokenRecord {
        access_token: Secret::new("oauth.shop"),
        issued_at: T0,
        expires_at: None,
    };
    let shop = store
        .insert(
            &NewAccount::shippo(key("shippo/shop"), tok.access_token.clone(), T0),
            T0,
        )
        .unwrap();
    assert_eq!(shop.candidate, Some(Box::new(tok)));
    assert!(!shop.has_refresh_token);
    assert!(shop.generation > acme.generation, "generations grow");

    let mut all: Vec<_> = store.load_all().unwrap();
    all.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(all, [acme.clone(), shop.clone()]);
    assert_eq!(store.load(&acme.key).unwrap(), acme);
    let gone = key("shiphero/gone");
    assert!(matches!(store.load(&gone), Err(RegistryError::NotFound(_))));
    let some = store.load_some(&[gone.clone(), shop.key.clone()]).unwrap();
    assert_eq!(some, std::slice::from_ref(&shop));
    // Another daemon (or this one restarted) reads the same.
    assert_eq!(b.open("host-b").load(&acme.key).unwrap(), acme);

    store.delete(&acme.key, T0).unwrap();
    assert!(matches!(
        store.load(&acme.key),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        store.refresh_token(&acme.key),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(&acme.key, T0),
        Err(RegistryError::NotFound(_))
    ));
    assert_eq!(store.load_all().unwrap(), [shop]);
    let history = store.events(&acme.key, None, 10).unwrap();
    assert_eq!(kinds(&history), ["added", "removed"]);
    store.ping().unwrap();
}

pub(super) fn duplicates_are_refused_alike(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    store.insert(&shiphero("acme"), T0).unwrap();
    let mut again = shiphero("acme");
    again.email = Some("other@x.test".into());
    again.refresh_token = Some(Secret::new("refresh-other-aaaaaaaa"));
    assert!(matches!(
        store.insert(&again, T0),
        Err(RegistryError::AccountExists(k)) if k == key("shiphero/acme")
    ));
    // The same email in another case, under another name: one developer user per integration.
    let mut email = shiphero("other");
    email.email = Some("ACME@X.test".into());
    assert!(matches!(
        store.insert(&email, T0),
        Err(RegistryError::EmailTaken { existing, .. }) if existing == key("shiphero/acme")
    ));
    let mut refresh = shiphero("other");
    refresh.refresh_token = Some(Secret::new("refresh-acme-aaaaaaaa"));
    assert!(matches!(
        store.insert(&refresh, T0),
        Err(RegistryError::RefreshTokenTaken { existing }) if existing == key("shiphero/acme")
    ));
    // Nothing of the refused registrations was stored.
    assert_eq!(store.load_all().unwrap().len(), 1);
    // Once removed, its name, email and token are free.
    store.delete(&key("shiphero/acme"), T0).unwrap();
    store.insert(&shiphero("acme"), T0).unwrap();
}

pub(super) fn a_save_lands_only_on_the_revision_it_was_computed_from(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    let first = store.insert(&shiphero("acme"), T0).unwrap();
    let failed = [Note {
        kind: EventKind::Failed,
        detail: Some("upstream 503".into()),
    }];
    let second = save(
        store.as_mut(),
        &first,
        |r| {
            r.last_error = Some("upstream 503".into());
            r.failures = 1;
            r.next_attempt_at = Some(T0.plus(Duration::from_secs(60)));
        },
        &failed,
    )
    .unwrap();
    assert_eq!(store.load(&first.key).unwrap(), second);
    // Computed from a revision no longer stored: refused, nothing written.
    assert!(matches!(
        save(store.as_mut(), &first, |r| r.failures = 7, &[]),
        Err(RegistryError::Stale(_))
    ));
    assert_eq!(store.load(&first.key).unwrap(), second);
    // Without an expected revision (a record kept in memory while writes failed) it lands.
    let mut kept = second.clone();
    kept.revision += 1;
    kept.status = Status::Active;
    store
        .save_all(&[Save {
            record: &kept,
            expected: None,
            notes: &[],
            at: T0,
        }])
        .unwrap();
    assert_eq!(store.load(&first.key).unwrap(), kept);
    // Removed and registered again: work planned for the old registration cannot land.
    store.delete(&first.key, T0).unwrap();
    let fresh = store.insert(&shiphero("acme"), T0).unwrap();
    assert_ne!(fresh.generation, first.generation);
    assert!(matches!(
        save(store.as_mut(), &kept, |r| r.failures = 9, &[]),
        Err(RegistryError::Stale(_))
    ));
    assert_eq!(store.load(&first.key).unwrap(), fresh);
}

pub(super) fn a_batch_of_saves_is_all_or_nothing(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    let one = store.insert(&shiphero("one"), T0).unwrap();
    let two = store.insert(&shiphero("two"), T0).unwrap();
    let mut one_next = one.clone();
    one_next.revision += 1;
    one_next.status = Status::Active;
    let mut two_stale = two.clone();
    two_stale.revision += 1;
    let batch = |two_expected| {
        [
            Save {
                record: &one_next,
                expected: Some(one.revision),
                notes: &[],
                at: T0,
            },
            Save {
                record: &two_stale,
                expected: Some(two_expected),
                notes: &[],
                at: T0,
            },
        ]
    };
    assert!(matches!(
        store.save_all(&batch(two.revision + 5)),
        Err(RegistryError::Stale(k)) if k == two.key
    ));
    assert_eq!(
        store.load(&one.key).unwrap(),
        one,
        "the whole batch rolled back"
    );
    store.save_all(&batch(two.revision)).unwrap();
    assert_eq!(store.load(&one.key).unwrap(), one_next);
    assert_eq!(store.load(&two.key).unwrap(), two_stale);
}

pub(super) fn tokens_are_sealed_at_rest_and_open_again(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    let acme = store.insert(&shiphero("acme"), T0).unwrap();
    let current = TokenRecord {
        access_token: Secret::new("access-current-1234"),
        issued_at: T0,
        expires_at: Some(T0.plus(Duration::from_secs(2_419_200))),
    };
    let candidate = TokenRecord {
        access_token: Secret::new("access-candidate-5678"),
        issued_at: T0.plus(Duration::from_secs(1)),
        expires_at: None,
    };
    let saved = save(
        store.as_mut(),
        &acme,
        |r| {
            r.current = Some(current.clone());
            r.candidate = Some(Box::new(candidate.clone()));
        },
        &[],
    )
    .unwrap();
    // Read back by another store: the values open with the key, times intact.
    let mut other = b.open("host-b");
    let read = other.load(&acme.key).unwrap();
    assert_eq!(read, saved);
    assert_eq!(read.current, Some(current));
    assert_eq!(read.candidate, Some(Box::new(candidate)));
    assert_eq!(
        other.refresh_token(&acme.key).unwrap(),
        Some(Secret::new("refresh-acme-aaaaaaaa"))
    );
    // At rest every one is sealed, none readable.
    let stored = b.stored_secrets();
    assert_eq!(stored.len(), 3, "{stored:?}");
    for value in &stored {
        assert!(value.starts_with("v1:"), "not sealed: {value}");
        for plain in ["refresh-acme", "access-current", "access-candidate"] {
            assert!(!value.contains(plain), "{plain} in the clear");
        }
    }
    // Clearing a token clears it at rest too.
    save(store.as_mut(), &saved, |r| r.candidate = None, &[]).unwrap();
    assert_eq!(b.stored_secrets().len(), 2);
}

pub(super) fn a_rekey_moves_every_token_to_the_new_key(backend: Factory<'_>) {
    use crate::keys::{KeySource, MasterKey};
    use crate::registry::seal::Sealer;
    let b = backend("a");
    let key_file = b.key_path();
    let mut store = b.open("host-a");
    let acme = store.insert(&shiphero("acme"), T0).unwrap();
    let token = TokenRecord {
        access_token: Secret::new("access-current-1234"),
        issued_at: T0,
        expires_at: None,
    };
    let saved = save(
        store.as_mut(),
        &acme,
        |r| r.current = Some(token.clone()),
        &[],
    )
    .unwrap();
    let before = b.stored_secrets();
    let old_key = KeySource::ConfigFile(key_file.clone()).load(false).unwrap();
    let (current, next_key) = (Sealer::new(&old_key), MasterKey::generate());
    let next = Sealer::new(&next_key);

    // A key file that no longer holds the registry's key changes nothing.
    let stranger = Sealer::new(&MasterKey::generate());
    assert!(matches!(
        store.rekey(&stranger, &next, &key_file),
        Err(RegistryError::KeyFileChanged { .. })
    ));
    assert_eq!(b.stored_secrets(), before);

    // A daemon sharing the registry that cannot open the next key holds the rotation back.
    let mut other = b.shared().then(|| b.open("host-b"));
    if let Some(other) = other.as_mut() {
        let refused = store.rekey(&current, &next, &key_file);
        assert!(
            matches!(&refused, Err(RegistryError::NextKeyNotEverywhere { hosts, .. }) if hosts == "host-b"),
            "{refused:?}"
        );
        assert_eq!(b.stored_secrets(), before);
        other.stage_key(&next).unwrap();
    }
    assert_eq!(store.rekey(&current, &next, &key_file).unwrap(), 1);
    let after = b.stored_secrets();
    assert_eq!(after.len(), before.len());
    assert!(
        after.iter().all(|v| !before.contains(v)),
        "every value sealed again"
    );

    // The rotating store goes on reading and writing.
    assert_eq!(store.load(&acme.key).unwrap(), saved);
    let saved = save(store.as_mut(), &saved, |r| r.failures = 1, &[]).unwrap();
    // Another daemon moves to the new key at its next write.
    if let Some(mut other) = other {
        let stored = other.load(&acme.key).unwrap();
        assert_eq!(stored, saved);
        save(other.as_mut(), &stored, |r| r.failures = 2, &[]).unwrap();
    }
    // The old key no longer opens the registry; the new one opens everything.
    assert!(matches!(
        b.try_open("host-c").map(|_| ()),
        Err(RegistryError::WrongKey { .. })
    ));
    crate::keys::write_key(&key_file, &next_key).unwrap();
    let mut restarted = b.open("host-c");
    let read = restarted.load(&acme.key).unwrap();
    assert_eq!(read.current, Some(token));
    assert!(read.failures >= 1);
    assert_eq!(
        restarted.refresh_token(&acme.key).unwrap(),
        Some(Secret::new("refresh-acme-aaaaaaaa"))
    );
}

pub(super) fn history_belongs_to_one_registration(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    let first = store.insert(&shiphero("acme"), T0).unwrap();
    let mut at = first.clone();
    for i in 0..4 {
        let note = [Note {
            kind: EventKind::Checked,
            detail: Some(format!("check {i}")),
        }];
        at = save(store.as_mut(), &at, |r| r.failures = i, &note).unwrap();
    }
    let events = store.events(&first.key, Some(first.generation), 3).unwrap();
    let details: Vec<_> = events.iter().map(|e| e.detail.as_deref()).collect();
    assert_eq!(
        details,
        [Some("check 1"), Some("check 2"), Some("check 3")],
        "newest 3, oldest first"
    );
    assert!(
        events
            .iter()
            .all(|e| e.account == "shiphero/acme" && e.at == T0)
    );
    store.delete(&first.key, T0).unwrap();
    let second = store.insert(&shiphero("acme"), T0).unwrap();
    let mine = store
        .events(&first.key, Some(second.generation), 10)
        .unwrap();
    assert_eq!(
        kinds(&mine),
        ["added"],
        "a new registration's history starts empty"
    );
    let all = store.events(&first.key, None, 100).unwrap();
    assert_eq!(all.len(), 1 + 4 + 1 + 1);
    let dumped = store.all_events().unwrap();
    assert_eq!(dumped.len(), all.len());
    assert_eq!(
        dumped
            .iter()
            .filter(|e| e.generation == Some(first.generation))
            .count(),
        6
    );
    assert_eq!(
        dumped.last().map(|e| e.generation),
        Some(Some(second.generation))
    );
}

pub(super) fn unknown_rows_are_refused_never_read_as_another_provider(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    store.insert(&shiphero("acme"), T0).unwrap();
    store
        .append_audit(&[super::shared::audit_entry(
            "shiphero/acme",
            5,
            "aaaaaaaaaaaa",
        )])
        .unwrap();
    b.plant_unknown_rows();
    let unknown = |r: Result<_, RegistryError>| matches!(r, Err(RegistryError::UnknownRow(_)));
    // Skipping the rows would make accounts vanish from the socket; reading them as another
    // provider would refresh them against the wrong upstream. Both refuse.
    assert!(unknown(store.load_all().map(drop)));
    assert!(unknown(store.load(&key("shiphero/frozen")).map(drop)));
    assert!(unknown(store.all_events().map(drop)));
    assert!(unknown(store.export().map(drop)));
    // A registration clashing with the unknown row's token says what it clashes with.
    let mut clash = shiphero("clash");
    clash.refresh_token = Some(Secret::new("refresh-fedex-aaaaaaaa"));
    assert!(unknown(store.insert(&clash, T0).map(drop)));
    // A state issued for it is not spent on an account of another provider.
    assert!(unknown(store.take_oauth_state("fedex-state", T0).map(drop)));
    // The audit is a log: the line it cannot read is skipped, the others stay.
    let audit = store.audit(&crate::registry::AuditQuery {
        limit: 10,
        ..Default::default()
    });
    let accounts: Vec<_> = audit.unwrap().into_iter().map(|e| e.account).collect();
    assert_eq!(accounts, [key("shiphero/acme")]);
    // What the store can read, it still reads.
    assert_eq!(
        store.load(&key("shiphero/acme")).unwrap().key,
        key("shiphero/acme")
    );
}
