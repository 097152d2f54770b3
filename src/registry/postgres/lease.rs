//! Leases: before upstream work on an account a daemon takes a lease in its row, timed by the
//! database's clock and numbered by a fence that every lease bumps. Saves are conditional on
//! the fence this daemon holds ([`super::rows::write_record`]), so a daemon paused past its
//! lease, whose account another daemon took over, stores nothing.

use std::collections::HashMap;
use std::time::Duration;

use postgres::Client;

use super::PgStore;
use crate::names::AccountKey;
use crate::registry::store::LeaseAnswer;
use crate::registry::{AccountRecord, RegistryError};

impl PgStore {
    /// [`Store::lease`](crate::registry::Store::lease): a few tries, since a lease given back
    /// between looking and taking is free.
    pub(super) fn take_lease(
        &mut self,
        record: &AccountRecord,
        lease: Duration,
    ) -> Result<LeaseAnswer, RegistryError> {
        let millis = lease_millis(lease);
        self.with(|c, _, host, leases| {
            // A lease given back between the UPDATE and the SELECT below is taken on the
            // next try, never reported as held by nobody.
            for _ in 0..3 {
                if let Some(answer) = try_lease(c, host, leases, record, millis)? {
                    return Ok(answer);
                }
            }
            Ok(LeaseAnswer::Busy {
                holder: "another daemon".into(),
            })
        })
    }

    /// [`Store::lease_all`](crate::registry::Store::lease_all): every lease that is free is
    /// taken in one statement, so a round of leases costs one commit rather than one each
    /// (a daemon's sweep was bound by those commits). A row another transaction holds locked
    /// is skipped rather than waited for, which keeps two daemons taking overlapping batches
    /// from deadlocking; it and any lease not taken are then asked for one at a time, which
    /// tells `Busy` from `Moved`.
    pub(super) fn take_leases(
        &mut self,
        wanted: &[(&AccountRecord, Duration)],
    ) -> Result<Vec<LeaseAnswer>, RegistryError> {
        if let [(record, lease)] = wanted {
            return Ok(vec![self.take_lease(record, *lease)?]);
        }
        let granted = self.with(|c, _, host, leases| {
            let providers: Vec<&str> = wanted
                .iter()
                .map(|(r, _)| r.key.provider.as_str())
                .collect();
            let names: Vec<&str> = wanted.iter().map(|(r, _)| r.key.name.as_ref()).collect();
            let generations: Vec<i64> = wanted.iter().map(|(r, _)| r.generation).collect();
            let revisions: Vec<i64> = wanted.iter().map(|(r, _)| r.revision).collect();
            let millis: Vec<i64> = wanted.iter().map(|(_, l)| lease_millis(*l)).collect();
            let order: Vec<i32> = (0..wanted.len())
                .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
                .collect();
            let rows = c.query(
                "WITH wanted AS (
                     SELECT * FROM unnest($2::text[], $3::text[], $4::int8[], $5::int8[],
                                          $6::int8[], $7::int4[])
                         AS w(provider, name, generation, revision, millis, i)
                 ), free AS (
                     SELECT a.provider, a.name, w.millis, w.i
                     FROM accounts a JOIN wanted w
                       ON a.provider = w.provider AND a.name = w.name
                      AND a.generation = w.generation AND a.revision = w.revision
                     WHERE a.lease_until IS NULL OR a.lease_until < now()
                     ORDER BY a.provider, a.name
                     FOR UPDATE OF a SKIP LOCKED
                 )
                 UPDATE accounts a SET lease_owner = $1,
                        lease_until = now() + free.millis * interval '1 millisecond',
                        lease_fence = a.lease_fence + 1
                 FROM free WHERE a.provider = free.provider AND a.name = free.name
                 RETURNING free.i, a.lease_fence",
                &[
                    &host,
                    &providers,
                    &names,
                    &generations,
                    &revisions,
                    &millis,
                    &order,
                ],
            )?;
            let mut granted = vec![false; wanted.len()];
            for row in rows {
                let (i, fence): (i32, i64) = (row.get(0), row.get(1));
                let Some(i) = usize::try_from(i).ok().filter(|i| *i < wanted.len()) else {
                    continue;
                };
                leases.insert(wanted[i].0.key.clone(), fence);
                granted[i] = true;
            }
            Ok(granted)
        })?;
        wanted
            .iter()
            .zip(granted)
            .map(|((record, lease), granted)| {
                if granted {
                    Ok(LeaseAnswer::Granted)
                } else {
                    self.take_lease(record, *lease)
                }
            })
            .collect()
    }

    /// [`Store::release_all`](crate::registry::Store::release_all): the leases this daemon
    /// holds among `keys`, in one statement.
    pub(super) fn give_back_all(&mut self, keys: &[AccountKey]) -> Result<(), RegistryError> {
        let held: Vec<(AccountKey, i64)> = keys
            .iter()
            .filter_map(|k| self.leases.remove(k).map(|fence| (k.clone(), fence)))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        self.with(|c, _, _, _| {
            let providers: Vec<&str> = held.iter().map(|(k, _)| k.provider.as_str()).collect();
            let names: Vec<&str> = held.iter().map(|(k, _)| k.name.as_ref()).collect();
            let fences: Vec<i64> = held.iter().map(|(_, f)| *f).collect();
            c.execute(
                "UPDATE accounts a SET lease_owner = NULL, lease_until = NULL
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS h(provider, name, fence)
                 WHERE a.provider = h.provider AND a.name = h.name AND a.lease_fence = h.fence",
                &[&providers, &names, &fences],
            )?;
            Ok(())
        })
    }

    /// [`Store::release`](crate::registry::Store::release): only the lease this daemon holds,
    /// by its fence, so a lease another daemon took over meanwhile stays.
    pub(super) fn give_back(&mut self, key: &AccountKey) -> Result<(), RegistryError> {
        let Some(fence) = self.leases.remove(key) else {
            return Ok(());
        };
        self.with(|c, _, _, _| {
            c.execute(
                "UPDATE accounts SET lease_owner = NULL, lease_until = NULL
                 WHERE provider = $1 AND name = $2 AND lease_fence = $3",
                &[&key.provider.as_str(), &key.name.as_ref(), &fence],
            )?;
            Ok(())
        })
    }
}

