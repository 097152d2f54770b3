//! [`Store`] on SQLite: each call one transaction on the owner thread's connection. Tokens
//! are sealed at the SQL boundary (the `seal`/`unseal` functions of [`super::seal`]).

use std::path::Path;

use rusqlite::{Connection, params};

use super::rows::{
    account_id, check_unique, insert_account, insert_event, load_all, load_one, write_record,
};
use crate::clock::Timestamp;
use crate::names::AccountKey;
use crate::registry::seal::Sealer;
use crate::registry::store::{Dump, DumpedEvent, OAuthBegin, Save, Store};
use crate::registry::{
    AccountRecord, AuditEntry, AuditQuery, Event, NewAccount, RegistryError, stored,
};
use crate::secret::Secret;

impl Store for Connection {
    fn load_all(&mut self) -> Result<Vec<AccountRecord>, RegistryError> {
        load_all(self)
    }

    fn load(&mut self, key: &AccountKey) -> Result<AccountRecord, RegistryError> {
        load_one(self, key)
    }

    fn save_all(&mut self, saves: &[Save<'_>]) -> Result<(), RegistryError> {
        let tx = self.transaction()?;
        for save in saves {
            write_record(&tx, save.record, save.expected)?;
            for note in save.notes {
                insert_event(
                    &tx,
                    save.at,
                    &save.record.key,
                    note.kind.as_str(),
                    note.detail.as_deref(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn insert(&mut self, new: &NewAccount, now: Timestamp) -> Result<AccountRecord, RegistryError> {
        let tx = self.transaction()?;
        check_unique(&tx, new)?;
        let id = insert_account(
            &tx,
            &new.key,
            [
                new.email.as_deref(),
                new.first_name.as_deref(),
                new.last_name.as_deref(),
            ],
            now,
        )?;
        let access = new.access_token.as_ref();
        tx.execute(
            "INSERT INTO tokens (account_id, refresh_token, refresh_fingerprint,
                                 candidate_token, candidate_issued_at, candidate_expires_at)
             VALUES (?1, seal(?2, ?7, ?8, 'refresh_token'), ?3,
                     seal(?4, ?7, ?8, 'candidate_token'), ?5, ?6)",
            params![
                id,
                new.refresh_token.as_ref().map(|s| s.expose().to_string()),
                new.refresh_token.as_ref().map(Secret::fingerprint),
                access.map(|t| t.access_token.expose().to_string()),
                access.map(|t| t.issued_at.millis()),
                access.and_then(|t| t.expires_at.map(Timestamp::millis)),
                new.key.provider.as_str(),
                new.key.name,
            ],
        )?;
        let detail = new.added_detail();
        insert_event(&tx, now, &new.key, "added", Some(&detail))?;
        tx.commit()?;
        load_one(self, &new.key)
    }

    fn delete(&mut self, key: &AccountKey, now: Timestamp) -> Result<(), RegistryError> {
        let tx = self.transaction()?;
        let id = account_id(&tx, key)?;
        // Written first, while the row still names the registration it belongs to.
        insert_event(&tx, now, key, "removed", None)?;
        tx.execute("DELETE FROM accounts WHERE id = ?1", [id])?;
        // A link issued for this account must not complete for one registered again later.
        super::oauth::forget_account(&tx, key)?;
        tx.commit()?;
        Ok(())
    }

    fn refresh_token(&mut self, key: &AccountKey) -> Result<Option<Secret>, RegistryError> {
        let id = account_id(self, key)?;
        let token: Option<String> = self.query_row(
            "SELECT unseal(refresh_token, ?2, ?3, 'refresh_token') FROM tokens WHERE account_id = ?1",
            params![id, key.provider.as_str(), key.name],
            |r| r.get(0),
        )?;
        Ok(token.map(Secret::new))
    }

    fn set_refresh_token(&mut self, key: &AccountKey, token: &Secret) -> Result<(), RegistryError> {
        let id = account_id(self, key)?;
        self.execute(
            "UPDATE tokens SET refresh_token = seal(?2, ?4, ?5, 'refresh_token'),
                               refresh_fingerprint = ?3
             WHERE account_id = ?1",
            params![
                id,
                token.expose(),
                token.fingerprint(),
                key.provider.as_str(),
                key.name
            ],
        )?;
        Ok(())
    }

    fn events(
        &mut self,
        key: &AccountKey,
        generation: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError> {
        let mut stmt = self.prepare(
            "SELECT at, kind, detail FROM events
             WHERE provider = ?1 AND account = ?2 AND (?4 IS NULL OR generation = ?4)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(
            params![
                key.provider.as_str(),
                key.name,
                i64::try_from(limit).unwrap_or(i64::MAX),
                generation
            ],
            |r| {
                Ok(Event {
                    at: Timestamp::from_millis(r.get(0)?),
                    account: key.to_string(),
                    kind: r.get(1)?,
                    detail: r.get(2)?,
                })
            },
        )?;
        let mut events = rows.collect::<Result<Vec<_>, _>>()?;
        events.reverse();
        Ok(events)
    }

    fn begin_oauth(&mut self, begin: &OAuthBegin<'_>) -> Result<AccountRecord, RegistryError> {
        super::oauth::begin(self, begin)
    }

    fn take_oauth_state(
        &mut self,
        state_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AccountKey>, RegistryError> {
        super::oauth::take(self, state_hash, now)
    }

    fn discard_unconnected(
        &mut self,
        key: &AccountKey,
        detail: &str,
        now: Timestamp,
    ) -> Result<bool, RegistryError> {
        super::oauth::discard(self, key, detail, now)
    }

    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), RegistryError> {
        super::audit::append(self, entries)
    }

    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RegistryError> {
        super::audit::query(self, query)
    }

    fn prune_audit(&mut self, before: Timestamp) -> Result<usize, RegistryError> {
        super::audit::prune(self, before)
    }

    fn ping(&mut self) -> Result<(), RegistryError> {
        self.query_row("SELECT count(*) FROM accounts", [], |r| r.get::<_, i64>(0))?;
        Ok(())
    }

    fn all_events(&mut self) -> Result<Vec<DumpedEvent>, RegistryError> {
        let mut stmt = self.prepare(
            "SELECT at, provider, account, generation, kind, detail FROM events ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (at, provider, name, generation, kind, detail) = row?;
            let key = stored::key(&provider, name)?;
            events.push(DumpedEvent {
                event: Event {
                    at: Timestamp::from_millis(at),
                    account: key.to_string(),
                    kind,
                    detail,
                },
                key,
                generation,
            });
        }
        Ok(events)
    }

    fn import(&mut self, dump: &Dump) -> Result<(), RegistryError> {
        let tx = self.transaction()?;
        let held: i64 = tx.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
        if held > 0 {
            return Err(RegistryError::NotEmpty(format!("{held} account(s)")));
        }
        for (r, refresh) in &dump.accounts {
            let (p, n) = (r.key.provider.as_str(), r.key.name.as_ref());
            tx.execute(
                "INSERT INTO accounts (provider, name, email, first_name, last_name, status,
                                       status_since, created_at, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    p,
                    n,
                    r.email,
                    r.first_name,
                    r.last_name,
                    r.status.as_str(),
                    r.status_since.millis(),
                    r.created_at.millis(),
                    r.generation
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO tokens (account_id, refresh_token, refresh_fingerprint)
                 VALUES (?1, seal(?2, ?4, ?5, 'refresh_token'), ?3)",
                params![
                    id,
                    refresh.as_ref().map(|s| s.expose().to_string()),
                    refresh.as_ref().map(Secret::fingerprint),
                    p,
                    n
                ],
            )?;
            write_record(&tx, r, None)?;
        }
        let newest = dump
            .accounts
            .iter()
            .map(|(r, _)| r.generation)
            .max()
            .unwrap_or(0);
        tx.execute(
            "UPDATE sequences SET value = max(value, ?1) WHERE name = 'generation'",
            [newest],
        )?;
        for e in &dump.events {
            tx.execute(
                "INSERT INTO events (at, provider, account, kind, detail, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    e.event.at.millis(),
                    e.key.provider.as_str(),
                    e.key.name,
                    e.event.kind,
                    e.event.detail,
                    e.generation
                ],
            )?;
        }
        tx.commit()?;
        super::audit::append(self, &dump.audit)
    }

    fn rekey(
        &mut self,
        current: &Sealer,
        next: &Sealer,
        key_file: &Path,
    ) -> Result<u64, RegistryError> {
        let tx = self.transaction()?;
        if super::seal::check_key(&tx, current)? == super::seal::KeyCheck::Differs {
            return Err(RegistryError::KeyFileChanged {
                key: key_file.to_path_buf(),
            });
        }
        let accounts = super::seal::reseal_all(&tx, Some(current), next, |_, _| {})?;
        tx.commit()?;
        // Every later statement seals and opens with the new key; the owner thread runs one
        // job at a time, so no write slips in between.
        super::seal::register(self, next)?;
        Ok(accounts)
    }
}
