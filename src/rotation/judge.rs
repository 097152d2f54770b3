//! The account state machine as one pure function: [`transition`] takes a record, what
//! happened ([`Outcome`]) and the rules in force, and returns the new record and its history
//! notes. The engine does the I/O around it; the registry only stores what it returns.
//!
//! The rules, in short (the README's status table says the same):
//! - Only evidence about the account (a documented refusal, or the same undocumented answer
//!   for this account alone on every try) can flag it, and only when it is seen again at
//!   least `verify.confirm_after` after it was first seen. Everything else is inconclusive:
//!   it sets `last_error` and schedules a retry, and changes no status.
//! - The token served is the newest stored that no evidence has disproven and that has not
//!   expired: a fresh token whose probe proved nothing is served; one that was refused is not.
//! - A refused refresh while the served token still works is an alert, not a flag: `revoked`
//!   once the served token stops working too.
//! - A token that probes as another account than the one pinned is never served: `revoked`.
//! - While the provider has an incident, flags are held.
//! - The first passing probe clears a flag.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::names::Status;
use crate::providers::Verdict;
use crate::registry::{AccountRecord, Doubt, EventKind, Note, TokenRecord};

/// Which of the account's tokens a probe was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probed {
    /// The freshly issued token, not yet served.
    Candidate,
    /// The token being served.
    Served,
}

/// What happened to an account.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The provider issued this token (a refresh, or an OAuth code exchange). It is stored as
    /// the candidate before anything uses it.
    Issued(TokenRecord),
    /// A refresh did not issue a token; the verdict says why (never a pass).
    RenewFailed(Verdict),
    /// A probe of the candidate or the served token.
    Probe(Probed, Verdict),
    /// The served token is past its expiry and nothing replaced it.
    Expired,
}

/// The rules and facts a transition is judged by, besides the record.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Now, on the daemon's clock.
    pub now: Timestamp,
    /// How long after first seeing evidence it must be seen again to flag.
    pub confirm_after: Duration,
    /// How often a flagged account is looked at again.
    pub recheck: Duration,
    /// The backoff before the next try after one that proved nothing (already jittered).
    pub retry: Duration,
    /// Whether the provider renews tokens from a refresh credential.
    pub renews: bool,
    /// Why flags are held right now (an incident at the provider), if they are.
    pub hold: Option<String>,
    /// The last time another account of the provider passed its probe. An undocumented
    /// answer is a refusal only when others passed after this account first got it.
    pub others_passed_at: Option<Timestamp>,
    /// The last time another account got the same undocumented answer as this outcome's.
    pub others_same_answer_at: Option<Timestamp>,
}

/// The new record and what to write in its history.
pub type Judged = (AccountRecord, Vec<Note>);

/// Applies `outcome` to `record` under `rules`.
pub fn transition(record: &AccountRecord, outcome: Outcome, rules: &Rules) -> Judged {
    let mut t = Transition {
        r: record.clone(),
        before: record,
        notes: Vec::new(),
        rules,
    };
    match outcome {
        Outcome::Issued(token) => t.issued(token),
        Outcome::RenewFailed(Verdict::Refused(reason)) => t.renew_refused(reason),
        Outcome::RenewFailed(other) => t.trouble(&other),
        Outcome::Probe(which, Verdict::Pass { identity, note }) => t.pass(which, identity, note),
        Outcome::Probe(which, Verdict::Refused(reason)) => t.evidence(which, reason, None),
        Outcome::Probe(which, Verdict::Undocumented { signature, message }) => {
            t.evidence(which, message, Some(signature))
        }
        Outcome::Probe(which, inconclusive) => {
            t.serve_candidate(which);
            t.trouble(&inconclusive);
        }
        Outcome::Expired => t.expired(),
    }
    (t.r, t.notes)
}

/// One transition in progress.
struct Transition<'a> {
    r: AccountRecord,
    before: &'a AccountRecord,
    notes: Vec<Note>,
    rules: &'a Rules,
}

