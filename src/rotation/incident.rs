//! Tells an incident at a provider from suspensions: when, among one provider's accounts
//! checked within a window, more than a share and at least a minimum count turn up evidence at
//! once, flags for that provider are held (as Envoy's outlier detection caps ejections with
//! `max_ejection_percent`). The incident ends when the share has stayed below the threshold
//! for a whole window; the accounts are then judged again on their next tries.

use std::collections::HashMap;
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

/// The last conclusive result of each account of one provider, and the incident state.
#[derive(Debug, Default)]
struct ProviderState {
    /// Per account: when it was last judged, and whether that was evidence against it.
    results: HashMap<AccountKey, (Timestamp, bool)>,
    /// When the current incident began, if there is one.
    since: Option<Timestamp>,
    /// The last time the share was above the threshold.
    last_above: Option<Timestamp>,
    /// Per account: the last undocumented answer it got, and when.
    odd: HashMap<AccountKey, (Timestamp, String)>,
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
        state.results.insert(key.clone(), (now, evidence));
        state.update(now, t)
    }

    /// Forgets a removed account.
    pub fn forget(&mut self, key: &AccountKey) {
        if let Some(s) = self.providers.get_mut(&key.provider) {
            s.results.remove(key);
            s.odd.remove(key);
        }
    }

    /// Why flags of `provider` are held, if they are. The incident's start and end are
    /// decided by [`Incidents::record`] alone, so each is reported exactly once.
    pub fn hold(&self, provider: Provider, now: Timestamp, t: Threshold) -> Option<String> {
        let state = self.providers.get(&provider)?;
        let since = state.since?;
        let (evidence, checked) = state.counts(now, t.window);
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
            .filter(|(k, (at, evidence))| *k != key && !evidence && now.since(*at) <= t.window)
            .map(|(_, (at, _))| *at)
            .max()
    }
}

impl ProviderState {
    fn counts(&self, now: Timestamp, window: Duration) -> (usize, usize) {
        let recent = self
            .results
            .values()
            .filter(|(at, _)| now.since(*at) <= window);
        let (mut evidence, mut checked) = (0, 0);
        for (_, e) in recent {
            checked += 1;
            evidence += usize::from(*e);
        }
        (evidence, checked)
    }

    fn update(&mut self, now: Timestamp, t: Threshold) -> Change {
        self.results.retain(|_, (at, _)| now.since(*at) <= t.window);
        let (evidence, checked) = self.counts(now, t.window);
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
        assert!(inc.hold(Provider::ShipHero, t0, T).is_some());
        assert!(inc.hold(Provider::Shippo, t0, T).is_none());
        assert_eq!(inc.others_passed_at(&key(0), t0, T), None);
        // Passes again; the incident lasts until the share stayed low for a window.
        let later = t0.plus(Duration::from_secs(60));
        for i in 0..50 {
            inc.record(&key(i), false, later, T);
        }
        assert!(inc.hold(Provider::ShipHero, later, T).is_some());
        let quiet = later.plus(Duration::from_secs(600));
        assert_eq!(inc.record(&key(1), false, quiet, T), Change::Ended);
        assert!(inc.hold(Provider::ShipHero, quiet, T).is_none());
        assert_eq!(inc.others_passed_at(&key(0), quiet, T), Some(quiet));
    }

    #[test]
    fn a_real_suspension_in_a_small_fleet_is_never_an_incident() {
        let mut inc = Incidents::default();
        let t0 = Timestamp::from_secs(1_800_000_000);
        inc.record(&key(0), false, t0, T);
        inc.record(&key(1), false, t0, T);
        assert_eq!(inc.record(&key(2), true, t0, T), Change::None);
        assert!(inc.hold(Provider::ShipHero, t0, T).is_none());
        assert_eq!(inc.others_passed_at(&key(2), t0, T), Some(t0));
    }
}
