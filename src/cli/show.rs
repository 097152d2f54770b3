//! `accounts show ACCOUNT` and `status`: the two pages an operator reads to learn why an
//! account is flagged and how the daemon as a whole is doing, built from the socket's
//! `GET /v1/accounts/...` (its row, `detail` and `events`) and `GET /v1/health`.
//!
//! Times are shown as RFC 3339 with a relative form beside them, measured against the
//! daemon's clock (`now` in the health answer), so the page agrees with the daemon.

use std::path::Path;

use serde_json::Value;

use super::commands::{Failed, account_path, expect_ok};
use super::render::{relative, say};
use crate::client;
use crate::clock::{Clock, Timestamp};

/// How many of the account's events `accounts show` lists, newest first.
const RECENT_EVENTS: usize = 10;

fn get(socket: &Path, path: &str) -> Result<Value, Failed> {
    let reply = client::call_blocking(socket, "GET", path, None)?;
    expect_ok(&reply)?;
    Ok(reply.body)
}

/// The daemon's clock, else ours.
fn daemon_now(health: &Value) -> Timestamp {
    health
        .get("now")
        .and_then(Value::as_str)
        .and_then(Timestamp::parse_rfc3339)
        .unwrap_or_else(|| Clock::system().now())
}

/// `accounts show ACCOUNT`.
pub(super) fn show(socket: &Path, account: &str) -> Result<(), Failed> {
    let path = account_path(account)?;
    let row = get(socket, &path)?;
    let detail = get(socket, &format!("{path}/detail"))?;
    let events = get(socket, &format!("{path}/events"))?;
    let now = daemon_now(&get(socket, "/v1/health")?);
    for line in render_show(&row, &detail, &events, now) {
        say(format_args!("{line}"));
    }
    Ok(())
}

/// `status`.
pub(super) fn status(socket: &Path) -> Result<(), Failed> {
    let health = get(socket, "/v1/health")?;
    let accounts = get(socket, "/v1/accounts")?;
    for line in render_status(&health, &accounts) {
        say(format_args!("{line}"));
    }
    Ok(())
}

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// A time as `2026-12-07T10:00:00Z (in 3 hours)`, or `-`.
fn when(v: &Value, k: &str, now: Timestamp) -> String {
    match text(v, k).and_then(Timestamp::parse_rfc3339) {
        Some(t) => format!("{} ({})", t.to_rfc3339(), relative(Some(t), now)),
        None => "-".into(),
    }
}

/// One piece of evidence: what was answered, since when, and when it is confirmed.
fn evidence(doubt: &Value, now: Timestamp) -> Option<String> {
    let reason = text(doubt, "reason")?;
    Some(format!(
        "{reason} (first seen {}; flagged if seen again at or after {})",
        when(doubt, "since", now),
        when(doubt, "confirm_at", now)
    ))
}

