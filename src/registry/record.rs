//! The records the registry stores and serves: accounts, their tokens, and their history.

use crate::clock::Timestamp;
use crate::names::{AccountKey, Status};
use crate::secret::Secret;

/// An access token with its lifetime.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    /// The token itself.
    pub access_token: Secret,
    /// When it was issued (or registered).
    pub issued_at: Timestamp,
    /// When it stops working; `None` for tokens that never expire (Shippo).
    pub expires_at: Option<Timestamp>,
}

/// Everything known about one account, as served from memory. Holds the access tokens but
/// never the refresh token, which is read from the store only when it is about to be used.
#[derive(Clone, Debug)]
#[cfg_attr(test, derive(PartialEq))]
pub struct AccountRecord {
    /// Provider and name.
    pub key: AccountKey,
    /// Developer user email (ShipHero).
    pub email: Option<String>,
    /// Developer user first name.
    pub first_name: Option<String>,
    /// Developer user last name.
    pub last_name: Option<String>,
    /// Current status.
    pub status: Status,
    /// When the status last changed.
    pub status_since: Timestamp,
    /// When the account was registered.
    pub created_at: Timestamp,
    /// When a token was last issued by the provider.
    pub last_rotated_at: Option<Timestamp>,
    /// When a probe last proved a token works.
    pub last_verified_at: Option<Timestamp>,
    /// The last upstream error, cleared by a passing probe.
    pub last_error: Option<String>,
    /// Consecutive failed attempts, for backoff.
    pub failures: u32,
    /// No routine work before this time (backoff, throttling, flagged re-check).
    pub next_attempt_at: Option<Timestamp>,
    /// The token served to applications.
    pub current: Option<TokenRecord>,
    /// A newer token not yet proven by a probe. Boxed, like the doubts below: each is rare and
    /// short-lived, and the record is held in memory once per account (boxing the three took
    /// it from 528 to 360 bytes, docs/scale.md).
    pub candidate: Option<Box<TokenRecord>>,
    /// Whether a refresh token is stored.
    pub has_refresh_token: bool,
    /// This registration of the account: a number never given to another, so work started
    /// for an account that was removed and added again cannot land on the new one.
    pub generation: i64,
    /// Bumped by every save; a save names the revision it was computed from and is refused
    /// when the stored record moved on.
    pub revision: i64,
    /// The provider's id of the account its tokens act for, pinned by the first passing
    /// probe; a token that probes as another account is never served as this one.
    pub upstream_id: Option<String>,
    /// Evidence against the token (a refusal, or an undocumented answer), not yet confirmed
    /// or already flagged; cleared by a passing probe.
    pub token_doubt: Option<Box<Doubt>>,
    /// Evidence against the refresh credential (ShipHero refused a refresh); cleared by a
    /// successful refresh.
    pub renew_doubt: Option<Box<Doubt>>,
    /// When this daemon saved the record, by its clock and by the monotonic clock. Memory
    /// only: `None` for a record read from the store or saved by another daemon.
    pub saved: Option<SavedAt>,
}

/// The daemon's time and the monotonic instant at which it saved a record: the anchor that
/// keeps an account's schedule running when the wall clock steps back (NTP), since its time
/// is judged at least as late as `at` plus the monotonic time elapsed since. Kept in the
/// record rather than in a map beside it, so it costs no key and leaves with the record.
#[derive(Clone, Copy, Debug)]
pub struct SavedAt {
    /// The daemon's time given to the save.
    pub at: Timestamp,
    /// The monotonic instant of the save.
    pub instant: std::time::Instant,
}

#[cfg(test)]
impl PartialEq for SavedAt {
    /// Records compare by what is stored; when memory stamped them is not part of that.
    fn eq(&self, _: &SavedAt) -> bool {
        true
    }
}

