//! Per-provider pacing: a token bucket in front of every upstream call, and an order among
//! the calls waiting.
//!
//! A throttled answer pauses nothing here: the providers' limits are per account
//! (UPSTREAM.md), so the throttled account alone waits what it was told (its next try is
//! scheduled then), and the bucket keeps the provider's other accounts below the rate.
//!
//! A provider's concurrency bounds how many calls are in flight; it does not bound how many
//! start per second, and with a fast upstream 64 permits can mean hundreds of calls a second.
//! The bucket is what keeps thousands of accounts below ShipHero's and Shippo's documented
//! limits. Callers wait for their turn: pacing never fails work.
//!
//! Waiting calls are served one at a time, [`Class::Urgent`] ones (an operator's request, a
//! confirmation, the rest of an operation already begun) before [`Class::Routine`] ones, each
//! class in arrival order; but never more than [`URGENT_STREAK`] urgent calls in a row while a
//! routine one waits, so when urgent work alone exceeds the rate (an incident re-checking
//! every account) routine work still moves. Only the head waiter sleeps until the next slot; the others wait
//! to be woken as it leaves, so a slot wakes one task, not every waiting one. A routine call
//! therefore never books a slot ahead of an urgent call that comes after it: with Shippo
//! paced to two calls a minute and a queue of new accounts, a confirmation still takes the
//! next slot.
//!
//! This measures elapsed time with tokio's monotonic clock; it decides nothing about token
//! expiry, so it does not go through [`crate::clock::Clock`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How fast calls may start: a sustained rate and how many may start at once after a lull.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls that may start back to back after a quiet spell (at least 1).
    pub burst: u32,
}

/// Which waiting calls go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An operator waits for it, it confirms evidence, or it continues an operation that
    /// already made a call: served before any routine call.
    Urgent,
    /// A sweep's scheduled refresh or check.
    Routine,
}

/// How many urgent calls may go in a row while a routine call waits for its slot.
pub const URGENT_STREAK: u32 = 4;

/// One provider's bucket (GCRA form: one "theoretical arrival time" instead of a token
/// count, so booking a slot is a single comparison under the lock).
#[derive(Debug, Default)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    /// When the bucket would be empty again if no more calls came; `None` before the first.
    tat: Option<Instant>,
    /// Calls waiting for a slot: urgent ones, then routine ones, each in arrival order.
    urgent: VecDeque<Waiter>,
    routine: VecDeque<Waiter>,
    /// The next waiter's number.
    next_id: u64,
    /// Urgent calls let through in a row while routine ones waited.
    streak: u32,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    wake: Arc<Notify>,
}

impl PacerState {
    fn head(&self) -> Option<&Waiter> {
        match (self.urgent.front(), self.routine.front()) {
            (Some(_), Some(r)) if self.streak >= URGENT_STREAK => Some(r),
            (Some(u), _) => Some(u),
            (None, r) => r,
        }
    }

    /// Counts the grant to waiter `id` toward the urgent streak.
    fn count_grant(&mut self, id: u64) {
        if self.urgent.front().is_some_and(|w| w.id == id) {
            if !self.routine.is_empty() {
                self.streak += 1;
            }
        } else {
            self.streak = 0;
        }
    }

    /// Removes waiter `id` and wakes whoever is at the head now.
    fn leave(&mut self, id: u64) {
        self.urgent.retain(|w| w.id != id);
        self.routine.retain(|w| w.id != id);
        if let Some(head) = self.head() {
            head.wake.notify_one();
        }
    }

    /// The earliest a call may start at `rate`, from `now`.
    fn earliest(&self, rate: Rate, now: Instant) -> (Instant, Instant) {
        let interval = Duration::from_secs_f64(1.0 / rate.per_second.max(1e-6));
        let tolerance = interval.saturating_mul(rate.burst.max(1) - 1);
        let tat = self.tat.map_or(now, |t| t.max(now));
        let start = tat.checked_sub(tolerance).map_or(now, |s| s.max(now));
        (start, tat + interval)
    }
}

/// Takes a cancelled waiter out of the line, so it never blocks the ones behind it.
struct InLine<'a> {
    pacer: &'a Pacer,
    id: Option<u64>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.pacer.lock().leave(id);
        }
    }
}

