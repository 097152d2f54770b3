//! `[[sink]]`: files the daemon keeps holding an account's served token, for applications
//! that read a file or an environment file rather than the socket.
//!
//! A child of `config` so it validates with the same `Validator` while its keys live apart
//! from the sections other work changes. How the files are written is `crate::sinks`.

use std::ffi::CString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Invalid, Validator};
use crate::names::{AccountKey, Provider};

/// One `[[sink]]` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// See [`SinkConfig::account`].
    pub account: String,
    /// See [`SinkConfig::path`].
    pub path: String,
    /// See [`SinkFormat`].
    #[serde(default = "default_format")]
    pub format: String,
    /// See [`EnvNames`].
    #[serde(default)]
    pub env_names: RawEnvNames,
    /// See [`SinkConfig::group`]: a group name or number; empty keeps the daemon's group.
    #[serde(default)]
    pub group: String,
    /// See [`SinkConfig::mode`].
    #[serde(default = "default_mode")]
    pub mode: String,
    /// See [`OnFlag`].
    #[serde(default = "default_on_flag")]
    pub on_flag: String,
    /// See [`SinkConfig::command`].
    #[serde(default)]
    pub command: Vec<String>,
}

/// `env_names` of an `env` sink as written; empty means the default name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEnvNames {
    /// The token's variable.
    pub access_token: String,
    /// The Shippo API version's variable (Shippo accounts only).
    pub api_version: String,
}

fn default_format() -> String {
    "token".into()
}

fn default_mode() -> String {
    "0600".into()
}

fn default_on_flag() -> String {
    "keep".into()
}

/// What a sink file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkFormat {
    /// The bare token, no line end (as `Accept: text/plain` answers it).
    Token,
    /// The socket's JSON token answer, one line.
    Json,
    /// `NAME=VALUE` lines, for `EnvironmentFile=`, `docker --env-file` or `. file` in a shell.
    Env(EnvNames),
    /// The HTTP headers to send upstream, `Name: value`, one per line.
    Headers,
}

/// The variable names an `env` sink (and `shiptoken exec`) writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvNames {
    /// The token's variable, by default `SHIPHERO_ACCESS_TOKEN` or `SHIPPO_ACCESS_TOKEN`.
    pub access_token: String,
    /// The variable holding `Shippo-API-Version` (Shippo only), by default `SHIPPO_API_VERSION`.
    pub api_version: String,
}

impl EnvNames {
    /// The default names for `provider`.
    pub fn default_for(provider: Provider) -> EnvNames {
        EnvNames {
            access_token: format!("{}_ACCESS_TOKEN", provider.as_str().to_ascii_uppercase()),
            api_version: "SHIPPO_API_VERSION".into(),
        }
    }
}

/// What happens to the file while the account has no token to serve (suspended, revoked,
/// expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFlag {
    /// Leave the last served token in place: the reader keeps working if the flag was wrong,
    /// and fails upstream as it would have anyway if it was right.
    Keep,
    /// Remove the file, so the reader sees at once that there is no token.
    Remove,
}

/// One validated `[[sink]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// The account whose served token the file holds.
    pub account: AccountKey,
    /// The file; its folder must exist and be writable by the daemon.
    pub path: PathBuf,
    /// What the file holds.
    pub format: SinkFormat,
    /// The file's group (the daemon must be a member: it runs without CAP_CHOWN); `None`
    /// keeps the daemon's own group.
    pub group: Option<u32>,
    /// The file's mode; never any bit for others.
    pub mode: u32,
    /// What happens to the file while the account has no token to serve.
    pub on_flag: OnFlag,
    /// A command (argv) run after each write or removal; empty for none.
    pub command: Vec<String>,
}

