//! The configuration as written: one struct per section, strings where the typed form needs
//! validation, and the built-in defaults (the first layer figment reads).
//!
//! `deny_unknown_fields` on every section turns a misspelt key into an error instead of a
//! silently ignored line.

use serde::{Deserialize, Serialize};

use super::ClientRule;

/// `[notify]` as written: where status changes are reported besides logs and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNotify {
    /// Webhooks that get a signed JSON POST per status change.
    pub webhooks: Vec<Webhook>,
    /// A command (argv) run per status change with the event on stdin; empty for none.
    pub command: Vec<String>,
    /// Timeout of one delivery attempt.
    pub timeout: String,
}

impl Default for RawNotify {
    fn default() -> Self {
        RawNotify {
            webhooks: Vec::new(),
            command: Vec::new(),
            timeout: "10s".into(),
        }
    }
}

/// One `[[notify.webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to POST the event.
    pub url: String,
    /// File holding the HMAC-SHA256 key for the `X-Shiptoken-Signature` header; empty: unsigned.
    #[serde(default)]
    pub secret_file: String,
}

/// `[log]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A tracing `EnvFilter` directive string.
    pub level: String,
    /// `auto`, `journald`, `text` or `json`.
    pub format: String,
}

/// `[socket]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSocket {
    /// Path of the Unix socket.
    pub path: String,
    /// Octal file mode, e.g. `"0660"`.
    pub mode: String,
    /// Uids allowed to administer.
    pub admin_uids: Vec<u32>,
    /// `[[socket.clients]]` rules.
    pub clients: Vec<ClientRule>,
    /// How long audit entries (who read which token) are kept, e.g. `"90d"`.
    pub audit_retention: String,
    /// A `mode` with bits for others and no `[[socket.clients]]` rules lets every local user
    /// read every token; refused unless this says that is meant.
    pub allow_other_users: bool,
    /// Refuse a token read (503 `audit_unavailable`) rather than serve it unaudited.
    pub audit_required: bool,
}

/// `[metrics]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// `host:port`, or empty to turn the listener off.
    pub listen: String,
}

/// `[rotation]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRotation {
    /// Cron expression with a seconds field.
    pub schedule: String,
    /// Fraction of the lifetime after which a token is refreshed.
    pub rotate_at: f64,
    /// First backoff after a failed refresh.
    pub retry_initial: String,
    /// Longest backoff.
    pub retry_max: String,
    /// Upstream calls in flight at once.
    pub concurrency: i64,
    /// When routine refreshes may run; absent: at any time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<RawWindow>,
}

/// `rotation.window` as written: weekdays, a daily `start`..`end` and a time zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Day names, `mon`..`sun`.
    pub days: Vec<String>,
    /// Opening, `HH:MM` local time.
    pub start: String,
    /// Closing, `HH:MM` local time (`24:00` allowed), later than `start`.
    pub end: String,
    /// IANA zone name; default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
}

/// The default `rotation.window.timezone`.
pub(super) fn utc() -> String {
    "UTC".into()
}

/// `[verify]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawVerify {
    /// How often every token is probed.
    pub interval: String,
    /// How often a flagged account is re-checked.
    pub suspended_interval: String,
    /// How long after first seeing evidence it must be seen again before a flag.
    pub confirm_after: String,
    /// More than this share of one provider's accounts with evidence at once is an incident.
    pub incident_share: f64,
    /// ...and at least this many accounts.
    pub incident_min_accounts: i64,
    /// The window those accounts are counted in, and that must stay quiet to end it.
    pub incident_window: String,
}

/// The first folder systemd gave in `var` (e.g. `STATE_DIRECTORY`) plus `suffix`, else `fallback`.
pub(super) fn env_or(var: &str, suffix: &str, fallback: &str) -> String {
    match std::env::var_os(var) {
        // systemd may list several directories separated by ':'; the first is ours.
        Some(v) if !v.is_empty() => {
            let first = v
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
            format!("{first}{suffix}")
        }
        _ => fallback.to_string(),
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "auto".into(),
        }
    }
}

impl Default for RawSocket {
    fn default() -> Self {
        RawSocket {
            path: env_or(
                "RUNTIME_DIRECTORY",
                "/shiptoken.sock",
                "/run/shiptoken/shiptoken.sock",
            ),
            mode: "0660".into(),
            admin_uids: vec![0],
            clients: Vec::new(),
            audit_retention: "90d".into(),
            allow_other_users: false,
            audit_required: false,
        }
    }
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: "127.0.0.1:9847".into(),
        }
    }
}

impl Default for RawRotation {
    fn default() -> Self {
        RawRotation {
            schedule: "0 * * * * *".into(),
            rotate_at: 0.5,
            retry_initial: "1m".into(),
            retry_max: "1h".into(),
            concurrency: 8,
            window: None,
        }
    }
}

impl Default for RawVerify {
    fn default() -> Self {
        RawVerify {
            interval: "6h".into(),
            suspended_interval: "6h".into(),
            confirm_after: "15m".into(),
            incident_share: 0.2,
            incident_min_accounts: 5,
            incident_window: "10m".into(),
        }
    }
}
