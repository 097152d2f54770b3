//! Turning the configuration as written into typed values: one check per kind of value, each
//! error naming the key, where its value came from (file, variable or default) and why it is
//! wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;

use super::{ClientRule, ConfigError, ENV_PREFIX, Invalid, LogFormat, RawWindow, Webhook};
use crate::names::{AccountKey, Provider};

/// Turns raw strings into typed values, naming key and origin on failure; each provider's
/// section (`crate::providers::<name>::config`) validates its keys with it.
pub(crate) struct Validator<'a> {
    pub(super) figment: &'a Figment,
}

impl Validator<'_> {
    pub(crate) fn origin(&self, key: &str) -> String {
        // figment keeps metadata per value, not per array element: `sink[2].path` came from
        // wherever the `sink` array did.
        let key = key.split('[').next().unwrap_or(key);
        let Some(md) = self.figment.find_metadata(key) else {
            return "built-in default".into();
        };
        match &md.source {
            Some(figment::Source::File(path)) => format!("in {}", path.display()),
            _ if md.name.contains("environment") => {
                format!(
                    "from environment variable {ENV_PREFIX}{}",
                    key.replace('.', "__").to_ascii_uppercase()
                )
            }
            _ => format!("from {}", md.name),
        }
    }

    pub(crate) fn invalid(&self, key: &str, value: &str, reason: String) -> ConfigError {
        ConfigError::Invalid(Box::new(Invalid {
            key: key.into(),
            value: value.into(),
            origin: self.origin(key),
            reason,
        }))
    }

    pub(crate) fn duration(&self, key: &str, value: &str) -> Result<Duration, ConfigError> {
        let d = humantime::parse_duration(value.trim()).map_err(|e| {
            self.invalid(
                key,
                value,
                format!("not a duration ({e}); write e.g. \"90s\", \"15m\", \"14d\""),
            )
        })?;
        if d.is_zero() {
            return Err(self.invalid(key, value, "must be longer than zero".into()));
        }
        Ok(d)
    }

    pub(crate) fn absolute_path(&self, key: &str, value: &str) -> Result<PathBuf, ConfigError> {
        let p = PathBuf::from(value);
        if value.is_empty() || !p.is_absolute() {
            return Err(self.invalid(key, value, "must be an absolute path".into()));
        }
        Ok(p)
    }

    pub(crate) fn optional_path(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<PathBuf>, ConfigError> {
        if value.is_empty() {
            return Ok(None);
        }
        self.absolute_path(key, value).map(Some)
    }

    pub(crate) fn log_level(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        crate::logging::check_filter(value).map_err(|e| self.invalid(key, value, e))?;
        Ok(value.to_string())
    }

    pub(crate) fn log_format(&self, key: &str, value: &str) -> Result<LogFormat, ConfigError> {
        match value {
            "auto" => Ok(LogFormat::Auto),
            "journald" => Ok(LogFormat::Journald),
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(self.invalid(
                key,
                value,
                "must be one of auto, journald, text, json".into(),
            )),
        }
    }

    pub(crate) fn file_mode(&self, key: &str, value: &str) -> Result<u32, ConfigError> {
        let mode = u32::from_str_radix(value.trim_start_matches("0o"), 8).map_err(|_| {
            self.invalid(
                key,
                value,
                "must be an octal file mode such as \"0660\"".into(),
            )
        })?;
        if mode > 0o777 {
            return Err(self.invalid(key, value, "must be at most 0777".into()));
        }
        if mode & 0o600 != 0o600 {
            return Err(self.invalid(
                key,
                value,
                "the owner needs read and write (0600 at least)".into(),
            ));
        }
        Ok(mode)
    }

    pub(crate) fn listen(&self, key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
        if value.is_empty() {
            return Ok(None);
        }
        value.parse().map(Some).map_err(|_| {
            self.invalid(
                key,
                value,
                "must be host:port with an IP address, e.g. \"127.0.0.1:9847\", or \"\" for off"
                    .into(),
            )
        })
    }

    pub(crate) fn cron(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        super::parse_schedule(value).map_err(|e| {
            self.invalid(
                key,
                value,
                format!("not a cron expression with a seconds field ({e}); e.g. \"0 * * * * *\""),
            )
        })?;
        Ok(value.to_string())
    }

    pub(crate) fn fraction(&self, key: &str, value: f64) -> Result<f64, ConfigError> {
        if value > 0.0 && value < 1.0 {
            Ok(value)
        } else {
            Err(self.invalid(
                key,
                &value.to_string(),
                "must be between 0 and 1, exclusive (e.g. 0.5)".into(),
            ))
        }
    }

    pub(crate) fn concurrency(&self, key: &str, value: i64) -> Result<usize, ConfigError> {
        match usize::try_from(value) {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(self.invalid(key, &value.to_string(), "must be between 1 and 1024".into())),
        }
    }

    pub(crate) fn count(&self, key: &str, value: i64) -> Result<u32, ConfigError> {
        match u32::try_from(value) {
            Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
            _ => Err(self.invalid(
                key,
                &value.to_string(),
                "must be a whole number between 1 and 1000000".into(),
            )),
        }
    }

    pub(crate) fn window(
        &self,
        key: &str,
        raw: Option<&RawWindow>,
    ) -> Result<Option<crate::window::Window>, ConfigError> {
        let Some(w) = raw else { return Ok(None) };
        crate::window::Window::new(&w.days, &w.start, &w.end, &w.timezone)
            .map(Some)
            .map_err(|e| {
                let written = format!(
                    "{{ days = {:?}, start = {:?}, end = {:?}, timezone = {:?} }}",
                    w.days, w.start, w.end, w.timezone
                );
                self.invalid(key, &written, e.to_string())
            })
    }

    pub(crate) fn base_url(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(value)
            .map_err(|e| self.invalid(key, value, format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(self.invalid(
                key,
                value,
                "must be an http:// or https:// URL with a host".into(),
            ));
        }
        Ok(value.trim_end_matches('/').to_string())
    }

    /// A provider's `api_base`: a [`Self::base_url`] that sends tokens in clear only to this
    /// host (`http://` with a loopback host, as the simulators and test doubles use).
    pub(crate) fn api_base(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let base = self.base_url(key, value)?;
        let loopback = match reqwest::Url::parse(&base)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()))
        {
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        if base.starts_with("http://") && !loopback {
            return Err(self.invalid(
                key,
                value,
                "plain http:// would send tokens and credentials unencrypted; use https://, or http:// only to a loopback host (127.0.0.1, ::1, localhost)".into(),
            ));
        }
        Ok(base)
    }

    pub(crate) fn webhooks(
        &self,
        key: &str,
        hooks: &[Webhook],
    ) -> Result<Vec<Webhook>, ConfigError> {
        for (i, hook) in hooks.iter().enumerate() {
            let at = format!("{key}[{i}]");
            self.base_url(&format!("{at}.url"), &hook.url)?;
            if !hook.secret_file.is_empty() {
                let path = self.absolute_path(&format!("{at}.secret_file"), &hook.secret_file)?;
                if !path.is_file() {
                    return Err(self.invalid(
                        &format!("{at}.secret_file"),
                        &hook.secret_file,
                        "is not a readable file".into(),
                    ));
                }
            }
        }
        Ok(hooks.to_vec())
    }

    pub(crate) fn command(&self, key: &str, argv: &[String]) -> Result<Vec<String>, ConfigError> {
        if let Some(program) = argv.first().filter(|p| !Path::new(p).is_absolute()) {
            return Err(self.invalid(key, program, "the program must be an absolute path".into()));
        }
        Ok(argv.to_vec())
    }

    pub(crate) fn client_rules(
        &self,
        key: &str,
        rules: &[ClientRule],
    ) -> Result<Vec<ClientRule>, ConfigError> {
        for (i, rule) in rules.iter().enumerate() {
            let at = format!("{key}[{i}]");
            if rule.name.trim().is_empty() {
                return Err(self.invalid(
                    &format!("{at}.name"),
                    "\"\"",
                    "every client rule needs a name".into(),
                ));
            }
            if rule.uids.is_empty() && rule.gids.is_empty() {
                return Err(self.invalid(
                    &format!("{at}.uids"),
                    "[]",
                    format!(
                        "client rule \"{}\" matches no peer: list uids or gids",
                        rule.name
                    ),
                ));
            }
            for pattern in &rule.accounts {
                let ok = match pattern.split_once('/') {
                    Some((p, "*")) => Provider::parse(p).is_some(),
                    Some(_) => AccountKey::parse(pattern).is_ok(),
                    None => false,
                };
                if !ok {
                    return Err(self.invalid(
                        &format!("{at}.accounts"),
                        pattern,
                        format!(
                            "must be \"provider/account\" or \"provider/*\" with provider {}",
                            Provider::names()
                        ),
                    ));
                }
            }
        }
        Ok(rules.to_vec())
    }
}
