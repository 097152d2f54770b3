//! The PostgreSQL backend: one registry shared by several daemons.
//!
//! It keeps what the SQLite backend keeps (accounts with sealed tokens, history, OAuth states,
//! the audit), in tables of its own, and adds what sharing needs:
//! - **Leases.** Before upstream work on an account a daemon takes a lease in the row, timed by
//!   the database's clock and numbered by a fence that every lease bumps. Its saves are
//!   conditional on that fence: a daemon paused past its lease, whose account another daemon
//!   took over, stores nothing ([`RegistryError::LeaseLost`]).
//! - **A change feed.** Every write notifies `shiptoken_accounts` with the account it changed,
//!   delivered at commit; each daemon reloads that account ([`super::follow`]).
//!
//! The client is the blocking `postgres` crate on the registry's owner thread, as SQLite is:
//! one writer per daemon, group commit, no async worker ever waits on the database. A lost
//! connection is opened again on the next call; meanwhile writes fail, and the registry keeps
//! new tokens in memory and writes them back (see `owner`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postgres::{Client, GenericClient, Row};

use super::seal::{self, Sealer};
use super::store::{Dump, DumpedEvent, LeaseAnswer, Save, Store};
use super::{
    AccountRecord, AuditEntry, AuditQuery, Doubt, Event, NewAccount, RegistryError, TokenRecord,
    check_token_times,
};
use crate::clock::Timestamp;
use crate::keys::KeySource;
use crate::names::{AccountKey, Provider, Status};
use crate::secret::Secret;

/// The channel every write notifies, with `generation revision provider/name`.
pub const CHANNEL: &str = "shiptoken_accounts";

/// Serializes migrations of daemons starting at once (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0053_4849_5054_4f4b; // "SHIPTOK"

/// The schema, one entry per version, applied in order inside one transaction.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE accounts (
    id bigserial PRIMARY KEY,
    provider text NOT NULL,
    name text NOT NULL,
    email text,
    first_name text,
    last_name text,
    status text NOT NULL,
    status_since bigint NOT NULL,
    created_at bigint NOT NULL,
    last_rotated_at bigint,
    last_verified_at bigint,
    last_error text,
    failures bigint NOT NULL DEFAULT 0,
    next_attempt_at bigint,
    upstream_id text,
    token_doubt_since bigint,
    token_doubt_reason text,
    token_doubt_signature text,
    renew_doubt_since bigint,
    renew_doubt_reason text,
    generation bigint NOT NULL,
    revision bigint NOT NULL DEFAULT 0,
    refresh_token text,
    refresh_fingerprint text,
    access_token text,
    issued_at bigint,
    expires_at bigint,
    candidate_token text,
    candidate_issued_at bigint,
    candidate_expires_at bigint,
    lease_owner text,
    lease_until timestamptz,
    lease_fence bigint NOT NULL DEFAULT 0,
    UNIQUE (provider, name)
);
CREATE UNIQUE INDEX accounts_email ON accounts (provider, lower(email));
CREATE UNIQUE INDEX accounts_refresh ON accounts (refresh_fingerprint);
CREATE SEQUENCE account_generations;
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    at bigint NOT NULL,
    provider text NOT NULL,
    account text NOT NULL,
    generation bigint,
    kind text NOT NULL,
    detail text,
    host text NOT NULL
);
CREATE INDEX events_account ON events (provider, account, id);
CREATE TABLE oauth_states (
    state_hash text PRIMARY KEY,
    provider text NOT NULL,
    account text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    used_at bigint,
    host text NOT NULL
);
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    host text NOT NULL,
    at bigint NOT NULL,
    last_at bigint NOT NULL,
    count bigint NOT NULL,
    provider text NOT NULL,
    account text NOT NULL,
    client text,
    uid bigint NOT NULL,
    gid bigint NOT NULL,
    pid integer,
    exe text,
    fingerprint text NOT NULL
);
CREATE INDEX audit_account ON audit (provider, account, id);
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
"#];

/// How to reach the database and how this daemon names itself there.
#[derive(Clone)]
pub struct PostgresTarget {
    /// Parsed from `registry.url`, with the password from `password_file` if given.
    pub config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    pub shown: String,
    /// `registry.host_name`: written into leases, history and the audit.
    pub host: String,
    /// TLS for `sslmode=prefer|require` (certificates checked against the system's roots).
    pub tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("url", &self.shown)
            .field("host", &self.host)
            .finish()
    }
}

/// What can be wrong with `registry.url`.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not a URL tokio-postgres understands.
    #[error(
        "registry.url is not a PostgreSQL connection URL ({0}); expected postgres://USER@HOST:PORT/DATABASE"
    )]
    Url(String),
    /// TLS could not be set up.
    #[error("cannot set up TLS for the PostgreSQL registry: {0}")]
    Tls(String),
}

impl PostgresTarget {
    /// Parses `url`; `password` (from `registry.password_file` or the credential) replaces
    /// any password in it. `sslmode` and `sslrootcert` mean what they mean to libpq (see
    /// [`Tls`]).
    pub fn new(url: &str, password: Option<&Secret>, host: &str) -> Result<Self, TargetError> {
        let (rest, tls) = Tls::from_url(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| TargetError::Url(e.to_string()))?;
        if let Some(p) = password {
            config.password(p.expose());
        }
        config.ssl_mode(tls.mode);
        // A peer that vanishes without closing (a dead host, a cut link) must not hang the
        // registry thread: connect and TCP timeouts, keepalives.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(15));
        if config.get_application_name().is_none() {
            config.application_name(format!("shiptoken {host}"));
        }
        Ok(PostgresTarget {
            shown: shown(url),
            config,
            host: host.to_string(),
            tls: tls.connector()?,
        })
    }
}

