//! An online copy of the SQLite registry: opened read-only next to the running daemon (WAL
//! lets a reader take a consistent snapshot while the daemon writes) and copied with SQLite's
//! backup API. The copy stays sealed: it is useless without the key.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use rusqlite::{Connection, OpenFlags};

/// Copies the database at `source` into `file` (created empty by the caller) page by page;
/// `progress` is told (pages done, pages in all). Returns how many accounts the copy holds.
pub fn copy(source: &Path, file: &Path, mut progress: impl FnMut(u64, u64)) -> anyhow::Result<i64> {
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} read-only", source.display()))?;
    src.busy_timeout(Duration::from_secs(5))?;
    let mut dst = Connection::open(file)
        .with_context(|| format!("cannot open the backup file {}", file.display()))?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        loop {
            // A step copies a slice of pages; if the daemon writes between steps SQLite
            // restarts the copy, so what lands in the file is one consistent snapshot.
            let step = backup.step(64)?;
            let p = backup.progress();
            let total = u64::try_from(p.pagecount).unwrap_or(0);
            let done = total.saturating_sub(u64::try_from(p.remaining).unwrap_or(0));
            progress(done, total);
            match step {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => {}
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    // One self-contained file: no WAL beside it to forget when copying it around.
    let _: String = dst.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    let check: String = dst.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the backup failed its integrity check: {check}");
    }
    Ok(dst.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?)
}
