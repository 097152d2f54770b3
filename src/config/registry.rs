//! `[registry]`: where the registry lives. SQLite in the state folder by default; a
//! PostgreSQL URL makes it a registry several daemons share (docs/deployment.md).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validator};
use crate::registry::postgres::{PostgresTarget, shown};
use crate::secret::Secret;

/// The systemd credential that may hold the PostgreSQL password.
pub const PASSWORD_CREDENTIAL: &str = "shiptoken.registry-password";

/// `[registry]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRegistry {
    /// See [`RegistryConfig::url`].
    pub url: String,
    /// See [`RegistryConfig::password_file`].
    pub password_file: String,
    /// See [`RegistryConfig::host_name`].
    pub host_name: String,
    /// See [`RegistryConfig::lease`].
    pub lease: String,
}

impl Default for RawRegistry {
    fn default() -> Self {
        RawRegistry {
            url: String::new(),
            password_file: String::new(),
            host_name: String::new(),
            lease: "30s".into(),
        }
    }
}

/// The validated `[registry]` section.
#[derive(Clone, PartialEq)]
pub struct RegistryConfig {
    /// `postgres://USER@HOST:PORT/DATABASE?sslmode=...`: a registry shared by every daemon
    /// given the same URL. `None`: SQLite at `<state_dir>/registry.db`.
    pub url: Option<String>,
    /// A file holding the database password (instead of one in `url`); the systemd
    /// credential `shiptoken.registry-password` is read when this is unset.
    pub password_file: Option<PathBuf>,
    /// How this daemon names itself in leases, history and the audit: the machine's host
    /// name unless set. Daemons sharing a registry need different names.
    pub host_name: String,
    /// How long a daemon may work on an account before another may take it over; work that
    /// outlives it is not stored. Cover the upstream timeout twice (a refresh and a probe).
    pub lease: Duration,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url.as_deref().map(shown))
            .field("password_file", &self.password_file)
            .field("host_name", &self.host_name)
            .field("lease", &self.lease)
            .finish()
    }
}

impl RegistryConfig {
    /// The PostgreSQL registry to open, with its password read now; `None` for SQLite.
    pub fn postgres(&self) -> Result<Option<PostgresTarget>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let file = self
            .password_file
            .clone()
            .or_else(|| super::credential_path(PASSWORD_CREDENTIAL));
        let password = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "cannot read the registry password file {}: {e}",
                        path.display()
                    )
                })?;
                Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
            }
            None => None,
        };
        PostgresTarget::new(url, password.as_ref(), &self.host_name)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The machine's host name, the default `registry.host_name`.
fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "shiptoken".into())
}

impl Validator<'_> {
    /// Checks `[registry]`.
    pub(super) fn registry(&self, raw: &RawRegistry) -> Result<RegistryConfig, ConfigError> {
        let url = match raw.url.trim() {
            "" => None,
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                if let Err(e) = PostgresTarget::new(u, None, "check") {
                    return Err(self.invalid("registry.url", &shown(u), e.to_string()));
                }
                Some(u.to_string())
            }
            u => {
                return Err(self.invalid(
                    "registry.url",
                    &shown(u),
                    "must be a postgres:// URL, e.g. postgres://shiptoken@db.internal:5432/shiptoken?sslmode=require; leave it empty for SQLite in state_dir".into(),
                ));
            }
        };
        let host_name = match raw.host_name.trim() {
            "" => machine_name(),
            name if name.len() <= 64 && !name.chars().any(char::is_control) => name.to_string(),
            name => {
                return Err(self.invalid(
                    "registry.host_name",
                    name,
                    "must be at most 64 printable characters".into(),
                ));
            }
        };
        Ok(RegistryConfig {
            url,
            password_file: self.optional_path("registry.password_file", &raw.password_file)?,
            host_name,
            lease: self.duration("registry.lease", &raw.lease)?,
        })
    }
}
