//! The providers: each one a folder (`shiphero/`, `shippo/`) holding everything that is that
//! provider's (API calls, evidence rows, config section, add rules and CLI arguments,
//! simulator), and here what the rest of the daemon sees of them: the [`Upstream`] trait, the
//! [`Rules`] each provider states once, and the two registration points indexed by
//! [`Provider`], [`Providers`] (clients) and [`rules`]. docs/providers.md is the recipe for
//! adding one.
//!
//! [`evidence`] holds the machinery that matches an answer against a provider's rows; the
//! rotation engine decides what a [`Verdict`] does to an account.

pub mod account;
pub mod evidence;
mod http;
pub mod oauth2;
pub mod shiphero;
pub mod shippo;

pub(crate) use http::{Answer, excerpt, oauth_error_code, retry_after, send, summary};
pub use http::{POOL_IDLE, client_builder, http_client, http_get, plain_client};

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::metrics::{CheckResult, Metrics};
use crate::names::{AccountKey, Provider};
use crate::secret::Secret;

/// What one upstream answer proves about an account.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The token works for its account.
    Pass {
        /// The provider's id of the account the token acts for, when the answer names one.
        identity: Option<String>,
        /// A detail worth keeping in the history (ShipHero's `request_id`).
        note: Option<String>,
    },
    /// The provider refused the credential, in a documented way: evidence.
    Refused(String),
    /// The provider's own format, in a way no document covers (null account data, an unknown
    /// error code). `signature` identifies the answer so repetitions can be recognised.
    Undocumented {
        /// A short, stable form of the answer (e.g. `null account data`, `code 12`).
        signature: String,
        /// What was answered.
        message: String,
    },
    /// The probe is wrong for this token: a missing scope, a query the schema rejects.
    Misconfigured(String),
    /// The provider asked us to slow down; wait this long.
    Throttled {
        /// How long the provider said to wait.
        wait: Duration,
        /// What it said.
        message: String,
    },
    /// Says nothing about the account: a proxy page, a timeout, a server error.
    Inconclusive(String),
}

impl Verdict {
    /// The `result` label the metrics count this verdict under.
    pub fn metric_result(&self) -> CheckResult {
        match self {
            Verdict::Pass { .. } => CheckResult::Ok,
            Verdict::Refused(_) => CheckResult::Rejected,
            Verdict::Undocumented { .. } => CheckResult::Undocumented,
            Verdict::Misconfigured(_) => CheckResult::Misconfigured,
            Verdict::Throttled { .. } => CheckResult::Throttled,
            Verdict::Inconclusive(_) => CheckResult::Failed,
        }
    }

    /// The human-readable message, as stored in `last_error`.
    pub fn message(&self) -> &str {
        match self {
            Verdict::Pass { .. } => "the token works",
            Verdict::Refused(m) | Verdict::Misconfigured(m) | Verdict::Inconclusive(m) => m,
            Verdict::Undocumented { message, .. } | Verdict::Throttled { message, .. } => message,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// A token a provider issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The access token.
    pub access_token: Secret,
    /// Its lifetime; `None` for tokens that never expire.
    pub lifetime: Option<Duration>,
    /// A new refresh credential the answer rotated to, which replaces the stored one before
    /// the token is served (RFC 6749 6); `None` keeps the stored one.
    pub refresh: Option<Secret>,
}

/// The one view the rotation engine has of a provider.
pub trait Upstream: Send + Sync {
    /// Which provider this is.
    fn provider(&self) -> Provider;

    /// Whether tokens are renewed from a stored refresh credential (ShipHero); a provider
    /// without renewal only has its tokens probed (Shippo).
    fn renews(&self) -> bool;

    /// Gets a new access token from the refresh credential. Never a `Pass` in the error.
    fn renew<'a>(&'a self, refresh: &'a Secret) -> BoxFuture<'a, Result<Issued, Verdict>>;

    /// Proves the token works with a real API call. `credential` is the account's stored
    /// refresh credential when the provider's [`Rules::probe_reads_credential`] asks for it.
    fn probe<'a>(
        &'a self,
        token: &'a Secret,
        credential: Option<&'a Secret>,
    ) -> BoxFuture<'a, Verdict>;

    /// What the daemon knows of this provider without a client (the same as [`rules`]).
    fn rules(&self) -> &'static Rules;
}

/// What a provider states once, needing no client: each provider's folder defines its
/// `RULES`, and [`rules`] finds them by [`Provider`]. Plain functions, so callers without the
/// [`Providers`] table (the socket API, the CLI, pure functions of the engine) reach them.
pub struct Rules {
    /// Every call whose answers are judged, with its evidence rows.
    pub calls: &'static [&'static evidence::Call],
    /// Reads an add request's fields into the account to register, or says why not.
    pub read_add: fn(account::AddFields, Timestamp) -> account::Read,
    /// Headers besides `Authorization` that a client must send with a served token
    /// (Shippo's `Shippo-API-Version`), from the live configuration.
    pub served_headers: for<'c> fn(&'c Config) -> Vec<(&'static str, &'c str)>,
    /// Why an account without any token cannot be probed, and what to do about it.
    pub no_token_hint: fn(&AccountKey) -> String,
    /// How the authenticating proxy forwards applications' calls; `None`: not proxied.
    pub proxy: Option<&'static ProxyRules>,
    /// Whether probes and proxied calls need the account's stored credential (a carrier
    /// account's probe and API host are its settings, which live in the credential); read
    /// from the registry for each.
    pub reads_credential: bool,
    /// Why the configuration cannot serve an account with this stored credential (a carrier
    /// account naming a preset the configuration lost), told at start-up rather than at the
    /// account's next token call; `None` for providers whose settings are all in the config.
    pub stranded: Option<fn(&Config, &Secret) -> Option<String>>,
}

