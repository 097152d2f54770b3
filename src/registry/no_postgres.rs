//! The shared registry in a build without the `postgres` cargo feature: there is none. The
//! configuration refuses `registry.url` already (`config::registry`), so a [`PostgresTarget`]
//! is never made here; the type (uninhabited) and [`follow`] keep the daemon's code the same
//! in both builds, with the compiler proving the PostgreSQL paths unreachable.

use std::convert::Infallible;

use crate::config::RegistryConfig;

/// A PostgreSQL registry to open; none can exist in this build.
#[derive(Clone, Debug)]
pub struct PostgresTarget {
    /// The URL without its password.
    pub shown: String,
    /// `registry.host_name`.
    pub host: String,
    never: Infallible,
}

impl PostgresTarget {
    /// What this build says of a PostgreSQL URL given anywhere (`registry.url`, `registry
    /// migrate --to`).
    pub fn new(
        _url: &str,
        _password: Option<&crate::secret::Secret>,
        _host: &str,
    ) -> Result<Self, String> {
        Err(UNSUPPORTED.into())
    }

    /// Proves a value of this type cannot be.
    pub fn absurd<T>(&self) -> T {
        match self.never {}
    }
}

/// Why a PostgreSQL URL is refused by this build.
pub const UNSUPPORTED: &str =
    "this shiptoken was built without PostgreSQL support (the `postgres` cargo feature)";

impl RegistryConfig {
    /// The PostgreSQL registry to open: none in this build, and `registry.url` refused.
    pub fn postgres(&self) -> Result<Option<PostgresTarget>, String> {
        match &self.url {
            None => Ok(None),
            Some(_) => Err(format!("registry.url: {UNSUPPORTED}")),
        }
    }
}

/// The change feed of a shared registry: none in this build.
pub mod follow {
    use super::PostgresTarget;
    use crate::registry::Registry;

    /// Never runs: no [`PostgresTarget`] exists to follow.
    pub async fn follow(
        _registry: Registry,
        target: PostgresTarget,
        _connected: prometheus::IntGauge,
        _stop: tokio_util::sync::CancellationToken,
    ) {
        target.absurd()
    }
}
