//! The daemon's configuration: built-in defaults, then the TOML file, then `SHIPTOKEN_*`
//! environment variables, validated into typed values.
//!
//! Every validation error names the key, where its value came from (file, variable or
//! default) and why it is wrong, because an operator reading a failed start needs all three.
//!
//! Here: the layering, the typed configuration and the access rules. `raw` holds the sections
//! as written with their defaults, `validate` the checks that type them, `limits` the
//! `[limits]` section, `reload` what a reload may change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::names::AccountKey;

mod env;
mod limits;
mod proxy;
mod raw;
pub mod registry;
pub mod reload;
mod validate;

pub use env::HOOK_VARIABLES;
#[cfg(test)]
use env::known_env_keys;
use env::{ENV_PREFIX, env_overrides};
pub use limits::{LimitsConfig, RawLimits};
pub use proxy::{ProxyConfig, RawProxy};
pub use raw::{
    RawLog, RawMetrics, RawNotify, RawRotation, RawSocket, RawVerify, RawWindow, Webhook,
};
pub use registry::{PASSWORD_CREDENTIAL, RawRegistry, RegistryConfig};
pub(crate) use validate::Validator;
// Each provider's section lives in its folder; the configuration embeds them.
pub use crate::providers::oauth2::config::{OAuth2Config, RawOAuth2};
pub use crate::providers::shiphero::config::{RawShipHero, ShipHeroConfig};
pub use crate::providers::shippo::config::{RawShippo, ShippoConfig};
pub mod sinks;
pub use sinks::{RawSink, SinkConfig};

/// Parses `rotation.schedule` the way tokio-cron-scheduler does (croner, seconds required,
/// day-of-month and day-of-week both honoured): the one parser configuration in the daemon, so
/// what validation accepts is what runs, and the scheduler's timing reads the same.
pub fn parse_schedule(schedule: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
}

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/shiptoken/shiptoken.toml";

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` named a file that does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    /// The file or a variable could not be parsed into the expected shape.
    #[error("{0}")]
    Parse(Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("{}", .0)]
    Invalid(Box<Invalid>),
}

/// A value that parsed but is not acceptable, with where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {value} ({origin}): {reason}")]
pub struct Invalid {
    /// The dotted key, e.g. `rotation.rotate_at`.
    pub key: String,
    /// The offending value as written.
    pub value: String,
    /// Where it came from: the file, the environment variable, or the default.
    pub origin: String,
    /// What is wrong and what would be accepted.
    pub reason: String,
}

/// The configuration exactly as written: strings where the typed form needs validation.
///
/// `deny_unknown_fields` turns a misspelt key into an error instead of a silently ignored line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// See [`Config::state_dir`].
    pub state_dir: String,
    /// See [`Config::key_file`].
    pub key_file: String,
    /// `[log]`
    pub log: RawLog,
    /// `[socket]`
    pub socket: RawSocket,
    /// `[metrics]`
    pub metrics: RawMetrics,
    /// `[rotation]`
    pub rotation: RawRotation,
    /// `[verify]`
    pub verify: RawVerify,
    /// `[shiphero]`
    pub shiphero: RawShipHero,
    /// `[shippo]`
    pub shippo: RawShippo,
    /// `[oauth2]`
    pub oauth2: RawOAuth2,
    /// `[notify]`
    pub notify: RawNotify,
    /// `[limits]`
    pub limits: RawLimits,
    /// `[registry]`
    pub registry: RawRegistry,
    /// `[proxy]`
    pub proxy: RawProxy,
    /// `[[sink]]`
    pub sink: Vec<RawSink>,
}

/// The validated `[notify]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    /// Webhooks (URLs validated; secret files checked to exist).
    pub webhooks: Vec<Webhook>,
    /// The command and its arguments; empty for none.
    pub command: Vec<String>,
    /// Timeout of one delivery attempt.
    pub timeout: Duration,
}

/// One `[[socket.clients]]` rule: which peers may read which tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    /// A name for logs and the audit, e.g. `order-sync`.
    pub name: String,
    /// Peer uids this rule matches.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Peer gids (primary group) this rule matches.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Accounts readable under this rule: `provider/account` or `provider/*`.
    #[serde(default)]
    pub accounts: Vec<String>,
}

