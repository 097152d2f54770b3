//! How the client commands' answers look: the tables of `accounts list` and `audit`, the
//! live view, relative times and lifetime bars, and writing to standard output.

use serde_json::Value;

use crate::clock::Timestamp;

/// The terminal's width in columns (`COLUMNS`, else the tty's, else 100).
pub(super) fn terminal_width() -> usize {
    if let Some(n) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return n;
    }
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
        _ => 100,
    }
}

/// The terminal's height in rows (`LINES`, else the tty's); `None` when standard output is
/// no terminal, where nothing scrolls away.
pub(super) fn terminal_rows() -> Option<usize> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return None;
    }
    if let Some(n) = std::env::var("LINES").ok().and_then(|c| c.parse().ok()) {
        return Some(n);
    }
    match rustix::termios::tcgetwinsize(std::io::stdout()) {
        Ok(size) if size.ws_row > 0 => Some(usize::from(size.ws_row)),
        _ => None,
    }
}

/// A bar of a token's life: `#` for time gone, `.` for time left, `|` at the rotation point.
pub fn lifetime_bar(
    issued: Timestamp,
    refresh_after: Option<Timestamp>,
    expires: Timestamp,
    now: Timestamp,
    width: usize,
) -> String {
    let total = expires.since(issued).as_secs_f64().max(1.0);
    let cell =
        |t: Timestamp| ((t.since(issued).as_secs_f64() / total) * width as f64).round() as usize;
    let gone = cell(now).min(width);
    let mark = refresh_after.map(|r| cell(r).min(width.saturating_sub(1)));
    (0..width)
        .map(|i| {
            if Some(i) == mark {
                '|'
            } else if i < gone {
                '#'
            } else {
                '.'
            }
        })
        .collect()
}

/// Cuts a line to `width` characters; the last columns (the error) go first.
fn fit(line: String, width: usize) -> String {
    if line.chars().count() <= width {
        return line;
    }
    line.chars()
        .take(width.saturating_sub(1))
        .collect::<String>()
        + "…"
}

/// Where a status sorts in the live view: flagged accounts first, then pending, then active.
fn watch_rank(status: &str) -> u8 {
    match status {
        "active" => 2,
        "pending" => 1,
        _ => 0,
    }
}

/// The size of the screen a frame is drawn for. `rows` is `None` when the output is no
/// terminal: a snapshot then lists every account.
#[derive(Clone, Copy, Debug)]
pub struct Screen {
    /// Columns.
    pub width: usize,
    /// Rows, if the frame must fit in them.
    pub rows: Option<usize>,
}

/// One frame of the live view: flagged accounts first, each a row, and under a flagged
/// account whose error its row cuts, the error on a line of its own. When the accounts do
/// not fit in `screen.rows`, the last row says how many are left out and in which status, so
/// the header never scrolls away.
pub fn render_watch(accounts: &Value, now: Timestamp, screen: Screen, color: bool) -> String {
    let width = screen.width;
    let key_of = |a: &Value| {
        format!(
            "{}/{}",
            a["provider"].as_str().unwrap_or(""),
            a["account"].as_str().unwrap_or("")
        )
    };
    let empty = Vec::new();
    let mut list: Vec<&Value> = accounts
        .get("accounts")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
        .iter()
        .collect();
    list.sort_by_key(|a| watch_rank(a["status"].as_str().unwrap_or("-")));
    let name_w = list
        .iter()
        .map(|a| key_of(a).len())
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = format!(
        "shiptoken  {}  {} accounts\n\n",
        now.to_rfc3339(),
        list.len()
    );
    let header = format!(
        "{:<name_w$}  {:<10} {:<WATCH_BAR$}  {:<14} {:<14} LAST ERROR",
        "ACCOUNT", "STATUS", "TOKEN LIFE (| rotation)", "EXPIRES", "LAST CHECK"
    );
    out.push_str(&fit(header, width));
    out.push('\n');
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| watch_rows(a, &key_of(a), name_w, now, width, color))
        .collect();
    // Title, blank line and header take three rows.
    let budget = screen.rows.map_or(usize::MAX, |r| r.saturating_sub(3));
    let total: usize = rows.iter().map(Vec::len).sum();
    let (mut used, mut shown) = (0, 0);
    for lines in &rows {
        let room = if total <= budget {
            budget
        } else {
            budget.saturating_sub(1)
        };
        if used + lines.len() > room {
            break;
        }
        used += lines.len();
        shown += 1;
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
    }
    if shown < list.len() {
        let mut left: Vec<(&str, usize)> = Vec::new();
        for a in &list[shown..] {
            let status = a["status"].as_str().unwrap_or("-");
            match left.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => left.push((status, 1)),
            }
        }
        let left: Vec<String> = left.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let line = format!(
            "... {} more not shown ({}); `shiptoken status` counts them all",
            list.len() - shown,
            left.join(", ")
        );
        out.push_str(&fit(line, width));
        out.push('\n');
    }
    out
}

