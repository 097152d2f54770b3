//! Conformance of what is not an account's own record: OAuth states, the audit, the copy
//! between registries, leases, and two writers racing.

use std::sync::Barrier;
use std::time::Duration;

use super::{Factory, T0, key, save, shiphero};
use crate::clock::Timestamp;
use crate::names::Status;
use crate::registry::store::OAuthBegin;
use crate::registry::{AuditEntry, AuditQuery, LeaseAnswer, NewAccount, RegistryError};
use crate::secret::Secret;

/// An audit entry of `account` at second `at`.
pub(super) fn audit_entry(account: &str, at: i64, fingerprint: &str) -> AuditEntry {
    AuditEntry {
        at: Timestamp::from_secs(at),
        last_at: Timestamp::from_secs(at + 1),
        count: 2,
        account: key(account),
        client: Some("order-sync".into()),
        uid: 1001,
        gid: 1002,
        pid: Some(42),
        exe: Some("/usr/bin/app".into()),
        fingerprint: fingerprint.into(),
        request: None,
    }
}

fn begin<'a>(
    account: &'a crate::names::AccountKey,
    hash: &'a str,
    now: Timestamp,
) -> OAuthBegin<'a> {
    OAuthBegin {
        key: account,
        state_hash: hash,
        expires_at: now.plus(Duration::from_secs(600)),
        added_detail: "awaiting a Shippo OAuth connection",
        now,
    }
}

pub(super) fn oauth_states_are_spent_once_superseded_and_expire(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    let shop = key("shippo/shop");
    let record = store.begin_oauth(&begin(&shop, "hash-one", T0)).unwrap();
    assert_eq!(record.status, Status::Pending);
    assert!(record.current.is_none() && record.candidate.is_none());
    let history = store.events(&shop, None, 10).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| e.detail.as_deref())
            .collect::<Vec<_>>(),
        [Some("awaiting a Shippo OAuth connection")]
    );
    // Spent once, by any store of the registry; never twice, never forged.
    assert_eq!(store.take_oauth_state("forged", T0).unwrap(), None);
    let mut other = b.open("host-b");
    assert_eq!(
        other.take_oauth_state("hash-one", T0).unwrap(),
        Some(shop.clone())
    );
    assert_eq!(
        store.take_oauth_state("hash-one", T0).unwrap(),
        None,
        "replayed"
    );
    // A new link supersedes the unused old one; the account is not created twice.
    let again = store.begin_oauth(&begin(&shop, "hash-two", T0)).unwrap();
    assert_eq!(again.generation, record.generation);
    store.begin_oauth(&begin(&shop, "hash-three", T0)).unwrap();
    assert_eq!(
        store.take_oauth_state("hash-two", T0).unwrap(),
        None,
        "superseded"
    );
    // Expired at its time.
    let late = T0.plus(Duration::from_secs(600));
    assert_eq!(
        store.take_oauth_state("hash-three", late).unwrap(),
        None,
        "expired"
    );
    // An account that is no longer pending is never connected over.
    let live = store
        .insert(
            &NewAccount::shippo(key("shippo/live"), Secret::new("oauth.live"), T0),
            T0,
        )
        .unwrap();
    let live = save(store.as_mut(), &live, |r| r.status = Status::Active, &[]).unwrap();
    assert!(matches!(
        store.begin_oauth(&begin(&live.key, "hash-live", T0)),
        Err(RegistryError::AccountExists(_))
    ));
    assert!(
        !store
            .discard_unconnected(&live.key, "declined", T0)
            .unwrap()
    );
    // A declined flow leaves nothing, and its state dies with the account.
    store.begin_oauth(&begin(&shop, "hash-four", T0)).unwrap();
    assert!(store.discard_unconnected(&shop, "declined", T0).unwrap());
    assert!(matches!(store.load(&shop), Err(RegistryError::NotFound(_))));
    assert_eq!(store.take_oauth_state("hash-four", T0).unwrap(), None);
    // A state whose account was removed does not complete for one registered again.
    store.begin_oauth(&begin(&shop, "hash-five", T0)).unwrap();
    store.delete(&shop, T0).unwrap();
    store.begin_oauth(&begin(&shop, "hash-six", T0)).unwrap();
    assert_eq!(store.take_oauth_state("hash-five", T0).unwrap(), None);
    assert_eq!(store.take_oauth_state("hash-six", T0).unwrap(), Some(shop));
}

