//! `shiptoken exec`: runs a program with tokens in its environment, for applications that
//! read a variable rather than the socket (a PHP cron script, an ETL tool).
//!
//! It runs as the caller and reads through the socket, so the socket's access rules apply.
//! It stays as the program's parent: signals it receives are passed on, its exit status is the
//! program's, and with `--restart-on-rotate` or `--signal-on-rotate` it follows the tokens
//! through the socket's long poll and restarts or signals the program when one changes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::commands::{Failed, fail};
use super::follow::{Follow, Seen};
use crate::config::sinks::{EnvNames, is_env_name};
use crate::names::{AccountKey, Provider};

/// How long a program asked to stop for a restart has before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `exec` does when a token changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnRotate {
    /// Nothing: the program keeps the token it started with.
    Nothing,
    /// Stop the program (SIGTERM, then SIGKILL after a grace) and start it with the new token.
    Restart,
    /// Send the program this signal (it re-reads its token elsewhere, e.g. from a sink).
    Signal(i32),
}

/// One `--token PROVIDER/ACCOUNT[=ENV_NAME]`.
#[derive(Debug)]
struct TokenSpec {
    key: AccountKey,
    var: String,
}

/// The options of `exec`, as given.
pub(super) struct ExecArgs<'a> {
    /// `--token` values.
    pub tokens: &'a [String],
    /// `--restart-on-rotate`.
    pub restart: bool,
    /// `--signal-on-rotate`.
    pub signal: Option<&'a str>,
    /// The program and its arguments.
    pub command: &'a [OsString],
}

/// Runs `exec`; `Ok(code)` is the program's exit code (128 + N when signal N ended it).
pub(super) async fn exec(socket: &Path, args: ExecArgs<'_>) -> Result<u8, Failed> {
    let specs = parse_specs(args.tokens)?;
    let on_rotate = match (args.restart, args.signal) {
        (true, _) => OnRotate::Restart,
        (false, Some(name)) => OnRotate::Signal(parse_signal(name)?),
        (false, None) => OnRotate::Nothing,
    };
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(usage("give the program to run after --"));
    };
    let mut follows = Vec::with_capacity(specs.len());
    let mut env: HashMap<String, String> = HashMap::new();
    // The fingerprint of each token the program has: a token served again after a flag
    // cleared is not a new one.
    let mut held = Vec::with_capacity(specs.len());
    for spec in &specs {
        let mut follow = Follow::new(socket, spec.key.clone());
        match follow.next().await? {
            Seen::Token { body, fingerprint } => {
                add_env(&mut env, spec, &body);
                held.push(fingerprint);
            }
            Seen::Withheld { message, .. } => return Err(Failed { code: 3, message }),
        }
        follows.push(follow);
    }
    let mut rotated = if on_rotate == OnRotate::Nothing {
        mpsc::channel(1).1
    } else {
        follow_rotations(follows, &specs)
    };
    let spawn = |env: &HashMap<String, String>| {
        Command::new(program)
            .args(program_args)
            .envs(env)
            .spawn()
            .map_err(|e| Failed {
                // As env(1) and shells answer: 127 not found, 126 found but not runnable.
                code: if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                },
                message: format!("cannot run {}: {e}", program.to_string_lossy()),
            })
    };
    // Before the program starts, so no signal meant for it can end us instead.
    let mut forward = Forwarded::install()?;
    let mut child = spawn(&env)?;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| fail(format!("cannot wait for the program: {e}")))?;
                return Ok(exit_code(status));
            }
            Some(signal) = forward.next() => send(&child, signal),
            Some((i, fingerprint, body)) = rotated.recv() => {
                if held[i] == fingerprint {
                    continue;
                }
                held[i] = fingerprint;
                add_env(&mut env, &specs[i], &body);
                match on_rotate {
                    OnRotate::Signal(signal) => send(&child, signal),
                    OnRotate::Restart => {
                        eprintln!("shiptoken exec: {} has a new token; restarting the program", specs[i].key);
                        stop(&mut child).await;
                        child = spawn(&env)?;
                    }
                    OnRotate::Nothing => {}
                }
            }
        }
    }
}

/// A token served to one of the followed accounts: its index in `--token` order, fingerprint
/// and answer.
type Rotation = (usize, String, Value);

