//! The audit's table on SQLite: entries appended in one transaction, read newest first,
//! pruned by age.

use rusqlite::{Connection, params};

use crate::clock::Timestamp;
use crate::registry::{AuditEntry, AuditQuery, ProxiedCall, RegistryError, stored};

/// [`Store::append_audit`](crate::registry::Store::append_audit) on SQLite.
pub(super) fn append(conn: &mut Connection, entries: &[AuditEntry]) -> Result<(), RegistryError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
                    "INSERT INTO audit (at, last_at, count, provider, account, client, uid, gid, pid, exe, fingerprint, request)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
        for e in entries {
            stmt.execute(params![
                e.at.millis(),
                e.last_at.millis(),
                i64::try_from(e.count).unwrap_or(i64::MAX),
                e.account.provider.as_str(),
                e.account.name,
                e.client,
                e.uid,
                e.gid,
                e.pid,
                e.exe,
                e.fingerprint,
                e.request.as_ref().map(ProxiedCall::to_column),
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// [`Store::audit`](crate::registry::Store::audit) on SQLite.
pub(super) fn query(
    conn: &mut Connection,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, RegistryError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, provider, account, client, uid, gid, pid, exe, fingerprint, last_at, count, request
                 FROM audit
                 WHERE (?1 IS NULL OR (provider = ?1 AND account = ?2)) AND at >= ?3
                 ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(
        params![
            query.account.as_ref().map(|k| k.provider.as_str()),
            query.account.as_ref().map(|k| k.name.clone()),
            query.since.map_or(i64::MIN, Timestamp::millis),
            i64::try_from(query.limit).unwrap_or(i64::MAX),
        ],
        |r| {
            let provider: String = r.get(1)?;
            let Some(account) = stored::audit_key(&provider, r.get(2)?) else {
                return Ok(None);
            };
            Ok(Some(AuditEntry {
                at: Timestamp::from_millis(r.get(0)?),
                account,
                client: r.get(3)?,
                uid: r.get(4)?,
                gid: r.get(5)?,
                pid: r.get(6)?,
                exe: r.get(7)?,
                fingerprint: r.get(8)?,
                last_at: Timestamp::from_millis(r.get(9)?),
                count: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
                request: ProxiedCall::from_column(r.get(11)?),
            }))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.extend(row?);
    }
    out.reverse();
    Ok(out)
}

/// [`Store::prune_audit`](crate::registry::Store::prune_audit) on SQLite.
pub(super) fn prune(conn: &mut Connection, before: Timestamp) -> Result<usize, RegistryError> {
    Ok(conn.execute("DELETE FROM audit WHERE last_at < ?1", [before.millis()])?)
}
