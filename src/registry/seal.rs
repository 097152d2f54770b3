//! Tokens at rest: every secret column is sealed with XChaCha20-Poly1305 under the master key.
//!
//! Each value gets a fresh random 192-bit nonce (large enough that random nonces never
//! collide) and the associated data `provider/account/column`, so a value copied to another
//! row or column fails to open instead of being served as someone else's token. Stored form:
//! `v1:` + base64(nonce || ciphertext). Sealing happens at the SQL boundary through the
//! functions `seal(value, provider, account, column)` and `unseal(...)` registered on the
//! owner thread's connection, so no statement can read or write a token column in the clear.

use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OptionalExtension, params};

use crate::keys::MasterKey;

/// The prefix of the stored form; a future format gets another.
const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 24;

/// A known value sealed in `meta`: opening it proves the key is the one the registry was
/// sealed with, before any token is served.
const KEY_CHECK_PLAIN: &str = "shiptoken registry key check";
const KEY_CHECK_AD: &str = "shiptoken/meta/key_check";

/// The secret columns of `tokens`, sealed under `provider/account/<column>`.
pub const SECRET_COLUMNS: [&str; 3] = ["refresh_token", "access_token", "candidate_token"];

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Not in the `v1:` form (or damaged base64).
    #[error("a sealed value in the registry is malformed")]
    Malformed,
    /// The AEAD tag did not verify: another key, another row or column, or tampering.
    #[error(
        "a sealed value in the registry does not open with this key (sealed with a different key, moved to another row, or damaged)"
    )]
    WrongKey,
    /// The plaintext is not UTF-8 (cannot happen for values this build sealed).
    #[error("a sealed value in the registry is not text")]
    NotText,
    /// The cipher refused to seal (input too long for the AEAD).
    #[error("cannot seal a value")]
    Seal,
    /// A value to seal is already sealed, under another key: sealing it again would store
    /// ciphertext as if it were the token.
    #[error(
        "a value in the registry is already sealed with a different key; refusing to seal it again"
    )]
    AlreadySealed,
}

/// Seals and opens values with one key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Arc<XChaCha20Poly1305>,
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &MasterKey) -> Sealer {
        Sealer {
            cipher: Arc::new(XChaCha20Poly1305::new(key.bytes().into())),
        }
    }

    /// Seals `plain` bound to `ad`.
    pub fn seal(&self, plain: &str, ad: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: ad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&ct);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
        ))
    }

    /// Opens a value sealed with [`Sealer::seal`] under the same `ad`.
    pub fn open(&self, stored: &str, ad: &str) -> Result<String, SealError> {
        let b64 = stored.strip_prefix(PREFIX).ok_or(SealError::Malformed)?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64)
            .map_err(|_| SealError::Malformed)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: ad.as_bytes(),
                },
            )
            .map_err(|_| SealError::WrongKey)?;
        String::from_utf8(plain).map_err(|_| SealError::NotText)
    }
}

/// The associated data of a token column.
pub fn ad(provider: &str, account: &str, column: &str) -> String {
    format!("{provider}/{account}/{column}")
}

/// Registers `seal(value, provider, account, column)` and `unseal(...)` on `conn`; both map
/// NULL to NULL. Not deterministic (fresh nonces) and direct-only, so the schema (a trigger
/// or view in a tampered file) cannot call them.
pub fn register(conn: &Connection, sealer: &Sealer) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY;
    for (name, sealing) in [("seal", true), ("unseal", false)] {
        let sealer = sealer.clone();
        conn.create_scalar_function(name, 4, flags, move |ctx| {
            let Some(value) = ctx.get::<Option<String>>(0)? else {
                return Ok(None);
            };
            let ad = ad(
                &ctx.get::<String>(1)?,
                &ctx.get::<String>(2)?,
                &ctx.get::<String>(3)?,
            );
            let out = if sealing {
                sealer.seal(&value, &ad)
            } else {
                sealer.open(&value, &ad)
            };
            out.map(Some)
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
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
pub fn restore_key_check(conn: &Connection, sealer: &Sealer) -> Result<bool, super::RegistryError> {
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
        [sealer.seal(KEY_CHECK_PLAIN, KEY_CHECK_AD)?],
    )?;
    Ok(true)
}

/// The key check to store beside values sealed by `sealer`.
pub fn key_check(sealer: &Sealer) -> Result<String, SealError> {
    sealer.seal(KEY_CHECK_PLAIN, KEY_CHECK_AD)
}

/// Whether `sealer` opens a stored key check.
pub fn opens_key_check(sealer: &Sealer, stored: &str) -> bool {
    matches!(sealer.open(stored, KEY_CHECK_AD), Ok(p) if p == KEY_CHECK_PLAIN)
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
) -> Result<u64, super::RegistryError> {
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
        [to.seal(KEY_CHECK_PLAIN, KEY_CHECK_AD)?],
    )?;
    Ok(total)
}

/// Seals a value a registry written before encryption holds. Sealing is idempotent: a value
/// already sealed with `to` is kept as it is, and one sealed with another key is refused,
/// never sealed a second time (it would be served as the token).
fn seal_plaintext(to: &Sealer, value: String, ad: &str) -> Result<String, SealError> {
    if !value.starts_with(PREFIX) {
        return to.seal(&value, ad);
    }
    match to.open(&value, ad) {
        Ok(_) => Ok(value),
        Err(_) => Err(SealError::AlreadySealed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_with_its_key_and_its_place() {
        let s = Sealer::new(&MasterKey::generate());
        let a = s.seal("tok-123456789", "shiphero/acme/access_token");
        let a = a.unwrap_or_default();
        assert!(a.starts_with("v1:"));
        assert!(!a.contains("tok-123456789"));
        assert_eq!(
            s.open(&a, "shiphero/acme/access_token").ok().as_deref(),
            Some("tok-123456789")
        );
        // Fresh nonce each time.
        assert_ne!(
            s.seal("x", "a/b/c").unwrap_or_default(),
            s.seal("x", "a/b/c").unwrap_or_default()
        );
        assert!(matches!(
            s.open(&a, "shiphero/other/access_token"),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            s.open(&a, "shiphero/acme/refresh_token"),
            Err(SealError::WrongKey)
        ));
        let other = Sealer::new(&MasterKey::generate());
        assert!(matches!(
            other.open(&a, "shiphero/acme/access_token"),
            Err(SealError::WrongKey)
        ));
        assert!(matches!(
            s.open("plain-token", "x"),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn sealing_plaintext_never_seals_a_sealed_value_again() {
        let s = Sealer::new(&MasterKey::generate());
        let ad = "shiphero/acme/access_token";
        let once = seal_plaintext(&s, "tok-123456789".into(), ad).unwrap();
        assert_eq!(s.open(&once, ad).unwrap(), "tok-123456789");
        assert_eq!(seal_plaintext(&s, once.clone(), ad).unwrap(), once);
        let other = Sealer::new(&MasterKey::generate());
        assert!(matches!(
            seal_plaintext(&other, once, ad),
            Err(SealError::AlreadySealed)
        ));
    }
}