impl ClientRule {
    /// Whether a peer with this uid and gid falls under the rule.
    pub fn matches_peer(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// Whether the rule grants the account.
    pub fn allows(&self, key: &AccountKey) -> bool {
        self.accounts
            .iter()
            .any(|pattern| match pattern.split_once('/') {
                Some((provider, "*")) => provider == key.provider.as_str(),
                Some((provider, name)) => provider == key.provider.as_str() && name == &*key.name,
                None => false,
            })
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            state_dir: raw::env_or("STATE_DIRECTORY", "", "/var/lib/shiptoken"),
            key_file: String::new(),
            log: RawLog::default(),
            socket: RawSocket::default(),
            metrics: RawMetrics::default(),
            rotation: RawRotation::default(),
            verify: RawVerify::default(),
            shiphero: RawShipHero::default(),
            shippo: RawShippo::default(),
            oauth2: RawOAuth2::default(),
            notify: RawNotify::default(),
            limits: RawLimits::default(),
            registry: RawRegistry::default(),
            proxy: RawProxy::default(),
            sink: Vec::new(),
        }
    }
}

/// How log lines leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald when stderr is the journal, text otherwise.
    Auto,
    /// Structured fields to the journal socket.
    Journald,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `registry.db` (and by default the key) live.
    pub state_dir: PathBuf,
    /// The key that encrypts tokens at rest; `None` means the systemd credential or the default file.
    pub key_file: Option<PathBuf>,
    /// The tracing filter directive.
    pub log_level: String,
    /// Where and how to log.
    pub log_format: LogFormat,
    /// The Unix socket.
    pub socket: SocketConfig,
    /// The Prometheus listener; `None` when turned off.
    pub metrics_listen: Option<SocketAddr>,
    /// When and how tokens are refreshed.
    pub rotation: RotationConfig,
    /// How often tokens are proved to work.
    pub verify: VerifyConfig,
    /// ShipHero's endpoints.
    pub shiphero: ShipHeroConfig,
    /// Shippo's endpoints and OAuth client.
    pub shippo: ShippoConfig,
    /// The carriers' OAuth 2.0 settings and presets.
    pub oauth2: OAuth2Config,
    /// Where status changes are reported.
    pub notify: NotifyConfig,
    /// Connection caps and timeouts of the listeners.
    pub limits: LimitsConfig,
    /// Files kept holding served tokens (`[[sink]]`).
    pub sinks: Vec<SinkConfig>,
    /// Where the registry lives (`[registry]`).
    pub registry: RegistryConfig,
    /// The authenticating proxy on the socket (`[proxy]`).
    pub proxy: ProxyConfig,
    /// The values as written, for `config check` to print.
    pub raw: RawConfig,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
}

/// The validated `[socket]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketConfig {
    /// Path of the Unix socket.
    pub path: PathBuf,
    /// File mode given to the socket.
    pub mode: u32,
    /// Uids allowed to administer (besides the daemon's own).
    pub admin_uids: Vec<u32>,
    /// Read rules; empty means every peer that can open the socket reads every token.
    pub clients: Vec<ClientRule>,
    /// How long audit entries are kept before they are pruned.
    pub audit_retention: Duration,
    /// Refuse token reads that cannot be audited (`api::audit::AuditLog::admit`).
    pub audit_required: bool,
}

/// The validated `[rotation]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct RotationConfig {
    /// Cron expression (with seconds) of the sweep.
    pub schedule: String,
    /// Fraction of a token's lifetime after which it is refreshed, in (0, 1).
    pub rotate_at: f64,
    /// First backoff after a failure.
    pub retry_initial: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// Upstream calls in flight at once.
    pub concurrency: usize,
    /// When routine refreshes may run; `None`: at any time.
    pub window: Option<crate::window::Window>,
}

/// The validated `[verify]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// How often each token is probed.
    pub interval: Duration,
    /// How often a flagged account is re-checked.
    pub suspended_interval: Duration,
    /// Evidence flags only when seen again at least this long after it was first seen, so a
    /// short incident at the provider cannot produce a flag.
    pub confirm_after: Duration,
    /// More than this share (0-1) of one provider's accounts answering with evidence within
    /// `incident_window` is an incident, not suspensions.
    pub incident_share: f64,
    /// ...when at least this many accounts do: keeps a real suspension in a small fleet
    /// flaggable.
    pub incident_min_accounts: usize,
    /// The window accounts are counted in; the incident ends after one quiet window.
    pub incident_window: Duration,
}

/// The path of a systemd credential, when `$CREDENTIALS_DIRECTORY` holds one by that name.
pub fn credential_path(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(name);
    path.exists().then_some(path)
}

