//! What the sinks wrote, remembered across restarts in the state folder, so that a sink only
//! ever removes a file the daemon itself put there (#28 item 3): a file someone else left at a
//! sink's path, or replaced ours with, is never deleted, whatever `on_flag` says.
//!
//! A file is the daemon's when its device, inode and SHA-256 of its contents are those of
//! the last write: a rename over it (a new inode) or a change of contents makes it someone
//! else's. The record holds no token, only that digest (the log already shows fingerprints).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::folder::Written;

/// The record's file in the state folder.
pub const RECORD_FILE: &str = "sinks-written.json";

/// One file the daemon wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    dev: u64,
    ino: u64,
    sha256: String,
}

/// Every sink file the daemon wrote and has not removed, by path.
#[derive(Debug, Default)]
pub struct Record {
    file: Option<PathBuf>,
    entries: BTreeMap<PathBuf, Entry>,
}

impl Record {
    /// The record kept in `state_dir`; empty when there is none yet (or it cannot be read:
    /// then nothing counts as ours, which only means a file is kept that could have gone).
    pub fn load(state_dir: &Path) -> Record {
        let file = state_dir.join(RECORD_FILE);
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Record {
            file: Some(file),
            entries,
        }
    }

    /// Remembers that `path` now holds `contents`, written as `written`.
    pub fn wrote(&mut self, path: &Path, written: Written, contents: &[u8]) {
        let entry = Entry {
            dev: written.dev,
            ino: written.ino,
            sha256: digest(contents),
        };
        if self.entries.get(path) != Some(&entry) {
            self.entries.insert(path.to_path_buf(), entry);
            self.save();
        }
    }

    /// Whether the file found at `path` is the one the daemon last wrote there.
    pub fn is_ours(&self, path: &Path, found: Written, contents: &[u8]) -> bool {
        self.entries.get(path).is_some_and(|e| {
            e.dev == found.dev && e.ino == found.ino && e.sha256 == digest(contents)
        })
    }

    /// Forgets `path` (removed, or no longer the daemon's).
    pub fn forget(&mut self, path: &Path) {
        if self.entries.remove(path).is_some() {
            self.save();
        }
    }

    /// Writes the record atomically; a failure is logged (the state folder is the daemon's
    /// own, so it means a full disk) and costs at most a file kept that could have gone.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        let result = serde_json::to_vec(&self.entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let tmp = file.with_extension("json.tmp");
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?
                    .write_all(&bytes)?;
                std::fs::rename(&tmp, file)
            });
        if let Err(e) = result {
            tracing::warn!(file = %file.display(), error = %e, "cannot save which sink files the daemon wrote; a file it wrote may be kept rather than removed");
        }
    }
}

fn digest(contents: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(contents))
}
