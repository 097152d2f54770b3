//! What an account needs at a given `now`: a pure function of the record, the time and the
//! policy, so every schedule (refresh points, rotation windows, checks, backoff) is tested with
//! chosen times instead of waiting for ticks.
//!
//! Thousands of accounts: refresh points are spread per account ([`refresh_point`]) and checks
//! by a per-account phase ([`next_check`]), both stable across restarts.

use std::time::Duration;

use rand::Rng;

use super::judge::Probed;
use crate::clock::Timestamp;
use crate::config::Config;
use crate::names::{AccountKey, Provider, Status};
use crate::registry::{AccountRecord, TokenRecord};
use crate::window::Window;

/// What an account needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Get a new access token (ShipHero), then probe it.
    Refresh,
    /// Probe a token: the unproven candidate (promoted if it passes), or the served one.
    Verify(Probed),
    /// The served token is past its expiry: say so.
    Expire,
}

/// The settings [`plan`] needs.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Fraction of a lifetime after which a token is refreshed (`rotation.rotate_at`).
    pub rotate_at: f64,
    /// A provider's own fraction where its section sets one (`oauth2.rotate_at`), in the
    /// order of [`Provider::ALL`].
    pub provider_rotate_at: [Option<f64>; Provider::ALL.len()],
    /// How often tokens are probed.
    pub verify_interval: Duration,
    /// When routine refreshes may run; `None`: at any time.
    pub window: Option<Window>,
}

impl Policy {
    /// The policy a configuration sets.
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            rotate_at: c.rotation.rotate_at,
            provider_rotate_at: Provider::ALL.map(|p| c.upstream(p).rotate_at),
            verify_interval: c.verify.interval,
            window: c.rotation.window,
        }
    }
}

impl Policy {
    /// The fraction of a lifetime after which `provider`'s tokens are refreshed.
    pub fn rotate_at_for(&self, provider: Provider) -> f64 {
        Provider::ALL
            .iter()
            .position(|p| *p == provider)
            .and_then(|i| self.provider_rotate_at[i])
            .unwrap_or(self.rotate_at)
    }
}

/// The largest spread of refresh points, as a fraction of a token's lifetime: 10% of 28 days
/// spreads tokens issued in the same second over 2.8 days (about 4,000 minutes).
const SPREAD: f64 = 0.10;

/// Two stable numbers in `[0, 1)` for the account, from a SHA-256 of its name: one places its
/// refresh within the spread, the other within a rotation window. Stable, so a restart never
/// moves a refresh; from the name, so accounts registered together still come apart.
fn fractions(key: &AccountKey) -> (f64, f64) {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.to_string().as_bytes());
    let unit = |bytes: &[u8]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        // The top 53 bits fill an f64 mantissa exactly, so the result is uniform and < 1.
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    };
    (unit(&digest[8..16]), unit(&digest[16..24]))
}

/// Where a token's refresh falls before any window: `rotate_at` of its lifetime after issue,
/// plus a per-account share of the spread; and the deadline past which a window may no
/// longer hold it back. `None` for tokens that never expire.
///
/// The bound: the spread is `min(10%, (1 - rotate_at) / 4)` of the lifetime, so at least
/// three quarters of the slack `rotate_at` leaves before expiry remains (at `rotate_at = 0.5`
/// a 28-day token is refreshed between day 14 and day 16.8, at least 11.2 days before it
/// expires). The deadline is halfway from that point to expiry (day 21 at the latest).
fn spread_point(
    key: &AccountKey,
    token: &TokenRecord,
    rotate_at: f64,
) -> Option<(Timestamp, Timestamp)> {
    let expires = token.expires_at?;
    let lifetime = expires.since(token.issued_at);
    let spread = SPREAD.min((1.0 - rotate_at) / 4.0).max(0.0);
    let point = token
        .issued_at
        .plus(lifetime.mul_f64(rotate_at + spread * fractions(key).0));
    Some((point, point.plus(expires.since(point) / 2)))
}

