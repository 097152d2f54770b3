//! The PostgreSQL schema: its migrations, applied one daemon at a time (the key check every
//! daemon must pass is in [`super::keys`]).

use postgres::Client;

use crate::registry::RegistryError;

/// Serializes migrations of daemons starting at once (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0053_4849_5054_4f4b; // "SHIPTOK"

/// The schema, one entry per version, applied in order inside one transaction.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // 2: calls forwarded by the proxy are audited with what was called and how it went
    // (JSON: method, path, status, outcome, bytes, duration); NULL for a token read.
    r#"
ALTER TABLE audit ADD COLUMN request text;
"#,
];

/// Applies the migrations this database lacks, one daemon at a time.
pub(super) fn migrate(client: &mut Client) -> Result<(), RegistryError> {
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