/// A lease's length as PostgreSQL is told it.
fn lease_millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// One attempt at a lease: `None` when the lease was given back while we looked.
fn try_lease(
    c: &mut Client,
    host: &str,
    leases: &mut HashMap<AccountKey, i64>,
    record: &AccountRecord,
    millis: i64,
) -> Result<Option<LeaseAnswer>, RegistryError> {
    let key = &record.key;
    let taken = c.query_opt(
        "UPDATE accounts SET lease_owner = $1,
                lease_until = now() + $2::bigint * interval '1 millisecond',
                lease_fence = lease_fence + 1
         WHERE provider = $3 AND name = $4 AND generation = $5 AND revision = $6
           AND (lease_until IS NULL OR lease_until < now())
         RETURNING lease_fence",
        &[
            &host,
            &millis,
            &key.provider.as_str(),
            &key.name.as_ref(),
            &record.generation,
            &record.revision,
        ],
    )?;
    if let Some(row) = taken {
        leases.insert(key.clone(), row.get(0));
        return Ok(Some(LeaseAnswer::Granted));
    }
    let row = c.query_opt(
        "SELECT generation, revision, CASE WHEN lease_until >= now() THEN lease_owner END
         FROM accounts WHERE provider = $1 AND name = $2",
        &[&key.provider.as_str(), &key.name.as_ref()],
    )?;
    let Some(row) = row else {
        return Err(RegistryError::NotFound(key.clone()));
    };
    let (generation, revision): (i64, i64) = (row.get(0), row.get(1));
    if (generation, revision) != (record.generation, record.revision) {
        return Ok(Some(LeaseAnswer::Moved));
    }
    Ok(row
        .get::<_, Option<String>>(2)
        .map(|holder| LeaseAnswer::Busy { holder }))
}
