//! `[registry]`: where the registry lives. SQLite in the state folder by default; a
//! PostgreSQL URL makes it a registry several daemons share (docs/deployment.md).
//!
//! The URL is read here as plain data ([`PostgresUrl`]: what libpq's `sslmode` and
//! `sslrootcert` ask for, and the URL shown without its password); the registry turns it into
//! a connection when it opens (`registry::postgres`), so configuration depends on no backend.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Validator};
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
    /// The database password: from `password_file`, else from the systemd credential
    /// `shiptoken.registry-password` when it is there, else none (one in `url`, or none).
    pub fn password(&self) -> Result<Option<Secret>, String> {
        let file = self
            .password_file
            .clone()
            .or_else(|| super::credential_path(PASSWORD_CREDENTIAL));
        let Some(path) = file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read the registry password file {}: {e}",
                path.display()
            )
        })?;
        Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']))))
    }
}

/// TLS as libpq's `sslmode` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: no TLS.
    Disable,
    /// `allow` or `prefer` (the default): TLS when the server offers it, its certificate
    /// not checked.
    Prefer,
    /// `require`: TLS, its certificate not checked (as libpq does).
    Require,
    /// `verify-ca`: TLS, the certificate checked (here the host name too).
    VerifyCa,
    /// `verify-full`: TLS, the certificate and the host name checked.
    VerifyFull,
}

impl SslMode {
    /// Whether the server's certificate is checked.
    pub fn verifies(self) -> bool {
        match self {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => false,
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }
}

/// A PostgreSQL URL as plain data: `sslmode` and `sslrootcert` taken out of its query (the
/// client knows only three modes and no root certificate), the rest kept for the client.
#[derive(Clone, PartialEq)]
pub struct PostgresUrl {
    /// The URL without `sslmode` and `sslrootcert`; it may hold a password, so it is never
    /// printed (see [`shown`]).
    pub rest: String,
    /// `sslmode`, `prefer` when absent.
    pub ssl_mode: SslMode,
    /// `sslrootcert`: the PEM file the server's certificate is checked against.
    pub root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresUrl")
            .field("url", &shown(&self.rest))
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

impl PostgresUrl {
    /// Reads `url`; the error says what is wrong without the password.
    pub fn parse(url: &str) -> Result<PostgresUrl, String> {
        let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let (mut ssl_mode, mut root_cert) = (SslMode::Prefer, None);
        let mut kept = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    ssl_mode = match v.as_ref() {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(format!(
                                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                            ));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(v.as_ref())),
                _ => kept.push((k.into_owned(), v.into_owned())),
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(PostgresUrl {
            rest: parsed.to_string(),
            ssl_mode,
            root_cert,
        })
    }
}

/// `url` without a password, for logs and errors.
pub fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // Options in the query may carry a password too.
            if u.query().is_some_and(|q| q.contains("password")) {
                u.set_query(Some("***"));
            }
            u.to_string()
        }
        // Key-value form ("host=... password=..."): say only that it is one.
        Err(_) => "the PostgreSQL registry (registry.url)".to_string(),
    }
}

/// Whether this build can open a PostgreSQL registry (the `postgres` cargo feature).
pub const POSTGRES_BUILT: bool = cfg!(feature = "postgres");

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
                if !POSTGRES_BUILT {
                    return Err(self.invalid(
                        "registry.url",
                        &shown(u),
                        "this shiptoken was built without PostgreSQL support (the `postgres` cargo feature); leave registry.url empty for SQLite in state_dir, or install a build with it".into(),
                    ));
                }
                if let Err(e) = check_postgres_url(u) {
                    return Err(self.invalid("registry.url", &shown(u), e));
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

/// What the registry will make of `url` when it opens, checked now: its `sslmode` and, with
/// the client built in, the rest as the client reads it.
fn check_postgres_url(url: &str) -> Result<(), String> {
    let bad = |e: String| {
        format!(
            "registry.url is not a PostgreSQL connection URL ({e}); expected postgres://USER@HOST:PORT/DATABASE"
        )
    };
    let parsed = PostgresUrl::parse(url).map_err(bad)?;
    #[cfg(feature = "postgres")]
    parsed
        .rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| bad(e.to_string()))?;
    #[cfg(not(feature = "postgres"))]
    let _ = parsed;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url_as_libpq_reads_them() {
        let url = PostgresUrl::parse(
            "postgres://ship:s3cret@db:5432/x?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(url.ssl_mode, SslMode::VerifyFull);
        assert!(url.ssl_mode.verifies());
        assert_eq!(url.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            url.rest,
            "postgres://ship:s3cret@db:5432/x?connect_timeout=3"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let plain = PostgresUrl::parse("postgres://db/x").unwrap();
        assert_eq!(
            (plain.ssl_mode, plain.rest.as_str()),
            (SslMode::Prefer, "postgres://db/x")
        );
        assert!(!SslMode::Require.verifies());
        let err = PostgresUrl::parse("postgres://db/x?sslmode=bogus").unwrap_err();
        assert!(err.contains("sslmode=bogus"), "{err}");
    }
}