impl Validator<'_> {
    pub(super) fn sinks(&self, raw: &[RawSink]) -> Result<Vec<SinkConfig>, ConfigError> {
        let mut sinks: Vec<SinkConfig> = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let sink = self.sink(i, s)?;
            if sinks.iter().any(|other| other.path == sink.path) {
                return Err(self.sink_invalid(
                    i,
                    "path",
                    &s.path,
                    "another [[sink]] already writes this file".into(),
                ));
            }
            sinks.push(sink);
        }
        Ok(sinks)
    }

    fn sink(&self, i: usize, s: &RawSink) -> Result<SinkConfig, ConfigError> {
        let bad = |field: &str, value: &str, reason: &str| {
            self.sink_invalid(i, field, value, reason.to_string())
        };
        let account = AccountKey::parse(&s.account).map_err(|e| {
            bad(
                "account",
                &s.account,
                &format!("{e}; write \"provider/account\", e.g. \"shiphero/acme\""),
            )
        })?;
        let path = PathBuf::from(&s.path);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(bad("path", &s.path, "must be an absolute path to a file"));
        }
        let format = match s.format.as_str() {
            "token" => SinkFormat::Token,
            "json" => SinkFormat::Json,
            "headers" => SinkFormat::Headers,
            "env" => SinkFormat::Env(self.env_names(i, account.provider, &s.env_names)?),
            other => {
                return Err(bad(
                    "format",
                    other,
                    "must be one of token, json, env, headers",
                ));
            }
        };
        if !matches!(format, SinkFormat::Env(_)) && s.env_names != RawEnvNames::default() {
            return Err(bad(
                "env_names",
                &s.format,
                "is only used with format = \"env\"",
            ));
        }
        let mode = u32::from_str_radix(s.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                bad(
                    "mode",
                    &s.mode,
                    "must be an octal file mode such as \"0640\"",
                )
            })?;
        if mode & 0o007 != 0 {
            return Err(bad(
                "mode",
                &s.mode,
                "gives other users access to the token; share it through the sink's group instead",
            ));
        }
        let on_flag = match s.on_flag.as_str() {
            "keep" => OnFlag::Keep,
            "remove" => OnFlag::Remove,
            other => return Err(bad("on_flag", other, "must be keep or remove")),
        };
        if let Some(program) = s.command.first().filter(|p| !p.starts_with('/')) {
            return Err(bad(
                "command",
                program,
                "the program must be an absolute path",
            ));
        }
        Ok(SinkConfig {
            account,
            path,
            format,
            group: self.group(i, &s.group)?,
            mode,
            on_flag,
            command: s.command.clone(),
        })
    }

    fn env_names(
        &self,
        i: usize,
        provider: Provider,
        raw: &RawEnvNames,
    ) -> Result<EnvNames, ConfigError> {
        let mut names = EnvNames::default_for(provider);
        for (field, value, slot) in [
            ("access_token", &raw.access_token, &mut names.access_token),
            ("api_version", &raw.api_version, &mut names.api_version),
        ] {
            if value.is_empty() {
                continue;
            }
            if !is_env_name(value) {
                return Err(self.sink_invalid(
                    i,
                    &format!("env_names.{field}"),
                    value,
                    "must be a variable name: letters, digits and _, not starting with a digit"
                        .into(),
                ));
            }
            *slot = value.clone();
        }
        Ok(names)
    }

    fn group(&self, i: usize, group: &str) -> Result<Option<u32>, ConfigError> {
        if group.is_empty() {
            return Ok(None);
        }
        if let Ok(gid) = group.parse::<u32>() {
            return Ok(Some(gid));
        }
        match gid_of(group) {
            Some(gid) => Ok(Some(gid)),
            None => {
                Err(self.sink_invalid(i, "group", group, "no such group on this system".into()))
            }
        }
    }

    /// `sink[i].field`, with the origin of the whole `sink` array: figment keeps no metadata
    /// per array element.
    fn sink_invalid(&self, i: usize, field: &str, value: &str, reason: String) -> ConfigError {
        ConfigError::Invalid(Box::new(Invalid {
            key: format!("sink[{i}].{field}"),
            value: value.into(),
            origin: self.origin("sink"),
            reason,
        }))
    }
}

/// Whether `name` can name an environment variable in every shell: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The gid of group `name` through the system's name service (files, LDAP, sssd alike).
fn gid_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed `group` is a valid out-parameter; every pointer passed lives for the
    // call, and `buf`'s length is what getgrnam_r is told.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::*;

    #[test]
    fn a_minimal_sink_gets_the_documented_defaults() {
        let c = load("[[sink]]\naccount = \"shippo/acme\"\npath = \"/run/app/token\"\n").unwrap();
        let s = &c.sinks[0];
        assert_eq!(s.account.to_string(), "shippo/acme");
        assert_eq!(s.format, SinkFormat::Token);
        assert_eq!((s.mode, s.group, s.on_flag), (0o600, None, OnFlag::Keep));
        let c = load(
            "[[sink]]\naccount = \"shippo/acme\"\npath = \"/run/app/env\"\nformat = \"env\"\ngroup = \"0\"\n",
        )
        .unwrap();
        assert_eq!(
            c.sinks[0].format,
            SinkFormat::Env(EnvNames {
                access_token: "SHIPPO_ACCESS_TOKEN".into(),
                api_version: "SHIPPO_API_VERSION".into()
            })
        );
        assert_eq!(c.sinks[0].group, Some(0));
    }

    #[test]
    fn bad_sinks_name_the_key_and_the_reason() {
        let base = "account = \"shiphero/acme\"\npath = \"/run/app/token\"\n";
        for (toml, key, reason) in [
            (
                "account = \"fedex/acme\"\npath = \"/run/t\"",
                "sink[0].account",
                "unknown provider",
            ),
            (
                "account = \"shiphero/acme\"\npath = \"token\"",
                "sink[0].path",
                "absolute path",
            ),
            (&format!("{base}mode = \"0x1\""), "sink[0].mode", "octal"),
            (
                &format!("{base}mode = \"0644\""),
                "sink[0].mode",
                "other users",
            ),
            (
                &format!("{base}format = \"yaml\""),
                "sink[0].format",
                "one of",
            ),
            (
                &format!("{base}on_flag = \"wipe\""),
                "sink[0].on_flag",
                "keep or remove",
            ),
            (
                &format!("{base}group = \"no-such-group-here\""),
                "sink[0].group",
                "no such group",
            ),
            (
                &format!("{base}format = \"env\"\nenv_names = {{ access_token = \"1X\" }}"),
                "sink[0].env_names.access_token",
                "variable name",
            ),
            (
                &format!("{base}env_names = {{ access_token = \"X\" }}"),
                "sink[0].env_names",
                "only used with",
            ),
            (
                &format!("{base}command = [\"reload-app\"]"),
                "sink[0].command",
                "absolute path",
            ),
        ] {
            let e = load(&format!("[[sink]]\n{toml}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(reason), "{toml}: {e}");
        }
        let e = load(&format!("[[sink]]\n{base}\n[[sink]]\n{base}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sink[1].path") && e.contains("already writes"),
            "{e}"
        );
        let e = load("[[sink]]\naccount = \"shiphero/acme\"\npath = \"/t\"\nowner = \"app\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("owner"), "{e}");
    }
}
