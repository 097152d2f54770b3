//! File sinks (`[[sink]]`): keeps a file per configured account holding the token the socket
//! serves, for applications that read a file or an environment file instead of the socket.
//!
//! The token comes from [`ApiState::served_token`], the socket's own rule, so a file never
//! holds a token the socket would withhold. Each write replaces the file atomically (a
//! temporary file in the same folder, fsync, rename, fsync of the folder): a reader sees the
//! old file or the new one, never a part. `folder` opens the sink's folder so nobody else can
//! redirect the write; `record` remembers what was written, so only the daemon's own files
//! are ever removed.

pub mod folder;
mod record;
pub mod template;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::served::{ServedToken, Withheld};
use crate::config::SinkConfig;
use crate::config::sinks::{OnFlag, SinkFormat};

/// How often every sink is looked at even without a change: a token that expires unrefreshed
/// changes nothing in the registry, and a write that failed (full disk, folder missing) is
/// retried.
const RECHECK: Duration = Duration::from_secs(30);

/// How long a sink's `command` may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a sink's file is known to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileState {
    /// Not known yet (start, new sink, failed write): the next served token is written.
    Unknown,
    /// The token with this fingerprint.
    Holds(String),
    /// Nothing: removed by us.
    Absent,
}

/// One sink and what its file holds.
struct Tracked {
    sink: SinkConfig,
    file: FileState,
}

