//! Tells an incident at a provider from suspensions: when, among one provider's accounts
//! checked within a window, more than a share and at least a minimum count turn up evidence at
//! once, flags for that provider are held (as Envoy's outlier detection caps ejections with
//! `max_ejection_percent`). The incident ends when the share has stayed below the threshold
//! for a whole window; the accounts are then judged again on their next tries.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::names::{AccountKey, Provider};

/// When evidence from many accounts at once is an incident.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    /// More than this share of the accounts checked in the window (0-1).
    pub share: f64,
    /// And at least this many accounts.
    pub min_accounts: usize,
    /// The window.
    pub window: Duration,
}

/// The last conclusive result of each account of one provider within the window, with
/// running counts of them, and the incident state. Each result is counted once when it comes
/// and uncounted once when it leaves the window or is replaced, so recording one is O(1)
/// (amortized) however many accounts the provider has: a sweep of 10,000 accounts walked
/// every result twice per answer before (about 2x10^8 steps).
#[derive(Debug, Default)]
struct ProviderState {
    /// Per account: when it was last judged, whether that was evidence against it, and the
    /// result's number (to tell it from the replaced results still in `order`).
    results: HashMap<AccountKey, Latest>,
    /// Every result recorded within the window, oldest first, replaced ones included.
    order: VecDeque<(Timestamp, u64, AccountKey)>,
    /// The next result's number.
    next: u64,
    /// How many of `results` are evidence.
    evidence: usize,
    /// When the current incident began, if there is one.
    since: Option<Timestamp>,
    /// The last time the share was above the threshold.
    last_above: Option<Timestamp>,
    /// Per account: the last undocumented answer it got, and when.
    odd: HashMap<AccountKey, (Timestamp, String)>,
}

/// An account's latest conclusive result.
#[derive(Debug, Clone, Copy)]
struct Latest {
    at: Timestamp,
    evidence: bool,
    seq: u64,
}

/// What [`Incidents::record`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed.
    None,
    /// An incident began: this many of this many accounts answered with evidence.
    Began {
        /// Accounts with evidence in the window.
        evidence: usize,
        /// Accounts judged in the window.
        checked: usize,
    },
    /// The incident ended.
    Ended,
}

/// Incident state of every provider.
#[derive(Debug, Default)]
pub struct Incidents {
    providers: HashMap<Provider, ProviderState>,
}

impl Incidents {
    /// Records a conclusive result (a pass, or evidence) of `key` at `now`.
    pub fn record(
        &mut self,
        key: &AccountKey,
        evidence: bool,
        now: Timestamp,
        t: Threshold,
    ) -> Change {
        let state = self.providers.entry(key.provider).or_default();
        state.put(key, now, evidence);
        state.update(now, t)
    }

    /// Forgets a removed account.
    pub fn forget(&mut self, key: &AccountKey) {
        if let Some(s) = self.providers.get_mut(&key.provider) {
            s.take(key);
            s.odd.remove(key);
        }
    }

    /// Why flags of `provider` are held, if they are. The incident's start and end are
    /// decided by [`Incidents::record`] alone, so each is reported exactly once.
    pub fn hold(&self, provider: Provider, t: Threshold) -> Option<String> {
        let state = self.providers.get(&provider)?;
        let since = state.since?;
        let (evidence, checked) = (state.evidence, state.results.len());
        Some(format!(
            "incident at {provider} since {}: {evidence} of {checked} accounts checked in the last {} answered with evidence at once",
            since.to_rfc3339(),
            humantime::format_duration(t.window)
        ))
    }

    /// When the provider's incident began, if one is going on.
    pub fn since(&self, provider: Provider) -> Option<Timestamp> {
        self.providers.get(&provider)?.since
    }

    /// Notes that `key` got the undocumented answer `signature` at `now`.
    pub fn record_odd(&mut self, key: &AccountKey, signature: &str, now: Timestamp) {
        let state = self.providers.entry(key.provider).or_default();
        state.odd.insert(key.clone(), (now, signature.to_string()));
    }

    /// The last time another account of the provider got the undocumented answer
    /// `signature`: while others get it too, it says nothing about this account.
    pub fn others_same_answer_at(&self, key: &AccountKey, signature: &str) -> Option<Timestamp> {
        self.providers
            .get(&key.provider)?
            .odd
            .iter()
            .filter(|(k, (_, sig))| *k != key && sig == signature)
            .map(|(_, (at, _))| *at)
            .max()
    }

    /// The last time another account of the provider passed its probe (its latest result
    /// being a pass, within the window); `None` during an incident.
    pub fn others_passed_at(
        &self,
        key: &AccountKey,
        now: Timestamp,
        t: Threshold,
    ) -> Option<Timestamp> {
        let s = self.providers.get(&key.provider)?;
        if s.since.is_some() {
            return None;
        }
        s.results
            .iter()
            .filter(|(k, r)| *k != key && !r.evidence && now.since(r.at) <= t.window)
            .map(|(_, r)| r.at)
            .max()
    }
}

impl ProviderState {
    /// Counts `key`'s new result, replacing its previous one.
    fn put(&mut self, key: &AccountKey, at: Timestamp, evidence: bool) {
        self.take(key);
        let seq = self.next;
        self.next += 1;
        self.results
            .insert(key.clone(), Latest { at, evidence, seq });
        self.evidence += usize::from(evidence);
        self.order.push_back((at, seq, key.clone()));
    }

