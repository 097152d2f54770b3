//! Sealing on SQLite: the `seal`/`unseal` SQL functions through which every statement reads
//! and writes a token column, the key check in `meta`, and re-sealing every value (plaintext
//! of an older build, or `key rotate`). The cipher itself is [`crate::registry::seal`].

use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, params};

use crate::registry::RegistryError;
use crate::registry::seal::{
    Opener as _, SECRET_COLUMNS, Sealer, ad, key_check, opens_key_check, seal_plaintext,
};

/// Registers `seal(value, provider, account, column)` and `unseal(...)` on `conn`; both map
/// NULL to NULL. Not deterministic (fresh nonces) and direct-only, so the schema (a trigger
/// or view in a tampered file) cannot call them.
pub fn register(conn: &Connection, sealer: &Sealer) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY;
    for (name, sealing) in [("seal", true), ("unseal", false)] {
        let sealer = sealer.clone();
        conn.create_scalar_function(name, 4, flags, move |ctx| {
            let value = ctx.get::<Option<String>>(0)?;
            let (provider, account, column): (String, String, String) =
                (ctx.get(1)?, ctx.get(2)?, ctx.get(3)?);
            let out = if sealing {
                sealer.seal_column(&provider, &account, &column, value.as_deref())
            } else {
                sealer.open_column(&provider, &account, &column, value.as_deref())
            };
            out.map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        })?;
    }
    Ok(())
}

/// What the key check says about a key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// Nothing is sealed yet (a new registry, or one written before encryption).
    Unsealed,
    /// The key opens the registry.
    Matches,
    /// The registry was sealed with another key.
    Differs,
}

/// Whether any token column holds a sealed value. Asked when the key check is missing: a
/// registry in that state was sealed once, so a new key must not be made for it.
pub fn holds_sealed_values(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM tokens WHERE refresh_token LIKE 'v1:%'
                          OR access_token LIKE 'v1:%' OR candidate_token LIKE 'v1:%')",
        [],
        |r| r.get(0),
    )
}

/// Writes the key check back for a registry that lost it, if `sealer` opens every sealed
/// value in it (so it is the key they were sealed with); returns whether it did.
pub fn restore_key_check(conn: &Connection, sealer: &Sealer) -> Result<bool, RegistryError> {
    let mut stmt = conn.prepare(
        "SELECT a.provider, a.name, t.refresh_token, t.access_token, t.candidate_token
         FROM tokens t JOIN accounts a ON a.id = t.account_id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (provider, name): (String, String) = (row.get(0)?, row.get(1)?);
        for (i, column) in SECRET_COLUMNS.iter().enumerate() {
            let value: Option<String> = row.get(i + 2)?;
            let opens =
                value.is_none_or(|v| sealer.open(&v, &ad(&provider, &name, column)).is_ok());
            if !opens {
                return Ok(false);
            }
        }
    }
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('key_check', ?1)",
        [key_check(sealer)?],
    )?;
    Ok(true)
}

/// Whether `sealer` opens the registry.
pub fn check_key(conn: &Connection, sealer: &Sealer) -> rusqlite::Result<KeyCheck> {
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(match stored {
        None => KeyCheck::Unsealed,
        Some(v) if opens_key_check(sealer, &v) => KeyCheck::Matches,
        Some(_) => KeyCheck::Differs,
    })
}

/// Re-seals every secret in the registry for `to`: values sealed by `from`, or plaintext
/// when `from` is `None` (a registry written before encryption), and writes the key check.
/// Runs inside the caller's transaction, so either every value moves to the new key or none.
/// `progress` is called with (done, total) after each account.
pub fn reseal_all(
    tx: &rusqlite::Transaction<'_>,
    from: Option<&Sealer>,
    to: &Sealer,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, RegistryError> {
    let rows: Vec<(i64, String, String, [Option<String>; 3])> = {
        let mut stmt = tx.prepare(
            "SELECT t.account_id, a.provider, a.name, t.refresh_token, t.access_token, t.candidate_token
             FROM tokens t JOIN accounts a ON a.id = t.account_id ORDER BY t.account_id",
        )?;
        let mapped = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                [r.get(3)?, r.get(4)?, r.get(5)?],
            ))
        })?;
        mapped.collect::<Result<_, _>>()?
    };
    let total = u64::try_from(rows.len()).unwrap_or(u64::MAX);
    for (n, (id, provider, name, values)) in rows.into_iter().enumerate() {
        let mut sealed: [Option<String>; 3] = [None, None, None];
        for ((column, value), out) in SECRET_COLUMNS.iter().zip(values).zip(sealed.iter_mut()) {
            let Some(value) = value else { continue };
            let ad = ad(&provider, &name, column);
            *out = Some(match from {
                Some(old) => to.seal(&old.open(&value, &ad)?, &ad)?,
                None => seal_plaintext(to, value, &ad)?,
            });
        }
        let [refresh, access, candidate] = sealed;
        tx.execute(
            "UPDATE tokens SET refresh_token = ?2, access_token = ?3, candidate_token = ?4
             WHERE account_id = ?1",
            params![id, refresh, access, candidate],
        )?;
        progress(u64::try_from(n).unwrap_or(u64::MAX) + 1, total);
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('key_check', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key_check(to)?],
    )?;
    Ok(total)
}
