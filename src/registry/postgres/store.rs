//! [`Store`] on PostgreSQL: each call one transaction on the owner thread's connection, every
//! write notifying the change feed at commit. Leases are in [`super::lease`].

use std::path::Path;
use std::time::Duration;

use super::rows::{
    SELECT_ACCOUNT, check_unique, insert_event, load_one, notify, row_to_record, sealed,
    write_record,
};
use super::{PgStore, duplicate};
use crate::clock::Timestamp;
use crate::names::{AccountKey, Status};
use crate::registry::seal::{Opener as _, Sealer};
use crate::registry::store::{Dump, DumpedEvent, LeaseAnswer, OAuthBegin, Save, Store};
use crate::registry::{
    AccountRecord, AuditEntry, AuditQuery, Event, NewAccount, ProxiedCall, RegistryError, stored,
};
use crate::secret::Secret;

impl Store for PgStore {
    fn load_all(&mut self) -> Result<Vec<AccountRecord>, RegistryError> {
        self.with(|c, keys, _, _| {
            c.query(SELECT_ACCOUNT, &[])?
                .iter()
                .map(|row| row_to_record(row, keys))
                .collect()
        })
    }

    fn load(&mut self, key: &AccountKey) -> Result<AccountRecord, RegistryError> {
        self.with(|c, keys, _, _| load_one(c, keys, key))
    }

    fn load_some(&mut self, keys: &[AccountKey]) -> Result<Vec<AccountRecord>, RegistryError> {
        let names: Vec<String> = keys.iter().map(AccountKey::to_string).collect();
        self.with(|c, keys, _, _| {
            let sql = format!("{SELECT_ACCOUNT} WHERE provider || '/' || name = ANY($1)");
            c.query(&sql, &[&names])?
                .iter()
                .map(|row| row_to_record(row, keys))
                .collect()
        })
    }

