//! Tokens at rest: every secret column is sealed with XChaCha20-Poly1305 under the master key.
//!
//! Each value gets a fresh random 192-bit nonce (large enough that random nonces never
//! collide) and the associated data `provider/account/column`, so a value copied to another
//! row or column fails to open instead of being served as someone else's token. Stored form:
//! `v1:` + base64(nonce || ciphertext). Both backends seal with this cipher and this
//! associated data, so a token sealed by one opens in the other (`registry migrate`): SQLite
//! at the SQL boundary (`sqlite::seal` registers `seal`/`unseal` functions, so no statement can
//! touch a token column in the clear), PostgreSQL in Rust before a value is sent.

use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

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
    id: i32,
}

impl Sealer {
    /// A sealer for `key`.
    pub fn new(key: &MasterKey) -> Sealer {
        Sealer {
            cipher: Arc::new(XChaCha20Poly1305::new(key.bytes().into())),
            id: key.id(),
        }
    }

    /// The key's public identifier ([`MasterKey::id`]).
    pub fn id(&self) -> i32 {
        self.id
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

    /// Seals the value of a token column (one of [`SECRET_COLUMNS`]) for its place, the
    /// account's `provider/account/column`; no value stays none. Both backends seal through
    /// this, so what a token is bound to is decided once.
    pub fn seal_column(
        &self,
        provider: &str,
        account: &str,
        column: &str,
        value: Option<&str>,
    ) -> Result<Option<String>, SealError> {
        value
            .map(|v| self.seal(v, &ad(provider, account, column)))
            .transpose()
    }
}

/// What opens sealed values: one key ([`Sealer`]) or any key of a ring ([`Keyring`]).
pub trait Opener {
    /// Opens a value sealed under `ad`.
    fn open_sealed(&self, stored: &str, ad: &str) -> Result<String, SealError>;

    /// Opens a token column's stored value from its place (see [`Sealer::seal_column`]).
    fn open_column(
        &self,
        provider: &str,
        account: &str,
        column: &str,
        stored: Option<&str>,
    ) -> Result<Option<String>, SealError> {
        stored
            .map(|v| self.open_sealed(v, &ad(provider, account, column)))
            .transpose()
    }
}

impl Opener for Sealer {
    fn open_sealed(&self, stored: &str, ad: &str) -> Result<String, SealError> {
        self.open(stored, ad)
    }
}

impl Opener for Keyring {
    fn open_sealed(&self, stored: &str, ad: &str) -> Result<String, SealError> {
        self.open(stored, ad)
    }
}

/// The key that seals, and the others that still open: the next key staged on every host of a
/// shared registry before it is rotated to, or the previous one while the other daemons of the
/// fleet move to the new key. Opening tries the sealing key first, so the common case costs
/// one decryption.
#[derive(Clone)]
pub struct Keyring {
    seal: Sealer,
    also: Vec<Sealer>,
}

impl Keyring {
    /// A ring of one key.
    pub fn new(seal: Sealer) -> Keyring {
        Keyring {
            seal,
            also: Vec::new(),
        }
    }

    /// The key new values are sealed with.
    pub fn sealer(&self) -> &Sealer {
        &self.seal
    }

    /// Every key of the ring, the sealing one first.
    pub fn keys(&self) -> impl Iterator<Item = &Sealer> {
        std::iter::once(&self.seal).chain(&self.also)
    }

    /// Adds a key that opens (a no-op for a key already in the ring).
    pub fn add(&mut self, key: Sealer) {
        if self.keys().all(|k| k.id() != key.id()) {
            self.also.push(key);
        }
    }

    /// Seals with `next` from now on; the key it replaces still opens.
    pub fn promote(&mut self, next: Sealer) {
        self.also.retain(|k| k.id() != next.id());
        let old = std::mem::replace(&mut self.seal, next);
        if old.id() != self.seal.id() {
            self.also.push(old);
        }
    }

    /// Opens with whichever key sealed `stored`; the sealing key's error when none does.
    pub fn open(&self, stored: &str, ad: &str) -> Result<String, SealError> {
        let first = self.seal.open(stored, ad);
        if first.is_ok() || self.also.is_empty() {
            return first;
        }
        self.also
            .iter()
            .find_map(|k| k.open(stored, ad).ok())
            .ok_or_else(|| first.err().unwrap_or(SealError::WrongKey))
    }

    /// The key of the ring that opens a stored key check, if any.
    pub fn opener_of_check(&self, stored: &str) -> Option<&Sealer> {
        self.keys().find(|k| opens_key_check(k, stored))
    }
}

/// The associated data of a token column.
pub fn ad(provider: &str, account: &str, column: &str) -> String {
    format!("{provider}/{account}/{column}")
}

/// The key check to store beside values sealed by `sealer`.
pub fn key_check(sealer: &Sealer) -> Result<String, SealError> {
    sealer.seal(KEY_CHECK_PLAIN, KEY_CHECK_AD)
}

/// Whether `sealer` opens a stored key check.
pub fn opens_key_check(sealer: &Sealer, stored: &str) -> bool {
    matches!(sealer.open(stored, KEY_CHECK_AD), Ok(p) if p == KEY_CHECK_PLAIN)
}

/// Seals a value a registry written before encryption holds. Sealing is idempotent: a value
/// already sealed with `to` is kept as it is, and one sealed with another key is refused,
/// never sealed a second time (it would be served as the token).
pub(crate) fn seal_plaintext(to: &Sealer, value: String, ad: &str) -> Result<String, SealError> {
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
    fn a_keyring_opens_with_every_key_and_seals_with_one() {
        let (old, next) = (
            Sealer::new(&MasterKey::generate()),
            Sealer::new(&MasterKey::generate()),
        );
        let ad = "shiphero/acme/access_token";
        let by_old = old.seal("tok-old", ad).unwrap();
        let mut ring = Keyring::new(old.clone());
        ring.add(next.clone());
        ring.add(next.clone());
        assert_eq!(ring.keys().count(), 2);
        assert_eq!(ring.open(&by_old, ad).unwrap(), "tok-old");
        ring.promote(next.clone());
        assert_eq!(ring.sealer().id(), next.id());
        let by_ring = ring
            .sealer()
            .seal_column("shiphero", "acme", "access_token", Some("t"))
            .unwrap();
        assert_eq!(next.open(by_ring.as_deref().unwrap(), ad).unwrap(), "t");
        assert!(old.open(by_ring.as_deref().unwrap(), ad).is_err());
        // The replaced key still opens what it sealed.
        assert_eq!(ring.open(&by_old, ad).unwrap(), "tok-old");
        let stranger = Sealer::new(&MasterKey::generate());
        let by_stranger = stranger.seal("x", ad).unwrap();
        assert!(matches!(
            ring.open(&by_stranger, ad),
            Err(SealError::WrongKey)
        ));
        let check = key_check(&old).unwrap();
        assert_eq!(ring.opener_of_check(&check).map(Sealer::id), Some(old.id()));
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
