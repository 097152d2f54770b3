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
        let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
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
                &[&key.provider.as_str(), &key.name, &fence],
            )?;
            Ok(())
        })
    }
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
            &key.name,
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
        &[&key.provider.as_str(), &key.name],
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