/// What every provider's section sets alike: how the engine bounds, paces and times that
/// provider's calls. Each provider's work is its own bulkhead, so these are per provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamSettings {
    /// How long one call may take.
    pub timeout: Duration,
    /// How fast calls may start.
    pub pace: crate::pacing::Rate,
    /// How many of this provider's calls may be in flight at once (`[<provider>] concurrency`,
    /// by default `rotation.concurrency`).
    pub concurrency: usize,
    /// The provider's own share of a token's life after which it is renewed, where its
    /// section sets one (`oauth2.rotate_at`); `None`: `rotation.rotate_at`.
    pub rotate_at: Option<f64>,
}

impl Config {
    /// The settings of `provider`'s calls.
    pub fn upstream(&self, provider: crate::names::Provider) -> UpstreamSettings {
        use crate::names::Provider;
        match provider {
            Provider::ShipHero => self.shiphero.upstream(),
            Provider::Shippo => self.shippo.upstream(),
            Provider::OAuth2 => self.oauth2.upstream(),
        }
    }

    /// Loads the configuration for the daemon (`serve`, a reload, `config check`): [`Config::read`],
    /// then the checks of what the daemon will write on disk (each sink's folder, and that no
    /// sink names the daemon's own files).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let (config, figment) = Self::read_with_figment(file)?;
        Validator { figment: &figment }.sinks_on_disk(&config)?;
        Ok(config)
    }

    /// Reads and validates the configuration without looking at the folders the daemon
    /// writes to: what a client command needs (the socket's path), run as an application's
    /// user who may not pass the checks the daemon's files must.
    pub fn read(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::read_with_figment(file).map(|(c, _)| c)
    }

    /// Loads the configuration. `file` is `--config`: a named file must exist; without it the
    /// default path is read when present.
    fn read_with_figment(file: Option<&Path>) -> Result<(Config, Figment), ConfigError> {
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        if required && !path.exists() {
            return Err(ConfigError::Missing(path));
        }
        let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
        let used_file = path.exists().then(|| path.clone());
        if used_file.is_some() {
            // `file_exact`: `Toml::file` would search parent folders for a relative path.
            figment = figment.merge(Toml::file_exact(&path));
        }
        figment = figment.merge(env_overrides());
        let config = Self::from_figment(&figment, used_file)?;
        Ok((config, figment))
    }

    /// Validates an assembled figment (the seam tests use with `figment::Jail`).
    pub fn from_figment(figment: &Figment, file: Option<PathBuf>) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
        let v = Validator { figment };
        let rotation_concurrency =
            v.concurrency("rotation.concurrency", raw.rotation.concurrency)?;
        let config = Config {
            state_dir: v.absolute_path("state_dir", &raw.state_dir)?,
            key_file: v.optional_path("key_file", &raw.key_file)?,
            log_level: v.log_level("log.level", &raw.log.level)?,
            log_format: v.log_format("log.format", &raw.log.format)?,
            socket: SocketConfig {
                path: v.absolute_path("socket.path", &raw.socket.path)?,
                mode: v.file_mode("socket.mode", &raw.socket.mode)?,
                admin_uids: raw.socket.admin_uids.clone(),
                clients: v.client_rules("socket.clients", &raw.socket.clients)?,
                audit_retention: v
                    .duration("socket.audit_retention", &raw.socket.audit_retention)?,
                audit_required: raw.socket.audit_required,
            },
            metrics_listen: v.listen("metrics.listen", &raw.metrics.listen)?,
            rotation: RotationConfig {
                schedule: v.cron("rotation.schedule", &raw.rotation.schedule)?,
                rotate_at: v.fraction("rotation.rotate_at", raw.rotation.rotate_at)?,
                retry_initial: v.duration("rotation.retry_initial", &raw.rotation.retry_initial)?,
                retry_max: v.duration("rotation.retry_max", &raw.rotation.retry_max)?,
                concurrency: rotation_concurrency,
                window: v.window("rotation.window", raw.rotation.window.as_ref())?,
            },
            verify: verify_section(&v, &raw.verify)?,
            shiphero: ShipHeroConfig::validate(&v, &raw.shiphero, rotation_concurrency)?,
            shippo: ShippoConfig::validate(&v, &raw.shippo, rotation_concurrency)?,
            oauth2: OAuth2Config::validate(&v, &raw.oauth2, rotation_concurrency)?,
            notify: NotifyConfig {
                webhooks: v.webhooks("notify.webhooks", &raw.notify.webhooks)?,
                command: v.command("notify.command", &raw.notify.command)?,
                timeout: v.duration("notify.timeout", &raw.notify.timeout)?,
            },
            limits: v.limits(&raw.limits)?,
            sinks: v.sinks(&raw.sink)?,
            registry: v.registry(&raw.registry)?,
            proxy: v.proxy(&raw.proxy)?,
            raw: raw.clone(),
            file,
        };
        if config.socket.mode & 0o007 != 0
            && config.socket.clients.is_empty()
            && !raw.socket.allow_other_users
        {
            return Err(v.invalid(
                "socket.mode",
                &raw.socket.mode,
                "gives every local user the socket, and no [[socket.clients]] rules limit what they read: every user could read every token; add client rules, drop the bits for others, or set socket.allow_other_users = true if that is meant".into(),
            ));
        }
        if config.rotation.retry_max < config.rotation.retry_initial {
            return Err(v.invalid(
                "rotation.retry_max",
                &raw.rotation.retry_max,
                format!(
                    "must not be shorter than rotation.retry_initial ({})",
                    raw.rotation.retry_initial
                ),
            ));
        }
        Ok(config)
    }

    /// Environment variables with our prefix that name no key: almost always a typo. They are
    /// ignored, not refused; the variables a hook is given are neither.
    pub fn unknown_env_vars() -> Vec<String> {
        env::unknown_vars()
    }

    /// The effective configuration as TOML, for `config check`. The file holds no secret
    /// itself (secrets come from files and credentials), so this only says where they come from.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.file {
            out.push_str(&format!("# read from {}\n", f.display()));
        } else {
            out.push_str("# no config file: built-in defaults and environment\n");
        }
        out.push_str(&match self.shippo.client_secret() {
            Ok(Some(_)) => "# shippo client secret: [redacted], loaded\n".to_string(),
            Ok(None) => "# shippo client secret: not configured\n".to_string(),
            Err(e) => format!("# shippo client secret: {e}\n"),
        });
        // A password written into registry.url is never printed.
        let mut raw = self.raw.clone();
        if !raw.registry.url.is_empty() {
            raw.registry.url = registry::shown(&raw.registry.url);
        }
        out.push_str(&toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# {e}\n")));
        out
    }
}