#[cfg(test)]
impl AccountRecord {
    /// An `active` account registered at `at` with no token, nothing checked and no doubt;
    /// tests change the fields they are about with struct-update syntax.
    pub(crate) fn example(key: AccountKey, at: Timestamp) -> AccountRecord {
        AccountRecord {
            key,
            email: None,
            first_name: None,
            last_name: None,
            status: Status::Active,
            status_since: at,
            created_at: at,
            last_rotated_at: None,
            last_verified_at: None,
            last_error: None,
            failures: 0,
            next_attempt_at: None,
            current: None,
            candidate: None,
            has_refresh_token: true,
            generation: 1,
            revision: 0,
            upstream_id: None,
            token_doubt: None,
            renew_doubt: None,
            saved: None,
        }
    }
}

/// Evidence seen about an account that waits for confirmation over time.
#[derive(Clone, Debug, PartialEq)]
pub struct Doubt {
    /// When this evidence was first seen; confirmation needs it again `verify.confirm_after`
    /// later.
    pub since: Timestamp,
    /// What the provider answered, last time.
    pub reason: String,
    /// For an undocumented answer, its stable form: only the same answer confirms it.
    pub signature: Option<String>,
}

/// A new account to register.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Provider and name.
    pub key: AccountKey,
    /// Developer user email (ShipHero).
    pub email: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// ShipHero's static refresh token.
    pub refresh_token: Option<Secret>,
    /// An access token obtained elsewhere; registered as the candidate until probed.
    pub access_token: Option<TokenRecord>,
}

impl NewAccount {
    /// The detail of its `added` history entry.
    pub fn added_detail(&self) -> String {
        match (&self.email, &self.access_token) {
            (Some(e), Some(_)) => format!("developer user {e}, with an access token"),
            (Some(e), None) => format!("developer user {e}"),
            (None, Some(_)) => "with an access token".to_string(),
            (None, None) => "awaiting a token".to_string(),
        }
    }

    /// A Shippo account with an OAuth token obtained at `now` (Shippo tokens never expire).
    pub fn shippo(key: AccountKey, access_token: Secret, now: Timestamp) -> NewAccount {
        NewAccount {
            key,
            email: None,
            first_name: None,
            last_name: None,
            refresh_token: None,
            access_token: Some(TokenRecord {
                access_token,
                issued_at: now,
                expires_at: None,
            }),
        }
    }
}

/// One entry of an account's history.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Event {
    /// When it happened.
    pub at: Timestamp,
    /// `provider/name`.
    pub account: String,
    /// One of [`EventKind`]'s words (kept as text: history written by other builds stays
    /// readable).
    pub kind: String,
    /// A human-readable detail, never a secret.
    pub detail: Option<String>,
}

/// What happened to an account, as written in its history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Registered.
    Added,
    /// The provider issued a new token.
    Rotated,
    /// A probe proved the token works.
    Checked,
    /// The status became a flag.
    Flagged,
    /// A flag was cleared by a passing probe.
    Cleared,
    /// A try proved nothing (outage, throttling, a proxy's answer): status unchanged.
    Failed,
    /// Evidence against the account, waiting for confirmation before anything is flagged.
    Suspected,
    /// The provider refused the refresh credential while the served token may still work.
    RefreshRefused,
    /// The probe is wrong for this token (a missing scope, a schema change).
    Misconfigured,
    /// Evidence was seen while the provider has an incident, so no flag was set.
    Held,
    /// Removed.
    Removed,
}

impl EventKind {
    /// The word stored in the history and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "added",
            EventKind::Rotated => "rotated",
            EventKind::Checked => "checked",
            EventKind::Flagged => "flagged",
            EventKind::Cleared => "cleared",
            EventKind::Failed => "failed",
            EventKind::Suspected => "suspected",
            EventKind::RefreshRefused => "refresh_refused",
            EventKind::Misconfigured => "misconfigured",
            EventKind::Held => "held",
            EventKind::Removed => "removed",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry for an account's history, made by the state machine and stored with the record.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// What happened.
    pub kind: EventKind,
    /// A human-readable detail, never a secret.
    pub detail: Option<String>,
}
