//! The daemon's one view of wall-clock time.
//!
//! Every expiry and scheduling decision takes a [`Timestamp`] as a parameter; only this module
//! reads the system clock (clippy's `disallowed-methods` enforces it), so any decision can be
//! tested with any `now`, and a test can move the daemon's clock forward by days in a second.

#[cfg(feature = "dev")]
use std::sync::Arc;
#[cfg(feature = "dev")]
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time as whole milliseconds since the Unix epoch (UTC).
///
/// Milliseconds rather than seconds because tests run token lifetimes of a few seconds, and
/// an integer rather than `SystemTime` because it is stored in SQLite and compared everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// The timestamp `secs` seconds after the epoch.
    pub const fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// Milliseconds since the epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the epoch, rounded down.
    pub const fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This time plus `d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is; zero when it is not later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// The last instant RFC 3339 can write with a four-digit year: 9999-12-31T23:59:59Z.
    pub const LATEST: Timestamp = Timestamp(253_402_300_799_000);

    /// Whether the time lies between 1970 and the end of year 9999, the range every
    /// timestamp the daemon stores must fall in (checked where times enter).
    pub fn in_calendar(self) -> bool {
        (0..=Self::LATEST.0).contains(&self.0)
    }

    /// RFC 3339 in UTC with second precision, e.g. `2026-11-23T10:00:00Z`. A time outside
    /// [`Timestamp::in_calendar`] is written as the nearest end of that range rather than
    /// panicking, so a bad value can never take a listing or a thread down.
    pub fn to_rfc3339(self) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(self.0.clamp(0, Self::LATEST.0).unsigned_abs());
        humantime::format_rfc3339_seconds(t).to_string()
    }

    /// Parses RFC 3339 (`2026-11-23T10:00:00Z`, fractional seconds allowed).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t = humantime::parse_rfc3339_weak(s).ok()?;
        let d = t.duration_since(UNIX_EPOCH).ok()?;
        Some(Timestamp(i64::try_from(d.as_millis()).ok()?))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// The wall clock, with an offset that tests and dev mode can move forward.
///
/// Cloning shares the offset: the scheduler, the rotation engine and the socket API all see
/// the same time. Builds without the `dev` feature (the .deb) have no offset: their clock is
/// the system's.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    #[cfg(feature = "dev")]
    offset_millis: Arc<AtomicI64>,
}

impl Clock {
    /// A clock that reads the system time.
    pub fn system() -> Self {
        Clock::default()
    }

    /// The current time (system time plus the offset).
    pub fn now(&self) -> Timestamp {
        let wall = Self::system_now().0;
        #[cfg(feature = "dev")]
        let wall = wall.saturating_add(self.offset_millis.load(Ordering::Relaxed));
        Timestamp(wall)
    }

    /// The system time without any offset: what the cron trigger goes by, so the sweeper can
    /// tell when a tick is due even while a test has moved the daemon's clock.
    #[allow(clippy::disallowed_methods)]
    pub fn system_now() -> Timestamp {
        Timestamp(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        )
    }

    /// Moves this clock (and every clone of it) forward by `d`.
    #[cfg(feature = "dev")]
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.offset_millis.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let t = Timestamp::from_secs(1_795_000_000);
        let s = t.to_rfc3339();
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
    }

    #[cfg(feature = "dev")]
    #[test]
    fn advancing_moves_every_clone() {
        let a = Clock::system();
        let b = a.clone();
        let before = b.now();
        a.advance(Duration::from_secs(14 * 86_400));
        assert!(b.now().since(before) >= Duration::from_secs(14 * 86_400));
    }
}
