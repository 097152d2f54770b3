//! The SQLite registry's schema, as an ordered list of migrations.
//!
//! Migration `i` (0-based) moves the schema from version `i` to `i + 1`; `PRAGMA user_version`
//! records the version. Each runs in its own transaction, so a crash mid-upgrade leaves the
//! previous version intact. A file written by a newer build is refused rather than guessed at.

use rusqlite::Connection;

use super::RegistryError;

/// Every migration, oldest first. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, their tokens, and their history.
    r#"
    CREATE TABLE accounts (
        id               INTEGER PRIMARY KEY,
        provider         TEXT NOT NULL,
        name             TEXT NOT NULL,
        email            TEXT,
        first_name       TEXT,
        last_name        TEXT,
        status           TEXT NOT NULL,
        status_since     INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        last_rotated_at  INTEGER,
        last_verified_at INTEGER,
        last_error       TEXT,
        failures         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  INTEGER,
        UNIQUE (provider, name)
    );
    -- One developer user per integration: an email registered twice is refused.
    CREATE UNIQUE INDEX accounts_email ON accounts (provider, email COLLATE NOCASE)
        WHERE email IS NOT NULL;
    CREATE TABLE tokens (
        account_id            INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
        refresh_token         TEXT,
        -- A fingerprint, not the token, carries the uniqueness, so it can be indexed.
        refresh_fingerprint   TEXT UNIQUE,
        access_token          TEXT,
        issued_at             INTEGER,
        expires_at            INTEGER,
        -- A freshly issued token waits here until a probe proves it works.
        candidate_token       TEXT,
        candidate_issued_at   INTEGER,
        candidate_expires_at  INTEGER
    );
    -- History outlives the account (a removal is itself an event), so no foreign key.
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        at       INTEGER NOT NULL,
        provider TEXT NOT NULL,
        account  TEXT NOT NULL,
        kind     TEXT NOT NULL,
        detail   TEXT
    );
    CREATE INDEX events_by_account ON events (provider, account, at);
    "#,
    // 2: Shippo OAuth states. Only a SHA-256 of each state is kept, so a copy of the database
    // cannot finish a flow; no foreign key, because a state names an account that the flow
    // itself creates and may remove.
    r#"
    CREATE TABLE oauth_states (
        state_hash TEXT PRIMARY KEY,
        provider   TEXT NOT NULL,
        account    TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER
    );
    CREATE INDEX oauth_states_by_account ON oauth_states (provider, account);
    CREATE INDEX oauth_states_by_expiry ON oauth_states (expires_at);
    "#,
    // 3: settings of the file itself; `key_check` (a known value sealed with the master key)
    // tells a wrong key at start-up. Token columns stay TEXT: from now on they hold
    // `v1:`-sealed values, converted from plaintext in Rust once the key is known.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 4: the audit of every token handed out over the socket. A fingerprint of the token, never
    // the token; no foreign key, because the audit outlives a removed account. Identical reads
    // (same peer, account and token) within one flush are one row with a count, from `at` to
    // `last_at`, so a client polling a thousand times a second does not write a thousand rows.
    r#"
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        last_at     INTEGER NOT NULL,
        count       INTEGER NOT NULL,
        provider    TEXT NOT NULL,
        account     TEXT NOT NULL,
        client      TEXT,
        uid         INTEGER NOT NULL,
        gid         INTEGER NOT NULL,
        pid         INTEGER,
        exe         TEXT,
        fingerprint TEXT NOT NULL
    );
    CREATE INDEX audit_by_time ON audit (at);
    CREATE INDEX audit_by_account ON audit (provider, account, at);
    "#,
    // 5: judging on evidence, and work bound to one registration of an account.
    // `generation` numbers each registration from a sequence that never repeats (row ids can:
    // SQLite reuses the largest after a delete), `revision` makes every save conditional on
    // the record it was computed from, and the doubts hold evidence waiting for confirmation.
    // Events carry the generation, so a re-added account's history starts empty.
    r#"
    ALTER TABLE accounts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN upstream_id TEXT;
    ALTER TABLE accounts ADD COLUMN token_doubt_since INTEGER;
    ALTER TABLE accounts ADD COLUMN token_doubt_reason TEXT;
    ALTER TABLE accounts ADD COLUMN token_doubt_signature TEXT;
    ALTER TABLE accounts ADD COLUMN renew_doubt_since INTEGER;
    ALTER TABLE accounts ADD COLUMN renew_doubt_reason TEXT;
    UPDATE accounts SET generation = id;
    CREATE UNIQUE INDEX accounts_generation ON accounts (generation);
    CREATE TABLE sequences (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO sequences (name, value)
        VALUES ('generation', (SELECT coalesce(max(id), 0) FROM accounts));
    ALTER TABLE events ADD COLUMN generation INTEGER;
    UPDATE events SET generation = (SELECT a.generation FROM accounts a
                                    WHERE a.provider = events.provider AND a.name = events.account);
    "#,
    // 6: calls forwarded by the proxy are audited with what was called and how it went
    // (JSON: method, path, status, outcome, bytes, duration); NULL for a token read.
    r#"
    ALTER TABLE audit ADD COLUMN request TEXT;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema up to [`SCHEMA_VERSION`], refusing a newer file.
pub fn migrate(conn: &mut Connection) -> Result<(), RegistryError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(RegistryError::NewerSchema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(found).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        let version = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    let now: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    debug_assert_eq!(now, SCHEMA_VERSION);
    Ok(())
}