/// TLS as libpq's `sslmode` describes it, which is what operators expect of a URL:
/// `disable`; `allow`/`prefer` (the default) and `require` encrypt without checking the
/// server's certificate; `verify-ca` and `verify-full` check it against `sslrootcert` (a PEM
/// file) or the system's roots, and here both check the host name too.
struct Tls {
    mode: tokio_postgres::config::SslMode,
    verify: bool,
    root_cert: Option<PathBuf>,
}

impl Tls {
    /// Takes `sslmode` and `sslrootcert` out of the URL's query (tokio-postgres knows only
    /// three modes and no root certificate); returns the rest of the URL.
    fn from_url(url: &str) -> Result<(String, Tls), TargetError> {
        use tokio_postgres::config::SslMode;
        let mut parsed = url::Url::parse(url).map_err(|e| TargetError::Url(e.to_string()))?;
        let mut tls = Tls {
            mode: SslMode::Prefer,
            verify: false,
            root_cert: None,
        };
        let mut kept = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    (tls.mode, tls.verify) = match v.as_ref() {
                        "disable" => (SslMode::Disable, false),
                        "allow" | "prefer" => (SslMode::Prefer, false),
                        "require" => (SslMode::Require, false),
                        "verify-ca" | "verify-full" => (SslMode::Require, true),
                        other => {
                            return Err(TargetError::Url(format!(
                                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => tls.root_cert = Some(PathBuf::from(v.as_ref())),
                _ => kept.push((k.into_owned(), v.into_owned())),
            }
        }
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok((parsed.to_string(), tls))
    }

    fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TargetError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let tls_error = |e: rustls::Error| TargetError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?;
        let config = match (&self.root_cert, self.verify) {
            (_, false) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth(),
            (Some(file), true) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                let certs =
                    rustls::pki_types::CertificateDer::pem_file_iter(file).map_err(|e| {
                        TargetError::Tls(format!("sslrootcert {}: {e}", file.display()))
                    })?;
                for cert in certs {
                    let cert = cert.map_err(|e| {
                        TargetError::Tls(format!("sslrootcert {}: {e}", file.display()))
                    })?;
                    roots.add(cert).map_err(tls_error)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            (None, true) => builder
                .with_platform_verifier()
                .map_err(tls_error)?
                .with_no_client_auth(),
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// `sslmode=prefer|require`: encrypted, the certificate not checked (as libpq does), the
/// handshake's signatures still are.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
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

impl From<postgres::Error> for RegistryError {
    fn from(e: postgres::Error) -> Self {
        RegistryError::from_pg(&e)
    }
}

/// The store: one connection of the owner thread, opened again after a loss.
pub(crate) struct PgStore {
    target: PostgresTarget,
    client: Option<Client>,
    sealer: Sealer,
    /// Fences of the leases this daemon holds.
    leases: HashMap<AccountKey, i64>,
    /// The last failed connection attempt and its error: calls within [`RECONNECT_AFTER`]
    /// fail at once instead of each waiting for a connect timeout behind the others.
    down: Option<(std::time::Instant, String)>,
}

/// How long after a failed connection attempt calls fail without trying again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Connects, migrates, proves the key, and loads every account.
pub(crate) fn open_blocking(
    target: &PostgresTarget,
    key: &KeySource,
) -> Result<(PgStore, Vec<AccountRecord>), RegistryError> {
    let mut client = connect(target)?;
    migrate(&mut client)?;
    // Every host seals with the same key; a new key here would seal tokens no other host
    // can open, so a missing one is an error.
    let sealer = Sealer::new(&key.load(false)?);
    check_key(&mut client, &sealer, target, key)?;
    let mut store = PgStore {
        target: target.clone(),
        client: Some(client),
        sealer,
        leases: HashMap::new(),
        down: None,
    };
    let records = store.load_all()?;
    Ok((store, records))
}

fn connect(target: &PostgresTarget) -> Result<Client, RegistryError> {
    postgres::Config::from(target.config.clone())
        .connect(target.tls.clone())
        .map_err(|e| {
            RegistryError::Postgres(format!(
                "cannot connect to {}: {}",
                target.shown,
                pg_text(&e)
            ))
        })
}

fn pg_text(e: &postgres::Error) -> String {
    match RegistryError::from_pg(e) {
        RegistryError::Postgres(t) => t,
        other => other.to_string(),
    }
}

/// A registration that lost a race with the same one on another host: the unique index
/// refused it; said as the duplicate it is.
fn duplicate(e: postgres::Error, key: &AccountKey) -> RegistryError {
    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
        RegistryError::AccountExists(key.clone())
    } else {
        e.into()
    }
}

impl RegistryError {
    /// A database error's own message (its Display is only "db error"), or the client
    /// error with its cause ("error connecting to server: Connection refused").
    fn from_pg(e: &postgres::Error) -> RegistryError {
        match e.as_db_error() {
            Some(db) => RegistryError::Postgres(format!("{}: {}", db.severity(), db.message())),
            None => RegistryError::Postgres(format!("{e}{}", source_text(e))),
        }
    }
}

/// The cause of a client error ("error connecting to server: Connection refused").
fn source_text(e: &postgres::Error) -> String {
    use std::error::Error as _;
    e.source().map(|s| format!(": {s}")).unwrap_or_default()
}

/// Applies the migrations this database lacks, one daemon at a time.
fn migrate(client: &mut Client) -> Result<(), RegistryError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    // Asked first, since CREATE TABLE IF NOT EXISTS logs a notice on every start.
    let exists: bool = tx
        .query_one("SELECT to_regclass('shiptoken_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        tx.batch_execute("CREATE TABLE shiptoken_schema (version integer NOT NULL)")?;
    }
    let found: i64 = tx
        .query_opt("SELECT version FROM shiptoken_schema", &[])?
        .map_or(0, |r| i64::from(r.get::<_, i32>(0)));
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if found > known {
        return Err(RegistryError::NewerSchema { found, known });
    }
    for sql in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(sql)?;
    }
    let version = i32::try_from(known).unwrap_or(i32::MAX);
    tx.execute("DELETE FROM shiptoken_schema", &[])?;
    tx.execute(
        "INSERT INTO shiptoken_schema (version) VALUES ($1)",
        &[&version],
    )?;
    tx.commit()?;
    Ok(())
}

/// Proves `sealer` is the registry's key; the first daemon to start writes the check.
fn check_key(
    client: &mut Client,
    sealer: &Sealer,
    target: &PostgresTarget,
    key: &KeySource,
) -> Result<(), RegistryError> {
    client.execute(
        "INSERT INTO meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
        &[&seal::key_check(sealer)?],
    )?;
    let stored: String = client
        .query_one("SELECT value FROM meta WHERE key = 'key_check'", &[])?
        .get(0);
    if seal::opens_key_check(sealer, &stored) {
        Ok(())
    } else {
        Err(RegistryError::WrongKey {
            db: target.shown.clone().into(),
            key: key.path().to_path_buf(),
        })
    }
}

const SELECT_ACCOUNT: &str = "
    SELECT provider, name, email, first_name, last_name, status, status_since, created_at,
           last_rotated_at, last_verified_at, last_error, failures, next_attempt_at,
           access_token, issued_at, expires_at, candidate_token, candidate_issued_at,
           candidate_expires_at, refresh_token IS NOT NULL, generation, revision, upstream_id,
           token_doubt_since, token_doubt_reason, token_doubt_signature, renew_doubt_since,
           renew_doubt_reason
    FROM accounts";

fn row_to_record(row: &Row, sealer: &Sealer) -> Result<AccountRecord, RegistryError> {
    let provider: String = row.get(0);
    let name: String = row.get(1);
    let status: String = row.get(5);
    let (Some(p), Some(status)) = (Provider::parse(&provider), Status::parse(&status)) else {
        return Err(RegistryError::UnknownRow(format!(
            "{provider}/{name} (status {status})"
        )));
    };
    let token = |col: usize, column: &str| -> Result<Option<TokenRecord>, RegistryError> {
        let Some(sealed) = row.get::<_, Option<String>>(col) else {
            return Ok(None);
        };
        let plain = sealer.open(&sealed, &seal::ad(&provider, &name, column))?;
        Ok(Some(TokenRecord {
            access_token: Secret::new(plain),
            issued_at: Timestamp::from_millis(row.get::<_, Option<i64>>(col + 1).unwrap_or(0)),
            expires_at: row
                .get::<_, Option<i64>>(col + 2)
                .map(Timestamp::from_millis),
        }))
    };
    let ts = |col: usize| row.get::<_, Option<i64>>(col).map(Timestamp::from_millis);
    let doubt = |col: usize, signature: Option<String>| {
        ts(col).map(|since| Doubt {
            since,
            reason: row.get::<_, Option<String>>(col + 1).unwrap_or_default(),
            signature,
        })
    };
    Ok(AccountRecord {
        email: row.get(2),
        first_name: row.get(3),
        last_name: row.get(4),
        status,
        status_since: Timestamp::from_millis(row.get(6)),
        created_at: Timestamp::from_millis(row.get(7)),
        last_rotated_at: ts(8),
        last_verified_at: ts(9),
        last_error: row.get(10),
        failures: u32::try_from(row.get::<_, i64>(11)).unwrap_or(u32::MAX),
        next_attempt_at: ts(12),
        current: token(13, "access_token")?,
        candidate: token(16, "candidate_token")?,
        has_refresh_token: row.get(19),
        generation: row.get(20),
        revision: row.get(21),
        upstream_id: row.get(22),
        token_doubt: doubt(23, row.get(25)),
        renew_doubt: doubt(26, None),
        key: AccountKey { provider: p, name },
    })
}

/// Seals `value` for its column, or NULL.
fn sealed(
    sealer: &Sealer,
    key: &AccountKey,
    column: &str,
    value: Option<&Secret>,
) -> Result<Option<String>, RegistryError> {
    value
        .map(|v| {
            sealer.seal(
                v.expose(),
                &seal::ad(key.provider.as_str(), &key.name, column),
            )
        })
        .transpose()
        .map_err(RegistryError::from)
}

/// Tells every daemon (this one too) that `record` changed, at commit.
fn notify(
    c: &mut impl GenericClient,
    key: &AccountKey,
    generation: i64,
    revision: i64,
) -> Result<(), RegistryError> {
    let payload = format!("{generation} {revision} {key}");
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
    Ok(())
}

fn insert_event(
    c: &mut impl GenericClient,
    host: &str,
    key: &AccountKey,
    generation: Option<i64>,
    at: Timestamp,
    kind: &str,
    detail: Option<&str>,
) -> Result<(), RegistryError> {
    c.execute(
        "INSERT INTO events (at, provider, account, generation, kind, detail, host)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &at.millis(),
            &key.provider.as_str(),
            &key.name,
            &generation,
            &kind,
            &detail,
            &host,
        ],
    )?;
    Ok(())
}

/// Writes every mutable column of `r`, conditional on its registration, on `expected` (the
/// stored revision; without it, on no newer revision being stored: a record kept in memory
/// while the database was away never lands over another daemon's later work) and on `fence`
/// (the lease this daemon holds on it).
fn write_record(
    c: &mut impl GenericClient,
    sealer: &Sealer,
    r: &AccountRecord,
    expected: Option<i64>,
    fence: Option<i64>,
) -> Result<(), RegistryError> {
    let millis = |t: Option<Timestamp>| t.map(Timestamp::millis);
    let (cur, cand) = (r.current.as_ref(), r.candidate.as_ref());
    let written = c.execute(
        "UPDATE accounts SET status = $4, status_since = $5, last_rotated_at = $6,
                last_verified_at = $7, last_error = $8, failures = $9, next_attempt_at = $10,
                upstream_id = $11, token_doubt_since = $12, token_doubt_reason = $13,
                token_doubt_signature = $14, renew_doubt_since = $15, renew_doubt_reason = $16,
                revision = $17, access_token = $18, issued_at = $19, expires_at = $20,
                candidate_token = $21, candidate_issued_at = $22, candidate_expires_at = $23
         WHERE provider = $1 AND name = $2 AND generation = $3
           AND (revision = $24 OR ($24::bigint IS NULL AND revision <= $17))
           AND ($25::bigint IS NULL OR lease_fence = $25)",
        &[
            &r.key.provider.as_str(),
            &r.key.name,
            &r.generation,
            &r.status.as_str(),
            &r.status_since.millis(),
            &millis(r.last_rotated_at),
            &millis(r.last_verified_at),
            &r.last_error,
            &i64::from(r.failures),
            &millis(r.next_attempt_at),
            &r.upstream_id,
            &millis(r.token_doubt.as_ref().map(|d| d.since)),
            &r.token_doubt.as_ref().map(|d| d.reason.as_str()),
            &r.token_doubt.as_ref().and_then(|d| d.signature.as_deref()),
            &millis(r.renew_doubt.as_ref().map(|d| d.since)),
            &r.renew_doubt.as_ref().map(|d| d.reason.as_str()),
            &r.revision,
            &sealed(sealer, &r.key, "access_token", cur.map(|t| &t.access_token))?,
            &cur.map(|t| t.issued_at.millis()),
            &cur.and_then(|t| t.expires_at.map(Timestamp::millis)),
            &sealed(
                sealer,
                &r.key,
                "candidate_token",
                cand.map(|t| &t.access_token),
            )?,
            &cand.map(|t| t.issued_at.millis()),
            &cand.and_then(|t| t.expires_at.map(Timestamp::millis)),
            &expected,
            &fence,
        ],
    )?;
    if written == 1 {
        return Ok(());
    }
    // Why not: another daemon took the lease over, or the record moved on.
    let fence_now: Option<i64> = c
        .query_opt(
            "SELECT lease_fence FROM accounts WHERE provider = $1 AND name = $2 AND generation = $3",
            &[&r.key.provider.as_str(), &r.key.name, &r.generation],
        )?
        .map(|row| row.get(0));
    match (fence, fence_now) {
        (Some(mine), Some(now)) if mine != now => Err(RegistryError::LeaseLost(r.key.clone())),
        _ => Err(RegistryError::Stale(r.key.clone())),
    }
}

impl PgStore {
    /// Runs `f` on a live connection, opening one if the last was lost; a call that fails
    /// on a broken connection drops it, so the next call connects again.
    fn with<R>(
        &mut self,
        f: impl FnOnce(
            &mut Client,
            &Sealer,
            &str,
            &mut HashMap<AccountKey, i64>,
        ) -> Result<R, RegistryError>,
    ) -> Result<R, RegistryError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            if let Some((at, error)) = &self.down
                && at.elapsed() < RECONNECT_AFTER
            {
                return Err(RegistryError::Postgres(error.clone()));
            }
            match connect(&self.target) {
                Ok(client) => {
                    if self.down.take().is_some() {
                        tracing::info!(registry = %self.target.shown, "connected to the PostgreSQL registry again");
                    }
                    self.client = Some(client);
                }
                Err(e) => {
                    self.down = Some((std::time::Instant::now(), e.to_string()));
                    return Err(e);
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(RegistryError::Closed);
        };
        let result = f(client, &self.sealer, &self.target.host, &mut self.leases);
        if client.is_closed() {
            self.client = None;
        }
        result
    }
}

fn load_one(
    c: &mut impl GenericClient,
    sealer: &Sealer,
    key: &AccountKey,
) -> Result<AccountRecord, RegistryError> {
    let sql = format!("{SELECT_ACCOUNT} WHERE provider = $1 AND name = $2");
    match c.query_opt(&sql, &[&key.provider.as_str(), &key.name])? {
        Some(row) => row_to_record(&row, sealer),
        None => Err(RegistryError::NotFound(key.clone())),
    }
}

fn key_of(provider: &str, name: String) -> Result<AccountKey, RegistryError> {
    Provider::parse(provider)
        .map(|provider| AccountKey {
            provider,
            name: name.clone(),
        })
        .ok_or_else(|| RegistryError::UnknownRow(format!("{provider}/{name}")))
}

impl Store for PgStore {
    fn load_all(&mut self) -> Result<Vec<AccountRecord>, RegistryError> {
        self.with(|c, sealer, _, _| {
            c.query(SELECT_ACCOUNT, &[])?
                .iter()
                .map(|row| row_to_record(row, sealer))
                .collect()
        })
    }

    fn load(&mut self, key: &AccountKey) -> Result<AccountRecord, RegistryError> {
        self.with(|c, sealer, _, _| load_one(c, sealer, key))
    }

    fn load_some(&mut self, keys: &[AccountKey]) -> Result<Vec<AccountRecord>, RegistryError> {
        let names: Vec<String> = keys.iter().map(AccountKey::to_string).collect();
        self.with(|c, sealer, _, _| {
            let sql = format!("{SELECT_ACCOUNT} WHERE provider || '/' || name = ANY($1)");
            c.query(&sql, &[&names])?
                .iter()
                .map(|row| row_to_record(row, sealer))
                .collect()
        })
    }

    fn save_all(&mut self, saves: &[Save<'_>]) -> Result<(), RegistryError> {
        self.with(|c, sealer, host, leases| {
            let mut tx = c.transaction()?;
            for save in saves {
                let r = save.record;
                let fence = leases.get(&r.key).copied();
                write_record(&mut tx, sealer, r, save.expected, fence)?;
                for note in save.notes {
                    insert_event(
                        &mut tx,
                        host,
                        &r.key,
                        Some(r.generation),
                        save.at,
                        note.kind.as_str(),
                        note.detail.as_deref(),
                    )?;
                }
                notify(&mut tx, &r.key, r.generation, r.revision)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn insert(&mut self, new: &NewAccount, now: Timestamp) -> Result<AccountRecord, RegistryError> {
        if let Some(t) = &new.access_token {
            check_token_times(t)?;
        }
        self.with(|c, sealer, host, _| {
            let mut tx = c.transaction()?;
            check_unique(&mut tx, new)?;
            let generation: i64 = tx
                .query_one("SELECT nextval('account_generations')", &[])?
                .get(0);
            let access = new.access_token.as_ref();
            tx.execute(
                "INSERT INTO accounts (provider, name, email, first_name, last_name, status,
                                       status_since, created_at, generation, refresh_token,
                                       refresh_fingerprint, candidate_token, candidate_issued_at,
                                       candidate_expires_at)
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &new.key.provider.as_str(),
                    &new.key.name,
                    &new.email,
                    &new.first_name,
                    &new.last_name,
                    &now.millis(),
                    &generation,
                    &sealed(
                        sealer,
                        &new.key,
                        "refresh_token",
                        new.refresh_token.as_ref(),
                    )?,
                    &new.refresh_token.as_ref().map(Secret::fingerprint),
                    &sealed(
                        sealer,
                        &new.key,
                        "candidate_token",
                        access.map(|t| &t.access_token),
                    )?,
                    &access.map(|t| t.issued_at.millis()),
                    &access.and_then(|t| t.expires_at.map(Timestamp::millis)),
                ],
            )
            .map_err(|e| duplicate(e, &new.key))?;
            let detail = new.added_detail();
            insert_event(
                &mut tx,
                host,
                &new.key,
                Some(generation),
                now,
                "added",
                Some(&detail),
            )?;
            notify(&mut tx, &new.key, generation, 0)?;
            let record = load_one(&mut tx, sealer, &new.key)?;
            tx.commit().map_err(|e| duplicate(e, &new.key))?;
            Ok(record)
        })
    }

    fn delete(&mut self, key: &AccountKey, now: Timestamp) -> Result<(), RegistryError> {
        self.with(|c, _, host, leases| {
            let mut tx = c.transaction()?;
            let generation: i64 = tx
                .query_opt(
                    "DELETE FROM accounts WHERE provider = $1 AND name = $2 RETURNING generation",
                    &[&key.provider.as_str(), &key.name],
                )?
                .ok_or_else(|| RegistryError::NotFound(key.clone()))?
                .get(0);
            insert_event(&mut tx, host, key, Some(generation), now, "removed", None)?;
            // A link issued for this account must not complete for one registered again.
            tx.execute(
                "DELETE FROM oauth_states WHERE provider = $1 AND account = $2",
                &[&key.provider.as_str(), &key.name],
            )?;
            notify(&mut tx, key, generation, i64::MAX)?;
            tx.commit()?;
            leases.remove(key);
            Ok(())
        })
    }

    fn refresh_token(&mut self, key: &AccountKey) -> Result<Option<Secret>, RegistryError> {
        self.with(|c, sealer, _, _| {
            let row = c
                .query_opt(
                    "SELECT refresh_token FROM accounts WHERE provider = $1 AND name = $2",
                    &[&key.provider.as_str(), &key.name],
                )?
                .ok_or_else(|| RegistryError::NotFound(key.clone()))?;
            let Some(stored) = row.get::<_, Option<String>>(0) else {
                return Ok(None);
            };
            let ad = seal::ad(key.provider.as_str(), &key.name, "refresh_token");
            Ok(Some(Secret::new(sealer.open(&stored, &ad)?)))
        })
    }

    fn events(
        &mut self,
        key: &AccountKey,
        generation: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, RegistryError> {
        self.with(|c, _, _, _| {
            let rows = c.query(
                "SELECT at, kind, detail FROM events
                 WHERE provider = $1 AND account = $2 AND ($3::bigint IS NULL OR generation = $3)
                 ORDER BY id DESC LIMIT $4",
                &[
                    &key.provider.as_str(),
                    &key.name,
                    &generation,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )?;
            let mut events: Vec<Event> = rows
                .iter()
                .map(|r| Event {
                    at: Timestamp::from_millis(r.get(0)),
                    account: key.to_string(),
                    kind: r.get(1),
                    detail: r.get(2),
                })
                .collect();
            events.reverse();
            Ok(events)
        })
    }

    fn begin_oauth(
        &mut self,
        key: &AccountKey,
        state_hash: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<AccountRecord, RegistryError> {
        self.with(|c, sealer, host, _| {
            let mut tx = c.transaction()?;
            let status: Option<String> = tx
                .query_opt(
                    "SELECT status FROM accounts WHERE provider = $1 AND name = $2 FOR UPDATE",
                    &[&key.provider.as_str(), &key.name],
                )?
                .map(|r| r.get(0));
            match status {
                Some(s) => {
                    if key.provider != Provider::Shippo || Status::parse(&s) != Some(Status::Pending) {
                        return Err(RegistryError::AccountExists(key.clone()));
                    }
                }
                None => {
                    let generation: i64 = tx
                        .query_one("SELECT nextval('account_generations')", &[])?
                        .get(0);
                    tx.execute(
                        "INSERT INTO accounts (provider, name, status, status_since, created_at, generation)
                         VALUES ($1, $2, 'pending', $3, $3, $4)",
                        &[&key.provider.as_str(), &key.name, &now.millis(), &generation],
                    )
                    .map_err(|e| duplicate(e, key))?;
                    insert_event(
                        &mut tx,
                        host,
                        key,
                        Some(generation),
                        now,
                        "added",
                        Some("awaiting a Shippo OAuth connection"),
                    )?;
                    notify(&mut tx, key, generation, 0)?;
                }
            }
            tx.execute(
                "DELETE FROM oauth_states
                 WHERE (provider = $1 AND account = $2 AND used_at IS NULL) OR expires_at <= $3",
                &[&key.provider.as_str(), &key.name, &now.millis()],
            )?;
            tx.execute(
                "INSERT INTO oauth_states (state_hash, provider, account, created_at, expires_at, host)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &state_hash,
                    &key.provider.as_str(),
                    &key.name,
                    &now.millis(),
                    &expires_at.millis(),
                    &host,
                ],
            )?;
            let record = load_one(&mut tx, sealer, key)?;
            tx.commit()?;
            Ok(record)
        })
    }

    fn take_oauth_state(
        &mut self,
        state_hash: &str,
        now: Timestamp,
    ) -> Result<Option<AccountKey>, RegistryError> {
        self.with(|c, _, _, _| {
            let mut tx = c.transaction()?;
            let taken = tx.query_opt(
                "UPDATE oauth_states SET used_at = $2
                 WHERE state_hash = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING provider, account",
                &[&state_hash, &now.millis()],
            )?;
            let key = match taken {
                Some(row) => {
                    let key = key_of(row.get::<_, &str>(0), row.get(1))?;
                    let status: Option<String> = tx
                        .query_opt(
                            "SELECT status FROM accounts WHERE provider = $1 AND name = $2",
                            &[&key.provider.as_str(), &key.name],
                        )?
                        .map(|r| r.get(0));
                    // Removed or connected some other way since the link was made.
                    (status.as_deref() == Some(Status::Pending.as_str())).then_some(key)
                }
                None => None,
            };
            tx.commit()?;
            Ok(key)
        })
    }

    fn discard_unconnected(
        &mut self,
        key: &AccountKey,
        detail: &str,
        now: Timestamp,
    ) -> Result<bool, RegistryError> {
        self.with(|c, _, host, _| {
            let mut tx = c.transaction()?;
            let gone: Option<i64> = tx
                .query_opt(
                    "DELETE FROM accounts WHERE provider = $1 AND name = $2 AND status = 'pending'
                       AND access_token IS NULL AND candidate_token IS NULL
                     RETURNING generation",
                    &[&key.provider.as_str(), &key.name],
                )?
                .map(|r| r.get(0));
            if let Some(generation) = gone {
                insert_event(
                    &mut tx,
                    host,
                    key,
                    Some(generation),
                    now,
                    "removed",
                    Some(detail),
                )?;
                notify(&mut tx, key, generation, i64::MAX)?;
            }
            tx.commit()?;
            Ok(gone.is_some())
        })
    }

    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<(), RegistryError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.with(|c, _, host, _| {
            let mut tx = c.transaction()?;
            let stmt = tx.prepare(
                "INSERT INTO audit (host, at, last_at, count, provider, account, client, uid, gid, pid, exe, fingerprint)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )?;
            for e in entries {
                tx.execute(
                    &stmt,
                    &[
                        &host,
                        &e.at.millis(),
                        &e.last_at.millis(),
                        &i64::try_from(e.count).unwrap_or(i64::MAX),
                        &e.account.provider.as_str(),
                        &e.account.name,
                        &e.client,
                        &i64::from(e.uid),
                        &i64::from(e.gid),
                        &e.pid,
                        &e.exe,
                        &e.fingerprint,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn audit(&mut self, query: &AuditQuery) -> Result<Vec<AuditEntry>, RegistryError> {
        self.with(|c, _, _, _| {
            let rows = c.query(
                "SELECT at, provider, account, client, uid, gid, pid, exe, fingerprint, last_at, count
                 FROM audit
                 WHERE ($1::text IS NULL OR (provider = $1 AND account = $2)) AND at >= $3
                 ORDER BY id DESC LIMIT $4",
                &[
                    &query.account.as_ref().map(|k| k.provider.as_str()),
                    &query.account.as_ref().map(|k| k.name.as_str()),
                    &query.since.map_or(i64::MIN, Timestamp::millis),
                    &i64::try_from(query.limit).unwrap_or(i64::MAX),
                ],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows.iter().rev() {
                // Providers are written by shiptoken only; an unknown one is skipped.
                let Ok(account) = key_of(r.get::<_, &str>(1), r.get(2)) else {
                    continue;
                };
                out.push(AuditEntry {
                    at: Timestamp::from_millis(r.get(0)),
                    account,
                    client: r.get(3),
                    uid: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
                    gid: u32::try_from(r.get::<_, i64>(5)).unwrap_or(u32::MAX),
                    pid: r.get(6),
                    exe: r.get(7),
                    fingerprint: r.get(8),
                    last_at: Timestamp::from_millis(r.get(9)),
                    count: u64::try_from(r.get::<_, i64>(10)).unwrap_or(0),
                });
            }
            Ok(out)
        })
    }

    fn prune_audit(&mut self, before: Timestamp) -> Result<usize, RegistryError> {
        self.with(|c, _, _, _| {
            let n = c.execute("DELETE FROM audit WHERE last_at < $1", &[&before.millis()])?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn ping(&mut self) -> Result<(), RegistryError> {
        self.with(|c, _, _, _| {
            c.execute("SELECT 1", &[])?;
            Ok(())
        })
    }

    fn all_events(&mut self) -> Result<Vec<DumpedEvent>, RegistryError> {
        self.with(|c, _, _, _| {
            let rows = c.query(
                "SELECT at, provider, account, generation, kind, detail FROM events ORDER BY id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    let key = key_of(r.get::<_, &str>(1), r.get(2))?;
                    Ok(DumpedEvent {
                        event: Event {
                            at: Timestamp::from_millis(r.get(0)),
                            account: key.to_string(),
                            kind: r.get(4),
                            detail: r.get(5),
                        },
                        generation: r.get(3),
                        key,
                    })
                })
                .collect()
        })
    }

    fn import(&mut self, dump: &Dump) -> Result<(), RegistryError> {
        self.with(|c, sealer, host, _| {
            let mut tx = c.transaction()?;
            let held: i64 = tx.query_one("SELECT count(*) FROM accounts", &[])?.get(0);
            if held > 0 {
                return Err(RegistryError::NotEmpty(format!("{held} account(s)")));
            }
            for (r, refresh) in &dump.accounts {
                tx.execute(
                    "INSERT INTO accounts (provider, name, email, first_name, last_name, status,
                                           status_since, created_at, generation, refresh_token,
                                           refresh_fingerprint)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &r.key.provider.as_str(),
                        &r.key.name,
                        &r.email,
                        &r.first_name,
                        &r.last_name,
                        &r.status.as_str(),
                        &r.status_since.millis(),
                        &r.created_at.millis(),
                        &r.generation,
                        &sealed(sealer, &r.key, "refresh_token", refresh.as_ref())?,
                        &refresh.as_ref().map(Secret::fingerprint),
                    ],
                )?;
                write_record(&mut tx, sealer, r, None, None)?;
            }
            let newest = dump.accounts.iter().map(|(r, _)| r.generation).max().unwrap_or(0);
            if newest > 0 {
                tx.execute(
                    "SELECT setval('account_generations', GREATEST($1, (SELECT last_value FROM account_generations)))",
                    &[&newest],
                )?;
            }
            for e in &dump.events {
                let detail = e.event.detail.as_deref();
                insert_event(&mut tx, host, &e.key, e.generation, e.event.at, &e.event.kind, detail)?;
            }
            tx.commit()?;
            Ok(())
        })?;
        self.append_audit(&dump.audit)
    }

    fn lease(
        &mut self,
        record: &AccountRecord,
        lease: Duration,
    ) -> Result<LeaseAnswer, RegistryError> {
        let millis = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self.with(|c, _, host, leases| {
            // A lease given back between the UPDATE and the SELECT below is taken on the
            // next try, never reported as held by nobody.
            for _ in 0..3 {
                if let Some(answer) = try_lease(c, host, leases, record, millis)? {
                    return Ok(answer);
                }
            }
            Ok(LeaseAnswer::Busy {
                holder: "another daemon".into(),
            })
        })
    }

    fn release(&mut self, key: &AccountKey) -> Result<(), RegistryError> {
        let Some(fence) = self.leases.remove(key) else {
            return Ok(());
        };
        self.with(|c, _, _, _| {
            c.execute(
                "UPDATE accounts SET lease_owner = NULL, lease_until = NULL
                 WHERE provider = $1 AND name = $2 AND lease_fence = $3",
                &[&key.provider.as_str(), &key.name, &fence],
            )?;
            Ok(())
        })
    }
}

/// One attempt at a lease: `None` when the lease was given back while we looked.
fn try_lease(
    c: &mut Client,
    host: &str,
    leases: &mut HashMap<AccountKey, i64>,
    record: &AccountRecord,
    millis: i64,
) -> Result<Option<LeaseAnswer>, RegistryError> {
    let key = &record.key;
    let taken = c.query_opt(
        "UPDATE accounts SET lease_owner = $1,
                lease_until = now() + $2::bigint * interval '1 millisecond',
                lease_fence = lease_fence + 1
         WHERE provider = $3 AND name = $4 AND generation = $5 AND revision = $6
           AND (lease_until IS NULL OR lease_until < now())
         RETURNING lease_fence",
        &[
            &host,
            &millis,
            &key.provider.as_str(),
            &key.name,
            &record.generation,
            &record.revision,
        ],
    )?;
    if let Some(row) = taken {
        leases.insert(key.clone(), row.get(0));
        return Ok(Some(LeaseAnswer::Granted));
    }
    let row = c.query_opt(
        "SELECT generation, revision, CASE WHEN lease_until >= now() THEN lease_owner END
         FROM accounts WHERE provider = $1 AND name = $2",
        &[&key.provider.as_str(), &key.name],
    )?;
    let Some(row) = row else {
        return Err(RegistryError::NotFound(key.clone()));
    };
    let (generation, revision): (i64, i64) = (row.get(0), row.get(1));
    if (generation, revision) != (record.generation, record.revision) {
        return Ok(Some(LeaseAnswer::Moved));
    }
    Ok(row
        .get::<_, Option<String>>(2)
        .map(|holder| LeaseAnswer::Busy { holder }))
}

/// The duplicate checks of a registration, with the errors the SQLite backend gives.
fn check_unique(c: &mut impl GenericClient, new: &NewAccount) -> Result<(), RegistryError> {
    let exists = c.query_opt(
        "SELECT 1 FROM accounts WHERE provider = $1 AND name = $2",
        &[&new.key.provider.as_str(), &new.key.name],
    )?;
    if exists.is_some() {
        return Err(RegistryError::AccountExists(new.key.clone()));
    }
    if let Some(email) = &new.email {
        let row = c.query_opt(
            "SELECT provider, name FROM accounts WHERE provider = $1 AND lower(email) = lower($2)",
            &[&new.key.provider.as_str(), email],
        )?;
        if let Some(row) = row {
            return Err(RegistryError::EmailTaken {
                email: email.clone(),
                existing: key_of(row.get::<_, &str>(0), row.get(1))?,
            });
        }
    }
    if let Some(refresh) = &new.refresh_token {
        let row = c.query_opt(
            "SELECT provider, name FROM accounts WHERE refresh_fingerprint = $1",
            &[&refresh.fingerprint()],
        )?;
        if let Some(row) = row {
            return Err(RegistryError::RefreshTokenTaken {
                existing: key_of(row.get::<_, &str>(0), row.get(1))?,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    //! Against a real PostgreSQL: `TEST_POSTGRES_URL` (default the machine's, at
    //! 127.0.0.1:5432, database `test`). Without one these tests say so and pass, unless
    //! `TEST_REQUIRE_POSTGRES=1` (CI) makes that a failure.

    use super::*;
    use crate::keys::MasterKey;
    use crate::registry::Note;

    fn server() -> String {
        std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// A database of one test's own, dropped when the test ends.
    struct TestDatabase {
        url: String,
        name: String,
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            if let Ok(mut admin) = postgres::Client::connect(&server(), postgres::NoTls) {
                let _ = admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        }
    }

    /// A fresh database of this test's own, or `None` (skipped) without a server.
    fn fresh_database(test: &str) -> Option<TestDatabase> {
        let mut admin = match postgres::Client::connect(&server(), postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("TEST_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "TEST_REQUIRE_POSTGRES=1 but no PostgreSQL at {}: {e}",
                    server()
                );
                eprintln!(
                    "skipped {test}: no PostgreSQL at {} ({e}); set TEST_POSTGRES_URL",
                    server()
                );
                return None;
            }
        };
        let name = format!("shiptoken_unit_{}_{test}", std::process::id());
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let mut url = url::Url::parse(&server()).unwrap();
        url.set_path(&name);
        Some(TestDatabase {
            url: url.to_string(),
            name,
        })
    }

    fn store(url: &str, host: &str, key: &KeySource) -> PgStore {
        let target = PostgresTarget::new(url, None, host).unwrap();
        open_blocking(&target, key).unwrap().0
    }

    fn key_file(dir: &std::path::Path) -> KeySource {
        let path = dir.join("key");
        crate::keys::write_key(&path, &MasterKey::generate()).unwrap();
        KeySource::ConfigFile(path)
    }

    fn account(name: &str) -> NewAccount {
        NewAccount {
            key: AccountKey::parse(&format!("shiphero/{name}")).unwrap(),
            email: Some(format!("{name}@x.test")),
            first_name: None,
            last_name: None,
            refresh_token: Some(Secret::new(format!("refresh-{name}-aaaaaaaa"))),
            access_token: None,
        }
    }

    fn save(store: &mut PgStore, record: &AccountRecord) -> Result<AccountRecord, RegistryError> {
        let mut next = record.clone();
        next.revision += 1;
        next.last_error = Some(format!("saved by revision {}", next.revision));
        let notes = [Note {
            kind: crate::registry::EventKind::Failed,
            detail: None,
        }];
        store.save_all(&[Save {
            record: &next,
            expected: Some(record.revision),
            notes: &notes,
            at: Timestamp::from_secs(1_800_000_000),
        }])?;
        Ok(next)
    }

    #[test]
    fn one_daemon_works_on_an_account_at_a_time_and_a_lease_lost_stores_nothing() {
        let Some(db) = fresh_database("lease") else {
            return;
        };
        let url = &db.url;
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        let (mut a, mut b) = (store(url, "host-a", &key), store(url, "host-b", &key));
        let t0 = Timestamp::from_secs(1_800_000_000);
        let record = a.insert(&account("acme"), t0).unwrap();
        // b sees what a registered, sealed with the shared key.
        assert_eq!(b.load(&record.key).unwrap().revision, record.revision);
        assert_eq!(
            b.refresh_token(&record.key).unwrap(),
            Some(Secret::new("refresh-acme-aaaaaaaa"))
        );

        let short = Duration::from_millis(300);
        assert_eq!(a.lease(&record, short).unwrap(), LeaseAnswer::Granted);
        assert_eq!(
            b.lease(&record, short).unwrap(),
            LeaseAnswer::Busy {
                holder: "host-a".into()
            }
        );
        // a pauses past its lease; b takes the account over and stores newer work.
        let taken = loop {
            match b.lease(&record, Duration::from_secs(30)).unwrap() {
                LeaseAnswer::Granted => break true,
                LeaseAnswer::Busy { .. } => std::thread::sleep(Duration::from_millis(20)),
                LeaseAnswer::Moved => break false,
            }
        };
        assert!(taken, "b must get the lease once a's ran out");
        let newer = save(&mut b, &record).unwrap();
        // a resumes: whatever it computed from the old record is refused, not stored over b's.
        assert!(matches!(
            save(&mut a, &record),
            Err(RegistryError::LeaseLost(_))
        ));
        assert_eq!(
            a.load(&record.key).unwrap().last_error,
            newer.last_error,
            "b's work stays"
        );
        // Planned from the old record, a lease is refused as moved on.
        b.release(&record.key).unwrap();
        assert_eq!(a.lease(&record, short).unwrap(), LeaseAnswer::Moved);
        let events = a.events(&record.key, None, 10).unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["added", "failed"]
        );
    }

    #[test]
    fn another_key_is_refused_and_a_missing_one_is_never_made() {
        let Some(db) = fresh_database("keys") else {
            return;
        };
        let url = &db.url;
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        drop(store(url, "host-a", &key));
        let other = tempfile::tempdir().unwrap();
        let target = PostgresTarget::new(url, None, "host-b").unwrap();
        let wrong = open_blocking(&target, &key_file(other.path())).err();
        assert!(
            matches!(wrong, Some(RegistryError::WrongKey { .. })),
            "{wrong:?}"
        );
        let missing = KeySource::StateFile(other.path().join("absent.key"));
        let err = open_blocking(&target, &missing).err();
        assert!(matches!(err, Some(RegistryError::Key(_))), "{err:?}");
        assert!(!other.path().join("absent.key").exists());
    }

    #[test]
    fn the_url_shown_never_holds_the_password() {
        let url = "postgres://ship:s3cret@db.internal:5432/shiptoken?sslmode=require";
        let shown = shown(url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db.internal"));
        let err = PostgresTarget::new("postgres://ship:s3cret@db/x?sslmode=bogus", None, "h")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("sslmode=bogus") && !err.contains("s3cret"),
            "{err}"
        );
    }
}