/// The width of the token-life bar in the live view.
const WATCH_BAR: usize = 25;

/// An account's lines in the live view: its row, and its whole error under it when the
/// account is flagged and the row cuts the error.
fn watch_rows(
    a: &Value,
    key: &str,
    name_w: usize,
    now: Timestamp,
    width: usize,
    color: bool,
) -> Vec<String> {
    let ts = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(Timestamp::parse_rfc3339)
    };
    let bar_w = WATCH_BAR;
    let status = a["status"].as_str().unwrap_or("-");
    let bar = match (ts(a, "issued_at"), ts(a, "expires_at")) {
        (Some(i), Some(e)) => lifetime_bar(i, ts(a, "refresh_after"), e, now, bar_w),
        (Some(_), None) => format!("{:<bar_w$}", "never expires"),
        _ => format!("{:<bar_w$}", "-"),
    };
    let expires = expires_cell(a, now);
    let padded = format!("{status:<10}");
    let status_cell = if color {
        let code = match status {
            "active" => "32",
            "pending" => "33",
            _ => "31",
        };
        format!("\x1b[{code}m{padded}\x1b[0m")
    } else {
        padded
    };
    let checked = relative(ts(a, "last_verified_at"), now);
    let error = a["last_error"].as_str().unwrap_or("-");
    let line = format!("{key:<name_w$}  {status_cell} {bar}  {expires:<14} {checked:<14} {error}");
    // Colour codes take no room on screen.
    let cut = line.chars().count() > if color { width + 9 } else { width };
    let mut lines = vec![fit(line, if color { width + 9 } else { width })];
    if cut && watch_rank(status) == 0 {
        lines.push(fit(format!("    {error}"), width));
    }
    lines
}

/// The EXPIRES cell of `accounts list` and the live view, the same in both: when the served
/// token expires, `never` for a served token without an expiry (Shippo), and `-` while no
/// token is served (a pending account's token does not expire "never": there is none yet).
pub(super) fn expires_cell(a: &Value, now: Timestamp) -> String {
    let at = a
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(Timestamp::parse_rfc3339);
    match at {
        Some(t) => relative(Some(t), now),
        None if a["issued_at"].is_string() => "never".into(),
        None => "-".into(),
    }
}

