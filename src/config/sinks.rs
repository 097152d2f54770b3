//! `[[sink]]`: files the daemon keeps holding an account's served token, for applications
//! that read a file or an environment file rather than the socket.
//!
//! A child of `config` so it validates with the same `Validator` while its keys live apart
//! from the sections other work changes. How the files are written is `crate::sinks`.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, Invalid, Validator};
use crate::names::{AccountKey, Provider};
use crate::sinks::folder::Trusted as Folder;
pub use crate::sinks::template::SinkTemplate;

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
    /// The template file of a `format = "template"` sink (see [`SinkTemplate`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
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
    /// See [`SinkConfig::dir_created_by_systemd`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir_created_by_systemd: bool,
    /// See [`SinkConfig::allow_group_writable_dir`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_group_writable_dir: bool,
    /// A `mode` with group bits and no `group` gives the file the daemon's own group; refused
    /// unless this says that is meant.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_daemon_group: bool,
}

fn is_false(b: &bool) -> bool {
    !b
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

/// Reads and checks a sink's template file: an absolute path to a regular file that no
/// other user may write (it decides what is written beside the token), whose template
/// compiles and renders with a sample answer.
fn read_template(path: &str) -> Result<SinkTemplate, String> {
    use std::os::unix::fs::MetadataExt;
    if path.is_empty() {
        return Err("format = \"template\" needs template = \"/path/to/file\"".into());
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err("must be an absolute path".into());
    }
    let meta = std::fs::metadata(&path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.mode() & 0o002 != 0 {
        return Err("is writable by every user; chmod o-w it".into());
    }
    let source = std::fs::read_to_string(&path).map_err(|e| format!("cannot be read: {e}"))?;
    crate::sinks::template::check(&source)?;
    Ok(SinkTemplate { path, source })
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
    /// The operator's template, rendered with the token answer's fields.
    Template(SinkTemplate),
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
    /// The folder may be missing at `config check` and start because systemd creates it
    /// (`RuntimeDirectory=`, `StateDirectory=`); otherwise a missing folder is refused.
    pub dir_created_by_systemd: bool,
    /// The folder (or one above it) may be writable by the daemon's own group.
    pub allow_group_writable_dir: bool,
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
        // `..` resolved here, once: every later check and every write sees the real place.
        let path = match normalize(&path) {
            Some(p) if p.file_name().is_some() && p.parent().is_some() => p,
            _ => return Err(bad("path", &s.path, "must be an absolute path to a file")),
        };
        let format = match s.format.as_str() {
            "token" => SinkFormat::Token,
            "json" => SinkFormat::Json,
            "headers" => SinkFormat::Headers,
            "env" => SinkFormat::Env(self.env_names(i, account.provider, &s.env_names)?),
            "template" => SinkFormat::Template(
                read_template(&s.template).map_err(|why| bad("template", &s.template, &why))?,
            ),
            other => {
                return Err(bad(
                    "format",
                    other,
                    "must be one of token, json, env, headers, template",
                ));
            }
        };
        if !matches!(format, SinkFormat::Template(_)) && !s.template.is_empty() {
            return Err(bad(
                "template",
                &s.template,
                "is only used with format = \"template\"",
            ));
        }
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
        let group = self.group(i, &s.group)?;
        if mode & 0o070 != 0 && group.is_none() && !s.allow_daemon_group {
            return Err(bad(
                "mode",
                &s.mode,
                "gives the daemon's own group access, and no group is set (in the shipped unit that group is every socket client's); set group, or allow_daemon_group = true if that group is meant",
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
            group,
            mode,
            on_flag,
            command: s.command.clone(),
            dir_created_by_systemd: s.dir_created_by_systemd,
            allow_group_writable_dir: s.allow_group_writable_dir,
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

/// `path` with `.` and `..` resolved by name (absolute paths only; `None` when `..` climbs
/// above `/`). No symlink may lie on a sink's folder (`crate::sinks::folder`), so resolving by
/// name finds the folder the daemon writes into.
pub fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `path` as the kernel would find it: `..` resolved, and the longest part that exists with
/// its symlinks resolved, so two names of one file compare equal.
fn resolved(path: &Path) -> PathBuf {
    let path = normalize(path).unwrap_or_else(|| path.to_path_buf());
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, name| p.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path,
        }
    }
}

/// The daemon's own files a sink must not be, nor be inside: name, path.
fn own_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    // The state folder last: a sink on the key inside it is named for the key.
    let mut own = vec![
        (
            "the key file",
            crate::keys::KeySource::resolve(config.key_file.as_deref(), &config.state_dir)
                .path()
                .to_path_buf(),
        ),
        ("the socket (socket.path)", config.socket.path.clone()),
    ];
    if let Some(file) = &config.file {
        own.push(("the config file", file.clone()));
    }
    own.push(("the state folder (state_dir)", config.state_dir.clone()));
    own
}

impl Validator<'_> {
    /// The checks of `[[sink]]` that look at the filesystem, for `config check`, `serve` and a
    /// reload: no sink is, or is inside, one of the daemon's own files or another sink; every
    /// sink's folder exists (unless systemd creates it) and is safe to write into.
    pub(super) fn sinks_on_disk(&self, config: &Config) -> Result<(), ConfigError> {
        let own: Vec<_> = own_files(config)
            .into_iter()
            .map(|(what, p)| (what, resolved(&p)))
            .collect();
        let places: Vec<PathBuf> = config.sinks.iter().map(|s| resolved(&s.path)).collect();
        for (i, sink) in config.sinks.iter().enumerate() {
            let shown = sink.path.display().to_string();
            let place = &places[i];
            let clash = own.iter().map(|(what, p)| (what.to_string(), p)).chain(
                places
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(j, p)| (format!("sink[{j}].path"), p)),
            );
            for (what, theirs) in clash {
                if place == theirs || place.starts_with(theirs) {
                    let how = if place == theirs { "is" } else { "is inside" };
                    return Err(self.sink_invalid(
                        i,
                        "path",
                        &shown,
                        format!(
                            "{how} {what} ({}); a sink there would overwrite or remove it",
                            theirs.display()
                        ),
                    ));
                }
            }
            self.sink_folder(i, sink, config)?;
        }
        Ok(())
    }

    /// The sink's folder exists (or systemd creates it) and passes `crate::sinks::folder`.
    fn sink_folder(&self, i: usize, sink: &SinkConfig, config: &Config) -> Result<(), ConfigError> {
        use std::io::ErrorKind::NotFound;
        use std::os::unix::fs::MetadataExt;
        let Some(dir) = sink.path.parent() else {
            return Ok(());
        };
        let mut trusted = Folder::this_process(sink.allow_group_writable_dir);
        // `config check` may run as root for a daemon that runs as its own user: that user
        // owns the state folder (systemd's StateDirectory= makes it so).
        if let Ok(meta) = std::fs::metadata(&config.state_dir) {
            trusted.uids.push(meta.uid());
            if sink.allow_group_writable_dir {
                trusted.writer_gids.push(meta.gid());
            }
        }
        let shown = sink.path.display().to_string();
        match crate::sinks::folder::open_dir(dir, &trusted) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == NotFound && sink.dir_created_by_systemd => Ok(()),
            Err(e) if e.kind() == NotFound => Err(self.sink_invalid(
                i,
                "path",
                &shown,
                format!(
                    "its folder {} does not exist; create it, or set dir_created_by_systemd = true if systemd creates it before start (RuntimeDirectory=, StateDirectory=)",
                    dir.display()
                ),
            )),
            Err(e) => Err(self.sink_invalid(
                i,
                "path",
                &shown,
                format!("its folder is not safe to write a token into: {e}"),
            )),
        }
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