pub(super) fn the_audit_is_written_filtered_and_pruned(backend: Factory<'_>) {
    let b = backend("a");
    let mut store = b.open("host-a");
    store.append_audit(&[]).unwrap();
    let entries = [
        audit_entry("shiphero/acme", 10, "aaaaaaaaaaaa"),
        audit_entry("shippo/beta", 20, "bbbbbbbbbbbb"),
        audit_entry("shiphero/acme", 30, "cccccccccccc"),
    ];
    store.append_audit(&entries).unwrap();
    let all =
        |store: &mut dyn crate::registry::Store, query: AuditQuery| store.audit(&query).unwrap();
    let every = all(
        store.as_mut(),
        AuditQuery {
            limit: 10,
            ..Default::default()
        },
    );
    assert_eq!(every, entries, "every field kept, oldest first");
    let acme = all(
        store.as_mut(),
        AuditQuery {
            account: Some(key("shiphero/acme")),
            limit: 10,
            ..Default::default()
        },
    );
    assert_eq!(acme, [entries[0].clone(), entries[2].clone()]);
    let newest = all(
        store.as_mut(),
        AuditQuery {
            limit: 2,
            ..Default::default()
        },
    );
    assert_eq!(newest, entries[1..]);
    let since = all(
        store.as_mut(),
        AuditQuery {
            since: Some(Timestamp::from_secs(20)),
            limit: 10,
            ..Default::default()
        },
    );
    assert_eq!(since, entries[1..]);
    // Pruned by when an entry was last read.
    assert_eq!(store.prune_audit(Timestamp::from_secs(21)).unwrap(), 1);
    assert_eq!(store.prune_audit(Timestamp::from_secs(21)).unwrap(), 0);
    let left = all(
        b.open("host-b").as_mut(),
        AuditQuery {
            limit: 10,
            ..Default::default()
        },
    );
    assert_eq!(left, entries[1..]);
}

pub(super) fn export_and_import_carry_everything(backend: Factory<'_>) {
    let from = backend("from");
    let mut store = from.open("host-a");
    let acme = store.insert(&shiphero("acme"), T0).unwrap();
    let acme = save(store.as_mut(), &acme, |r| r.status = Status::Active, &[]).unwrap();
    let old = store.insert(&shiphero("old"), T0).unwrap();
    store.delete(&old.key, T0).unwrap();
    let shop = store
        .insert(
            &NewAccount::shippo(key("shippo/shop"), Secret::new("oauth.shop"), T0),
            T0,
        )
        .unwrap();
    store
        .append_audit(&[audit_entry("shiphero/acme", 10, "aaaaaaaaaaaa")])
        .unwrap();
    let dump = store.export().unwrap();
    assert_eq!(dump.accounts.len(), 2);
    assert_eq!(dump.events.len(), 4);
    assert_eq!(dump.audit.len(), 1);

    let to = backend("to");
    let mut target = to.open("host-b");
    target.import(&dump).unwrap();
    let mut records = target.load_all().unwrap();
    records.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        records,
        [acme.clone(), shop.clone()],
        "registrations and revisions kept"
    );
    assert_eq!(
        target.refresh_token(&acme.key).unwrap(),
        Some(Secret::new("refresh-acme-aaaaaaaa"))
    );
    assert_eq!(target.events(&old.key, None, 10).unwrap().len(), 2);
    assert_eq!(target.all_events().unwrap().len(), 4);
    assert_eq!(
        target
            .audit(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap(),
        dump.audit
    );
    // Every value sealed again at rest; a later registration never reuses a generation.
    assert!(to.stored_secrets().iter().all(|v| v.starts_with("v1:")));
    let next = target.insert(&shiphero("next"), T0).unwrap();
    assert!(next.generation > shop.generation.max(old.generation));
    // Twice refuses instead of mixing two registries.
    assert!(matches!(
        target.import(&dump),
        Err(RegistryError::NotEmpty(_))
    ));
}