/// When the daemon will replace the token (what `refresh_after` shows): its spread point
/// ([`spread_point`]), moved into the next rotation window when one is configured, at a
/// per-account place within it so a window opening is not a burst. When that window opens
/// only after the deadline, the spread point stands: expiry beats the window. `None` for
/// tokens that never expire.
pub fn refresh_point(key: &AccountKey, token: &TokenRecord, policy: &Policy) -> Option<Timestamp> {
    let (point, deadline) = spread_point(key, token, policy.rotate_at_for(key.provider))?;
    let Some(window) = policy.window else {
        return Some(point);
    };
    Some(match window.span_from(point) {
        Some((open, _)) if open <= point => point,
        Some((open, close)) if open < deadline => {
            let room = close.since(open).min(deadline.since(open));
            open.plus(room.mul_f64(fractions(key).1))
        }
        _ => point,
    })
}

/// Whether a routine refresh may run at `now`: inside the window, or when the window opens
/// too late for a token whose refresh `deadline` is given.
fn window_allows(window: Option<Window>, now: Timestamp, deadline: Timestamp) -> bool {
    window.is_none_or(|w| {
        w.span_from(now)
            .is_none_or(|(open, _)| open <= now || open >= deadline)
    })
}

/// A stable offset in `[0, interval)` for the account, from a hash of its name, so that the
/// checks of accounts registered together spread over the interval instead of arriving in
/// one burst every `interval`.
fn phase(key: &AccountKey, interval: Duration) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.to_string().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let span = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    i64::try_from(u64::from_le_bytes(first) % span.unsigned_abs()).unwrap_or(0)
}