impl Pacer {
    fn lock(&self) -> std::sync::MutexGuard<'_, PacerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a call of `class` may start at `rate`, then counts it.
    pub async fn wait(&self, rate: Rate, class: Class) {
        let wake = Arc::new(Notify::new());
        let id = {
            let mut st = self.lock();
            let id = st.next_id;
            st.next_id += 1;
            let waiter = Waiter {
                id,
                wake: wake.clone(),
            };
            match class {
                Class::Urgent => st.urgent.push_back(waiter),
                Class::Routine => st.routine.push_back(waiter),
            }
            id
        };
        let mut in_line = InLine {
            pacer: self,
            id: Some(id),
        };
        loop {
            let sleep_until = {
                let mut st = self.lock();
                if st.head().map(|w| w.id) == Some(id) {
                    let now = Instant::now();
                    let (start, next_tat) = st.earliest(rate, now);
                    if start <= now {
                        st.tat = Some(next_tat);
                        st.count_grant(id);
                        in_line.id = None;
                        st.leave(id);
                        return;
                    }
                    Some(start)
                } else {
                    None
                }
            };
            match sleep_until {
                // Woken early when an urgent call takes the head: it sleeps for the slot.
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                },
                None => wake.notified().await,
            }
        }
    }

    /// Whether a call of any class could start now without waiting for one.
    pub fn free_now(&self, rate: Rate) -> bool {
        let st = self.lock();
        let now = Instant::now();
        st.head().is_none() && st.earliest(rate, now).0 <= now
    }

    /// How many calls wait for a slot.
    pub fn waiting(&self) -> usize {
        let st = self.lock();
        st.urgent.len() + st.routine.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts `n` waiters of `class` (in order), returning when each got its slot, from t0.
    async fn starts(pacer: Arc<Pacer>, rate: Rate, classes: &[Class]) -> Vec<(usize, u128)> {
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, class) in classes.iter().copied().enumerate() {
            let (pacer, tx) = (pacer.clone(), tx.clone());
            tokio::spawn(async move {
                pacer.wait(rate, class).await;
                let _ = tx.send((i, (Instant::now() - t0).as_millis()));
            });
            // Arrival order is the order of the list.
            tokio::task::yield_now().await;
        }
        drop(tx);
        let mut out = Vec::new();
        while let Some(x) = rx.recv().await {
            out.push(x);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_calls_are_spaced_by_the_rate() {
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let got = starts(Arc::default(), rate, &[Class::Routine; 6]).await;
        let ms: Vec<u128> = got.iter().map(|(_, ms)| *ms).collect();
        assert_eq!(ms, [0, 0, 0, 100, 200, 300]);
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            order,
            [0, 1, 2, 3, 4, 5],
            "routine calls go in arrival order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_spell_refills_the_bucket_but_no_more_than_burst() {
        let pacer = Arc::new(Pacer::default());
        let rate = Rate {
            per_second: 10.0,
            burst: 2,
        };
        starts(pacer.clone(), rate, &[Class::Routine; 4]).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let ms: Vec<u128> = starts(pacer, rate, &[Class::Routine; 3])
            .await
            .iter()
            .map(|(_, ms)| *ms)
            .collect();
        assert_eq!(ms, [0, 0, 100]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_call_takes_the_next_slot_ahead_of_routine_ones_waiting() {
        // Two calls a minute, four routine calls queued, then a confirmation.
        let rate = Rate {
            per_second: 2.0 / 60.0,
            burst: 1,
        };
        let classes = [
            Class::Routine,
            Class::Routine,
            Class::Routine,
            Class::Routine,
            Class::Urgent,
        ];
        let got = starts(Arc::default(), rate, &classes).await;
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [0, 4, 1, 2, 3]);
        assert_eq!(
            got[1].1, 30_000,
            "the urgent call waited one slot, not four"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn routine_calls_still_move_when_urgent_ones_exceed_the_rate() {
        let rate = Rate {
            per_second: 1.0,
            burst: 1,
        };
        let mut classes = vec![Class::Routine; 2];
        classes.extend([Class::Urgent; 10]);
        let got = starts(Arc::default(), rate, &classes).await;
        let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        // The first routine call had the bucket to itself; then four urgent, one routine.
        assert_eq!(order[..7], [0, 2, 3, 4, 5, 1, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_does_not_hold_up_the_line() {
        let pacer = Arc::new(Pacer::default());
        let rate = Rate {
            per_second: 1.0,
            burst: 1,
        };
        pacer.wait(rate, Class::Routine).await;
        let head = tokio::spawn({
            let pacer = pacer.clone();
            async move { pacer.wait(rate, Class::Routine).await }
        });
        tokio::task::yield_now().await;
        head.abort();
        let t0 = Instant::now();
        pacer.wait(rate, Class::Routine).await;
        assert!(Instant::now() - t0 <= Duration::from_secs(1));
        assert_eq!(pacer.waiting(), 0);
    }
}
