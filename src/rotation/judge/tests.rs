//! The state machine's rules, checked on single steps and on generated sequences.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::names::AccountKey;
use crate::secret::Secret;

const MIN: Duration = Duration::from_secs(60);

fn t0() -> Timestamp {
    Timestamp::from_secs(1_800_000_000)
}

fn token(name: &str, issued: Timestamp) -> TokenRecord {
    TokenRecord {
        access_token: Secret::new(name),
        issued_at: issued,
        expires_at: Some(issued.plus(28 * 24 * 60 * MIN)),
    }
}

fn active(provider: &str) -> AccountRecord {
    AccountRecord {
        last_rotated_at: Some(t0()),
        last_verified_at: Some(t0()),
        current: Some(token("served", t0())),
        has_refresh_token: provider == "shiphero",
        upstream_id: Some("QWNjb3VudDox".into()),
        ..AccountRecord::example(
            AccountKey::parse(&format!("{provider}/acme")).unwrap(),
            t0(),
        )
    }
}

fn rules(now: Timestamp, renews: bool) -> Rules {
    Rules {
        now,
        confirm_after: 15 * MIN,
        recheck: 360 * MIN,
        retry: MIN,
        renews,
        hold: None,
        others_passed_at: Some(now),
        others_same_answer_at: None,
    }
}

fn pass() -> Verdict {
    Verdict::Pass {
        identity: Some("QWNjb3VudDox".into()),
        note: None,
    }
}

fn refused() -> Verdict {
    Verdict::Refused("ShipHero API refused the token (401): Unauthorized".into())
}

fn kinds(notes: &[Note]) -> Vec<EventKind> {
    notes.iter().map(|n| n.kind).collect()
}

#[test]
fn a_refused_fresh_token_is_never_served_and_flags_only_when_seen_again_later() {
    let mut a = active("shiphero");
    a.candidate = Some(Box::new(token("fresh", t0())));
    let (b, notes) = transition(
        &a,
        Outcome::Probe(Probed::Candidate, refused()),
        &rules(t0(), true),
    );
    assert_eq!(b.status, Status::Active);
    assert!(b.candidate.is_none(), "a disproven token stays out");
    assert_eq!(b.current.as_ref().unwrap().access_token.expose(), "served");
    assert_eq!(kinds(&notes), [EventKind::Suspected]);
    assert_eq!(b.next_attempt_at, Some(t0().plus(15 * MIN)));
    // Seen again before confirm_after: still only a doubt.
    let mut c = b.clone();
    c.candidate = Some(Box::new(token("fresh2", t0())));
    let (c, _) = transition(
        &c,
        Outcome::Probe(Probed::Candidate, refused()),
        &rules(t0().plus(5 * MIN), true),
    );
    assert_eq!(c.status, Status::Active);
    // Seen again after it: suspended, since the refresh itself was accepted.
    let mut d = c.clone();
    d.candidate = Some(Box::new(token("fresh3", t0())));
    let (d, notes) = transition(
        &d,
        Outcome::Probe(Probed::Candidate, refused()),
        &rules(t0().plus(15 * MIN), true),
    );
    assert_eq!(d.status, Status::Suspended);
    assert_eq!(kinds(&notes), [EventKind::Flagged]);
    // The first passing probe clears it.
    let (e, notes) = transition(
        &d,
        Outcome::Probe(Probed::Served, pass()),
        &rules(t0().plus(16 * MIN), true),
    );
    assert_eq!(e.status, Status::Active);
    assert_eq!(kinds(&notes), [EventKind::Checked, EventKind::Cleared]);
    assert!(e.token_doubt.is_none() && e.last_error.is_none());
}

#[test]
fn an_inconclusive_probe_of_a_fresh_token_serves_the_fresh_token() {
    let mut a = active("shiphero");
    a.candidate = Some(Box::new(token("fresh", t0())));
    let v = Verdict::Inconclusive(
        "ShipHero API answered 503 with a body that is not ShipHero's JSON".into(),
    );
    let (b, notes) = transition(&a, Outcome::Probe(Probed::Candidate, v), &rules(t0(), true));
    assert_eq!(b.status, Status::Active);
    assert_eq!(b.current.as_ref().unwrap().access_token.expose(), "fresh");
    assert!(b.candidate.is_none());
    assert_eq!(kinds(&notes), [EventKind::Failed]);
    assert_eq!(b.next_attempt_at, Some(t0().plus(MIN)));
}