/// When the account is next checked after one at `last`: the next point of its phase,
/// never more than `interval` later.
pub fn next_check(key: &AccountKey, last: Timestamp, interval: Duration) -> Timestamp {
    let span = i64::try_from(interval.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let into_slot = (last.millis() - phase(key, interval)).rem_euclid(span);
    Timestamp::from_millis(last.millis().saturating_add(span - into_slot))
}

/// Whether `token` can be handed out at `now`.
pub fn usable(token: &TokenRecord, now: Timestamp) -> bool {
    token.expires_at.is_none_or(|e| e > now)
}

/// Decides what `account` needs at `now`. Pure: the same inputs always give the same answer.
/// `renews` says whether the provider renews tokens from a refresh credential (ShipHero) or
/// only has them probed (Shippo).
pub fn plan(account: &AccountRecord, now: Timestamp, policy: Policy, renews: bool) -> Option<Work> {
    let expired = |t: &TokenRecord| !usable(t, now);
    if account.status == Status::Active
        && account.current.as_ref().is_some_and(expired)
        && account.candidate.as_deref().is_none_or(expired)
    {
        return Some(Work::Expire);
    }
    // Backoff, throttling, confirmation and the flagged re-check interval all gate routine work.
    if account.next_attempt_at.is_some_and(|t| t > now) {
        return None;
    }
    let verify_due = account
        .last_verified_at
        .is_none_or(|v| now >= next_check(&account.key, v, policy.verify_interval))
        // A try that proved nothing is tried again once its backoff has passed.
        || account.last_error.is_some();
    if account.candidate.is_some() {
        return Some(Work::Verify(Probed::Candidate));
    }
    let Some(current) = &account.current else {
        return renews.then_some(Work::Refresh);
    };
    if !renews {
        let wanted = verify_due || account.status.is_flagged() || account.token_doubt.is_some();
        return wanted.then_some(Work::Verify(Probed::Served));
    }
    // A flag, a doubt about the token or the refresh, all are judged on a fresh refresh.
    if account.status.is_flagged() || account.token_doubt.is_some() || account.renew_doubt.is_some()
    {
        return Some(Work::Refresh);
    }
    // A clock that runs before the issue time cannot be trusted to judge the age. A few
    // minutes ahead is another daemon sharing the registry whose clock runs a little fast:
    // judged by age as usual, or every daemon behind it would refresh what it stores.
    let due = now.plus(CLOCK_SKEW) < current.issued_at
        || spread_point(
            &account.key,
            current,
            policy.rotate_at_for(account.key.provider),
        )
        .is_none_or(|(_, deadline)| {
            refresh_point(&account.key, current, &policy).is_none_or(|p| now >= p)
                && window_allows(policy.window, now, deadline)
        });
    if due {
        Some(Work::Refresh)
    } else if verify_due {
        Some(Work::Verify(Probed::Served))
    } else {
        None
    }
}

/// How far ahead of this daemon's clock a token's issue time may be and still be judged by
/// its age (clocks of daemons sharing a registry differ a little).
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Exponential backoff with jitter: `initial * 2^(failures-1)`, capped at `max`, then a
/// random point in its upper half so that accounts failing together do not retry together.
pub fn backoff(failures: u32, initial: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let half = base / 2;
    half + half.mul_f64(rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::window::tests::weekdays_9_to_5;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> Timestamp {
        Timestamp::from_secs(1_800_000_000)
    }

    fn policy() -> Policy {
        Policy {
            rotate_at: 0.5,
            provider_rotate_at: [None; Provider::ALL.len()],
            verify_interval: Duration::from_secs(6 * 3600),
            window: None,
        }
    }

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    /// An active account `name` whose 28-day token was issued at `issued`, checked recently
    /// enough that only the token's age can make work due.
    fn fleet_member(name: &str, issued: Timestamp) -> AccountRecord {
        let mut a = shiphero_account(Some(token(issued, 28 * DAY)));
        a.key = AccountKey::parse(&format!("shiphero/{name}")).unwrap();
        a
    }

    fn month_policy(window: Option<Window>) -> Policy {
        Policy {
            verify_interval: 60 * DAY,
            window,
            ..policy()
        }
    }

    /// Counts refreshes per minute: the sweep runs on minute boundaries, so this is the
    /// burst each boundary sees.
    fn per_minute(points: impl Iterator<Item = Timestamp>) -> std::collections::BTreeMap<i64, u32> {
        let mut m = std::collections::BTreeMap::new();
        for p in points {
            *m.entry(p.secs().div_euclid(60)).or_insert(0) += 1;
        }
        m
    }

    fn shiphero_account(current: Option<TokenRecord>) -> AccountRecord {
        AccountRecord {
            email: Some("a@b.c".into()),
            status: if current.is_some() {
                Status::Active
            } else {
                Status::Pending
            },
            last_verified_at: Some(t0()),
            current,
            ..AccountRecord::example(AccountKey::parse("shiphero/acme").unwrap(), t0())
        }
    }

    fn token(issued: Timestamp, lifetime: Duration) -> TokenRecord {
        TokenRecord {
            access_token: Secret::new("t"),
            issued_at: issued,
            expires_at: Some(issued.plus(lifetime)),
        }
    }

    #[test]
    fn a_provider_with_its_own_share_renews_a_one_hour_token_from_40_minutes() {
        const HOUR: Duration = Duration::from_secs(3600);
        let config = crate::config::tests::load("").unwrap();
        let p = Policy::from_config(&config);
        assert_eq!(p.rotate_at_for(Provider::ShipHero), 0.5);
        assert!((p.rotate_at_for(Provider::OAuth2) - 2.0 / 3.0).abs() < 1e-9);
        for i in 0..50 {
            let mut a = shiphero_account(Some(token(t0(), HOUR)));
            a.key = AccountKey::parse(&format!("oauth2/carrier{i}")).unwrap();
            let point = refresh_point(&a.key, a.current.as_ref().unwrap(), &p).unwrap();
            let after = point.since(t0());
            assert!(after >= HOUR * 2 / 3, "{i}: {after:?}");
            assert!(after < HOUR * 3 / 4, "{i}: {after:?}");
            // The same account under rotation.rotate_at alone would renew at half its life.
            let shared = refresh_point(&a.key, a.current.as_ref().unwrap(), &policy()).unwrap();
            assert!(shared.since(t0()) < HOUR * 2 / 3);
        }
    }

    #[test]
    fn a_28_day_token_is_refreshed_between_day_14_and_day_16_8() {
        let mut a = shiphero_account(Some(token(t0(), 28 * DAY)));
        // Checked moments ago, so only the token's age can make work due.
        a.last_verified_at = Some(t0().plus(13 * DAY));
        let p = Policy {
            verify_interval: 30 * DAY,
            ..policy()
        };
        let point = refresh_point(&a.key, a.current.as_ref().unwrap(), &p).unwrap();
        assert!(point >= t0().plus(14 * DAY) && point <= t0().plus(DAY.mul_f64(16.8)));
        assert_eq!(plan(&a, t0().plus(13 * DAY), p, true), None);
        assert_eq!(
            plan(&a, Timestamp::from_millis(point.millis() - 1), p, true),
            None
        );
        assert_eq!(plan(&a, point, p, true), Some(Work::Refresh));
        assert_eq!(plan(&a, t0().plus(17 * DAY), p, true), Some(Work::Refresh));
    }

    #[test]
    fn the_spread_leaves_three_quarters_of_the_slack_whatever_rotate_at() {
        for (i, rotate_at) in [0.1, 0.5, 0.8, 0.95, 0.99].into_iter().enumerate() {
            let key = AccountKey::parse(&format!("shiphero/m-{i}")).unwrap();
            let t = token(t0(), 28 * DAY);
            let p = Policy {
                rotate_at,
                ..policy()
            };
            let point = refresh_point(&key, &t, &p).unwrap();
            let earliest = t0().plus((28 * DAY).mul_f64(rotate_at));
            let slack = (28 * DAY).mul_f64(1.0 - rotate_at);
            assert!(point >= earliest, "{rotate_at}: before rotate_at");
            assert!(
                point.plus(slack.mul_f64(0.75)) <= t0().plus(28 * DAY),
                "{rotate_at}: too close to expiry"
            );
        }
    }

    #[test]
    fn ten_thousand_accounts_issued_in_one_second_never_burst_at_a_minute_boundary() {
        // Registered together, so every token was issued in the same second.
        let fleet: Vec<AccountRecord> = (0..10_000)
            .map(|i| fleet_member(&format!("merchant-{i}"), t0()))
            .collect();
        let p = month_policy(None);
        let points: Vec<Timestamp> = fleet
            .iter()
            .map(|a| refresh_point(&a.key, a.current.as_ref().unwrap(), &p).unwrap())
            .collect();
        let minutes = per_minute(points.iter().copied());
        let worst = minutes.values().max().copied().unwrap_or(0);
        // 10,000 over 2.8 days is 2.5 a minute on average; 20 (0.2%) would be a burst.
        assert!(worst <= 20, "{worst} refreshes in one minute");
        assert!(
            minutes.len() > 3000,
            "spread over only {} minutes",
            minutes.len()
        );
        // And plan agrees at the boundaries: at each minute exactly that minute's accounts
        // (and the earlier ones) are due.
        for minute in [0usize, 1000, 2500, 4000] {
            let now = t0()
                .plus(14 * DAY)
                .plus(Duration::from_secs(60 * minute as u64));
            let due = fleet
                .iter()
                .filter(|a| plan(a, now, p, true) == Some(Work::Refresh))
                .count();
            let expected = points.iter().filter(|p| **p <= now).count();
            assert_eq!(due, expected, "minute {minute}");
        }
        // Restarts do not move a refresh: the point is a function of the account alone.
        assert_eq!(
            refresh_point(&fleet[7].key, fleet[7].current.as_ref().unwrap(), &p),
            Some(points[7])
        );
    }

    #[test]
    fn a_window_holds_routine_refreshes_until_it_opens_and_spreads_them_inside() {
        let w = weekdays_9_to_5();
        let p = month_policy(Some(w));
        // Issued on Friday 2026-11-13 at 17:00 Berlin: 14 days later the spread points fall
        // on a Friday evening and a weekend, when the window is closed.
        let issued = at("2026-11-13T16:00:00Z");
        let fleet: Vec<AccountRecord> = (0..10_000)
            .map(|i| fleet_member(&format!("merchant-{i}"), issued))
            .collect();
        let points: Vec<Timestamp> = fleet
            .iter()
            .map(|a| refresh_point(&a.key, a.current.as_ref().unwrap(), &p).unwrap())
            .collect();
        assert!(
            points.iter().all(|t| w.contains(*t)),
            "a refresh outside the window"
        );
        let worst = per_minute(points.iter().copied())
            .values()
            .max()
            .copied()
            .unwrap_or(0);
        // Monday's deferred refreshes spread over its 480 minutes, not its first one.
        assert!(worst <= 100, "{worst} refreshes in one minute");

        let a = &fleet[0];
        // Saturday noon: overdue by the spread, but the window is closed.
        assert_eq!(plan(a, at("2026-11-28T11:00:00Z"), p, true), None);
        // Monday 08:59 Berlin: still closed; from its place in the window on, due.
        assert_eq!(plan(a, at("2026-11-30T07:59:00Z"), p, true), None);
        let mine = points[0];
        assert!(mine >= at("2026-11-30T08:00:00Z") || mine < at("2026-11-28T00:00:00Z"));
        assert_eq!(plan(a, mine, p, true), Some(Work::Refresh));
        // Monday 17:30 Berlin with the refresh still not done (say the daemon was down): it
        // waits for Tuesday 09:00, which is well before the deadline.
        assert_eq!(plan(a, at("2026-11-30T16:30:00Z"), p, true), None);
        assert_eq!(
            plan(a, at("2026-12-01T08:00:00Z"), p, true),
            Some(Work::Refresh)
        );
        // Without the window the same account would have been due on Saturday.
        assert_eq!(
            plan(
                a,
                at("2026-11-28T11:00:00Z").max(points_without_window(a)),
                month_policy(None),
                true
            ),
            Some(Work::Refresh)
        );
    }

    fn points_without_window(a: &AccountRecord) -> Timestamp {
        refresh_point(&a.key, a.current.as_ref().unwrap(), &month_policy(None)).unwrap()
    }

    #[test]
    fn expiry_forces_a_refresh_outside_the_window() {
        // Sundays only, 09:00-10:00 Berlin; a 2-day token issued on Monday 2026-11-23 would
        // expire long before Sunday: it is refreshed at its point regardless.
        let sundays = Window::new(&["sun".into()], "09:00", "10:00", "Europe/Berlin").unwrap();
        let p = month_policy(Some(sundays));
        let mut a = shiphero_account(Some(token(at("2026-11-23T12:00:00Z"), 2 * DAY)));
        a.last_verified_at = Some(at("2026-11-23T12:00:00Z"));
        let point = refresh_point(&a.key, a.current.as_ref().unwrap(), &p).unwrap();
        assert!(!sundays.contains(point));
        assert!(point >= at("2026-11-24T12:00:00Z"));
        assert_eq!(plan(&a, point, p, true), Some(Work::Refresh));
        // A 28-day token issued the same day waits for a Sunday.
        let mut b = shiphero_account(Some(token(at("2026-11-23T12:00:00Z"), 28 * DAY)));
        b.last_verified_at = a.last_verified_at;
        let point = refresh_point(&b.key, b.current.as_ref().unwrap(), &p).unwrap();
        assert!(sundays.contains(point), "{}", point.to_rfc3339());
    }

    #[test]
    fn the_window_follows_dst() {
        // Weekdays 09:00-17:00 Berlin; clocks go forward on Sunday 2026-03-29. Tokens issued
        // on March 12 come due by age between March 26 and 28.8, mostly outside the window.
        let w = weekdays_9_to_5();
        let p = month_policy(Some(w));
        let fleet: Vec<AccountRecord> = (0..1000)
            .map(|i| fleet_member(&format!("dst-{i}"), at("2026-03-12T00:00:00Z")))
            .collect();
        let points: Vec<Timestamp> = fleet
            .iter()
            .map(|a| refresh_point(&a.key, a.current.as_ref().unwrap(), &p).unwrap())
            .collect();
        assert!(points.iter().all(|t| w.contains(*t)));
        // Nothing on the weekend of the change; Monday the 30th (CEST, UTC+2) opens at
        // 07:00 UTC, an hour earlier in UTC than in winter, and deferred refreshes use it.
        let monday = at("2026-03-30T07:00:00Z");
        assert!(
            !points
                .iter()
                .any(|t| *t >= at("2026-03-27T16:00:00Z") && *t < monday)
        );
        assert!(
            points
                .iter()
                .any(|t| *t >= monday && *t < at("2026-03-30T08:00:00Z"))
        );
        for (a, point) in fleet.iter().zip(&points) {
            assert_eq!(
                plan(a, at("2026-03-29T10:00:00Z"), p, true),
                None,
                "on the DST Sunday"
            );
            assert_eq!(
                plan(a, at("2026-03-30T06:59:00Z"), p, true),
                None,
                "08:59 CEST"
            );
            assert_eq!(
                plan(a, Timestamp::from_millis(point.millis() - 1), p, true),
                None
            );
            assert_eq!(plan(a, *point, p, true), Some(Work::Refresh));
        }
    }

    #[test]
    fn verification_is_not_held_back_by_the_window() {
        let p = Policy {
            verify_interval: Duration::from_secs(6 * 3600),
            ..month_policy(Some(weekdays_9_to_5()))
        };
        // Saturday; token young, last check a day ago.
        let mut a = fleet_member("weekend", at("2026-11-27T00:00:00Z"));
        a.last_verified_at = Some(at("2026-11-27T12:00:00Z"));
        assert_eq!(
            plan(&a, at("2026-11-28T12:00:00Z"), p, true),
            Some(Work::Verify(Probed::Served))
        );
    }

    #[test]
    fn no_token_or_a_clock_before_issue_means_refresh_now() {
        assert_eq!(
            plan(&shiphero_account(None), t0(), policy(), true),
            Some(Work::Refresh)
        );
        let a = shiphero_account(Some(token(t0(), 28 * DAY)));
        assert_eq!(
            plan(&a, Timestamp::from_secs(t0().secs() - 3600), policy(), true),
            Some(Work::Refresh)
        );
        // A minute behind the daemon that stored it (clocks of a fleet differ a little):
        // judged by its age, so the token is not refreshed again.
        assert_eq!(
            plan(&a, Timestamp::from_secs(t0().secs() - 60), policy(), true),
            None
        );
    }

    #[test]
    fn backoff_gates_routine_work_but_not_expiry() {
        let mut a = shiphero_account(Some(token(t0(), 20 * DAY)));
        a.next_attempt_at = Some(t0().plus(30 * DAY));
        assert_eq!(plan(&a, t0().plus(15 * DAY), policy(), true), None);
        assert_eq!(
            plan(&a, t0().plus(21 * DAY), policy(), true),
            Some(Work::Expire)
        );
    }

    #[test]
    fn verification_comes_due_on_its_interval() {
        let a = shiphero_account(Some(token(t0(), 28 * DAY)));
        let due = next_check(&a.key, t0(), policy().verify_interval);
        let just_before = Timestamp::from_millis(due.millis() - 1);
        assert_eq!(plan(&a, just_before, policy(), true), None);
        assert_eq!(
            plan(&a, due, policy(), true),
            Some(Work::Verify(Probed::Served))
        );
        assert!(due <= t0().plus(policy().verify_interval));
    }

    #[test]
    fn an_unproven_candidate_is_probed_first() {
        let mut a = shiphero_account(Some(token(t0(), 28 * DAY)));
        a.candidate = Some(Box::new(token(t0(), 28 * DAY)));
        assert_eq!(
            plan(&a, t0(), policy(), true),
            Some(Work::Verify(Probed::Candidate))
        );
    }

    #[test]
    fn flagged_accounts_wait_for_their_recheck() {
        let mut a = shiphero_account(Some(token(t0(), 28 * DAY)));
        a.status = Status::Suspended;
        a.next_attempt_at = Some(t0().plus(Duration::from_secs(6 * 3600)));
        assert_eq!(
            plan(&a, t0().plus(Duration::from_secs(3600)), policy(), true),
            None
        );
        assert_eq!(
            plan(&a, t0().plus(Duration::from_secs(6 * 3600)), policy(), true),
            Some(Work::Refresh)
        );
    }

    #[test]
    fn checks_of_accounts_registered_together_spread_over_the_interval() {
        let interval = Duration::from_secs(6 * 3600);
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let key = AccountKey::parse(&format!("shiphero/merchant-{i}")).unwrap();
            let next = next_check(&key, t0(), interval);
            assert!(next > t0() && next <= t0().plus(interval));
            let frac = next.since(t0()).as_secs_f64() / interval.as_secs_f64();
            buckets[((frac * 10.0) as usize).min(9)] += 1;
            // Stable: the following check is exactly one interval later.
            assert_eq!(next_check(&key, next, interval), next.plus(interval));
        }
        assert!(
            buckets.iter().all(|&n| (60..=140).contains(&n)),
            "bursty: {buckets:?}"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut rng = rand::rng();
        let (i, m) = (Duration::from_secs(60), Duration::from_secs(3600));
        for n in 1..12 {
            let d = backoff(n, i, m, &mut rng);
            let base = (i * 2u32.pow(n - 1)).min(m);
            assert!(d >= base / 2 && d <= base, "{n}: {d:?} vs {base:?}");
        }
    }
}
