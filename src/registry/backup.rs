//! `shiptoken backup`, `shiptoken key rotate` and `shiptoken registry migrate`: the commands
//! that work on the registry directly rather than through the daemon's socket (the copy
//! itself is [`super::sqlite::backup`]).
//!
//! A backup opens `registry.db` read-only next to the running daemon (WAL lets a reader take
//! a consistent snapshot while the daemon writes) and copies it with SQLite's online backup
//! API, so it needs no admin route and writes the copy as the invoking user, wherever that
//! user may write. The copy stays sealed: it is useless without the key, which is backed up
//! separately.

use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;

/// Progress on a terminal: a bar; otherwise plain lines (for logs and scripts).
struct Progress {
    bar: Option<ProgressBar>,
    what: &'static str,
    last_line: u64,
}

impl Progress {
    fn new(what: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len}")
                .map(|s| s.progress_chars("=> "))
            {
                bar.set_style(style);
            }
            bar.set_message(what);
            bar
        });
        Progress {
            bar,
            what,
            last_line: u64::MAX,
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None => {
                // A line per tenth, not per step.
                let tenth = (done * 10).checked_div(total).unwrap_or(10);
                if tenth != self.last_line {
                    self.last_line = tenth;
                    eprintln!("{}: {done}/{total}", self.what);
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Refuses a command that works on the SQLite file when the registry is in PostgreSQL.
fn sqlite_only(config: &Config, what: &str, instead: &str) -> anyhow::Result<()> {
    if config.registry.url.is_some() {
        bail!(
            "{what} works on the SQLite registry in state_dir, and this configuration's registry is in PostgreSQL (registry.url); {instead}"
        );
    }
    Ok(())
}

/// `shiptoken registry migrate --to TARGET`: copies the configured registry into an empty
/// PostgreSQL database or a new SQLite state folder.
pub fn migrate_registry(
    config: &Config,
    to: &str,
    password_file: Option<&Path>,
) -> anyhow::Result<()> {
    use crate::registry::migrate::{Location, migrate};
    let from = match config.registry.postgres().map_err(anyhow::Error::msg)? {
        Some(target) => Location::Postgres(Box::new(target)),
        None => {
            // The daemon must not write the file while it is copied.
            crate::keys::StateLock::try_take(&config.state_dir)?.with_context(|| {
                format!(
                    "a shiptoken daemon is using {}; stop it before migrating its registry",
                    config.state_dir.display()
                )
            })?;
            Location::Sqlite(config.state_dir.clone())
        }
    };
    let to = if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        let password = password_file
            .map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the password file {}", p.display()))
            })
            .transpose()?
            .map(|t| crate::secret::Secret::new(t.trim_end_matches(['\n', '\r'])));
        Location::Postgres(Box::new(
            crate::registry::postgres::PostgresTarget::new(
                to,
                password.as_ref(),
                &config.registry.host_name,
            )
            .map_err(|e| anyhow::anyhow!("--to: {e}"))?,
        ))
    } else {
        let dir = Path::new(to);
        if !dir.is_absolute() {
            bail!("--to {to}: give a postgres:// URL or the absolute path of a new state folder");
        }
        if dir.join("registry.db").exists() {
            bail!("--to {to}: a registry.db is already there; migrate into a new folder");
        }
        Location::Sqlite(dir.to_path_buf())
    };
    let key = crate::keys::KeySource::resolve(config.key_file.as_deref(), &config.state_dir);
    let copied = migrate(&from, &to, key.path())
        .with_context(|| format!("cannot migrate {} to {}", from.shown(), to.shown()))?;
    crate::cli::say(format_args!(
        "copied {} account(s), {} history entries and {} audit entries from {} to {}; tokens stay sealed with the key {}. Point [registry] url at the target (or state_dir, for SQLite) and start the daemons.",
        copied.accounts,
        copied.events,
        copied.audit,
        from.shown(),
        to.shown(),
        key.path().display()
    ));
    Ok(())
}

/// `shiptoken backup FILE`: a consistent copy of the registry, taken while the daemon runs.
pub fn backup(config: &Config, file: &Path) -> anyhow::Result<()> {
    sqlite_only(
        config,
        "backup",
        "back it up with pg_dump as docs/deployment.md says",
    )?;
    let source = config.state_dir.join("registry.db");
    if !source.exists() {
        bail!("no registry at {}; is state_dir right?", source.display());
    }
    // Created here, owner-only and never over an existing file (an older backup is kept).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create the backup file {}", file.display()))?;
    let mut progress = Progress::new("backup");
    let result =
        super::sqlite::backup::copy(&source, file, |done, total| progress.update(done, total));
    progress.finish();
    if result.is_err() {
        let _ = std::fs::remove_file(file);
    }
    let accounts = result?;
    crate::cli::say(format_args!(
        "backup of {} written to {} ({accounts} accounts); its tokens are sealed: keep the key ({}) safe as well, apart from the backup",
        source.display(),
        file.display(),
        crate::keys::KeySource::resolve(config.key_file.as_deref(), &config.state_dir)
            .path()
            .display()
    ));
    Ok(())
}

/// `shiptoken key rotate`: re-seals the registry with a new key; the daemon must be stopped.
pub fn rotate_key(config: &Config, new_key_out: Option<&Path>) -> anyhow::Result<()> {
    sqlite_only(
        config,
        "key rotate",
        "start the daemon and run `shiptoken key rotate` again: a shared registry is rotated by a running daemon, with the next key on every host first (docs/deployment.md)",
    )?;
    let mut progress = Progress::new("re-sealing accounts");
    let done = super::sqlite::rekey::rotate_key(
        &config.state_dir,
        config.key_file.as_deref(),
        new_key_out,
        |n, total| progress.update(n, total),
    )?;
    progress.finish();
    crate::cli::say(format_args!(
        "re-sealed {} account(s) with a new key, now in {}",
        done.accounts,
        done.key_path.display()
    ));
    if done.install_needed {
        crate::cli::say(format_args!(
            "install it as the key (the systemd credential shiptoken.key, or key_file) before starting the daemon; the old key no longer opens the registry"
        ));
    }
    if let Some(old) = &done.old_key_path {
        crate::cli::say_old_key(&old.display().to_string());
    }
    Ok(())
}