#[test]
fn a_refused_refresh_with_a_working_token_is_an_alert_then_revoked_once_the_token_fails() {
    let a = active("shiphero");
    let r = Verdict::Refused("ShipHero refused the refresh token (401): invalid_grant".into());
    let (b, notes) = transition(&a, Outcome::RenewFailed(r.clone()), &rules(t0(), true));
    assert_eq!(kinds(&notes), [EventKind::RefreshRefused]);
    let (b, _) = transition(
        &b,
        Outcome::Probe(Probed::Served, pass()),
        &rules(t0(), true),
    );
    assert_eq!(b.status, Status::Active);
    assert!(b.renew_doubt.is_some() && b.last_error.as_deref().unwrap().contains("still works"));
    // A day later the refresh is still refused, and the token still works: still served.
    let day = t0().plus(1440 * MIN);
    let (c, _) = transition(&b, Outcome::RenewFailed(r.clone()), &rules(day, true));
    assert_eq!(c.status, Status::Active);
    // The served token stops working: evidence, then on the next refused refresh, revoked.
    let (d, _) = transition(
        &c,
        Outcome::Probe(Probed::Served, refused()),
        &rules(day, true),
    );
    assert_eq!(d.status, Status::Active);
    let (e, _) = transition(&d, Outcome::RenewFailed(r), &rules(day.plus(MIN), true));
    assert_eq!(e.status, Status::Revoked);
}

#[test]
fn a_served_token_expiring_after_a_confirmed_refused_refresh_is_revoked_not_expired() {
    let a = active("shiphero");
    let r = Verdict::Refused("ShipHero refused the refresh token (401): invalid_grant".into());
    let (b, _) = transition(&a, Outcome::RenewFailed(r.clone()), &rules(t0(), true));
    // Seen again past confirm_after while the served token still works: an alert, active.
    let later = t0().plus(20 * MIN);
    let (c, _) = transition(&b, Outcome::RenewFailed(r.clone()), &rules(later, true));
    assert_eq!(c.status, Status::Active);
    // The served token runs out: nothing can be served or refreshed. Revoked at once.
    let expiry = t0().plus(28 * 24 * 60 * MIN);
    let (d, notes) = transition(&c, Outcome::Expired, &rules(expiry, true));
    assert_eq!(d.status, Status::Revoked, "{:?}", d.last_error);
    assert_eq!(kinds(&notes), [EventKind::Flagged]);
    assert!(d.last_error.as_deref().unwrap().contains("invalid_grant"));
    // A refusal not yet confirmed, or one during an incident, leaves it to the clock.
    let (e, _) = transition(&b, Outcome::Expired, &rules(t0().plus(MIN), true));
    assert_eq!(e.status, Status::Expired);
    let mut held = rules(expiry, true);
    held.hold = Some("an incident at shiphero".into());
    let (f, _) = transition(&c, Outcome::Expired, &held);
    assert_eq!(f.status, Status::Expired);
}

#[test]
fn a_token_of_another_account_is_never_served() {
    let mut a = active("shiphero");
    a.candidate = Some(Box::new(token("someone-elses", t0())));
    let other = Verdict::Pass {
        identity: Some("QWNjb3VudDoy".into()),
        note: None,
    };
    let (b, _) = transition(
        &a,
        Outcome::Probe(Probed::Candidate, other),
        &rules(t0(), true),
    );
    assert_eq!(b.status, Status::Revoked);
    assert!(b.candidate.is_none());
    assert!(
        b.last_error
            .unwrap()
            .contains("token belongs to another account")
    );
}

#[test]
fn the_first_pass_pins_the_account() {
    let mut a = active("shiphero");
    a.upstream_id = None;
    let (b, _) = transition(
        &a,
        Outcome::Probe(Probed::Served, pass()),
        &rules(t0(), true),
    );
    assert_eq!(b.upstream_id.as_deref(), Some("QWNjb3VudDox"));
}

#[test]
fn an_undocumented_answer_flags_only_when_the_others_pass() {
    let a = active("shiphero");
    let null = || Verdict::Undocumented {
        signature: "null account data".into(),
        message: "ShipHero API answered 200 with null account data".into(),
    };
    let mut lonely = rules(t0(), true);
    lonely.others_passed_at = None;
    let (b, _) = transition(&a, Outcome::Probe(Probed::Served, null()), &lonely);
    let mut c = b.clone();
    c.candidate = Some(Box::new(token("fresh", t0())));
    let mut later = rules(t0().plus(20 * MIN), true);
    // The others last passed before this account first got the answer: no help.
    later.others_passed_at = Some(Timestamp::from_secs(t0().secs() - 60));
    let (c2, _) = transition(&c, Outcome::Probe(Probed::Candidate, null()), &later);
    assert_eq!(
        c2.status,
        Status::Active,
        "every account gets it: not evidence"
    );
    later.others_passed_at = Some(t0().plus(10 * MIN));
    let (c3, _) = transition(&c, Outcome::Probe(Probed::Candidate, null()), &later);
    assert_eq!(c3.status, Status::Suspended);
    assert!(
        c3.last_error
            .unwrap()
            .contains("refused in an undocumented way")
    );
}