/// Follows every account on its own task and reports each token served. The program keeps
/// its token while an account has none to serve; an account that can no longer be followed
/// (removed, access withdrawn) is reported on standard error and left alone.
fn follow_rotations(follows: Vec<Follow>, specs: &[TokenSpec]) -> mpsc::Receiver<Rotation> {
    let (tx, rx) = mpsc::channel::<Rotation>(16);
    for (i, mut follow) in follows.into_iter().enumerate() {
        let (tx, key) = (tx.clone(), specs[i].key.clone());
        tokio::spawn(async move {
            loop {
                match follow.next().await {
                    Ok(Seen::Token { body, fingerprint }) => {
                        if tx.send((i, fingerprint, body)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Seen::Withheld { message, .. }) => {
                        eprintln!("shiptoken exec: {message}; keeping the current token")
                    }
                    Err(e) => {
                        eprintln!("shiptoken exec: no longer following {key}: {}", e.message);
                        return;
                    }
                }
            }
        });
    }
    rx
}

fn usage(message: impl Into<String>) -> Failed {
    Failed {
        code: 2,
        message: message.into(),
    }
}

/// Parses `--token` values: default variable names per provider, and refuses what would make
/// one variable hold two tokens.
fn parse_specs(tokens: &[String]) -> Result<Vec<TokenSpec>, Failed> {
    let mut specs: Vec<TokenSpec> = Vec::new();
    for given in tokens {
        let (account, var) = match given.split_once('=') {
            Some((account, var)) => (account, Some(var)),
            None => (given.as_str(), None),
        };
        let key = AccountKey::parse(account).map_err(|e| usage(format!("--token {given}: {e}")))?;
        let var = match var {
            Some(var) if is_env_name(var) => var.to_string(),
            Some(var) => {
                return Err(usage(format!(
                    "--token {given}: \"{var}\" is not a variable name (letters, digits and _, not starting with a digit)"
                )));
            }
            None => EnvNames::default_for(key.provider).access_token,
        };
        if var == EnvNames::default_for(Provider::Shippo).api_version {
            return Err(usage(format!(
                "--token {given}: {var} holds the Shippo API version; choose another name"
            )));
        }
        if let Some(other) = specs.iter().find(|s| s.var == var) {
            return Err(usage(format!(
                "--token {given}: {var} would hold the tokens of both {} and {key}; name them, e.g. --token {key}=ACME_TOKEN",
                other.key
            )));
        }
        specs.push(TokenSpec { key, var });
    }
    Ok(specs)
}

/// Sets the token's variable (and, for Shippo, `SHIPPO_API_VERSION`) from a token answer.
fn add_env(env: &mut HashMap<String, String>, spec: &TokenSpec, body: &Value) {
    let token = body
        .get("access_token")
        .and_then(Value::as_str)
        .unwrap_or_default();
    env.insert(spec.var.clone(), token.to_string());
    if let Some(version) = body
        .pointer("/headers/Shippo-API-Version")
        .and_then(Value::as_str)
    {
        env.insert(
            EnvNames::default_for(Provider::Shippo).api_version,
            version.to_string(),
        );
    }
}

/// A signal by name (`HUP`, `SIGHUP`, `hup`) or number.
fn parse_signal(name: &str) -> Result<i32, Failed> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match bare {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        other => other.parse().unwrap_or(0),
    };
    match rustix::process::Signal::from_named_raw(number) {
        Some(_) => Ok(number),
        None => Err(usage(format!(
            "--signal-on-rotate {name}: not a signal; use e.g. HUP, USR1, USR2, TERM"
        ))),
    }
}

/// Sends `signal` to the program, if it still runs.
fn send(child: &Child, signal: i32) {
    let pid = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    if let (Some(pid), Some(signal)) = (pid, rustix::process::Signal::from_named_raw(signal)) {
        // ESRCH: it has just exited; its status is collected by the wait.
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Stops the program for a restart: SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn stop(child: &mut Child) {
    send(child, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The exit code that reports `status` the way a shell would.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// The signals passed on to the program: SIGTERM and SIGINT (stop), SIGHUP (reload).
struct Forwarded {
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
}

impl Forwarded {
    fn install() -> Result<Forwarded, Failed> {
        let mut streams = Vec::new();
        for number in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            let stream = signal(SignalKind::from_raw(number))
                .map_err(|e| fail(format!("cannot install signal handlers: {e}")))?;
            streams.push((number, stream));
        }
        Ok(Forwarded { streams })
    }

    /// The next signal received.
    async fn next(&mut self) -> Option<i32> {
        let waits = self.streams.iter_mut().map(|(number, stream)| {
            let number = *number;
            Box::pin(async move { stream.recv().await.map(|()| number) })
        });
        futures_util::future::select_all(waits).await.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_specs_get_default_names_and_refuse_collisions() {
        let specs = parse_specs(&["shiphero/acme".into(), "shippo/acme".into()]).unwrap();
        assert_eq!(specs[0].var, "SHIPHERO_ACCESS_TOKEN");
        assert_eq!(specs[1].var, "SHIPPO_ACCESS_TOKEN");
        let e = parse_specs(&["shiphero/a".into(), "shiphero/b".into()]).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("name them"), "{}", e.message);
        assert!(parse_specs(&["shiphero/a=A".into(), "shiphero/b=B".into()]).is_ok());
        assert_eq!(parse_specs(&["shiphero/a=1A".into()]).unwrap_err().code, 2);
        assert_eq!(parse_specs(&["fedex/a".into()]).unwrap_err().code, 2);
    }

    #[test]
    fn signals_are_taken_by_name_or_number() {
        assert_eq!(parse_signal("HUP").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("sigusr1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("BOGUS").unwrap_err().code, 2);
    }
}