impl Transition<'_> {
    fn now(&self) -> Timestamp {
        self.rules.now
    }

    fn note(&mut self, kind: EventKind, detail: impl Into<String>) {
        self.notes.push(Note {
            kind,
            detail: Some(detail.into()),
        });
    }

    fn set_status(&mut self, status: Status) {
        if self.r.status != status {
            self.r.status = status;
            self.r.status_since = self.now();
        }
    }

    fn issued(&mut self, token: TokenRecord) {
        let detail = match token.expires_at {
            Some(exp) => format!("new token, expires {}", exp.to_rfc3339()),
            None => "new token".to_string(),
        };
        self.r.candidate = Some(Box::new(token));
        self.r.last_rotated_at = Some(self.now());
        // The refresh credential works again, whatever was doubted before.
        self.r.renew_doubt = None;
        self.note(EventKind::Rotated, detail);
    }

    /// A probe that proved nothing about a fresh token still leaves it the newest token no
    /// evidence disproves, so it becomes the one served (the previous one may already have
    /// been invalidated by the refresh).
    fn serve_candidate(&mut self, which: Probed) {
        if which == Probed::Candidate
            && let Some(c) = self.r.candidate.take()
        {
            self.r.current = Some(*c);
        }
    }

    fn pass(&mut self, which: Probed, identity: Option<String>, note: Option<String>) {
        if let (Some(pinned), Some(seen)) = (&self.r.upstream_id, &identity)
            && pinned != seen
        {
            let reason = format!(
                "token belongs to another account (the provider names account {seen}; this account is {pinned})"
            );
            if which == Probed::Candidate {
                self.r.candidate = None;
            }
            return self.flag(Status::Revoked, reason);
        }
        if self.r.upstream_id.is_none() {
            self.r.upstream_id = identity;
        }
        self.serve_candidate(which);
        let was = self.r.status;
        self.set_status(Status::Active);
        self.r.token_doubt = None;
        self.r.last_verified_at = Some(self.now());
        self.note(
            EventKind::Checked,
            note.unwrap_or_else(|| "token works".into()),
        );
        if was.is_flagged() {
            self.note(
                EventKind::Cleared,
                format!("account reactivated (was {was})"),
            );
        }
        match &self.r.renew_doubt {
            // The refresh is still refused: keep the alert and the refresh retry it scheduled.
            Some(d) => self.r.last_error = Some(renew_alert(&d.reason)),
            None => {
                self.r.last_error = None;
                self.r.failures = 0;
                self.r.next_attempt_at = None;
            }
        }
    }

    /// Evidence against the token: a documented refusal, or (with a signature) an
    /// undocumented answer.
    fn evidence(&mut self, which: Probed, reason: String, signature: Option<String>) {
        if which == Probed::Candidate {
            if signature.is_some() {
                // Not evidence until confirmed: the fresh token is served meanwhile.
                self.serve_candidate(which);
            } else {
                // Disproven: never served.
                self.r.candidate = None;
            }
        }
        // Another account got the same undocumented answer since this one first did: it was
        // not about this account, so the span starts again now.
        let shared = signature.is_some()
            && self.r.token_doubt.as_ref().is_some_and(|d| {
                self.rules
                    .others_same_answer_at
                    .is_some_and(|t| t >= d.since)
            });
        let doubt = match self.r.token_doubt.take() {
            Some(d) if d.signature == signature && !shared => Doubt { reason, ..*d },
            Some(d) if d.signature == signature => Doubt {
                since: self.now(),
                reason,
                ..*d
            },
            _ => {
                let first = Doubt {
                    since: self.now(),
                    reason,
                    signature,
                };
                self.note(EventKind::Suspected, first.reason.clone());
                first
            }
        };
        // Others passed after this account first got the answer: it is about this account.
        let others_pass = self
            .rules
            .others_passed_at
            .is_some_and(|t| t >= doubt.since);
        let confirmed = self.confirmed(&doubt) && (doubt.signature.is_none() || others_pass);
        let message = match &doubt.signature {
            Some(_) => format!("refused in an undocumented way: {}", doubt.reason),
            None => doubt.reason.clone(),
        };
        let target = self.flag_for(which);
        // Revoked because the refresh is refused too: say both.
        let message = match (&self.r.renew_doubt, target) {
            (Some(renew), Some(Status::Revoked)) if self.rules.renews => {
                format!(
                    "{}; and the served token is refused: {message}",
                    renew.reason
                )
            }
            _ => message,
        };
        self.r.token_doubt = Some(Box::new(doubt.clone()));
        match target {
            Some(status) if confirmed || self.r.status.is_flagged() => self.flag(status, message),
            _ => self.suspect(&doubt, message),
        }
    }

    /// The flag that evidence against the token leads to, once confirmed: `None` while a
    /// fresh refresh must decide (a renewing provider's served token).
    fn flag_for(&self, which: Probed) -> Option<Status> {
        let renew_refused = self
            .r
            .renew_doubt
            .as_ref()
            .is_some_and(|d| self.confirmed(d));
        if !self.rules.renews || renew_refused {
            Some(Status::Revoked)
        } else if which == Probed::Candidate {
            // The refresh just worked, yet its token is refused: the silent failure.
            Some(Status::Suspended)
        } else if self.r.status.is_flagged() {
            Some(self.r.status)
        } else {
            None
        }
    }

    fn confirmed(&self, doubt: &Doubt) -> bool {
        self.now() >= doubt.since.plus(self.rules.confirm_after)
    }

    /// Evidence not yet confirmed: the status stays, and the account is looked at again when
    /// the evidence could be confirmed.
    fn suspect(&mut self, doubt: &Doubt, message: String) {
        let confirm_at = doubt.since.plus(self.rules.confirm_after);
        self.r.last_error = Some(format!(
            "{message} (evidence first seen {}; flagged if still so at {} or later)",
            doubt.since.to_rfc3339(),
            confirm_at.to_rfc3339()
        ));
        self.r.next_attempt_at = Some(if confirm_at > self.now() {
            confirm_at
        } else {
            self.now().plus(self.rules.retry)
        });
    }

    fn renew_refused(&mut self, reason: String) {
        let doubt = match self.r.renew_doubt.take() {
            Some(d) => Doubt { reason, ..*d },
            None => {
                self.note(EventKind::RefreshRefused, reason.clone());
                Doubt {
                    since: self.now(),
                    reason,
                    signature: None,
                }
            }
        };
        let served_works = self
            .r
            .current
            .as_ref()
            .is_some_and(|t| t.expires_at.is_none_or(|e| e > self.now()))
            && self.r.token_doubt.is_none()
            && !self.r.status.is_flagged();
        self.r.renew_doubt = Some(Box::new(doubt.clone()));
        if self.confirmed(&doubt) && !served_works {
            return self.flag(Status::Revoked, doubt.reason);
        }
        self.r.failures = self.r.failures.saturating_add(1);
        if served_works {
            self.r.last_error = Some(renew_alert(&doubt.reason));
            self.r.next_attempt_at = Some(self.now().plus(self.rules.retry));
        } else {
            self.suspect(&doubt, doubt.reason.clone());
        }
    }

    /// A try that proved nothing: `last_error`, a retry, nothing else.
    fn trouble(&mut self, verdict: &Verdict) {
        let (wait, counts) = match verdict {
            Verdict::Throttled { wait, .. } => (*wait, false),
            _ => (self.rules.retry, true),
        };
        if counts {
            if self.before.failures == 0 {
                let kind = match verdict {
                    Verdict::Misconfigured(_) => EventKind::Misconfigured,
                    _ => EventKind::Failed,
                };
                self.note(kind, verdict.message());
            }
            self.r.failures = self.r.failures.saturating_add(1);
        }
        self.r.last_error = Some(match verdict {
            Verdict::Misconfigured(m) => format!("misconfigured: {m}"),
            other => other.message().to_string(),
        });
        self.r.next_attempt_at = Some(self.now().plus(wait));
    }

    fn expired(&mut self) {
        // The refresh token's refusal was confirmed while the served token still worked; now
        // that token is gone too, so nothing can be served or refreshed: `revoked` at once
        // (the operator needs a new refresh token), not `expired` (which says to wait).
        // During an incident the refusal is not trusted and the clock alone speaks.
        if let Some(renew) = self.r.renew_doubt.clone()
            && self.confirmed(&renew)
            && self.rules.hold.is_none()
        {
            return self.set_flag(
                Status::Revoked,
                format!(
                    "the served token expired and the refresh token is refused: {}",
                    renew.reason
                ),
            );
        }
        let expired_at = self
            .r
            .current
            .as_ref()
            .and_then(|t| t.expires_at)
            .map(Timestamp::to_rfc3339)
            .unwrap_or_default();
        let message = match &self.before.last_error {
            Some(e) => format!("token expired at {expired_at} and could not be refreshed: {e}"),
            None => format!("token expired at {expired_at} and could not be refreshed"),
        };
        // The clock is evidence enough, and an incident does not make a token valid.
        let retry = self.r.next_attempt_at;
        self.set_flag(Status::Expired, message);
        self.r.next_attempt_at = retry;
    }

    /// Flags the account, unless flags are held for an incident at the provider.
    fn flag(&mut self, status: Status, message: String) {
        if status != Status::Expired
            && !self.r.status.is_flagged()
            && let Some(why) = self.rules.hold.clone()
        {
            if self.before.token_doubt.is_some() || self.before.renew_doubt.is_some() {
                self.note(EventKind::Held, format!("{message}; not flagged: {why}"));
            }
            self.r.last_error = Some(format!("{message} (not flagged: {why})"));
            self.r.next_attempt_at = Some(self.now().plus(self.rules.retry));
            return;
        }
        self.set_flag(status, message);
    }

    fn set_flag(&mut self, status: Status, message: String) {
        let old = self.r.status;
        self.set_status(status);
        if old != status {
            self.note(EventKind::Flagged, format!("{old} -> {status}: {message}"));
        }
        self.r.last_error = Some(message);
        self.r.next_attempt_at = Some(self.now().plus(self.rules.recheck));
    }
}

/// `last_error` while the refresh is refused but the served token still works.
fn renew_alert(reason: &str) -> String {
    format!(
        "{reason}; the served token still works and is served until it stops working or expires"
    )
}

#[cfg(test)]
mod tests;