pub(super) fn a_lease_lost_stores_nothing(backend: Factory<'_>) {
    let b = backend("a");
    let (mut a, mut other) = (b.open("host-a"), b.open("host-b"));
    let record = a.insert(&shiphero("acme"), T0).unwrap();
    if !b.shared() {
        // One daemon: always granted, given back without a word; stale work is still
        // refused by its revision (above).
        assert_eq!(
            a.lease(&record, Duration::from_secs(30)).unwrap(),
            LeaseAnswer::Granted
        );
        a.release(&record.key).unwrap();
        return;
    }
    let short = Duration::from_millis(300);
    assert_eq!(a.lease(&record, short).unwrap(), LeaseAnswer::Granted);
    assert_eq!(
        other.lease(&record, short).unwrap(),
        LeaseAnswer::Busy {
            holder: "host-a".into()
        }
    );
    // a pauses past its lease; the other takes the account over and stores newer work. The
    // lease runs out on the database's clock, which the test can only wait for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while other.lease(&record, Duration::from_secs(30)).unwrap() != LeaseAnswer::Granted {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let newer = save(other.as_mut(), &record, |r| r.failures = 2, &[]).unwrap();
    // a resumes: whatever it computed from the old record is refused, not stored over.
    assert!(matches!(
        save(a.as_mut(), &record, |r| r.failures = 1, &[]),
        Err(RegistryError::LeaseLost(_))
    ));
    assert_eq!(
        a.load(&record.key).unwrap(),
        newer,
        "the other's work stays"
    );
    // Planned from the old record, a lease is refused as moved on.
    other.release(&record.key).unwrap();
    assert_eq!(a.lease(&record, short).unwrap(), LeaseAnswer::Moved);
    assert_eq!(a.lease(&newer, short).unwrap(), LeaseAnswer::Granted);
}

pub(super) fn leases_taken_together_answer_each_account(backend: Factory<'_>) {
    let b = backend("a");
    let (mut a, mut other) = (b.open("host-a"), b.open("host-b"));
    let lease = Duration::from_secs(30);
    let free = a.insert(&shiphero("free"), T0).unwrap();
    let held = a.insert(&shiphero("held"), T0).unwrap();
    let moved = a.insert(&shiphero("moved"), T0).unwrap();
    let newer = save(other.as_mut(), &moved, |r| r.failures = 1, &[]).unwrap();
    if b.shared() {
        assert_eq!(other.lease(&held, lease).unwrap(), LeaseAnswer::Granted);
    }
    let answers = a
        .lease_all(&[(&free, lease), (&held, lease), (&moved, lease)])
        .unwrap();
    if !b.shared() {
        assert_eq!(answers, vec![LeaseAnswer::Granted; 3]);
        return;
    }
    assert_eq!(
        answers,
        vec![
            LeaseAnswer::Granted,
            LeaseAnswer::Busy {
                holder: "host-b".into()
            },
            LeaseAnswer::Moved,
        ],
        "each answer in the order asked"
    );
    // The lease taken together is held like one taken alone: the other daemon is refused,
    // and this daemon's saves under it are stored.
    assert_eq!(
        other.lease(&free, lease).unwrap(),
        LeaseAnswer::Busy {
            holder: "host-a".into()
        }
    );
    save(a.as_mut(), &free, |r| r.failures = 3, &[]).unwrap();
    // Given back together, both accounts are free for the other daemon at once.
    assert_eq!(a.lease(&newer, lease).unwrap(), LeaseAnswer::Granted);
    a.release_all(&[free.key.clone(), newer.key.clone()])
        .unwrap();
    let stored = a.load(&free.key).unwrap();
    assert_eq!(other.lease(&stored, lease).unwrap(), LeaseAnswer::Granted);
    assert_eq!(other.lease(&newer, lease).unwrap(), LeaseAnswer::Granted);
}

pub(super) fn two_writers_racing_a_save_one_wins_the_other_is_stale(backend: Factory<'_>) {
    let b = backend("a");
    let mut setup = b.open("host-a");
    let mut record = setup.insert(&shiphero("acme"), T0).unwrap();
    let mut stores = [b.open("host-a"), b.open("host-b")];
    for round in 0..5 {
        let start = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let writers: Vec<_> = stores
                .iter_mut()
                .enumerate()
                .map(|(i, store)| {
                    let (record, start) = (&record, &start);
                    s.spawn(move || {
                        start.wait();
                        save(
                            store.as_mut(),
                            record,
                            |r| r.last_error = Some(format!("{round}/{i}")),
                            &[],
                        )
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let (won, lost): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        assert_eq!((won.len(), lost.len()), (1, 1), "round {round}");
        assert!(
            matches!(lost[0], Err(RegistryError::Stale(_))),
            "{:?}",
            lost[0]
        );
        let winner = won.into_iter().next().unwrap().unwrap();
        assert_eq!(
            setup.load(&record.key).unwrap(),
            winner,
            "the winner's work is stored"
        );
        record = winner;
    }
}