/// What the proxy (`/v1/proxy/<provider>/<account>/<path>`) must know of a provider's API.
pub struct ProxyRules {
    /// The API base requests are forwarded under, from the live configuration and, where the
    /// provider's [`Rules::reads_credential`], the account's stored credential; or why the
    /// account has none.
    pub api_base: fn(&Config, Option<&Secret>) -> Result<String, String>,
    /// Which proxied calls (method, path under the API base) are judged at all: only the
    /// API whose answers the provider documents (ShipHero's `POST graphql`, not its
    /// `auth/*` endpoints, whose refusals are about the request's own credentials).
    pub judged: fn(&reqwest::Method, &str) -> bool,
    /// What a proxied answer (its whole body) proves about the account, on the provider's
    /// rows for its whole API: never the probe's, whose answers have a known shape.
    pub(crate) judge: fn(&Answer) -> Verdict,
    /// Whether [`ProxyRules::repeatable`] needs the request body (ShipHero: a GraphQL query
    /// may be repeated, a mutation not), so the proxy reads it before forwarding.
    pub reads_body: bool,
    /// Whether a request (method, body when read) changes nothing upstream, so it may be
    /// sent again with a newer token after the first was refused.
    pub repeatable: fn(&reqwest::Method, &[u8]) -> bool,
}

/// The [`Rules`] of `provider`: the registration point of what providers state, one line each.
pub fn rules(provider: Provider) -> &'static Rules {
    match provider {
        Provider::ShipHero => &shiphero::RULES,
        Provider::Shippo => &shippo::RULES,
        Provider::OAuth2 => &oauth2::RULES,
    }
}

/// The evidence calls of `provider` (its [`Rules::calls`]).
pub fn calls(provider: Provider) -> &'static [&'static evidence::Call] {
    rules(provider).calls
}

/// Reads an add request with its provider's rules (its [`Rules::read_add`]).
pub fn read_add(fields: account::AddFields, now: Timestamp) -> account::Read {
    (rules(fields.key.provider).read_add)(fields, now)
}

/// Every provider, each behind the one trait the rest of the daemon knows, indexed by
/// [`Provider`]: the registration point of providers, one line each in [`Providers::get`].
pub struct Providers {
    shiphero: shiphero::ShipHero,
    shippo: shippo::Shippo,
    oauth2: oauth2::OAuth2,
}

impl Providers {
    /// Builds each provider's client from its section of the configuration; each has its own
    /// connection pool and timeout.
    pub fn new(config: &Config, metrics: &Metrics) -> Providers {
        Providers {
            shiphero: shiphero::ShipHero::from_config(&config.shiphero, metrics),
            shippo: shippo::Shippo::from_config(&config.shippo, metrics),
            oauth2: oauth2::OAuth2::from_config(&config.oauth2, metrics),
        }
    }

    /// Builds the table from providers made elsewhere (tests that point them at nowhere).
    pub fn from_parts(
        shiphero: shiphero::ShipHero,
        shippo: shippo::Shippo,
        oauth2: oauth2::OAuth2,
    ) -> Providers {
        Providers {
            shiphero,
            shippo,
            oauth2,
        }
    }

    /// The provider's implementation.
    pub fn get(&self, provider: Provider) -> &dyn Upstream {
        match provider {
            Provider::ShipHero => &self.shiphero,
            Provider::Shippo => &self.shippo,
            Provider::OAuth2 => &self.oauth2,
        }
    }

    /// Shippo's client, which the OAuth flow also uses for its code exchange.
    pub fn shippo(&self) -> &shippo::Shippo {
        &self.shippo
    }
}
