//! A sink's folder, opened so that nobody but root and the daemon's user can redirect or
//! replace what the daemon writes there (#28 item 2).
//!
//! `O_NOFOLLOW` on the file guards only its last component, so the folder is opened one
//! component at a time from `/`, each with `O_NOFOLLOW | O_DIRECTORY` relative to the one
//! before: no symlink is followed anywhere on the way. Each component is checked on the
//! descriptor just opened (not on a path looked up again), the way OpenSSH's StrictModes
//! checks a home folder: owned by root or the daemon's user, writable by nobody else. The
//! file is then written with `openat`/`renameat` relative to the folder's descriptor, so a
//! folder swapped after the check is not the one written into.
//!
//! The walk rather than one `openat2(RESOLVE_NO_SYMLINKS)`: the checks need a descriptor of
//! every component anyway, and the walk works on every kernel.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Mode, OFlags};

/// Who may own a sink's folder besides root, and which group may write it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted {
    /// The daemon's user; with `config check` run as another user, also the state folder's
    /// owner (the user the daemon runs as).
    pub uids: Vec<u32>,
    /// The groups that may write the folder: the daemon's, and only with
    /// `allow_group_writable_dir = true`; empty: none may.
    pub writer_gids: Vec<u32>,
}

impl Trusted {
    /// The running process's user, with its group a writer when `group_may_write`.
    pub fn this_process(group_may_write: bool) -> Trusted {
        let gid = rustix::process::getegid().as_raw();
        Trusted {
            uids: vec![rustix::process::geteuid().as_raw()],
            writer_gids: if group_may_write {
                vec![gid]
            } else {
                Vec::new()
            },
        }
    }
}

/// Opens `dir` without following a symlink at any component, checking every component.
/// The error names the component and what is wrong with it.
pub fn open_dir(dir: &Path, trusted: &Trusted) -> std::io::Result<OwnedFd> {
    if !dir.is_absolute() {
        return Err(std::io::Error::other("the folder is not an absolute path"));
    }
    // O_PATH on the way (a folder may be searchable but not readable), then the folder itself
    // opened for reading through "." so it can be synced after a rename.
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open("/", flags, Mode::empty())?;
    check(&fd, Path::new("/"), trusted)?;
    let mut walked = std::path::PathBuf::from("/");
    for component in dir.components() {
        let name = match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => name,
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::other(format!(
                    "{} has a `..` component",
                    dir.display()
                )));
            }
        };
        walked.push(name);
        fd = match rustix::fs::openat(&fd, name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(e) => {
                // O_PATH with O_NOFOLLOW opens a symlink itself, which O_DIRECTORY refuses.
                let is_link =
                    rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Symlink
                    });
                let why = match e {
                    _ if is_link => "is a symlink; name the real folder".to_string(),
                    rustix::io::Errno::NOTDIR => "is not a folder".to_string(),
                    e => std::io::Error::from(e).to_string(),
                };
                return Err(std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("{} {why}", walked.display()),
                ));
            }
        };
        check(&fd, &walked, trusted)?;
    }
    let read = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(&fd, ".", read, Mode::empty())?)
}

/// StrictModes for one folder: its owner and who may write it.
fn check(fd: &OwnedFd, path: &Path, trusted: &Trusted) -> std::io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let (uid, gid, mode) = (st.st_uid, st.st_gid, st.st_mode);
    let fail = |why: String| Err(std::io::Error::other(format!("{} {why}", path.display())));
    if uid != 0 && !trusted.uids.contains(&uid) {
        return fail(format!(
            "is owned by uid {uid}, neither root nor the daemon's user: that user could replace the token file"
        ));
    }
    if mode & 0o002 != 0 {
        let sticky = if mode & 0o1000 != 0 {
            " (sticky or not, another user can create the file first)"
        } else {
            ""
        };
        return fail(format!(
            "is writable by every user{sticky}; give the sink a folder only the daemon's user can write"
        ));
    }
    if mode & 0o020 != 0 && !trusted.writer_gids.contains(&gid) {
        return fail(format!(
            "is writable by group {gid}; use a folder only the daemon's user can write, or, for the daemon's own group, set allow_group_writable_dir = true"
        ));
    }
    Ok(())
}

/// What a write left at the sink's path: enough to know it again (`record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Device and inode of the file renamed into place.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
}