    /// Uncounts `key`'s result, if it has one.
    fn take(&mut self, key: &AccountKey) {
        if let Some(old) = self.results.remove(key) {
            self.evidence -= usize::from(old.evidence);
        }
    }

    /// Uncounts the results that left the window by `now`. A result recorded under a clock
    /// that later stepped back stays until the results before it leave too.
    fn expire(&mut self, now: Timestamp, window: Duration) {
        while let Some((at, seq, _)) = self.order.front() {
            if now.since(*at) <= window {
                break;
            }
            let seq = *seq;
            let Some((_, _, key)) = self.order.pop_front() else {
                break;
            };
            if self.results.get(&key).is_some_and(|r| r.seq == seq) {
                self.take(&key);
            }
        }
        // A sweep of the whole fleet fills both; once its results leave the window, so does
        // the memory they took.
        if self.order.capacity() > 64 && self.order.len() < self.order.capacity() / 4 {
            self.order.shrink_to_fit();
        }
        if self.results.capacity() > 64 && self.results.len() < self.results.capacity() / 4 {
            self.results.shrink_to_fit();
        }
    }

    fn update(&mut self, now: Timestamp, t: Threshold) -> Change {
        self.expire(now, t.window);
        let (evidence, checked) = (self.evidence, self.results.len());
        let above = evidence >= t.min_accounts.max(1)
            && checked > 0
            && evidence as f64 > t.share * checked as f64;
        if above {
            self.last_above = Some(now);
            if self.since.is_none() {
                self.since = Some(now);
                return Change::Began { evidence, checked };
            }
        } else if self.since.is_some() && self.last_above.is_none_or(|a| now.since(a) >= t.window) {
            self.since = None;
            return Change::Ended;
        }
        Change::None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const T: Threshold = Threshold {
        share: 0.2,
        min_accounts: 5,
        window: Duration::from_secs(600),
    };

    fn key(i: usize) -> AccountKey {
        AccountKey::parse(&format!("shiphero/m{i}")).unwrap()
    }

    #[test]
    fn many_accounts_with_evidence_at_once_are_an_incident_that_ends_after_a_quiet_window() {
        let mut inc = Incidents::default();
        let t0 = Timestamp::from_secs(1_800_000_000);
        for i in 0..45 {
            inc.record(&key(i), false, t0, T);
        }
        for i in 45..49 {
            assert_eq!(
                inc.record(&key(i), true, t0, T),
                Change::None,
                "below the minimum"
            );
        }
        // 5 of 50 is 10%: not above 20%.
        assert_eq!(inc.record(&key(49), true, t0, T), Change::None);
        for i in 0..10 {
            inc.record(&key(i), true, t0, T);
        }
        assert!(inc.hold(Provider::ShipHero, T).is_some());
        assert!(inc.hold(Provider::Shippo, T).is_none());
        assert_eq!(inc.others_passed_at(&key(0), t0, T), None);
        // Passes again; the incident lasts until the share stayed low for a window.
        let later = t0.plus(Duration::from_secs(60));
        for i in 0..50 {
            inc.record(&key(i), false, later, T);
        }
        assert!(inc.hold(Provider::ShipHero, T).is_some());
        let quiet = later.plus(Duration::from_secs(600));
        assert_eq!(inc.record(&key(1), false, quiet, T), Change::Ended);
        assert!(inc.hold(Provider::ShipHero, T).is_none());
        assert_eq!(inc.others_passed_at(&key(0), quiet, T), Some(quiet));
    }

    #[test]
    fn a_real_suspension_in_a_small_fleet_is_never_an_incident() {
        let mut inc = Incidents::default();
        let t0 = Timestamp::from_secs(1_800_000_000);
        inc.record(&key(0), false, t0, T);
        inc.record(&key(1), false, t0, T);
        assert_eq!(inc.record(&key(2), true, t0, T), Change::None);
        assert!(inc.hold(Provider::ShipHero, T).is_none());
        assert_eq!(inc.others_passed_at(&key(2), t0, T), Some(t0));
    }

    #[test]
    fn running_counts_follow_replacements_removals_and_the_window() {
        let mut inc = Incidents::default();
        let t0 = Timestamp::from_secs(1_800_000_000);
        let counts = |inc: &Incidents| {
            let s = inc.providers.get(&Provider::ShipHero).unwrap();
            (s.evidence, s.results.len())
        };
        for i in 0..10 {
            inc.record(&key(i), i % 2 == 0, t0, T);
        }
        assert_eq!(counts(&inc), (5, 10));
        // A newer result replaces the account's last one: counted once.
        inc.record(&key(0), false, t0.plus(Duration::from_secs(60)), T);
        assert_eq!(counts(&inc), (4, 10));
        inc.forget(&key(2));
        assert_eq!(counts(&inc), (3, 9));
        // Past the window, only key 0's newer result is left.
        inc.record(&key(1), false, t0.plus(Duration::from_secs(601)), T);
        assert_eq!(counts(&inc), (0, 2));
        let s = inc.providers.get(&Provider::ShipHero).unwrap();
        assert!(
            s.order.len() <= 2,
            "expired results are dropped from the queue"
        );
    }
}
