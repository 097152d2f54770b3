//! Per-provider pacing: a token bucket in front of every upstream call, and a provider-wide
//! pause when the provider says it is throttling us.
//!
//! The pause holds back routine work (the sweep asks [`Pacer::until_unpaused`] before it
//! starts an account) but not a call an operator asked for: `shiptoken verify` should get the
//! provider's answer now, not hang silently for as long as another account was told to wait.
//!
//! `rotation.concurrency` bounds how many calls are in flight; it does not bound how many
//! start per second, and with a fast upstream 64 permits can mean hundreds of calls a second.
//! The bucket is what keeps thousands of accounts below ShipHero's and Shippo's documented
//! limits. Callers wait for their turn: pacing never fails work.
//!
//! This measures elapsed time with tokio's monotonic clock; it decides nothing about token
//! expiry, so it does not go through [`crate::clock::Clock`].

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How fast calls may start: a sustained rate and how many may start at once after a lull.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls that may start back to back after a quiet spell (at least 1).
    pub burst: u32,
}

/// One provider's bucket (GCRA form: one "theoretical arrival time" instead of a token
/// count, so a reservation is a single comparison under the lock).
#[derive(Debug, Default)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    /// When the bucket would be empty again if no more calls came; `None` before the first.
    tat: Option<Instant>,
    /// No call starts before this (the provider throttled us).
    paused_until: Option<Instant>,
}

impl Pacer {
    /// Waits until a call may start at `rate`, then counts it.
    pub async fn wait(&self, rate: Rate) {
        let at = self.reserve(rate, Instant::now());
        tokio::time::sleep_until(at).await;
    }

    /// Waits while the provider-wide pause lasts (without counting a call).
    pub async fn until_unpaused(&self) {
        while let Some(until) = self.paused_until().filter(|u| *u > Instant::now()) {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Stops calls from starting for `d` (extends, never shortens, a pause under way).
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.paused_until = Some(st.paused_until.map_or(until, |u| u.max(until)));
    }

    fn paused_until(&self) -> Option<Instant> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .paused_until
    }

    /// Books the next start time at or after `now` and returns it.
    fn reserve(&self, rate: Rate, now: Instant) -> Instant {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second.max(1e-6));
        let tolerance = interval.saturating_mul(rate.burst.max(1) - 1);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let tat = st.tat.map_or(now, |t| t.max(now));
        let start = tat.checked_sub(tolerance).map_or(now, |s| s.max(now));
        st.tat = Some(tat + interval);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_calls_are_spaced_by_the_rate() {
        let pacer = Pacer::default();
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let t0 = Instant::now();
        let starts: Vec<Duration> = (0..6).map(|_| pacer.reserve(rate, t0) - t0).collect();
        let ms: Vec<u128> = starts.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 0, 0, 100, 200, 300]);
    }

    #[test]
    fn a_quiet_spell_refills_the_bucket_but_no_more_than_burst() {
        let pacer = Pacer::default();
        let rate = Rate {
            per_second: 10.0,
            burst: 2,
        };
        let t0 = Instant::now();
        for _ in 0..4 {
            pacer.reserve(rate, t0);
        }
        let later = t0 + Duration::from_secs(10);
        let ms: Vec<u128> = (0..3)
            .map(|_| (pacer.reserve(rate, later) - later).as_millis())
            .collect();
        assert_eq!(ms, [0, 0, 100]);
    }

    #[test]
    fn a_pause_extends_but_never_shortens() {
        let pacer = Pacer::default();
        pacer.pause(Duration::from_secs(5));
        pacer.pause(Duration::from_secs(1));
        let until = pacer.paused_until().unwrap();
        assert!(until >= Instant::now() + Duration::from_secs(4));
    }
}