fn names(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The page of `accounts show`.
pub(super) fn render_show(
    row: &Value,
    detail: &Value,
    events: &Value,
    now: Timestamp,
) -> Vec<String> {
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    let key = format!(
        "{}/{}",
        or_dash(text(row, "provider")),
        or_dash(text(row, "account"))
    );
    let status = or_dash(text(row, "status"));
    let expires = if row["expires_at"].is_null() && row["issued_at"].is_string() {
        "never".to_string()
    } else {
        when(row, "expires_at", now)
    };
    let sinks = names(detail, "sinks");
    let readers = names(detail, "readers");
    let mut fields: Vec<(&str, String)> = vec![
        (
            "status",
            format!("{status} since {}", when(row, "status_since", now)),
        ),
        ("last error", or_dash(text(row, "last_error"))),
        ("email", or_dash(text(row, "email"))),
        ("pinned identity", or_dash(text(detail, "upstream_id"))),
        ("registered", when(detail, "created_at", now)),
        ("token issued", when(row, "issued_at", now)),
        (
            "new token",
            when(detail, "candidate_issued_at", now) + " (being proven)",
        ),
        ("expires", expires),
        ("refresh after", when(row, "refresh_after", now)),
        ("last rotation", when(row, "last_rotated_at", now)),
        ("last check", when(row, "last_verified_at", now)),
        ("next check", when(detail, "next_check_at", now)),
        ("held until", when(row, "next_attempt_at", now)),
        (
            "failures",
            detail["failures"].as_u64().unwrap_or(0).to_string(),
        ),
    ];
    if let Some(e) = evidence(&detail["token_doubt"], now) {
        fields.push(("token evidence", e));
    }
    if let Some(e) = evidence(&detail["renew_doubt"], now) {
        fields.push(("refresh evidence", e));
    }
    fields.push((
        "sinks",
        if sinks.is_empty() {
            "none".into()
        } else {
            sinks.join(", ")
        },
    ));
    fields.push((
        "readers",
        if readers.is_empty() {
            "no socket.clients rule names it (admins, or anyone when there are no rules)".into()
        } else {
            readers.join(", ")
        },
    ));
    let mut out = vec![key];
    out.extend(fields.into_iter().map(|(k, v)| format!("  {k:<17} {v}")));
    out.push("recent events (newest first):".into());
    let list = events.get("events").and_then(Value::as_array);
    let mut shown: Vec<&Value> = list.map(|l| l.iter().collect()).unwrap_or_default();
    // Written oldest first; events of one second keep their order, reversed.
    shown.reverse();
    shown.sort_by(|a, b| text(b, "at").cmp(&text(a, "at")));
    if shown.is_empty() {
        out.push("  none".into());
    }
    for e in shown.into_iter().take(RECENT_EVENTS) {
        out.push(format!(
            "  {}  {:<10} {}",
            when(e, "at", now),
            or_dash(text(e, "kind")),
            or_dash(text(e, "detail"))
        ));
    }
    out
}

/// The page of `status`.
pub(super) fn render_status(health: &Value, accounts: &Value) -> Vec<String> {
    let now = daemon_now(health);
    let empty = Vec::new();
    let list = accounts["accounts"].as_array().unwrap_or(&empty);
    let mut out = vec![format!(
        "shiptoken {}, {}, {} accounts",
        text(health, "version").unwrap_or("-"),
        now.to_rfc3339(),
        list.len()
    )];
    let statuses = ["active", "pending", "suspended", "revoked", "expired"];
    let count = |provider: Option<&str>, status: &str| {
        list.iter()
            .filter(|a| provider.is_none_or(|p| text(a, "provider") == Some(p)))
            .filter(|a| text(a, "status") == Some(status))
            .count()
    };
    let counts = |provider: Option<&str>| {
        statuses
            .iter()
            .map(|s| format!("{s} {}", count(provider, s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push(format!("  {:<10} {}", "all", counts(None)));
    let lanes = health["lanes"].as_object();
    let mut providers: Vec<&str> = list.iter().filter_map(|a| text(a, "provider")).collect();
    providers.extend(lanes.into_iter().flat_map(|l| l.keys().map(String::as_str)));
    providers.sort_unstable();
    providers.dedup();
    for p in &providers {
        out.push(format!("  {p:<10} {}", counts(Some(p))));
    }
    let incidents = health["incidents"].as_array().unwrap_or(&empty);
    out.push(if incidents.is_empty() {
        "incidents: none".into()
    } else {
        format!(
            "incidents ({} in progress; flags are held):",
            incidents.len()
        )
    });
    for i in incidents {
        out.push(format!(
            "  {} since {}",
            text(i, "provider").unwrap_or("-"),
            when(i, "since", now)
        ));
    }
    let registry = &health["registry"];
    let kind = match (registry["shared"].as_bool(), text(registry, "host_name")) {
        (Some(true), Some(host)) => format!("shared PostgreSQL, this daemon as {host}"),
        (Some(true), None) => "shared PostgreSQL".into(),
        _ => "SQLite in the state folder".into(),
    };
    let problem = text(registry, "problem").unwrap_or("ok");
    out.push(format!("registry: {kind}: {problem}"));
    out.push(format!(
        "last sweep: {}",
        when(health, "last_sweep_at", now)
    ));
    out.push("due work:".into());
    for (p, lane) in lanes.into_iter().flatten() {
        out.push(format!(
            "  {p:<10} queued {}, running {}, waiting for pacing {}, done through {}",
            lane["queued"].as_u64().unwrap_or(0),
            lane["running"].as_u64().unwrap_or(0),
            lane["waiting_for_pace"].as_u64().unwrap_or(0),
            when(lane, "swept_through", now)
        ));
    }
    out
}