/// "in 13 days", "5 minutes ago", or "-".
pub fn relative(t: Option<Timestamp>, now: Timestamp) -> String {
    let Some(t) = t else { return "-".into() };
    let (d, future) = if t >= now {
        (t.since(now), true)
    } else {
        (now.since(t), false)
    };
    let secs = d.as_secs();
    if secs == 0 {
        return "now".into();
    }
    let (n, unit) = match secs {
        0..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if future {
        format!("in {n} {unit}{plural}")
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

/// `accounts list` as aligned columns with a header line; the status in colour if `color`.
pub(super) fn accounts_table(accounts: &Value, now: Timestamp, color: bool) -> Vec<String> {
    let ts = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(Timestamp::parse_rfc3339)
    };
    let mut rows = vec![[
        "ACCOUNT".to_string(),
        "STATUS".into(),
        "EXPIRES".into(),
        "LAST ROTATION".into(),
        "LAST CHECK".into(),
        "LAST ERROR".into(),
    ]];
    let empty = Vec::new();
    for a in accounts
        .get("accounts")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let s = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
        let status = match ts(a, "status_since") {
            Some(since) if s("status") != "active" => {
                format!("{} ({})", s("status"), relative(Some(since), now))
            }
            _ => s("status"),
        };
        let expires = expires_cell(a, now);
        rows.push([
            format!("{}/{}", s("provider"), s("account")),
            status,
            expires,
            relative(ts(a, "last_rotated_at"), now),
            relative(ts(a, "last_verified_at"), now),
            s("last_error"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut lines = Vec::with_capacity(rows.len());
    for (n, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let padded = if i == 5 {
                cell.clone()
            } else {
                format!("{cell:<w$}  ", w = widths[i])
            };
            if color && i == 1 && n > 0 {
                let code = if cell.starts_with("active") {
                    "32"
                } else if cell.starts_with("pending") {
                    "33"
                } else {
                    "31"
                };
                line.push_str(&format!("\x1b[{code}m{padded}\x1b[0m"));
            } else {
                line.push_str(&padded);
            }
        }
        lines.push(line.trim_end().to_string());
    }
    lines
}

/// `shiptoken audit` as a tab-separated table with a header line.
pub(super) fn audit_table(entries: &[Value]) -> Vec<String> {
    let text = |e: &Value, k: &str| match e.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_string(),
        Some(v) => v.to_string(),
    };
    let mut lines =
        vec!["AT\tLAST\tCOUNT\tACCOUNT\tCLIENT\tUID\tGID\tPID\tEXE\tFINGERPRINT".to_string()];
    for e in entries {
        lines.push(
            [
                "at",
                "last_at",
                "count",
                "account",
                "client",
                "uid",
                "gid",
                "pid",
                "exe",
                "fingerprint",
            ]
            .map(|k| text(e, k))
            .join("\t"),
        );
    }
    lines
}

/// Writes a line to standard output. When the reader has gone (`shiptoken audit | head`),
/// the command ends quietly with success, as Unix tools do; `println!` would panic. Any other
/// write error is reported, since output was lost.
pub fn say(line: std::fmt::Arguments<'_>) {
    write_out(format_args!("{line}\n"));
}

/// [`say`] without the line end.
pub fn say_raw(text: std::fmt::Arguments<'_>) {
    write_out(text);
}

fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(text).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("shiptoken: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_bar_marks_the_rotation_point() {
        let t = |s: i64| Timestamp::from_secs(1_800_000_000 + s);
        assert_eq!(
            lifetime_bar(t(0), Some(t(50)), t(100), t(25), 10),
            "###..|...."
        );
        assert_eq!(
            lifetime_bar(t(0), Some(t(50)), t(100), t(200), 10),
            "#####|####"
        );
    }

    #[test]
    fn the_watch_view_fits_the_terminal_and_has_no_colour_when_asked() {
        let now = Timestamp::from_secs(1_800_000_000);
        let accounts = serde_json::json!({"accounts": [{
            "provider": "shiphero", "account": "acme", "status": "suspended",
            "issued_at": "2027-01-15T08:00:00Z", "expires_at": "2027-01-15T08:01:00Z",
            "refresh_after": "2027-01-15T08:00:30Z", "last_verified_at": null,
            "last_error": "x".repeat(300)
        }]});
        let screen = Screen {
            width: 80,
            rows: None,
        };
        let plain = render_watch(&accounts, now, screen, false);
        assert!(!plain.contains('\x1b'));
        assert!(plain.lines().all(|l| l.chars().count() <= 80), "{plain}");
        assert!(plain.contains("shiphero/acme") && plain.contains("suspended"));
        let colored = render_watch(&accounts, now, screen, true);
        assert!(colored.contains("\x1b[31msuspended"));
    }

    /// 43 accounts on a 40-row terminal: the header stays, the flagged ones come first with
    /// their whole error on a line of their own, and the last row counts what is left out.
    #[test]
    fn the_watch_view_fits_the_rows_flagged_first_and_summarises_the_rest() {
        let now = Timestamp::from_secs(1_800_000_000);
        let mut list: Vec<Value> = (0..41)
            .map(|i| {
                serde_json::json!({"provider": "shiphero", "account": format!("a{i:02}"),
                "status": "active", "last_error": null})
            })
            .collect();
        let error = format!("ShipHero API refused the token: {}end", "x".repeat(90));
        list.push(serde_json::json!({"provider": "shippo", "account": "late",
            "status": "suspended", "last_error": error}));
        list.push(serde_json::json!({"provider": "shippo", "account": "new",
            "status": "pending", "last_error": null}));
        let accounts = serde_json::json!({ "accounts": list });
        let screen = Screen {
            width: 100,
            rows: Some(40),
        };
        let frame = render_watch(&accounts, now, screen, false);
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(lines.len(), 40, "{frame}");
        assert!(lines[2].starts_with("ACCOUNT"), "{frame}");
        assert!(lines[3].starts_with("shippo/late") && lines[3].contains("suspended"));
        assert_eq!(
            lines[4].trim(),
            error.chars().take(95).collect::<String>() + "…"
        );
        assert!(lines[5].starts_with("shippo/new"), "{frame}");
        assert_eq!(
            lines[39],
            "... 8 more not shown (8 active); `shiptoken status` counts them all"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 100), "{frame}");
        let all = render_watch(
            &accounts,
            now,
            Screen {
                rows: None,
                ..screen
            },
            false,
        );
        assert_eq!(all.lines().count(), 3 + 43 + 1, "{all}");
    }

    #[test]
    fn the_accounts_table_aligns_columns_and_colours_only_the_status() {
        let now = Timestamp::from_secs(1_800_000_000);
        let accounts = serde_json::json!({"accounts": [
            {"provider": "shiphero", "account": "acme", "status": "active",
             "expires_at": "2027-01-28T08:00:00Z", "last_error": null},
            {"provider": "shippo", "account": "b", "status": "revoked",
             "status_since": "2027-01-15T07:00:00Z", "expires_at": null,
             "issued_at": "2027-01-01T00:00:00Z", "last_error": "401 from Shippo"},
        ]});
        let plain = accounts_table(&accounts, now, false);
        assert_eq!(plain.len(), 3, "{plain:?}");
        assert!(plain[0].starts_with("ACCOUNT        STATUS"), "{plain:?}");
        assert!(plain[1].starts_with("shiphero/acme  active "), "{plain:?}");
        assert!(plain[1].contains("in 13 days"), "{plain:?}");
        assert!(plain[2].contains("never") && plain[2].ends_with("401 from Shippo"));
        assert!(plain.iter().all(|l| !l.contains('\x1b')));
        let colored = accounts_table(&accounts, now, true);
        assert!(colored[2].contains("\x1b[31mrevoked"), "{colored:?}");
        assert!(!colored[0].contains('\x1b'));
    }

    /// A pending Shippo account serves no token: its expiry is `-` in the list and the live
    /// view alike, not `never`; a served Shippo token never expires in both.
    #[test]
    fn expiry_reads_the_same_in_the_list_and_the_live_view() {
        let now = Timestamp::from_secs(1_800_000_000);
        let accounts = serde_json::json!({"accounts": [
            {"provider": "shippo", "account": "new", "status": "pending",
             "expires_at": null, "issued_at": null, "last_error": null},
            {"provider": "shippo", "account": "old", "status": "active",
             "expires_at": null, "issued_at": "2027-01-01T00:00:00Z", "last_error": null},
        ]});
        let list = accounts_table(&accounts, now, false);
        assert!(
            list[1].starts_with("shippo/new") && !list[1].contains("never"),
            "{list:?}"
        );
        assert!(
            list[2].starts_with("shippo/old") && list[2].contains("never"),
            "{list:?}"
        );
        let screen = Screen {
            width: 200,
            rows: None,
        };
        let frame = render_watch(&accounts, now, screen, false);
        let rows: Vec<&str> = frame.lines().skip(3).collect();
        assert!(
            rows[0].contains("shippo/new") && !rows[0].contains("never"),
            "{frame}"
        );
        assert!(
            rows[1].contains("shippo/old") && rows[1].contains(" never "),
            "{frame}"
        );
    }

    #[test]
    fn the_audit_table_has_a_column_per_field_and_dashes_for_nothing() {
        let entries = [serde_json::json!({
            "at": "2027-01-15T08:00:00Z", "count": 2, "account": "shiphero/acme",
            "client": null, "uid": 1001, "fingerprint": "abcdef012345"
        })];
        let lines = audit_table(&entries);
        assert_eq!(lines[0].split('\t').count(), 10);
        assert_eq!(
            lines[1],
            "2027-01-15T08:00:00Z\t-\t2\tshiphero/acme\t-\t1001\t-\t-\t-\tabcdef012345"
        );
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = Timestamp::from_secs(1_800_000_000);
        assert_eq!(
            relative(
                Some(Timestamp::from_secs(1_800_000_000 + 13 * 86_400 + 5)),
                now
            ),
            "in 13 days"
        );
        assert_eq!(
            relative(Some(Timestamp::from_secs(1_800_000_000 - 300)), now),
            "5 minutes ago"
        );
        assert_eq!(relative(None, now), "-");
    }
}