/// Keeps every configured sink's file in step with the served token until `shutdown`. Wakes
/// on every registry change, on a reload (which may add, drop or change sinks) and every
/// [`RECHECK`].
pub async fn run(state: Arc<ApiState>, shutdown: CancellationToken) {
    let mut changes = state.registry.subscribe();
    let mut config = state.config.clone();
    let mut tracked: HashMap<PathBuf, Tracked> = HashMap::new();
    let mut record = record::Record::load(&config.borrow().state_dir);
    loop {
        changes.borrow_and_update();
        let sinks = config.borrow_and_update().sinks.clone();
        // A sink dropped or changed by a reload starts over; its old file is left alone.
        tracked.retain(|path, t| sinks.iter().any(|s| &s.path == path && *s == t.sink));
        for sink in sinks {
            let entry = tracked.entry(sink.path.clone()).or_insert_with(|| Tracked {
                sink,
                file: FileState::Unknown,
            });
            entry.file = step(&state, &entry.sink, &entry.file, &mut record).await;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = config.changed() => {}
            () = tokio::time::sleep(RECHECK) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Brings one sink's file in step with what is served now; returns what it holds after.
async fn step(
    state: &ApiState,
    sink: &SinkConfig,
    file: &FileState,
    record: &mut record::Record,
) -> FileState {
    let account = sink.account.to_string();
    let (remove, status) = match state.served_token(&sink.account).await {
        Ok(token) => {
            if *file == FileState::Holds(token.fingerprint.clone()) {
                return file.clone();
            }
            let reason = match file {
                FileState::Unknown => "start",
                FileState::Absent => "created",
                FileState::Holds(_) => "rotated",
            };
            let contents = match render(&sink.format, &token) {
                Ok(c) => c,
                Err(why) => {
                    state.metrics.sink_write("failed");
                    state.metrics.sink_failure("render");
                    tracing::error!(%account, path = %sink.path.display(), error = %why, "cannot render the sink's template; the last file written stays, will retry");
                    return FileState::Unknown;
                }
            };
            let (s, c) = (sink.clone(), contents.clone());
            let written = tokio::task::spawn_blocking(move || write_sink(&s, &c))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            return match written {
                Ok(written) => {
                    record.wrote(&sink.path, written, &contents);
                    state.metrics.sink_write("written");
                    tracing::info!(%account, path = %sink.path.display(), fingerprint = %token.fingerprint, reason, "sink written");
                    run_command(sink, reason, "active");
                    FileState::Holds(token.fingerprint)
                }
                Err(e) => {
                    state.metrics.sink_write("failed");
                    state.metrics.sink_failure("write");
                    tracing::error!(%account, path = %sink.path.display(), error = %e, "cannot write the sink file; the last one written stays, will retry");
                    FileState::Unknown
                }
            };
        }
        Err(Withheld::Unknown) => (true, "unknown_account"),
        Err(Withheld::NoToken(code)) => (sink.on_flag == OnFlag::Remove, code),
    };
    if !remove || *file == FileState::Absent {
        return file.clone();
    }
    match remove_own(sink, record) {
        Ok(Removed::Yes) => {
            state.metrics.sink_write("removed");
            tracing::info!(%account, path = %sink.path.display(), status, "sink removed: no token is served");
            run_command(sink, "removed", status);
            FileState::Absent
        }
        Ok(Removed::Nothing) => FileState::Absent,
        Ok(Removed::NotOurs) => {
            tracing::warn!(%account, path = %sink.path.display(), status, "no token is served, but the file at the sink's path is not one the daemon wrote; left in place");
            FileState::Absent
        }
        Err(e) => {
            state.metrics.sink_write("failed");
            state.metrics.sink_failure("remove");
            tracing::error!(%account, path = %sink.path.display(), error = %e, "cannot remove the sink file; will retry");
            file.clone()
        }
    }
}

/// What [`remove_own`] did.
enum Removed {
    /// Removed the file the daemon wrote.
    Yes,
    /// Nothing was there.
    Nothing,
    /// Something the daemon did not write (or no longer holds what it wrote) is there: kept.
    NotOurs,
}

/// Removes the sink's file only when it is the one the daemon last wrote there.
fn remove_own(sink: &SinkConfig, record: &mut record::Record) -> std::io::Result<Removed> {
    let (dir, name) = match open_folder(sink) {
        // A folder systemd has not created yet holds no file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removed::Nothing),
        other => other?,
    };
    let Some((found, contents)) = folder::what_is_at(&dir, name)? else {
        record.forget(&sink.path);
        return Ok(Removed::Nothing);
    };
    if !record.is_ours(&sink.path, found, &contents) {
        record.forget(&sink.path);
        return Ok(Removed::NotOurs);
    }
    folder::remove_in(&dir, name)?;
    record.forget(&sink.path);
    Ok(Removed::Yes)
}

/// The sink's folder, opened and checked (`folder`), and the file's name in it.
fn open_folder(sink: &SinkConfig) -> std::io::Result<(std::os::fd::OwnedFd, &std::ffi::OsStr)> {
    let (Some(dir), Some(name)) = (sink.path.parent(), sink.path.file_name()) else {
        return Err(std::io::Error::other("the sink path names no file"));
    };
    let trusted = folder::Trusted::this_process(sink.allow_group_writable_dir);
    Ok((folder::open_dir(dir, &trusted)?, name))
}

/// Writes the sink's file in its checked folder.
fn write_sink(sink: &SinkConfig, contents: &[u8]) -> std::io::Result<folder::Written> {
    let (dir, name) = open_folder(sink)?;
    folder::write_in(&dir, name, contents, sink.mode, sink.group)
}

/// The file's contents in `format`; only a template can fail to render.
fn render(format: &SinkFormat, token: &ServedToken) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    match format {
        SinkFormat::Template(t) => return template::render(t, token),
        SinkFormat::Token => out.extend_from_slice(token.access_token.expose().as_bytes()),
        SinkFormat::Json => {
            out.extend_from_slice(&token.json);
            out.push(b'\n');
        }
        SinkFormat::Headers => {
            for (name, value) in &token.headers {
                out.extend_from_slice(format!("{name}: {value}\n").as_bytes());
            }
        }
        SinkFormat::Env(names) => {
            // Unquoted: `docker --env-file` keeps quotes as part of the value, and neither
            // a JWT nor a Shippo token contains a character a shell or systemd would split on.
            let line = |name: &str, value: &str| format!("{name}={value}\n");
            out.extend_from_slice(
                line(&names.access_token, token.access_token.expose()).as_bytes(),
            );
            if let Some((_, version)) = token
                .headers
                .iter()
                .find(|(name, _)| name == "Shippo-API-Version")
            {
                out.extend_from_slice(line(&names.api_version, version).as_bytes());
            }
        }
    }
    Ok(out)
}

/// Runs the sink's command, if any, on its own task the way `[notify] command` runs: argv
/// without a shell, output discarded, killed after [`COMMAND_TIMEOUT`]. What happened is in
/// its environment; the token never is, nor on its command line (any user can read those
/// in /proc): the command reads the file.
fn run_command(sink: &SinkConfig, reason: &'static str, status: &'static str) {
    let Some((program, args)) = sink.command.split_first() else {
        return;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("SHIPTOKEN_ACCOUNT", sink.account.to_string())
        .env("SHIPTOKEN_SINK_PATH", &sink.path)
        .env("SHIPTOKEN_SINK_REASON", reason)
        .env("SHIPTOKEN_SINK_STATUS", status)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let (program, account) = (program.clone(), sink.account.to_string());
    tokio::spawn(async move {
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(command = %program, %account, error = %e, "cannot run the sink command");
                return;
            }
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                tracing::warn!(command = %program, %account, %status, "the sink command failed")
            }
            Ok(Err(e)) => {
                tracing::warn!(command = %program, %account, error = %e, "the sink command failed")
            }
            Err(_) => {
                tracing::warn!(command = %program, %account, "the sink command timed out; killed")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;

    /// `folder::write_in` on `path`'s folder opened as is: a temporary folder under /tmp
    /// would not pass `folder::open_dir`, which its own tests cover.
    fn write_atomically(
        path: &Path,
        contents: &[u8],
        mode: u32,
        group: Option<u32>,
    ) -> std::io::Result<folder::Written> {
        use rustix::fs::{Mode, OFlags};
        let dir = rustix::fs::open(
            path.parent().unwrap(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        folder::write_in(&dir, path.file_name().unwrap(), contents, mode, group)
    }

    #[test]
    fn a_write_replaces_the_file_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new", 0o640, None).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn each_format_renders_what_the_readme_shows() {
        use crate::config::sinks::EnvNames;
        use crate::names::Provider;
        let token = ServedToken {
            access_token: crate::secret::Secret::new("oauth.tok"),
            fingerprint: "fp".into(),
            json: axum::body::Bytes::from_static(b"{\"access_token\":\"oauth.tok\"}"),
            headers: vec![
                ("Authorization".into(), "Bearer oauth.tok".into()),
                ("Shippo-API-Version".into(), "2018-02-08".into()),
            ],
        };
        let text =
            |format: SinkFormat| String::from_utf8(render(&format, &token).unwrap()).unwrap();
        assert_eq!(text(SinkFormat::Token), "oauth.tok");
        assert_eq!(text(SinkFormat::Json), "{\"access_token\":\"oauth.tok\"}\n");
        assert_eq!(
            text(SinkFormat::Headers),
            "Authorization: Bearer oauth.tok\nShippo-API-Version: 2018-02-08\n"
        );
        assert_eq!(
            text(SinkFormat::Env(EnvNames::default_for(Provider::Shippo))),
            "SHIPPO_ACCESS_TOKEN=oauth.tok\nSHIPPO_API_VERSION=2018-02-08\n"
        );
    }

    #[test]
    fn a_failed_write_leaves_what_was_there_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be: the rename fails after the token was written
        // to the temporary file (as root too, which no permission check stops).
        let path = dir.path().join("token");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("keep"), "x").unwrap();
        assert!(write_atomically(&path, b"new", 0o600, None).is_err());
        assert!(path.join("keep").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