#[test]
fn an_incident_holds_flags() {
    let mut a = active("shippo");
    a.token_doubt = Some(Box::new(Doubt {
        since: t0(),
        reason: "x".into(),
        signature: None,
    }));
    let mut held = rules(t0().plus(30 * MIN), false);
    held.hold = Some("incident at shippo".into());
    let (b, notes) = transition(&a, Outcome::Probe(Probed::Served, refused()), &held);
    assert_eq!(b.status, Status::Active);
    assert_eq!(kinds(&notes), [EventKind::Held]);
    let (c, _) = transition(
        &a,
        Outcome::Probe(Probed::Served, refused()),
        &rules(t0().plus(30 * MIN), false),
    );
    assert_eq!(c.status, Status::Revoked);
}

#[test]
fn misconfiguration_is_its_own_verdict() {
    let a = active("shiphero");
    let v = Verdict::Misconfigured("Missing required scope(s): view:orders".into());
    let (b, notes) = transition(&a, Outcome::Probe(Probed::Served, v), &rules(t0(), true));
    assert_eq!(b.status, Status::Active);
    assert_eq!(kinds(&notes), [EventKind::Misconfigured]);
    assert!(b.last_error.unwrap().starts_with("misconfigured: "));
}

fn inconclusive() -> impl Strategy<Value = Outcome> {
    let which = prop_oneof![Just(Probed::Candidate), Just(Probed::Served)];
    let verdict = prop_oneof![
        "[a-z ]{0,20}".prop_map(Verdict::Inconclusive),
        "[a-z ]{0,20}".prop_map(Verdict::Misconfigured),
        (0u64..600, "[a-z ]{0,20}").prop_map(|(s, m)| Verdict::Throttled {
            wait: Duration::from_secs(s),
            message: m
        }),
    ];
    prop_oneof![
        (which, verdict.clone()).prop_map(|(w, v)| Outcome::Probe(w, v)),
        verdict.prop_map(Outcome::RenewFailed),
    ]
}

fn any_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Pending),
        Just(Status::Active),
        Just(Status::Suspended),
        Just(Status::Revoked),
        Just(Status::Expired),
    ]
}

proptest! {
    #[test]
    fn inconclusive_outcomes_never_change_a_status(
        status in any_status(),
        renews in any::<bool>(),
        steps in proptest::collection::vec((inconclusive(), 0u64..100_000), 0..40),
    ) {
        let mut a = active(if renews { "shiphero" } else { "shippo" });
        a.status = status;
        let mut now = t0();
        for (outcome, secs) in steps {
            now = now.plus(Duration::from_secs(secs));
            let (next, notes) = transition(&a, outcome, &rules(now, renews));
            prop_assert_eq!(next.status, status);
            prop_assert!(notes.iter().all(|n| n.kind != EventKind::Flagged && n.kind != EventKind::Cleared));
            a = next;
        }
    }

    #[test]
    fn evidence_flags_only_after_confirmation(
        renews in any::<bool>(),
        gaps in proptest::collection::vec(0u64..1200, 1..12),
    ) {
        let mut a = active(if renews { "shiphero" } else { "shippo" });
        let mut now = t0();
        let mut first_seen = None;
        for gap in gaps {
            now = now.plus(Duration::from_secs(gap));
            a.candidate = renews.then(|| Box::new(token("fresh", now)));
            let which = if renews { Probed::Candidate } else { Probed::Served };
            let (next, _) = transition(&a, Outcome::Probe(which, refused()), &rules(now, renews));
            let since = *first_seen.get_or_insert(now);
            let confirmed = now >= since.plus(15 * MIN);
            prop_assert_eq!(next.status.is_flagged(), confirmed, "at +{}s", now.since(since).as_secs());
            prop_assert!(next.candidate.is_none());
            a = next;
        }
    }

    #[test]
    fn a_flag_clears_on_the_first_passing_probe(status in any_status(), renews in any::<bool>()) {
        let mut a = active(if renews { "shiphero" } else { "shippo" });
        a.status = status;
        a.token_doubt = Some(Box::new(Doubt { since: t0(), reason: "x".into(), signature: None }));
        let (b, _) = transition(&a, Outcome::Probe(Probed::Served, pass()), &rules(t0(), renews));
        prop_assert_eq!(b.status, Status::Active);
        prop_assert!(b.token_doubt.is_none());
    }
}