/// Replaces `name` in the folder `dir` with `contents` so that a reader sees either the old
/// file or the new one: a temporary file in the same folder is given its mode and group
/// before the token is written into it, synced, renamed over `name`, and the folder is synced
/// so the rename survives a crash. A failure leaves the old file as it was.
pub fn write_in(
    dir: &OwnedFd,
    name: &OsStr,
    contents: &[u8],
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<Written> {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(".shiptoken-tmp");
    // Left by a crash mid-write; the folder is the daemon's own (checked), so ours.
    match rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty()) {
        Err(e) if e != rustix::io::Errno::NOENT => return Err(e.into()),
        _ => {}
    }
    let result = write_tmp(dir, &tmp, contents, mode, group).and_then(|written| {
        rustix::fs::renameat(dir, tmp.as_os_str(), dir, name)?;
        rustix::fs::fsync(dir)?;
        Ok(written)
    });
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_os_str(), AtFlags::empty());
    }
    result
}

fn write_tmp(
    dir: &OwnedFd,
    tmp: &OsStr,
    contents: &[u8],
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<Written> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, tmp, flags, Mode::from_raw_mode(0o600))?;
    if let Some(gid) = group {
        rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(gid))).map_err(|e| {
            std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!("cannot give the file group {gid} ({e}); the daemon's user must be a member (SupplementaryGroups=)"),
            )
        })?;
    }
    // After the group, so no moment has the token readable by the daemon's own group when
    // another was asked for; set explicitly, so the umask plays no part.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    let st = rustix::fs::fstat(&fd)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(Written {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// What is at `name` in `dir` now, without following a symlink: its device, inode and
/// contents, or `None` when nothing (or not a regular file) is there.
pub fn what_is_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Option<(Written, Vec<u8>)>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    let mut contents = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut contents)?;
    let written = Written {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    Ok(Some((written, contents)))
}

/// Removes `name` from `dir` (not following a symlink: a symlink itself would be removed).
pub fn remove_in(dir: &OwnedFd, name: &OsStr) -> std::io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
    rustix::fs::fsync(dir.as_fd())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A folder under the checkout (not /tmp, which every user can write).
    fn base() -> tempfile::TempDir {
        tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap()
    }

    fn folder(base: &Path, name: &str, mode: u32) -> std::path::PathBuf {
        let p = base.join(name);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn refusal(dir: &Path, trusted: &Trusted) -> String {
        open_dir(dir, trusted)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn every_component_is_checked_and_no_symlink_followed() {
        let base = base();
        let me = Trusted::this_process(false);
        let safe = folder(base.path(), "safe", 0o755);
        assert!(open_dir(&safe, &me).is_ok());
        std::os::unix::fs::symlink(&safe, base.path().join("link")).unwrap();
        let inner = base.path().join("link");
        assert!(
            refusal(&inner, &me).contains("is a symlink"),
            "{}",
            refusal(&inner, &me)
        );
        let open = folder(base.path(), "open", 0o777);
        assert!(refusal(&open, &me).contains("writable by every user"));
        let below = folder(&open, "below", 0o700);
        assert!(refusal(&below, &me).contains("open is writable by every user"));
        let sticky = folder(base.path(), "sticky", 0o1777);
        assert!(refusal(&sticky, &me).contains("sticky or not"));
        let group = folder(base.path(), "group", 0o770);
        assert!(refusal(&group, &me).contains("allow_group_writable_dir"));
        assert!(open_dir(&group, &Trusted::this_process(true)).is_ok());
        if rustix::process::geteuid().is_root() {
            let theirs = folder(base.path(), "theirs", 0o755);
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            assert!(refusal(&theirs, &me).contains("owned by uid 65534"));
        }
    }

    #[test]
    fn a_write_goes_into_the_folder_opened_even_if_its_name_moves() {
        let base = base();
        let me = Trusted::this_process(false);
        let first = folder(base.path(), "first", 0o755);
        let dir = open_dir(&first, &me).unwrap();
        // The name now leads elsewhere; the descriptor still is the folder that was checked.
        std::fs::rename(&first, base.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(base.path().join("elsewhere"), &first).unwrap();
        write_in(&dir, OsStr::new("token"), b"t", 0o600, None).unwrap();
        assert_eq!(
            std::fs::read(base.path().join("moved/token")).unwrap(),
            b"t"
        );
        assert!(!base.path().join("elsewhere").exists());
    }
}