/// `[verify]`, typed.
fn verify_section(v: &Validator, raw: &RawVerify) -> Result<VerifyConfig, ConfigError> {
    Ok(VerifyConfig {
        interval: v.duration("verify.interval", &raw.interval)?,
        suspended_interval: v.duration("verify.suspended_interval", &raw.suspended_interval)?,
        confirm_after: v.duration("verify.confirm_after", &raw.confirm_after)?,
        incident_share: v.fraction("verify.incident_share", raw.incident_share)?,
        incident_min_accounts: v
            .concurrency("verify.incident_min_accounts", raw.incident_min_accounts)?,
        incident_window: v.duration("verify.incident_window", &raw.incident_window)?,
    })
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
pub(crate) mod tests {
    use super::*;
    use figment::Jail;

    /// The configuration the defaults and `toml` make, for tests of one section.
    pub(crate) fn load(toml: &str) -> Result<Config, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(toml));
        Config::from_figment(&figment, None)
    }

    fn load_in(jail: &Jail, file: Option<&str>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(jail.directory().join(f)));
        }
        fig = fig.merge(env_overrides());
        Config::from_figment(&fig, None)
    }

    #[test]
    fn hook_variables_and_stray_names_neither_override_nor_stop() {
        let known = known_env_keys();
        for var in HOOK_VARIABLES {
            let key = var.strip_prefix(ENV_PREFIX).map(str::to_ascii_lowercase);
            assert!(
                key.as_ref()
                    .is_some_and(|k| !known.contains(k) && !k.contains("__"))
            );
        }
        Jail::expect_with(|jail| {
            jail.set_env("SHIPTOKEN_ACCOUNT", "shiphero/acme");
            jail.set_env("SHIPTOKEN_SINK_STATUS", "active");
            jail.set_env("SHIPTOKEN_X", "1");
            jail.set_env("SHIPTOKEN_VERIFY__INTERVALL", "1h");
            jail.set_env("SHIPTOKEN_VERIFY__INTERVAL", "2h");
            let c = load_in(jail, None).map_err(|e| e.to_string())?;
            assert_eq!(c.verify.interval, Duration::from_secs(2 * 3600));
            let unknown = Config::unknown_env_vars();
            assert_eq!(unknown, ["SHIPTOKEN_VERIFY__INTERVALL", "SHIPTOKEN_X"]);
            Ok(())
        });
    }

    #[test]
    fn only_misspelt_environment_variables_are_reported() {
        Jail::expect_with(|jail| {
            jail.set_env("SHIPTOKEN_ROTATION__WINDOW__DAYS", "[mon]");
            jail.set_env("SHIPTOKEN_ROTATION__WINDOW", "{start=\"01:00\"}");
            jail.set_env("SHIPTOKEN_VERIFY__INTERVAL", "1h");
            jail.set_env("SHIPTOKEN_SHIPPO__CONCURRENCY", "4");
            jail.set_env("SHIPTOKEN_SHIPHERO__CONCURRENCY", "4");
            jail.set_env("SHIPTOKEN_VERIFY__INTERVALL", "1h");
            jail.set_env("SHIPTOKEN_ROTATION__WINDOW__DAYZ", "[mon]");
            let unknown = Config::unknown_env_vars();
            assert!(unknown.contains(&"SHIPTOKEN_VERIFY__INTERVALL".to_string()));
            assert!(unknown.contains(&"SHIPTOKEN_ROTATION__WINDOW__DAYZ".to_string()));
            assert_eq!(unknown.len(), 2, "{unknown:?}");
            Ok(())
        });
    }

    #[test]
    fn defaults_are_valid() {
        Jail::expect_with(|jail| {
            let c = load_in(jail, None).map_err(|e| e.to_string())?;
            assert_eq!(c.rotation.rotate_at, 0.5);
            assert_eq!(c.verify.interval, Duration::from_secs(6 * 3600));
            assert_eq!(c.socket.mode, 0o660);
            Ok(())
        });
    }

    #[test]
    fn env_overrides_file_and_names_the_variable_on_error() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[shiphero]\napi_base = \"http://127.0.0.1:1\"\n")?;
            jail.set_env("SHIPTOKEN_SHIPHERO__API_BASE", "http://127.0.0.1:2");
            let c = load_in(jail, Some("c.toml")).map_err(|e| e.to_string())?;
            assert_eq!(c.shiphero.api_base, "http://127.0.0.1:2");
            jail.set_env("SHIPTOKEN_ROTATION__ROTATE_AT", "1.5");
            let err = load_in(jail, Some("c.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("rotation.rotate_at"), "{err}");
            assert!(err.contains("SHIPTOKEN_ROTATION__ROTATE_AT"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_key_file_and_reason() {
        Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[rotation]\nretry_initial = \"soon\"\n")?;
            let err = load_in(jail, Some("c.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("rotation.retry_initial"), "{err}");
            assert!(err.contains("c.toml"), "{err}");
            assert!(err.contains("not a duration"), "{err}");

            jail.create_file("d.toml", "[rotation]\nschedule = \"* * * * *\"\n")?;
            let err = load_in(jail, Some("d.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("seconds field"), "{err}");

            jail.create_file(
                "e.toml",
                "[shippo]\nredirect_uri = \"https://example.com/cb\"\n",
            )?;
            let err = load_in(jail, Some("e.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("closing slash"), "{err}");

            jail.create_file("f.toml", "[rotation]\nrotate_every = \"1d\"\n")?;
            let err = load_in(jail, Some("f.toml"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("rotate_every"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn errors_in_array_sections_name_their_file() {
        Jail::expect_with(|jail| {
            for (text, key) in [
                (
                    "[[socket.clients]]\nname = \"\"\nuids = [1]\n",
                    "socket.clients[0].name",
                ),
                (
                    "[[notify.webhooks]]\nurl = \"ftp://x\"\n",
                    "notify.webhooks[0].url",
                ),
                (
                    "[[sink]]\naccount = \"shiphero/a\"\npath = \"/run/t\"\nmode = \"0644\"\n",
                    "sink[0].mode",
                ),
            ] {
                jail.create_file("c.toml", text)?;
                let err = load_in(jail, Some("c.toml"))
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                assert!(err.contains(key), "{err}");
                assert!(err.contains("c.toml") && !err.contains("default"), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn client_rules_match_wildcards() {
        let rule = ClientRule {
            name: "sync".into(),
            uids: vec![1001],
            gids: vec![],
            accounts: vec!["shiphero/acme".into(), "shippo/*".into()],
        };
        let key = |s: &str| AccountKey::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert!(rule.allows(&key("shiphero/acme")));
        assert!(!rule.allows(&key("shiphero/other")));
        assert!(rule.allows(&key("shippo/anything")));
        assert!(rule.matches_peer(1001, 5) && !rule.matches_peer(1002, 5));
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shiptoken.toml");
        let fig = Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(Toml::file_exact(&path));
        let c = Config::from_figment(&fig, Some(path.clone()));
        assert!(c.is_ok(), "{:?}", c.err().map(|e| e.to_string()));
    }
}