    fn save_all(&mut self, saves: &[Save<'_>]) -> Result<(), RegistryError> {
        self.with(|c, keys, host, leases| {
            let mut tx = c.transaction()?;
            keys.follow(&mut tx)?;
            for save in saves {
                let r = save.record;
                let fence = leases.get(&r.key).copied();
                write_record(&mut tx, keys, r, save.expected, fence)?;
                for note in save.notes {
                    insert_event(
                        &mut tx,
                        host,
                        &r.key,
                        Some(r.generation),
                        save.at,
                        note.kind.as_str(),
                        note.detail.as_deref(),
                    )?;
                }
                notify(&mut tx, &r.key, r.generation, r.revision)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn insert(&mut self, new: &NewAccount, now: Timestamp) -> Result<AccountRecord, RegistryError> {
        self.with(|c, keys, host, _| {
            let mut tx = c.transaction()?;
            keys.follow(&mut tx)?;
            check_unique(&mut tx, new)?;
            let generation: i64 = tx
                .query_one("SELECT nextval('account_generations')", &[])?
                .get(0);
            let access = new.access_token.as_ref();
            tx.execute(
                "INSERT INTO accounts (provider, name, email, first_name, last_name, status,
                                       status_since, created_at, generation, refresh_token,
                                       refresh_fingerprint, candidate_token, candidate_issued_at,
                                       candidate_expires_at)
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &new.key.provider.as_str(),
                    &new.key.name.as_ref(),
                    &new.email,
                    &new.first_name,
                    &new.last_name,
                    &now.millis(),
                    &generation,
                    &sealed(keys, &new.key, "refresh_token", new.refresh_token.as_ref())?,
                    &new.refresh_token.as_ref().map(Secret::fingerprint),
                    &sealed(
                        keys,
                        &new.key,
                        "candidate_token",
                        access.map(|t| &t.access_token),
                    )?,
                    &access.map(|t| t.issued_at.millis()),
                    &access.and_then(|t| t.expires_at.map(Timestamp::millis)),
                ],
            )
            .map_err(|e| duplicate(e, &new.key))?;
            let detail = new.added_detail();
            insert_event(
                &mut tx,
                host,
                &new.key,
                Some(generation),
                now,
                "added",
                Some(&detail),
            )?;
            notify(&mut tx, &new.key, generation, 0)?;
            let record = load_one(&mut tx, keys, &new.key)?;
            tx.commit().map_err(|e| duplicate(e, &new.key))?;
            Ok(record)
        })
    }

    fn delete(&mut self, key: &AccountKey, now: Timestamp) -> Result<(), RegistryError> {
        self.with(|c, _, host, leases| {
            let mut tx = c.transaction()?;
            let generation: i64 = tx
                .query_opt(
                    "DELETE FROM accounts WHERE provider = $1 AND name = $2 RETURNING generation",
                    &[&key.provider.as_str(), &key.name.as_ref()],
                )?
                .ok_or_else(|| RegistryError::NotFound(key.clone()))?
                .get(0);
            insert_event(&mut tx, host, key, Some(generation), now, "removed", None)?;
            // A link issued for this account must not complete for one registered again.
            tx.execute(
                "DELETE FROM oauth_states WHERE provider = $1 AND account = $2",
                &[&key.provider.as_str(), &key.name.as_ref()],
            )?;
            notify(&mut tx, key, generation, i64::MAX)?;
            tx.commit()?;
            leases.remove(key);
            Ok(())
        })
    }

    fn refresh_token(&mut self, key: &AccountKey) -> Result<Option<Secret>, RegistryError> {
        self.with(|c, keys, _, _| {
            let row = c
                .query_opt(
                    "SELECT refresh_token FROM accounts WHERE provider = $1 AND name = $2",
                    &[&key.provider.as_str(), &key.name.as_ref()],
                )?
                .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
            let stored = row.get::<_, Option<&str>>(0);
            let plain = keys.open_column(
                key.provider.as_str(),
                key.name.as_ref(),
                "refresh_token",
                stored,
            )?;
            Ok(plain.map(Secret::new))
        })
    }

    fn set_refresh_token(&mut self, key: &AccountKey, token: &Secret) -> Result<(), RegistryError> {
        self.with(|c, keys, _, _| {
            let mut tx = c.transaction()?;
            keys.follow(&mut tx)?;
            let changed = tx.execute(
                "UPDATE accounts SET refresh_token = $3, refresh_fingerprint = $4
                 WHERE provider = $1 AND name = $2",
                &[
                    &key.provider.as_str(),
                    &key.name.as_ref(),
                    &sealed(keys, key, "refresh_token", Some(token))?,
                    &token.fingerprint(),
                ],
            )?;
            if changed == 0 {
                return Err(RegistryError::NotFound(key.clone()));
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn events(
        &mut self,
        key: &AccountKey,
        generation: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError> {
        self.with(|c, _, _, _| {
            let rows = c.query(
                "SELECT at, kind, detail FROM events
                 WHERE provider = $1 AND account = $2 AND ($3::bigint IS NULL OR generation = $3)
                 ORDER BY id DESC LIMIT $4",
                &[
                    &key.provider.as_str(),
                    &key.name.as_ref(),
                    &generation,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )?;
            let mut events: Vec<Event> = rows
                .iter()
                .map(|r| Event {
                    at: Timestamp::from_millis(r.get(0)),
                    account: key.to_string(),
                    kind: r.get(1),
                    detail: r.get(2),
                })
                .collect();
            events.reverse();
            Ok(events)
        })
    }

    fn begin_oauth(&mut self, begin: &OAuthBegin<'_>) -> Result<AccountRecord, RegistryError> {
        let OAuthBegin {
            key,
            state_hash,
            expires_at,
            added_detail,
            now,
        } = *begin;
        self.with(|c, keys, host, _| {
            let mut tx = c.transaction()?;
            let status: Option<String> = tx
                .query_opt(
                    "SELECT status FROM accounts WHERE provider = $1 AND name = $2 FOR UPDATE",
                    &[&key.provider.as_str(), &key.name.as_ref()],
                )?
                .map(|r| r.get(0));
            match status {
                Some(s) => {
                    if Status::parse(&s) != Some(Status::Pending) {
                        return Err(RegistryError::AccountExists(key.clone()));
                    }
                }
                None => {
                    let generation: i64 = tx
                        .query_one("SELECT nextval('account_generations')", &[])?
                        .get(0);
                    tx.execute(
                        "INSERT INTO accounts (provider, name, status, status_since, created_at, generation)
                         VALUES ($1, $2, 'pending', $3, $3, $4)",
                        &[&key.provider.as_str(), &key.name.as_ref(), &now.millis(), &generation],
                    )
                    .map_err(|e| duplicate(e, key))?;
                    insert_event(
                        &mut tx,
                        host,
                        key,
                        Some(generation),
                        now,
                        "added",
                        Some(added_detail),
                    )?;
                    notify(&mut tx, key, generation, 0)?;
                }
            }
            tx.execute(
                "DELETE FROM oauth_states
                 WHERE (provider = $1 AND account = $2 AND used_at IS NULL) OR expires_at <= $3",
                &[&key.provider.as_str(), &key.name.as_ref(), &now.millis()],
            )?;
            tx.execute(
                "INSERT INTO oauth_states (state_hash, provider, account, created_at, expires_at, host)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &state_hash,
                    &key.provider.as_str(),
                    &key.name.as_ref(),
                    &now.millis(),
                    &expires_at.millis(),
                    &host,
                ],
            )?;
            let record = load_one(&mut tx, keys, key)?;
            tx.commit()?;
            Ok(record)
        })
    }

    fn take_oauth_state(
        &mut self,
        state_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AccountKey>, RegistryError> {
        self.with(|c, _, _, _| {
            let mut tx = c.transaction()?;
            let taken = tx.query_opt(
                "UPDATE oauth_states SET used_at = $2
                 WHERE state_hash = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING provider, account",
                &[&state_hash, &now.millis()],
            )?;
            let key = match taken {
                Some(row) => {
                    let key = stored::key(row.get::<_, &str>(0), row.get(1))?;
                    let status: Option<String> = tx
                        .query_opt(
                            "SELECT status FROM accounts WHERE provider = $1 AND name = $2",
                            &[&key.provider.as_str(), &key.name.as_ref()],
                        )?
                        .map(|r| r.get(0));
                    // Removed or connected some other way since the link was made.
                    (status.as_deref() == Some(Status::Pending.as_str())).then_some(key)
                }
                None => None,
            };
            tx.commit()?;
            Ok(key)
        })
    }

    fn discard_unconnected(
        &mut self,
        key: &AccountKey,
        detail: &str,
        now: Timestamp,
    ) -> Result<bool, RegistryError> {
        self.with(|c, _, host, _| {
            let mut tx = c.transaction()?;
            let gone: Option<i64> = tx
                .query_opt(
                    "DELETE FROM accounts WHERE provider = $1 AND name = $2 AND status = 'pending'
                       AND access_token IS NULL AND candidate_token IS NULL
                     RETURNING generation",
                    &[&key.provider.as_str(), &key.name.as_ref()],
                )?
                .map(|r| r.get(0));
            if let Some(generation) = gone {
                insert_event(
                    &mut tx,
                    host,
                    key,
                    Some(generation),
                    now,
                    "removed",
                    Some(detail),
                )?;
                notify(&mut tx, key, generation, i64::MAX)?;
            }
            tx.commit()?;
            Ok(gone.is_some())
        })
    }

    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), RegistryError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.with(|c, _, host, _| {
            let mut tx = c.transaction()?;
            let stmt = tx.prepare(
                "INSERT INTO audit (host, at, last_at, count, provider, account, client, uid, gid, pid, exe, fingerprint, request)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )?;
            for e in entries {
                tx.execute(
                    &stmt,
                    &[
                        &host,
                        &e.at.millis(),
                        &e.last_at.millis(),
                        &i64::try_from(e.count).unwrap_or(i64::MAX),
                        &e.account.provider.as_str(),
                        &e.account.name.as_ref(),
                        &e.client,
                        &i64::from(e.uid),
                        &i64::from(e.gid),
                        &e.pid,
                        &e.exe,
                        &e.fingerprint,
                        &e.request.as_ref().map(ProxiedCall::to_column),
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RegistryError> {
        self.with(|c, _, _, _| {
            let rows = c.query(
                "SELECT at, provider, account, client, uid, gid, pid, exe, fingerprint, last_at, count, request
                 FROM audit
                 WHERE ($1::text IS NULL OR (provider = $1 AND account = $2)) AND at >= $3
                 ORDER BY id DESC LIMIT $4",
                &[
                    &query.account.as_ref().map(|k| k.provider.as_str()),
                    &query.account.as_ref().map(|k| k.name.as_ref()),
                    &query.since.map_or(i64::MIN, Timestamp::millis),
                    &i64::try_from(query.limit).unwrap_or(i64::MAX),
                ],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows.iter().rev() {
                let Some(account) = stored::audit_key(r.get::<_, &str>(1), r.get(2)) else {
                    continue;
                };
                out.push(AuditEntry {
                    at: Timestamp::from_millis(r.get(0)),
                    account,
                    client: r.get(3),
                    uid: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
                    gid: u32::try_from(r.get::<_, i64>(5)).unwrap_or(u32::MAX),
                    pid: r.get(6),
                    exe: r.get(7),
                    fingerprint: r.get(8),
                    last_at: Timestamp::from_millis(r.get(9)),
                    count: u64::try_from(r.get::<_, i64>(10)).unwrap_or(0),
                    request: ProxiedCall::from_column(r.get(11)),
                });
            }
            Ok(out)
        })
    }

    fn prune_audit(&mut self, before: Timestamp) -> Result<usize, RegistryError> {
        self.with(|c, _, _, _| {
            let n = c.execute("DELETE FROM audit WHERE last_at < $1", &[&before.millis()])?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn ping(&mut self) -> Result<(), RegistryError> {
        self.with(|c, _, _, _| {
            c.execute("SELECT 1", &[])?;
            Ok(())
        })
    }

    fn all_events(&mut self) -> Result<Vec<DumpedEvent>, RegistryError> {
        self.with(|c, _, _, _| {
            let rows = c.query(
                "SELECT at, provider, account, generation, kind, detail FROM events ORDER BY id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    let key = stored::key(r.get::<_, &str>(1), r.get(2))?;
                    Ok(DumpedEvent {
                        event: Event {
                            at: Timestamp::from_millis(r.get(0)),
                            account: key.to_string(),
                            kind: r.get(4),
                            detail: r.get(5),
                        },
                        generation: r.get(3),
                        key,
                    })
                })
                .collect()
        })
    }

    fn import(&mut self, dump: &Dump) -> Result<(), RegistryError> {
        self.with(|c, keys, host, _| {
            let mut tx = c.transaction()?;
            let held: i64 = tx.query_one("SELECT count(*) FROM accounts", &[])?.get(0);
            if held > 0 {
                return Err(RegistryError::NotEmpty(format!("{held} account(s)")));
            }
            for (r, refresh) in &dump.accounts {
                tx.execute(
                    "INSERT INTO accounts (provider, name, email, first_name, last_name, status,
                                           status_since, created_at, generation, refresh_token,
                                           refresh_fingerprint)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &r.key.provider.as_str(),
                        &r.key.name.as_ref(),
                        &r.email,
                        &r.first_name,
                        &r.last_name,
                        &r.status.as_str(),
                        &r.status_since.millis(),
                        &r.created_at.millis(),
                        &r.generation,
                        &sealed(keys, &r.key, "refresh_token", refresh.as_ref())?,
                        &refresh.as_ref().map(Secret::fingerprint),
                    ],
                )?;
                write_record(&mut tx, keys, r, None, None)?;
            }
            let newest = dump.accounts.iter().map(|(r, _)| r.generation).max().unwrap_or(0);
            if newest > 0 {
                tx.execute(
                    "SELECT setval('account_generations', GREATEST($1, (SELECT last_value FROM account_generations)))",
                    &[&newest],
                )?;
            }
            for e in &dump.events {
                let detail = e.event.detail.as_deref();
                insert_event(&mut tx, host, &e.key, e.generation, e.event.at, &e.event.kind, detail)?;
            }
            tx.commit()?;
            Ok(())
        })?;
        self.append_audit(&dump.audit)
    }

    fn lease(
        &mut self,
        record: &AccountRecord,
        lease: Duration,
    ) -> Result<LeaseAnswer, RegistryError> {
        self.take_lease(record, lease)
    }

    fn release(&mut self, key: &AccountKey) -> Result<(), RegistryError> {
        self.give_back(key)
    }

    fn lease_all(
        &mut self,
        wanted: &[(&AccountRecord, Duration)],
    ) -> Result<Vec<LeaseAnswer>, RegistryError> {
        self.take_leases(wanted)
    }

    fn release_all(&mut self, keys: &[AccountKey]) -> Result<(), RegistryError> {
        self.give_back_all(keys)
    }

    fn rekey(
        &mut self,
        current: &Sealer,
        next: &Sealer,
        key_file: &Path,
    ) -> Result<u64, RegistryError> {
        self.with(|c, keys, _, _| keys.rekey(c, current, next, key_file))
    }

    fn stage_key(&mut self, key: &Sealer) -> Result<(), RegistryError> {
        self.with(|c, keys, _, _| keys.stage(c, key))
    }
}
